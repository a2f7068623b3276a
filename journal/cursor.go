package journal

// Cursor is a worker's position in the journal. Every op with Seq <= Applied
// is on the worker. FullSync means the worker needs a full copy of the store
// before it may follow the journal again: it was never synced, or it fell
// out of the journal's retention.
type Cursor struct {
	Applied  uint64
	FullSync bool
}
