// Package replicate ships the journal to web-server workers.
//
// One [Shipper] runs per worker. It reads journal ops from the worker's
// cursor, folds them into a plan (namespace ops in journal order, file data
// once per batch at the path the file has at the end of the batch, held back
// while a writer still has the file open), reads the bytes from the store
// directory at ship time and applies the plan through a [Transport]. The
// worker's durable cursor advances only after the whole batch is applied,
// and never past the first op of a file whose data is still held back.
//
// Applying is idempotent: after a crash a batch may be applied again. Every
// step checks the worker's state when it cannot be applied as is, and falls
// back to copying the path from the store ("refresh") when the worker drifted.
//
// When the worker may already show ops about to be applied, renames,
// exchanges and links are "suspect": they are applied and both paths are
// then converged from the store, since the worker's source may be a newer
// file that took the name (a suspect rename already applied, whose
// destination looks like the store's by size and mtime, is left alone).
// Only ops that may have reached the worker are suspect: those of a batch
// whose apply failed, after a restart those journaled before the start
// (after the durable cursor), those made during a full copy, and those
// whose store change a full copy, a refresh or a hard-link walk may have
// seen before the op was journaled. Ops journaled while the worker was
// unreachable were never sent: they are applied as they are, so a rename
// stays a rename.
//
// Every worker directory a batch changes (named by the plan, or changed by
// a request of the shipper: temp files, hard links made again, removals)
// gets its mode and mtime from the store at the end of the batch. After
// each connect, the directories the first batches change are swept of temp
// files left by an interrupted transfer (see sweepTemps).
//
// Regular files open for writing (Options.OpenForWrite) are not copied by
// a full copy or a refresh: they ship when their Close is journaled.
//
// Sparse files keep their holes: the store file's data segments (SEEK_DATA /
// SEEK_HOLE) are sent at their offsets and the temp file is truncated to
// the full size, so holes are neither sent nor filled ([SparseReader]).
//
// Limits of SFTP v3: mtimes are whole seconds (full copies compare size and
// mtime in seconds); symlinks get no owner or times (setstat follows them);
// extended attributes are not replicated. A transport with the optional
// [LinkAttrs] and [Xattrs] capabilities (the agent's, package agent) lifts
// these: mtimes are then compared and set to the nanosecond, symlinks get
// their owner and times, and user.* xattrs follow the store. FIFOs,
// sockets and device nodes are not replicated by any transport.
//
// Transports: [NewLocal] applies to a directory on this machine (tests, and
// the reference for the conformance suite in replicate/transporttest);
// [DialSFTP] talks to OpenSSH's sftp-server over golang.org/x/crypto/ssh.
// Retry with capped exponential backoff and logging live in the shipper,
// not in the transports.
package replicate
