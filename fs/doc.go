// Package fs is the FUSE layer of mirrorfs: a passthrough of the store
// directory that journals every mutation before it replies.
//
// What it promises to the programs using the mount:
//
//   - Every call behaves as on the store's own filesystem; errors are the
//     store's errno.
//   - Every mutation (create, mknod, mkdir, write, truncate and every other
//     setattr, unlink, rmdir, rename with its flags, symlink, link,
//     setxattr, removexattr, fallocate, copy_file_range) is appended to the
//     journal after it succeeded on the store and before the reply. If the
//     journal refuses the record the caller gets EIO and the failure is
//     logged with the path.
//   - When the last writer of a file closes it, or a writer fsyncs it, a
//     Close record tells the replicator that the file's content is a
//     version the writer meant to publish. At mount start a Close with
//     File 0 declares every earlier writer gone.
//   - The mount runs with allow_other and default_permissions (the web
//     server runs as another user than the deploy tools), long entry and
//     attribute timeouts, FOPEN_KEEP_CACHE on open and no automatic data
//     cache invalidation on a new mtime: every change passes through this
//     mount, so the kernel's caches cannot go stale, and a file written
//     through it stays cached.
//   - No writeback cache and no kernel passthrough: either would let the
//     kernel write to the store without the journal seeing it.
//   - The mount is nosuid and nodev (go-fuse's default, as fusermount's):
//     set-ID bits and device nodes are stored and journaled, but set-ID
//     bits are not honoured and device nodes cannot be opened through the
//     web root. This is the one deliberate difference from the store.
//   - A file with no name (unlinked while open, or made with O_TMPFILE)
//     stays usable through its descriptors: fstat, fchmod, fchown and
//     futimens work on it, and so does fstat of a directory renamed over
//     while open. Nothing it does is journaled, since no worker has it.
//     An O_TMPFILE file given a name with linkat is journaled as a Create
//     at that name with a Write of all its bytes, then its Close.
//   - New entries get the caller's uid, and the caller's gid or, in a
//     set-group-ID directory, the directory's gid, as on a local
//     filesystem.
//   - fallocate modes other than KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE
//     (COLLAPSE_RANGE, INSERT_RANGE) fail with EOPNOTSUPP: the kernel's
//     FUSE client refuses them before asking the daemon.
//   - Interrupted calls: a mutation that already reached the store is
//     journaled even if the caller was interrupted, so the journal never
//     misses a change the store has.
package fs
