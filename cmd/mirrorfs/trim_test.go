package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"

	"github.com/mirrorfs/mirrorfs/config"
	"github.com/mirrorfs/mirrorfs/journal"
	"github.com/mirrorfs/mirrorfs/replicate"
)

// budgetFixture is a journal with 2,000 ops and two workers that are not
// connected (their shippers never ran): "up" has everything, "down" only
// the first 10 ops.
func budgetFixture(t *testing.T) (*config.Config, *journal.Journal, []*replicate.Shipper) {
	t.Helper()
	j, err := journal.Open(t.TempDir(), journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	for i := range 2000 {
		if _, err := j.Append(t.Context(), journal.Op{Kind: journal.KindCreate, File: uint64(i + 1), Path: fmt.Sprintf("f%04d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := &config.Config{Workers: []config.Worker{{Name: "up"}, {Name: "down"}}}
	if err := j.SetCursor("up", journal.Cursor{Applied: j.LastSeq()}); err != nil {
		t.Fatal(err)
	}
	if err := j.SetCursor("down", journal.Cursor{Applied: 10}); err != nil {
		t.Fatal(err)
	}
	var shippers []*replicate.Shipper
	for _, w := range cfg.Workers {
		s, err := replicate.NewShipper(replicate.Options{Name: w.Name, Store: t.TempDir(), Journal: j,
			Dial: func(context.Context) (replicate.Transport, error) { return nil, errors.New("unreachable") }})
		if err != nil {
			t.Fatal(err)
		}
		shippers = append(shippers, s)
	}
	return cfg, j, shippers
}

func TestTrimKeepsRecordsWithinBudget(t *testing.T) {
	cfg, j, shippers := budgetFixture(t)
	cfg.JournalMaxBytes = 1 << 40
	trimOnce(cfg, j, shippers, slog.New(slog.DiscardHandler))
	if first := j.FirstSeq(); first > 11 {
		t.Fatalf("within budget the journal was trimmed to %d, past the down worker's cursor 10", first)
	}
	if c, _, _ := j.Cursor("down"); c.FullSync {
		t.Fatal("within budget the down worker was marked for a full copy")
	}
}

func TestTrimOverBudgetDropsDisconnectedWorkers(t *testing.T) {
	cfg, j, shippers := budgetFixture(t)
	cfg.JournalMaxBytes = 1 // any journal is over it
	trimOnce(cfg, j, shippers, slog.New(slog.DiscardHandler))
	c, _, err := j.Cursor("down")
	if err != nil {
		t.Fatal(err)
	}
	if !c.FullSync || c.Applied != 10 {
		t.Fatalf("down worker's cursor %+v, want marked for a full copy at 10", c)
	}
	if up, _, _ := j.Cursor("up"); up.FullSync {
		t.Fatal("over budget the worker that lacks nothing was marked for a full copy")
	}
	if first := j.FirstSeq(); first <= 11 {
		t.Fatalf("over budget the journal still starts at %d: the down worker pins it", first)
	}
	// Nobody is connected, so nothing pins: every record goes.
	if ops, err := j.Read(1, 10); err != nil || len(ops) != 0 {
		t.Fatalf("after trimming over budget, Read found %d ops (%v)", len(ops), err)
	}
}

// Once over budget and trimmed, the journal is within it again: the budget
// counts the records kept, not the disk blocks, which Badger frees only
// when it compacts (the journal kept more than 1 MiB on disk after being
// trimmed empty). A worker away for one tick later, lacking one op, keeps
// its place.
func TestTrimWithinBudgetAgainAfterTrimming(t *testing.T) {
	cfg, j, shippers := budgetFixture(t)
	for i := range 20000 {
		if _, err := j.AppendUnsynced(t.Context(), journal.Op{Kind: journal.KindWrite, File: uint64(i + 1), Path: fmt.Sprintf("htdocs/d%03d/page-%06d.html", i%100, i), Length: 4096}); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.SetCursor("up", journal.Cursor{Applied: j.LastSeq()}); err != nil {
		t.Fatal(err)
	}
	cfg.JournalMaxBytes = 256 << 10
	if n := j.RecordBytes(); n <= cfg.JournalMaxBytes {
		t.Fatalf("setup: records %d bytes, not over the budget of %d", n, cfg.JournalMaxBytes)
	}
	log := slog.New(slog.DiscardHandler)
	trimOnce(cfg, j, shippers, log)
	if c, _, _ := j.Cursor("down"); !c.FullSync {
		t.Fatalf("setup: the down worker was not marked over budget: %+v", c)
	}

	if _, err := j.Append(t.Context(), journal.Op{Kind: journal.KindCreate, File: 1, Path: "index.html"}); err != nil {
		t.Fatal(err)
	}
	trimOnce(cfg, j, shippers, log) // "up" is not connected at this tick
	if c, _, _ := j.Cursor("up"); c.FullSync {
		disk, _ := j.Size()
		t.Fatalf("worker up, lacking 1 op, was marked for a full copy: the journal holds %d bytes of records (%d on disk) against a budget of %d",
			j.RecordBytes(), disk, cfg.JournalMaxBytes)
	}
}

// A worker marked for a full copy (after a crash, a store change while
// stopped) that is away holds no records back: its copy starts from the
// journal's end. The journal used to grow until it came back.
func TestTrimIgnoresWorkerMarkedForFullCopy(t *testing.T) {
	cfg, j, shippers := budgetFixture(t)
	if err := j.SetCursor("down", journal.Cursor{Applied: 10, FullSync: true}); err != nil {
		t.Fatal(err)
	}
	trimOnce(cfg, j, shippers, slog.New(slog.DiscardHandler))
	if first, last := j.FirstSeq(), j.LastSeq(); first <= last {
		t.Fatalf("journal still holds ops #%d to #%d, which no worker will read (up has all, down is marked for a full copy)", first, last)
	}
}
