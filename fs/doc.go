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
//     attribute timeouts and FOPEN_KEEP_CACHE on open: every change passes
//     through this mount, so the kernel's caches cannot go stale.
//   - No writeback cache and no kernel passthrough: either would let the
//     kernel write to the store without the journal seeing it.
//   - Interrupted calls: a mutation that already reached the store is
//     journaled even if the caller was interrupted, so the journal never
//     misses a change the store has.
package fs
