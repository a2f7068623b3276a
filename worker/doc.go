// Package worker is the embedded SSH server behind `mirrorfs worker`: an SFTP-only endpoint that
// confines a replicating master to one directory, for hosts that should give the master no shell
// (and for the demo).
//
// What it promises:
//
//   - Authentication is by public key only. The authorized_keys file (OpenSSH format) is re-read
//     on every attempt, so keys can be rotated without a restart. A listed key that carries an
//     option the server cannot honour (from=, command=, expiry-time=, cert-authority, …) is
//     refused rather than accepted without the restriction. Only restrict, no-pty,
//     no-port-forwarding, no-agent-forwarding, no-X11-forwarding and no-user-rc are accepted,
//     because the server enforces all of them anyway.
//   - Only "session" channels with the "sftp" subsystem are served. exec, shell, pty, X11, agent
//     and TCP forwarding are refused; every refusal is logged with its reason.
//   - Every file operation goes through a [replicate.Local] for the configured directory, as the
//     agent's do. Client paths are relative to it ("/" is the root, ".." cannot climb above it),
//     and no operation follows a symlink, on the way or at the name, even one that stays inside
//     the root: a user of the worker who swaps a directory for a symlink cannot redirect the
//     master's changes. Only SSH_FXP_STAT follows symlinks at the name whose targets stay inside
//     the root. Symlinks with any target may be created and read back. The root itself must be a
//     real directory: a root that is a symlink is refused at start, and a session is refused if
//     the root has been replaced by one since.
//   - A successful reply means the change is on stable storage: closing a handle that wrote,
//     created or truncated a file fsyncs it (pkg/sftp's request server cannot route the
//     fsync@openssh.com extension, so the server does it on close), and rename, posix-rename,
//     hardlink, symlink, mkdir, remove and rmdir fsync the affected directories before replying.
//
// Limits inherited from SFTP v3 and pkg/sftp's request server: times travel in whole seconds;
// there is no lsetstat, and SETSTAT refuses a symlink, so a symlink keeps the owner of the server
// process and its creation time; FSTAT and FSETSTAT act on the path the handle was opened with,
// not on the open file (a symlink put there since is refused); SSH_FXP_RENAME refuses to replace
// an existing target, use posix-rename@openssh.com for an atomic replace.
package worker
