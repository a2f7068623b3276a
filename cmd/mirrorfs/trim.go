package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/mirrorfs/mirrorfs/config"
	"github.com/mirrorfs/mirrorfs/journal"
	"github.com/mirrorfs/mirrorfs/replicate"
)

// trimEvery is how often the journal is trimmed and its budget checked.
const trimEvery = 5 * time.Second

// trimLoop drops journal records every worker already has. A worker with
// no position yet, or marked for a full copy it has not started, starts
// with a full copy, so it pins nothing. When the journal's records are
// over its budget (journal.max_bytes), workers that are not connected
// stop pinning records: they are marked for a comparison with the store,
// which their shipper makes when they return, and the mount goes on as if
// they did not exist. A connected worker keeps its records, however slow:
// it is draining them.
func trimLoop(ctx context.Context, cfg *config.Config, j *journal.Journal, shippers []*replicate.Shipper, log *slog.Logger) {
	t := time.NewTicker(trimEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		trimOnce(cfg, j, shippers, log)
	}
}

func trimOnce(cfg *config.Config, j *journal.Journal, shippers []*replicate.Shipper, log *slog.Logger) {
	last := j.LastSeq()
	below := last + 1
	cursors := make([]journal.Cursor, len(cfg.Workers))
	has := make([]bool, len(cfg.Workers))
	for i, w := range cfg.Workers {
		c, ok, err := j.Cursor(w.Name)
		if err != nil {
			log.Warn("trim: read cursor", "worker", w.Name, "err", err)
			return
		}
		cursors[i], has[i] = c, ok
		if ok && (!c.FullSync || copying(shippers, i)) {
			below = min(below, c.Applied+1)
		}
	}
	// The budget counts the records kept, not the disk blocks: Badger
	// frees a trimmed record's blocks only when it compacts its tables,
	// so the disk stayed over a budget for minutes after everything was
	// trimmed, and every worker away for one tick lost its place.
	if size := j.RecordBytes(); cfg.JournalMaxBytes > 0 && below <= last && size > cfg.JournalMaxBytes {
		below = overBudget(cfg, j, shippers, cursors, has, size, log)
	}
	if below > 1 {
		if n, err := j.Trim(below); err != nil {
			log.Warn("trim journal", "below", below, "err", err)
		} else if n > 0 {
			log.Debug("trimmed journal", "ops", n, "below", below)
		}
	}
}

// copying reports whether worker i's shipper is making its full copy. A
// worker marked for one that is not (away since a crash, say) needs none
// of the records after its cursor: its copy starts from the journal's end
// then. trimOnce reads the journal's end, then the cursor, then this; a
// shipper shows its copy before it reads the copy's start, so a copy seen
// not started starts at or after that end, below which trimOnce trims.
func copying(shippers []*replicate.Shipper, i int) bool {
	return i < len(shippers) && shippers[i].Status().InitialCopy
}

// overBudget marks the disconnected workers that pin records for a full
// comparison and returns the trim floor of the connected ones. A
// disconnected worker that lacks nothing being trimmed is left alone.
func overBudget(cfg *config.Config, j *journal.Journal, shippers []*replicate.Shipper, cursors []journal.Cursor, has []bool, size int64, log *slog.Logger) uint64 {
	below := j.LastSeq() + 1
	connected := make([]bool, len(cfg.Workers))
	for i := range cfg.Workers {
		connected[i] = i < len(shippers) && shippers[i].Status().Connected
		if has[i] && connected[i] {
			below = min(below, cursors[i].Applied+1)
		}
	}
	for i, w := range cfg.Workers {
		c := cursors[i]
		if !has[i] || connected[i] || c.FullSync || c.Applied+1 >= below {
			continue
		}
		c.FullSync = true
		if err := j.SetCursor(w.Name, c); err != nil {
			log.Warn("journal over budget: cannot mark a worker for reconciliation; keeping its records", "worker", w.Name, "err", err)
			below = min(below, cursors[i].Applied+1)
			continue
		}
		log.Warn("journal over its disk budget: a worker that is not connected stops holding records back; it will be compared with the store when it returns",
			"worker", w.Name, "record_bytes", size, "max_bytes", cfg.JournalMaxBytes, "applied", c.Applied)
	}
	return below
}
