package journal

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// BenchmarkSyncFloor measures what one durable 100-byte record costs on the
// file system under TMPDIR, three ways, to tell how much of BenchmarkAppend
// is the disk: the way Badger's write-ahead log is made durable (a store
// into a shared mapping of a file created sparse, then fdatasync: what
// walSyncer does), and the two ways a log of the journal's own could do it
// instead, into a file written with zeros beforehand so that no sync has
// to allocate blocks (a store into a mapping then fdatasync; a pwrite with
// O_DSYNC). If those were much cheaper than the first, the journal would
// be worth a log of its own ahead of Badger; see BENCHMARKS.md.
func BenchmarkSyncFloor(b *testing.B) {
	const size = 64 << 20 // room for b.N records of recordSize
	const recordSize = 100
	mapped := func(b *testing.B, prewrite bool) {
		f := syncFloorFile(b, size, prewrite)
		m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Munmap(m)
		off := 0
		for b.Loop() {
			if off+recordSize > size {
				off = 0
			}
			copy(m[off:off+recordSize], syncFloorRecord)
			off += recordSize
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("sparse-mmap-fdatasync", func(b *testing.B) { mapped(b, false) })
	b.Run("prewritten-mmap-fdatasync", func(b *testing.B) { mapped(b, true) })
	b.Run("prewritten-pwrite-odsync", func(b *testing.B) {
		f := syncFloorFile(b, size, true)
		fd, err := unix.Open(f.Name(), unix.O_WRONLY|unix.O_DSYNC|unix.O_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Close(fd)
		off := int64(0)
		for b.Loop() {
			if off+recordSize > size {
				off = 0
			}
			if _, err := unix.Pwrite(fd, syncFloorRecord, off); err != nil {
				b.Fatal(err)
			}
			off += recordSize
		}
	})
}

var syncFloorRecord = bytes.Repeat([]byte{0xa5}, 100)

// syncFloorFile makes a file of size bytes in the benchmark's temp
// directory: sparse, or written with zeros and synced (so that its blocks
// are allocated and written before the timed loop).
func syncFloorFile(b *testing.B, size int, prewrite bool) *os.File {
	b.Helper()
	f, err := os.Create(filepath.Join(b.TempDir(), "log"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	if !prewrite {
		if err := f.Truncate(int64(size)); err != nil {
			b.Fatal(err)
		}
		return f
	}
	if _, err := f.Write(make([]byte, size)); err != nil {
		b.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	return f
}

// BenchmarkTrimmedJournalDisk: the disk a journal keeps after its records
// are trimmed (what a budget on disk blocks would see), and what opening a
// journal of 1.5 million records costs with the count of RecordBytes.
// One iteration takes about 80 s. BENCHMARKS.md, "What the journal's
// budget counts".
func BenchmarkTrimmedJournalDisk(b *testing.B) {
	for b.Loop() {
		dir := b.TempDir()
		j, err := Open(dir, Options{})
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for sz := int64(0); sz <= 64<<20; n++ {
			if _, err := j.AppendUnsynced(b.Context(), Op{Kind: KindWrite, File: uint64(n + 1), Path: fmt.Sprintf("htdocs/d%03d/page-%06d.html", n%100, n), Length: 4096}); err != nil {
				b.Fatal(err)
			}
			if n%5000 == 0 {
				sz, _ = j.Size()
			}
		}
		before, _ := j.Size()
		// Opening counts the records stored (RecordBytes): a key scan.
		if err := j.Close(); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if j, err = Open(dir, Options{}); err != nil {
			b.Fatal(err)
		}
		open := time.Since(t0)
		if _, err := j.Trim(j.LastSeq() + 1); err != nil {
			b.Fatal(err)
		}
		after, _ := j.Size()
		lo, hi := after, after
		for range 12 { // a minute of records coming and going
			time.Sleep(5 * time.Second)
			for i := range 2000 {
				j.AppendUnsynced(b.Context(), Op{Kind: KindWrite, File: uint64(i + 1), Path: fmt.Sprintf("htdocs/x/page-%06d.html", i), Length: 4096})
			}
			j.Trim(j.LastSeq() + 1)
			sz, _ := j.Size()
			lo, hi = min(lo, sz), max(hi, sz)
		}
		b.Logf("%d ops took %d bytes and opened in %v; right after trimming them all %d bytes, over the next minute %d–%d", n, before, open, after, lo, hi)
		b.ReportMetric(float64(open.Milliseconds()), "open-ms")
		b.ReportMetric(float64(before), "disk-before-trim-B")
		b.ReportMetric(float64(after), "disk-after-trim-B")
		b.ReportMetric(float64(lo), "disk-minute-min-B")
		b.ReportMetric(float64(hi), "disk-minute-max-B")
		j.Close()
	}
}
