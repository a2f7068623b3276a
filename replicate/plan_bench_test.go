package replicate

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/mirrorfs/mirrorfs/journal"
)

// BenchmarkPlan folds a deploy's batch into a plan: 2,000 pages in 20
// directories, each saved by rename (create a temp file, two writes, close,
// rename over the page): 10,000 ops a fold.
func BenchmarkPlan(b *testing.B) {
	excl, err := NewExcluder([]string{"*.swp"})
	if err != nil {
		b.Fatal(err)
	}
	pl := &planner{excl: excl, holdOpen: time.Minute, log: slog.New(slog.DiscardHandler)}
	var ops []journal.Op
	for i := range 2000 {
		id := uint64(i + 1)
		page := fmt.Sprintf("site/d%02d/page%04d.html", i%20, i)
		tmp := page + ".tmp"
		ops = append(ops,
			journal.Op{Kind: journal.KindCreate, File: id, Path: tmp, Mode: 0o100644},
			journal.Op{Kind: journal.KindWrite, File: id, Path: tmp, Offset: 0, Length: 4096},
			journal.Op{Kind: journal.KindWrite, File: id, Path: tmp, Offset: 4096, Length: 1000},
			journal.Op{Kind: journal.KindClose, File: id, Path: tmp},
			journal.Op{Kind: journal.KindRename, File: id, Path: tmp, NewPath: page},
		)
	}
	now := time.Unix(1_700_000_000, 0)
	for i := range ops {
		ops[i].Seq = uint64(i + 1)
		ops[i].Time = now.Add(-time.Second).UnixNano()
	}
	b.ReportAllocs()
	var p *Plan
	for b.Loop() {
		p = pl.fold(nil, nil, ops, now)
	}
	if len(p.Ship) != 2000 {
		b.Fatalf("plan ships %d files, want 2000", len(p.Ship))
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(ops)), "ns/op-folded")
}
