package journal

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// openTest opens the journal in dir and closes it when the test ends.
func openTest(t *testing.T, dir string, opts Options) *Journal {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	j, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() {
		if err := j.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return j
}

func newTestJournal(t *testing.T) (*Journal, string) {
	dir := filepath.Join(t.TempDir(), "journal")
	return openTest(t, dir, Options{}), dir
}

func writeOp(i int) Op {
	return Op{Kind: KindWrite, File: uint64(i + 1), Path: fmt.Sprintf("htdocs/file-%d", i), Offset: int64(i), Length: 4096}
}

// appendN appends n write ops and returns them as the journal stored them.
func appendN(t *testing.T, j *Journal, n int) []Op {
	t.Helper()
	var ops []Op
	for i := range n {
		op := writeOp(i)
		op.Time = int64(i + 1)
		seq, err := j.Append(t.Context(), op)
		if err != nil {
			t.Fatalf("Append #%d: %v", i, err)
		}
		op.Seq = seq
		ops = append(ops, op)
	}
	return ops
}

func readAll(t *testing.T, j *Journal, from uint64) []Op {
	t.Helper()
	ops, err := j.Read(from, 1<<30)
	if err != nil {
		t.Fatalf("Read(%d): %v", from, err)
	}
	return ops
}

func seqs(ops []Op) []uint64 {
	s := make([]uint64, len(ops))
	for i, op := range ops {
		s[i] = op.Seq
	}
	return s
}

func seqRange(from, to uint64) []uint64 {
	var s []uint64
	for q := from; q <= to; q++ {
		s = append(s, q)
	}
	return s
}

func TestAppendRead(t *testing.T) {
	j, _ := newTestJournal(t)
	if j.LastSeq() != 0 || j.FirstSeq() != 0 {
		t.Fatalf("empty journal: LastSeq %d FirstSeq %d, want 0 0", j.LastSeq(), j.FirstSeq())
	}
	if ops := readAll(t, j, 0); len(ops) != 0 {
		t.Fatalf("empty journal read %v", ops)
	}
	want := appendN(t, j, 100)
	if got := seqs(want); !reflect.DeepEqual(got, seqRange(1, 100)) {
		t.Fatalf("assigned seqs %v, want 1..100", got)
	}
	if j.LastSeq() != 100 || j.FirstSeq() != 1 {
		t.Fatalf("LastSeq %d FirstSeq %d, want 100 1", j.LastSeq(), j.FirstSeq())
	}
	if got := readAll(t, j, 0); !reflect.DeepEqual(got, want) {
		t.Fatalf("Read(0) differs from what was appended")
	}
	if got, err := j.Read(50, 10); err != nil || !reflect.DeepEqual(got, want[49:59]) {
		t.Fatalf("Read(50, 10) = %v, %v; want seqs 50..59", seqs(got), err)
	}
	if got := readAll(t, j, 100); len(got) != 1 || got[0].Seq != 100 {
		t.Fatalf("Read(100) = %v, want seq 100 only", seqs(got))
	}
	if got := readAll(t, j, 101); len(got) != 0 {
		t.Fatalf("Read(101) = %v, want nothing", seqs(got))
	}
	if _, err := j.Read(1, 0); err == nil {
		t.Fatal("Read with limit 0 succeeded, want an error")
	}

	// Time: kept when set, stamped when zero.
	before := time.Now().UnixNano()
	seq, err := j.Append(t.Context(), Op{Kind: KindClose, File: 1, Path: "x"})
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, j, seq)[0]
	if got.Time < before || got.Time > time.Now().UnixNano() {
		t.Fatalf("zero Time stamped as %d, want about now", got.Time)
	}
}

func TestAppendRejects(t *testing.T) {
	j, _ := newTestJournal(t)
	for _, op := range []Op{
		{Kind: KindInvalid, Path: "x"},
		{Kind: kindEnd, Path: "x"},
		{Kind: KindSetxattr, Path: "x", XattrName: "user.huge", XattrValue: make([]byte, maxRecordSize)},
	} {
		if seq, err := j.Append(t.Context(), op); err == nil {
			t.Errorf("Append(%v) = %d, want an error", op.Kind, seq)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := j.Append(ctx, writeOp(0)); !errors.Is(err, context.Canceled) {
		t.Errorf("Append with a cancelled ctx: %v, want context.Canceled", err)
	}
	if j.LastSeq() != 0 {
		t.Fatalf("rejected appends consumed seqs: LastSeq %d", j.LastSeq())
	}
	// The largest accepted op still works and stays in the LSM tree.
	big := Op{Kind: KindSetxattr, Path: "x", XattrName: "user.big", XattrValue: make([]byte, maxRecordSize-64)}
	big.XattrValue[0] = 1
	if _, err := j.Append(t.Context(), big); err != nil {
		t.Fatalf("Append of a %d-byte xattr: %v", len(big.XattrValue), err)
	}
	if got := readAll(t, j, 1); len(got) != 1 || len(got[0].XattrValue) != len(big.XattrValue) {
		t.Fatal("big op did not read back")
	}
}

func TestReopenKeepsSeqMonotonic(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "j")
	j, err := Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	want := appendN(t, j, 10)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	j = openTest(t, dir, Options{})
	if j.Recovered() {
		t.Error("Recovered() = true after a clean Close")
	}
	if j.LastSeq() != 10 {
		t.Fatalf("reopened LastSeq %d, want 10", j.LastSeq())
	}
	if got := readAll(t, j, 1); !reflect.DeepEqual(got, want) {
		t.Fatal("reopened journal reads back different ops")
	}
	seq, err := j.Append(t.Context(), writeOp(10))
	if err != nil || seq != 11 {
		t.Fatalf("Append after reopen = %d, %v; want 11", seq, err)
	}
}

func TestCursors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "j")
	j, err := Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, j, 20)
	if c, ok, err := j.Cursor("web1"); err != nil || ok || c != (Cursor{}) {
		t.Fatalf("Cursor of an unknown worker = %v, %v, %v; want zero, false, nil", c, ok, err)
	}
	want := map[string]Cursor{
		"web1":      {Applied: 20},
		"web2":      {Applied: 3},
		"web3.lan":  {FullSync: true},
		"w/ü name!": {Applied: 7, FullSync: true},
	}
	for w, c := range want {
		if err := j.SetCursor(w, c); err != nil {
			t.Fatalf("SetCursor(%s): %v", w, err)
		}
	}
	if err := j.SetCursor("web2", Cursor{Applied: 5}); err != nil {
		t.Fatal(err)
	}
	want["web2"] = Cursor{Applied: 5}
	if c, ok, err := j.Cursor("web2"); err != nil || !ok || c != want["web2"] {
		t.Fatalf("Cursor(web2) = %v, %v, %v; want %v", c, ok, err, want["web2"])
	}
	if err := j.SetCursor("web1", Cursor{Applied: 21}); err == nil {
		t.Fatal("SetCursor beyond LastSeq succeeded")
	}
	for _, bad := range []string{"", strings.Repeat("x", maxWorkerName+1)} {
		if err := j.SetCursor(bad, Cursor{}); err == nil {
			t.Fatalf("SetCursor(%q) succeeded", bad)
		}
		if _, _, err := j.Cursor(bad); err == nil {
			t.Fatalf("Cursor(%q) succeeded", bad)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}

	j = openTest(t, dir, Options{})
	got, err := j.Cursors()
	if err != nil || !maps.Equal(got, want) {
		t.Fatalf("Cursors after reopen = %v, %v; want %v", got, err, want)
	}
}

func TestTrim(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "j")
	j, err := Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	want := appendN(t, j, 100)

	if n, err := j.Trim(40); err != nil || n != 39 {
		t.Fatalf("Trim(40) = %d, %v; want 39", n, err)
	}
	if got := readAll(t, j, 0); !reflect.DeepEqual(got, want[39:]) {
		t.Fatalf("after Trim(40) Read(0) = seqs %v, want 40..100", seqs(got))
	}
	if j.FirstSeq() != 40 || j.LastSeq() != 100 {
		t.Fatalf("after Trim(40): FirstSeq %d LastSeq %d, want 40 100", j.FirstSeq(), j.LastSeq())
	}
	if n, err := j.Trim(30); err != nil || n != 0 {
		t.Fatalf("Trim below the floor = %d, %v; want 0", n, err)
	}
	if n, err := j.Trim(40); err != nil || n != 0 {
		t.Fatalf("Trim(40) again = %d, %v; want 0", n, err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}

	j, err = Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, j, 0); !reflect.DeepEqual(got, want[39:]) || j.FirstSeq() != 40 {
		t.Fatalf("after reopen: FirstSeq %d, Read(0) seqs %v; want 40, 40..100", j.FirstSeq(), seqs(got))
	}
	// Trimming past the end trims everything and no further: seqs go on.
	if n, err := j.Trim(1000); err != nil || n != 61 {
		t.Fatalf("Trim(1000) = %d, %v; want 61", n, err)
	}
	if got := readAll(t, j, 0); len(got) != 0 {
		t.Fatalf("after trimming everything Read(0) = %v", seqs(got))
	}
	if j.FirstSeq() != 101 || j.LastSeq() != 100 {
		t.Fatalf("trimmed empty: FirstSeq %d LastSeq %d, want 101 100", j.FirstSeq(), j.LastSeq())
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}

	j = openTest(t, dir, Options{})
	if j.FirstSeq() != 101 || j.LastSeq() != 100 {
		t.Fatalf("trimmed empty, reopened: FirstSeq %d LastSeq %d, want 101 100", j.FirstSeq(), j.LastSeq())
	}
	if seq, err := j.Append(t.Context(), writeOp(0)); err != nil || seq != 101 {
		t.Fatalf("Append after trimming everything = %d, %v; want 101", seq, err)
	}
	if j.FirstSeq() != 101 {
		t.Fatalf("FirstSeq %d, want 101", j.FirstSeq())
	}
}

// RecordBytes counts the ops stored: appends add their records, a trim
// takes its ops' records off at once (the disk, Size, frees them later),
// and a reopen counts the same.
func TestRecordBytes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "j")
	j := openTest(t, dir, Options{})
	if n := j.RecordBytes(); n != 0 {
		t.Fatalf("empty journal: RecordBytes %d, want 0", n)
	}
	appendN(t, j, 100)
	all := j.RecordBytes()
	// Each record holds at least its key and the op's path.
	if minimum := int64(100 * (len(opKey(1)) + len(writeOp(0).Path))); all < minimum {
		t.Fatalf("100 ops: RecordBytes %d, want at least %d", all, minimum)
	}
	if _, err := j.Trim(51); err != nil {
		t.Fatal(err)
	}
	half := j.RecordBytes()
	if half <= 0 || half >= all || half*2 < all*9/10 || half*2 > all*11/10 {
		t.Fatalf("after trimming 50 of 100 ops: RecordBytes %d, want about half of %d", half, all)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	j = openTest(t, dir, Options{})
	if n := j.RecordBytes(); n != half {
		t.Fatalf("reopened: RecordBytes %d, want %d as before the close", n, half)
	}
	if _, err := j.Trim(j.LastSeq() + 1); err != nil {
		t.Fatal(err)
	}
	if n := j.RecordBytes(); n != 0 {
		t.Fatalf("trimmed empty: RecordBytes %d, want 0", n)
	}
}

// TestTrimmedKeyReappearing simulates the Badger bug DESIGN.md warns about:
// a deleted op key comes back. Readers must not see it, and it must not
// lower FirstSeq.
func TestTrimmedKeyReappearing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "j")
	j, err := Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, j, 60)
	if _, err := j.Trim(50); err != nil {
		t.Fatal(err)
	}
	ghost := writeOp(9)
	ghost.Seq = 10
	if err := j.db.Update(func(txn *badger.Txn) error { return txn.Set(opKey(10), Encode(ghost)) }); err != nil {
		t.Fatal(err)
	}
	check := func(j *Journal) {
		t.Helper()
		if got := seqs(readAll(t, j, 0)); !reflect.DeepEqual(got, seqRange(50, 60)) {
			t.Fatalf("Read(0) = %v, want 50..60", got)
		}
		if got := seqs(readAll(t, j, 5)); !reflect.DeepEqual(got, seqRange(50, 60)) {
			t.Fatalf("Read(5) = %v, want 50..60", got)
		}
		if j.FirstSeq() != 50 {
			t.Fatalf("FirstSeq %d, want 50", j.FirstSeq())
		}
	}
	check(j)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	check(openTest(t, dir, Options{}))
}

func TestWaitWakes(t *testing.T) {
	j, _ := newTestJournal(t)
	woke := make(chan error, 1)
	go func() { woke <- j.Wait(t.Context(), 0) }()
	select {
	case err := <-woke:
		t.Fatalf("Wait returned %v before any append", err)
	case <-time.After(20 * time.Millisecond):
	}
	if _, err := j.Append(t.Context(), writeOp(0)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-woke:
		if err != nil {
			t.Fatalf("Wait: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not wake after an append")
	}
	if err := j.Wait(t.Context(), 0); err != nil {
		t.Fatalf("Wait for an op already there: %v", err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer cancel()
	if err := j.Wait(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with a deadline: %v, want DeadlineExceeded", err)
	}

	go func() { woke <- j.Wait(t.Context(), 1) }()
	time.Sleep(10 * time.Millisecond)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-woke:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Wait across Close: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake Wait")
	}
}

// TestGroupCommit: concurrent appends share transactions and syncs, get
// distinct gap-free seqs, and each reads back as appended.
func TestGroupCommit(t *testing.T) {
	j, _ := newTestJournal(t)
	const writers, each = 64, 40
	type key struct{ w, i int }
	var mu sync.Mutex
	bySeq := map[uint64]key{}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				seq, err := j.Append(t.Context(), Op{Kind: KindWrite, File: uint64(w), Path: fmt.Sprintf("w%d/%d", w, i), Length: int64(i + 1)})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				bySeq[seq] = key{w, i}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	const total = writers * each
	commits, appends := j.commits.Load(), j.appends.Load()
	t.Logf("%d appends in %d commits (%.1f per sync)", appends, commits, float64(appends)/float64(commits))
	if appends != total || commits >= appends {
		t.Fatalf("%d appends in %d commits: want %d appends sharing commits", appends, commits, total)
	}
	ops := readAll(t, j, 1)
	if got := seqs(ops); !reflect.DeepEqual(got, seqRange(1, total)) {
		t.Fatalf("seqs are not 1..%d", total)
	}
	for _, op := range ops {
		k := bySeq[op.Seq]
		if op.Path != fmt.Sprintf("w%d/%d", k.w, k.i) || op.File != uint64(k.w) || op.Length != int64(k.i+1) {
			t.Fatalf("seq %d holds %v, want writer %d op %d", op.Seq, op, k.w, k.i)
		}
	}
}

// TestGroupCommitSplitsBigGroups: a group larger than one Badger transaction
// is committed in several, every op still acknowledged once, in order.
func TestGroupCommitSplitsBigGroups(t *testing.T) {
	j, _ := newTestJournal(t)
	const writers, each, size = 24, 2, 200 << 10
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				v := bytes.Repeat([]byte{byte(w*each + i + 1)}, size)
				if _, err := j.Append(t.Context(), Op{Kind: KindSetxattr, Path: fmt.Sprintf("w%d/%d", w, i), XattrName: "user.x", XattrValue: v}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d appends in %d commits, %d groups split", j.appends.Load(), j.commits.Load(), j.splits.Load())
	if j.splits.Load() == 0 {
		t.Fatal("no group needed a second transaction; the test does not exercise splitting")
	}
	ops := readAll(t, j, 1)
	if got := seqs(ops); !reflect.DeepEqual(got, seqRange(1, writers*each)) {
		t.Fatalf("seqs %v, want 1..%d", got, writers*each)
	}
	for _, op := range ops {
		var w, i int
		if _, err := fmt.Sscanf(op.Path, "w%d/%d", &w, &i); err != nil {
			t.Fatal(err)
		}
		if want := bytes.Repeat([]byte{byte(w*each + i + 1)}, size); !bytes.Equal(op.XattrValue, want) {
			t.Fatalf("seq %d (%s): xattr value damaged", op.Seq, op.Path)
		}
	}
}

// TestCloseWaitsForAppends: appends racing Close either succeed, and are
// then on disk, or fail with ErrClosed.
func TestCloseWaitsForAppends(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "j")
	j, err := Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	acked := map[uint64]string{}
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := 0; ; i++ {
				op := Op{Kind: KindCreate, Path: fmt.Sprintf("w%d/%d", w, i)}
				seq, err := j.Append(context.Background(), op)
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				acked[seq] = op.Path
				mu.Unlock()
			}
		})
	}
	time.Sleep(30 * time.Millisecond)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if _, err := j.Append(t.Context(), writeOp(0)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v, want ErrClosed", err)
	}
	if _, err := j.Read(1, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Read after Close: %v, want ErrClosed", err)
	}
	if err := j.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	j = openTest(t, dir, Options{})
	ops := readAll(t, j, 1)
	if len(ops) != len(acked) {
		t.Fatalf("%d ops on disk, %d acknowledged", len(ops), len(acked))
	}
	for _, op := range ops {
		if acked[op.Seq] != op.Path {
			t.Fatalf("seq %d holds %q, acknowledged %q", op.Seq, op.Path, acked[op.Seq])
		}
	}
}

func TestSize(t *testing.T) {
	j, _ := newTestJournal(t)
	empty, err := j.Size()
	if err != nil || empty <= 0 {
		t.Fatalf("Size of an empty journal = %d, %v", empty, err)
	}
	for i := range 2000 {
		op := writeOp(i)
		op.Path = strings.Repeat("p", 1000)
		if _, err := j.Append(t.Context(), op); err != nil {
			t.Fatal(err)
		}
	}
	full, err := j.Size()
	if err != nil || full < empty+1<<20 {
		t.Fatalf("Size after 2 MB of ops = %d (empty: %d), %v", full, empty, err)
	}
	// Sparse preallocated logs must not count: an empty journal is small.
	if empty > 1<<20 {
		t.Errorf("empty journal reports %d bytes", empty)
	}
}

func TestForeignDirectory(t *testing.T) {
	t.Run("files", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte("<h1>hi</h1>"), 0o644); err != nil {
			t.Fatal(err)
		}
		before := fingerprint(t, dir)
		for _, ro := range []bool{false, true} {
			_, err := Open(dir, Options{ReadOnly: ro})
			if !errors.Is(err, ErrForeign) || !strings.Contains(err.Error(), dir) {
				t.Fatalf("Open(ReadOnly: %v) of a web root: %v, want ErrForeign naming the dir", ro, err)
			}
		}
		if after := fingerprint(t, dir); !maps.Equal(before, after) {
			t.Fatalf("refused directory changed:\n%v\n%v", before, after)
		}
	})
	t.Run("badger", func(t *testing.T) {
		dir := t.TempDir()
		db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("k"), []byte("v")) }); err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		before := fingerprint(t, dir)
		if _, err := Open(dir, Options{}); !errors.Is(err, ErrForeign) {
			t.Fatalf("Open of another application's Badger database: %v, want ErrForeign", err)
		}
		if after := fingerprint(t, dir); !maps.Equal(before, after) {
			t.Fatalf("refused database changed:\n%v\n%v", before, after)
		}
	})
	t.Run("file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(path, Options{}); !errors.Is(err, ErrForeign) {
			t.Fatalf("Open of a regular file: %v, want ErrForeign", err)
		}
	})
}

func TestFutureFormatRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "j")
	j, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	v := binary.BigEndian.AppendUint32([]byte(formatMagic), formatVersion+1)
	if err := j.db.Update(func(txn *badger.Txn) error { return txn.Set(keyFormat, v) }); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = Open(dir, Options{})
	if err == nil || errors.Is(err, ErrForeign) || !strings.Contains(err.Error(), "newer") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Open of a future format: %v, want a 'newer version' error naming the dir", err)
	}
}

func TestReadOnlyCleanJournal(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "j")
	j, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := appendN(t, j, 30)
	if err := j.SetCursor("web1", Cursor{Applied: 12}); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Trim(5); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	before := fingerprint(t, dir)

	ro, err := Open(dir, Options{ReadOnly: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("read-only Open: %v", err)
	}
	checkReadOnly(t, ro, want[4:], map[string]Cursor{"web1": {Applied: 12}})
	// Two readers may share the journal; a writer may not join them.
	ro2 := openTest(t, dir, Options{ReadOnly: true})
	if ro2.LastSeq() != 30 {
		t.Fatalf("second reader: LastSeq %d", ro2.LastSeq())
	}
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("read-write Open while read-only open: %v, want ErrLocked", err)
	}
	if err := ro.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ro2.Close(); err != nil {
		t.Fatal(err)
	}
	if after := fingerprint(t, dir); !maps.Equal(before, after) {
		t.Fatalf("read-only open changed the journal:\n%v\n%v", before, after)
	}
}

func TestReadOnlyNothingThere(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	if _, err := Open(missing, Options{ReadOnly: true}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read-only Open of a missing dir: %v, want ErrNotExist", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("read-only Open created the directory")
	}
	empty := t.TempDir()
	if _, err := Open(empty, Options{ReadOnly: true}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read-only Open of an empty dir: %v, want ErrNotExist", err)
	}
	if names, _ := os.ReadDir(empty); len(names) != 0 {
		t.Fatalf("read-only Open wrote into an empty dir: %v", names)
	}
}

// checkReadOnly asserts that ro holds want and cursors and refuses changes.
func checkReadOnly(t *testing.T, ro *Journal, want []Op, cursors map[string]Cursor) {
	t.Helper()
	if got := readAll(t, ro, 0); !reflect.DeepEqual(got, want) {
		t.Fatalf("read-only Read(0) = seqs %v, want %v", seqs(got), seqs(want))
	}
	if ro.LastSeq() != want[len(want)-1].Seq || ro.FirstSeq() != want[0].Seq {
		t.Fatalf("read-only LastSeq %d FirstSeq %d, want %d %d", ro.LastSeq(), ro.FirstSeq(), want[len(want)-1].Seq, want[0].Seq)
	}
	if got, err := ro.Cursors(); err != nil || !maps.Equal(got, cursors) {
		t.Fatalf("read-only Cursors = %v, %v; want %v", got, err, cursors)
	}
	if _, err := ro.Size(); err != nil {
		t.Fatalf("read-only Size: %v", err)
	}
	if _, err := ro.Append(t.Context(), writeOp(0)); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only Append: %v, want ErrReadOnly", err)
	}
	if err := ro.SetCursor("web1", Cursor{}); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only SetCursor: %v, want ErrReadOnly", err)
	}
	if _, err := ro.Trim(1 << 40); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only Trim: %v, want ErrReadOnly", err)
	}
}

// fingerprint maps each file in dir to its size, mode, mtime and content
// hash, to prove a directory was left alone.
func fingerprint(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	fp := map[string]string{}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		fp[e.Name()] = fmt.Sprintf("%d %v %d %x", fi.Size(), fi.Mode(), fi.ModTime().UnixNano(), sha256.Sum256(b))
	}
	return fp
}

// TestWALHoldsAppendedOps guards the Badger internals walSyncer relies on:
// an acknowledged op sits in the newest NNNNN.mem file of the directory, and
// that is a file the syncer tracks, also after memtable rotations.
func TestWALHoldsAppendedOps(t *testing.T) {
	j, dir := newTestJournal(t)
	newest := func() int {
		t.Helper()
		names, err := readDirNames(dir)
		if err != nil {
			t.Fatal(err)
		}
		fid := -1
		for _, n := range names {
			if f, ok := walFid(n); ok {
				fid = max(fid, f)
			}
		}
		if fid < 0 {
			t.Fatalf("no *.mem file in %s: %v", dir, names)
		}
		return fid
	}
	check := func(path string) {
		t.Helper()
		op := Op{Kind: KindCreate, Path: path, Time: 1}
		seq, err := j.Append(t.Context(), op)
		if err != nil {
			t.Fatal(err)
		}
		op.Seq = seq
		fid := newest()
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("%05d.mem", fid)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, Encode(op)) {
			t.Fatalf("op %d is not in %05d.mem, the log the journal syncs", seq, fid)
		}
		j.wal.mu.Lock()
		tracked := j.wal.open[fid] != nil
		j.wal.mu.Unlock()
		if !tracked {
			t.Fatalf("%05d.mem holds op %d but the syncer does not track it", fid, seq)
		}
	}
	check("first")

	// Fill more than a memtable so that Badger rotates its log.
	before := newest()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 25 {
				op := Op{Kind: KindSetxattr, Path: fmt.Sprintf("%d/%d", w, i), XattrName: "user.x", XattrValue: make([]byte, 64<<10)}
				op.XattrValue[0] = 1
				if _, err := j.Append(t.Context(), op); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if after := newest(); after == before {
		t.Fatalf("12 MiB of ops did not rotate the memtable log (still %05d.mem)", after)
	}
	check("after rotation")
	j.wal.mu.Lock()
	done := j.wal.done
	j.wal.mu.Unlock()
	if done < before {
		t.Fatalf("rotated-out log %05d.mem still tracked (done %d)", before, done)
	}
}

func TestStoppedAt(t *testing.T) {
	dir := t.TempDir()
	j, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := j.StoppedAt(); err != nil || ok {
		t.Fatalf("fresh journal: StoppedAt ok=%v err=%v, want none", ok, err)
	}
	at := time.Unix(1700000000, 123456789)
	if err := j.SetStoppedAt(at); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{false, true} {
		j, err := Open(dir, Options{ReadOnly: ro})
		if err != nil {
			t.Fatal(err)
		}
		got, ok, err := j.StoppedAt()
		if err != nil || !ok || !got.Equal(at) {
			t.Fatalf("reopened (read-only %v): StoppedAt = %v, %v, %v; want %v", ro, got, ok, err, at)
		}
		if ro {
			if err := j.SetStoppedAt(at); !errors.Is(err, ErrReadOnly) {
				t.Fatalf("SetStoppedAt on a read-only journal: %v", err)
			}
		}
		j.Close()
	}
}

// TestDamagedTableBlockRefused: a data block of a table overwritten after a
// clean stop makes Open refuse with ErrCorrupt naming the table, for a
// writer and a reader alike, and no byte of the journal changes. Badger
// alone would open it and fail (or crash) only when it read that block.
func TestDamagedTableBlockRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "j")
	j, err := Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, j, 2000)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	tables, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	if len(tables) == 0 {
		t.Fatal("no table after a clean stop")
	}
	// The first block starts at offset 0; the index sits at the end.
	f, err := os.OpenFile(tables[0], os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("\xde\xad\xbe\xef damaged block \x00\xff"), 64); err != nil {
		t.Fatal(err)
	}
	f.Close()
	before := fingerprint(t, dir)
	for _, ro := range []bool{false, true} {
		_, err := Open(dir, Options{ReadOnly: ro, Logger: testLogger(t)})
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tables[0]) {
			t.Fatalf("Open(ReadOnly: %v) with a damaged block: %v, want ErrCorrupt naming %s", ro, err, tables[0])
		}
		t.Logf("refused: %v", err)
	}
	if after := fingerprint(t, dir); !maps.Equal(before, after) {
		t.Fatalf("refused journal changed:\n%v\n%v", before, after)
	}
}

// An unsynced op becomes visible within moments whatever the time of the
// last sync says. It was kept on the wall clock: stepped back an hour (a
// VM resumed, chrony's step at boot), the background sync slept that hour
// and shippers saw nothing of in-place edits meanwhile. The last sync is
// put an hour ahead here, as such a step made it.
func TestUnsyncedOpVisibleAfterClockStep(t *testing.T) {
	j, _ := newTestJournal(t)
	if _, err := j.Append(t.Context(), writeOp(0)); err != nil {
		t.Fatal(err)
	}
	j.lastSync.Add(int64(time.Hour))
	seq, err := j.AppendUnsynced(t.Context(), writeOp(1))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := j.Wait(ctx, seq-1); err != nil || j.LastSeq() < seq {
		t.Fatalf("unsynced op #%d not visible 5 s after its append (last sync an hour ahead): visible up to #%d, %v", seq, j.LastSeq(), err)
	}
}

// TestAppendUnsynced: ops appended without waiting for the sync get seqs in
// order with synced ones, become visible to readers once the background
// sync made them durable (with no other append to push them), are all
// covered by a later Append's answer, and are all in DURABLE after Close.
func TestAppendUnsynced(t *testing.T) {
	j, dir := newTestJournal(t)
	const n = 200
	for i := range n {
		seq, err := j.AppendUnsynced(t.Context(), writeOp(i))
		if err != nil {
			t.Fatalf("AppendUnsynced #%d: %v", i, err)
		}
		if seq != uint64(i+1) {
			t.Fatalf("AppendUnsynced #%d got seq %d", i, seq)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	for j.LastSeq() < n {
		if err := j.Wait(ctx, j.LastSeq()); err != nil {
			t.Fatalf("only %d of %d unsynced ops became visible: %v", j.LastSeq(), n, err)
		}
	}
	if s := j.syncs.Load(); s == 0 || s > n {
		t.Fatalf("%d syncs for %d unsynced appends: want between 1 and %d", s, n, n)
	}

	if _, err := j.AppendUnsynced(t.Context(), writeOp(n)); err != nil {
		t.Fatal(err)
	}
	seq, err := j.Append(t.Context(), writeOp(n+1))
	if err != nil {
		t.Fatal(err)
	}
	if seq != n+2 || j.LastSeq() < seq {
		t.Fatalf("Append returned seq %d with LastSeq %d: want %d, durable and visible", seq, j.LastSeq(), n+2)
	}
	ops := readAll(t, j, 1)
	if got := seqs(ops); !reflect.DeepEqual(got, seqRange(1, n+2)) {
		t.Fatalf("seqs %v, want 1..%d", got, n+2)
	}
	for i, op := range ops {
		if want := writeOp(i); op.Path != want.Path || op.File != want.File {
			t.Fatalf("seq %d holds %v, want %v", op.Seq, op, want)
		}
	}
	if _, err := j.AppendUnsynced(t.Context(), writeOp(n+2)); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if mark, ok, err := readDurableMark(dir); err != nil || !ok || mark != n+3 {
		t.Fatalf("DURABLE after Close = %d, %v, %v; want %d: Close must sync the last unsynced op", mark, ok, err, n+3)
	}
}

// TestSync: Sync returns once the ops appended without a sync are durable
// and visible, without waiting for the background sync (which, right after
// a durable Append, waits syncGap first).
func TestSync(t *testing.T) {
	j, _ := newTestJournal(t)
	if _, err := j.Append(t.Context(), writeOp(0)); err != nil {
		t.Fatal(err)
	}
	seq, err := j.AppendUnsynced(t.Context(), writeOp(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := j.LastSeq(); got < seq {
		t.Fatalf("after Sync the durable ops end at seq %d, want %d", got, seq)
	}
	if err := j.Sync(); err != nil { // nothing left: no sync
		t.Fatal(err)
	}
}

// TestSetCursorSyncedInBackground: SetCursor does not wait for a sync of its
// own, but the background sync follows it without any other write.
func TestSetCursorSyncedInBackground(t *testing.T) {
	j, _ := newTestJournal(t)
	appendN(t, j, 3)
	before := j.syncs.Load()
	if err := j.SetCursor("web1", Cursor{Applied: 3}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for j.syncs.Load() == before {
		if time.Now().After(deadline) {
			t.Fatal("no sync followed SetCursor within 5 s")
		}
		time.Sleep(time.Millisecond)
	}
	if c, ok, err := j.Cursor("web1"); err != nil || !ok || c.Applied != 3 {
		t.Fatalf("Cursor = %+v, %v, %v; want Applied 3", c, ok, err)
	}
}
