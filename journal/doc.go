// Package journal is mirrorfs's persistent, ordered log of mutations made
// through the mount, with one cursor per worker.
//
// The FUSE layer appends an Op for every mutation before it replies to the
// caller; Append returns only once the op is durable on disk. Concurrent
// appends are group-committed: they share one Badger transaction and one
// sync. Shippers read ops from their worker's cursor and advance the cursor
// only after the worker applied them. Old ops are trimmed in bulk below the
// slowest cursor; correctness never depends on a delete taking effect.
package journal
