package journal

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
)

func benchJournal(b *testing.B) *Journal {
	b.Helper()
	j, err := Open(filepath.Join(b.TempDir(), "journal"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = j.Close() })
	return j
}

func reportCommits(b *testing.B, j *Journal) {
	if c := j.commits.Load(); c > 0 {
		b.ReportMetric(float64(j.appends.Load())/float64(c), "appends/commit")
	}
	if s := j.syncs.Load(); s > 0 {
		b.ReportMetric(float64(j.appends.Load())/float64(s), "appends/sync")
	}
}

// BenchmarkAppend: one writer, so every append pays a full sync.
func BenchmarkAppend(b *testing.B) {
	j := benchJournal(b)
	benchSerial(b, j, j.Append)
}

// BenchmarkAppendUnsynced: one writer of changes a durable op covers (the
// writes after a file's first); they wait for the commit only, and the
// background sync gathers them.
func BenchmarkAppendUnsynced(b *testing.B) {
	j := benchJournal(b)
	benchSerial(b, j, j.AppendUnsynced)
}

func benchSerial(b *testing.B, j *Journal, appendOp func(context.Context, Op) (uint64, error)) {
	op := writeOp(1)
	for b.Loop() {
		if _, err := appendOp(b.Context(), op); err != nil {
			b.Fatal(err)
		}
	}
	reportCommits(b, j)
}

// BenchmarkAppendParallel: GOMAXPROCS writers (scale with -cpu); group
// commit shares syncs among them.
func BenchmarkAppendParallel(b *testing.B) {
	j := benchJournal(b)
	b.SetParallelism(16) // FUSE serves many requests at once; most wait on the sync
	b.RunParallel(func(pb *testing.PB) {
		op := writeOp(1)
		for pb.Next() {
			if _, err := j.Append(b.Context(), op); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportCommits(b, j)
}

func BenchmarkEncode(b *testing.B) {
	op := writeOp(12345)
	op.Seq, op.Time = 1<<30, 1_700_000_000_000_000_000
	for b.Loop() {
		Encode(op)
	}
}

func BenchmarkDecode(b *testing.B) {
	op := writeOp(12345)
	op.Seq, op.Time = 1<<30, 1_700_000_000_000_000_000
	rec := Encode(op)
	for b.Loop() {
		if _, err := Decode(rec); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRead: a shipper draining a batch.
func BenchmarkRead(b *testing.B) {
	j := benchJournal(b)
	var wg sync.WaitGroup
	for w := range 100 {
		wg.Go(func() {
			for i := range 100 {
				if _, err := j.Append(b.Context(), writeOp(w*100+i)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ResetTimer()
	for b.Loop() {
		ops, err := j.Read(1, 1000)
		if err != nil || len(ops) != 1000 {
			b.Fatal(len(ops), err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*1000), "ns/op-read")
}
