// Package journal is mirrorfs's persistent, ordered log of mutations made
// through the mount, with one cursor per worker.
//
// The FUSE layer appends an Op for every mutation before it replies to the
// caller; Append returns only once the op is durable on disk. Concurrent
// appends are group-committed: they share one Badger transaction and one
// sync. AppendUnsynced returns once the op is in the write-ahead log (it
// survives a crash of the daemon) and leaves the sync to the background;
// readers only ever see ops that are on disk. Shippers read ops from their worker's cursor and advance the cursor
// only after the worker applied them. Old ops are trimmed in bulk below the
// slowest cursor; correctness never depends on a delete taking effect.
//
// On disk the journal is a Badger database sized for a small daemon. Ops are
// keyed by big-endian seq, so iteration is seq order, and stay inline in the
// LSM tree (never in Badger's value log); cursors and a format marker have
// keys of their own. A trim floor, written before the deletes, hides trimmed
// ops from readers even if Badger resurrects a deleted key. Badger's
// write-ahead log is synced by the journal itself, once per group commit
// that holds an Append, and in the background for the others (see
// walSyncer, syncLoop).
//
// Only one process may open a journal for writing. With Options.ReadOnly the
// CLI can inspect it while no daemon runs, also after a crash, without
// changing a byte of it.
package journal
