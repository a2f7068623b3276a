package journal

import (
	"errors"
	"maps"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// inspectBase is the instant the tests' ops are dated from: the op with
// seq N appended by inspectJournal has Time = inspectBase + N seconds.
var inspectBase = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// kindOps is one op of every kind, in the order appended (seqs 1..15).
func kindOps() []Op {
	return []Op{
		{Kind: KindMkdir, File: 1, Path: "htdocs", Mode: 0o40755},                                     // 1
		{Kind: KindCreate, File: 2, Path: "htdocs/index.html", Mode: 0o100644, UID: 33, GID: 33},      // 2
		{Kind: KindWrite, File: 2, Path: "htdocs/index.html", Offset: 0, Length: 1000},                // 3
		{Kind: KindClose, File: 2, Path: "htdocs/index.html"},                                         // 4
		{Kind: KindMknod, File: 3, Path: "run/fifo", Mode: 0o10644, Rdev: 7},                          // 5
		{Kind: KindSetattr, File: 2, Path: "htdocs/index.html", Mask: AttrSize | AttrMtime, Size: 10}, // 6
		{Kind: KindSymlink, File: 4, Path: "current", Target: "htdocs"},                               // 7
		{Kind: KindLink, File: 2, Path: "htdocs/index.html", NewPath: "index.html"},                   // 8
		{Kind: KindSetxattr, File: 2, Path: "index.html", XattrName: "user.a", XattrValue: []byte{1}}, // 9
		{Kind: KindRemovexattr, File: 2, Path: "index.html", XattrName: "user.a"},                     // 10
		{Kind: KindFallocate, File: 5, Path: "img/big.bin", Offset: 4096, Length: 8192, Flags: 1},     // 11
		{Kind: KindCopyRange, File: 5, Path: "img/big.bin", Offset: 0, Length: 4096},                  // 12
		{Kind: KindWrite, File: 2, Path: "index.html", Offset: 10, Length: 5},                         // 13
		{Kind: KindRename, File: 5, Path: "img/big.bin", NewPath: "htdocs/img/big.bin", Flags: 1},     // 14
		{Kind: KindUnlink, File: 4, Path: "current"},                                                  // 15
		{Kind: KindRmdir, File: 6, Path: "img"},                                                       // 16
	}
}

// inspectJournal appends kindOps and returns the journal and the ops as
// stored.
func inspectJournal(t *testing.T) (*Journal, string, []Op) {
	t.Helper()
	j, dir := newTestJournal(t)
	var stored []Op
	for i, op := range kindOps() {
		op.Time = inspectBase.Add(time.Duration(i+1) * time.Second).UnixNano()
		seq, err := j.Append(t.Context(), op)
		if err != nil {
			t.Fatal(err)
		}
		op.Seq = seq
		stored = append(stored, op)
	}
	return j, dir, stored
}

func setCursor(t *testing.T, j *Journal, w string, c Cursor) {
	t.Helper()
	if err := j.SetCursor(w, c); err != nil {
		t.Fatal(err)
	}
}

func TestInspectStats(t *testing.T) {
	j, _, ops := inspectJournal(t)
	setCursor(t, j, "up", Cursor{Applied: 16})
	setCursor(t, j, "mid", Cursor{Applied: 10})
	setCursor(t, j, "copying", Cursor{Applied: 12, FullSync: true})
	workers := []string{"new", "mid", "up", "copying"}
	now := inspectBase.Add(time.Minute)
	for _, page := range []int{0, 1, 3} {
		st, err := Inspect(j, workers, InspectOptions{Now: now, PageSize: page})
		if err != nil {
			t.Fatal(err)
		}
		if st.FirstSeq != 1 || st.LastSeq != 16 || st.Stored != 16 || st.SizeBytes <= 0 || !st.Now.Equal(now) {
			t.Fatalf("page %d: journal fields %+v", page, st)
		}
		if got := names(st.Workers); !slices.Equal(got, workers) {
			t.Fatalf("workers %v, want %v in order", got, workers)
		}
		byName := map[string]WorkerStats{}
		for _, ws := range st.Workers {
			byName[ws.Name] = ws
		}
		// A new worker lacks everything: all 16 ops, data of files 2 and 5.
		nw := byName["new"]
		allKinds := map[string]uint64{}
		for _, op := range ops {
			allKinds[op.Kind.String()]++
		}
		if nw.HasCursor || !nw.NeedsFullCopy || nw.FullCopyReason == "" || nw.Pending != 16 || nw.OldestSeq != 1 ||
			nw.DataBytes != 1000+8192+4096+5 || nw.DataFiles != 2 || !maps.Equal(nw.ByKind, allKinds) {
			t.Fatalf("page %d: new worker %+v", page, nw)
		}
		if want := inspectBase.Add(time.Second); !nw.OldestTime.Equal(want) || nw.OldestAgeSeconds != 59 {
			t.Fatalf("new worker oldest %v age %v, want %v 59", nw.OldestTime, nw.OldestAgeSeconds, want)
		}
		// mid: ops 11..16: fallocate, copy_range (file 5), write (file 2), rename, unlink, rmdir.
		mid := byName["mid"]
		if !mid.HasCursor || mid.NeedsFullCopy || mid.Applied != 10 || mid.Pending != 6 || mid.OldestSeq != 11 ||
			mid.DataBytes != 8192+4096+5 || mid.DataFiles != 2 || mid.OldestAgeSeconds != 49 ||
			!maps.Equal(mid.ByKind, map[string]uint64{"fallocate": 1, "copy_range": 1, "write": 1, "rename": 1, "unlink": 1, "rmdir": 1}) {
			t.Fatalf("page %d: mid %+v", page, mid)
		}
		up := byName["up"]
		if up.Pending != 0 || up.OldestSeq != 0 || !up.OldestTime.IsZero() || up.DataBytes != 0 || up.DataFiles != 0 || len(up.ByKind) != 0 || up.NeedsFullCopy {
			t.Fatalf("page %d: up %+v", page, up)
		}
		// Marked for a full copy: needs it, and the ops after its cursor
		// are still to replay: 13 (file 2), 14, 15, 16.
		cp := byName["copying"]
		if !cp.FullSync || !cp.NeedsFullCopy || cp.Pending != 4 || cp.DataBytes != 5 || cp.DataFiles != 1 || cp.OldestSeq != 13 {
			t.Fatalf("page %d: copying %+v", page, cp)
		}
	}

	// One worker, and a path filter.
	st, err := Inspect(j, workers, InspectOptions{Worker: "mid", Path: "htdocs", Now: now})
	if err != nil {
		t.Fatal(err)
	}
	// Of mid's pending ops only the rename's new path is under htdocs.
	if len(st.Workers) != 1 || st.Workers[0].Name != "mid" || st.Workers[0].Pending != 1 || st.Workers[0].OldestSeq != 14 || st.Workers[0].DataBytes != 0 {
		t.Fatalf("mid under htdocs: %+v", st.Workers)
	}
	st, err = Inspect(j, workers, InspectOptions{Worker: "new", Path: "img/*", Now: now})
	if err != nil {
		t.Fatal(err)
	}
	// 11, 12, 14 (img/big.bin), not 16 (img itself: "img/*" does not match "img").
	if ws := st.Workers[0]; ws.Pending != 3 || ws.DataBytes != 8192+4096 || ws.DataFiles != 1 {
		t.Fatalf("new under img/*: %+v", ws)
	}
}

func names(ws []WorkerStats) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.Name)
	}
	return out
}

func entrySeqs(es []Entry) []uint64 {
	out := []uint64{}
	for _, e := range es {
		out = append(out, e.Seq)
	}
	return out
}

func TestInspectRetention(t *testing.T) {
	j, _ := newTestJournal(t)
	appendN(t, j, 20)
	setCursor(t, j, "a", Cursor{Applied: 15})
	setCursor(t, j, "b", Cursor{Applied: 3}) // fell out: ops 4..9 are trimmed below
	if _, err := j.Trim(10); err != nil {
		t.Fatal(err)
	}
	st, err := Inspect(j, []string{"a", "b"}, InspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.FirstSeq != 10 || st.Stored != 11 {
		t.Fatalf("journal %+v", st)
	}
	a, b := st.Workers[0], st.Workers[1]
	if a.NeedsFullCopy || a.Pending != 5 || a.OldestSeq != 16 {
		t.Fatalf("a %+v", a)
	}
	if !b.NeedsFullCopy || b.FullSync || b.Pending != 11 || b.OldestSeq != 10 {
		t.Fatalf("b (below retention) %+v", b)
	}
	// Trimmed empty.
	if _, err := j.Trim(21); err != nil {
		t.Fatal(err)
	}
	st, err = Inspect(j, []string{"a"}, InspectOptions{})
	if err != nil || st.FirstSeq != 21 || st.LastSeq != 20 || st.Stored != 0 || st.Workers[0].Pending != 0 {
		t.Fatalf("trimmed empty: %+v, %v", st, err)
	}
}

func TestInspectEmptyAndNoWorkers(t *testing.T) {
	j, _ := newTestJournal(t)
	st, err := Inspect(j, []string{"w"}, InspectOptions{})
	if err != nil || st.LastSeq != 0 || st.Workers[0].Pending != 0 || !st.Workers[0].NeedsFullCopy {
		t.Fatalf("empty journal: %+v, %v", st, err)
	}
	l, err := List(j, []string{"w"}, InspectOptions{})
	if err != nil || len(l.Entries) != 0 || l.Entries == nil || l.More != 0 {
		t.Fatalf("empty journal ls: %+v, %v", l, err)
	}
	appendN(t, j, 3)
	st, err = Inspect(j, nil, InspectOptions{})
	if err != nil || len(st.Workers) != 0 || st.Stored != 3 {
		t.Fatalf("no workers: %+v, %v", st, err)
	}
	// With no workers, nothing is pending for anyone.
	if l, err := List(j, nil, InspectOptions{}); err != nil || len(l.Entries) != 0 {
		t.Fatalf("no workers ls: %+v, %v", l, err)
	}
}

func TestList(t *testing.T) {
	j, _, ops := inspectJournal(t)
	setCursor(t, j, "a", Cursor{Applied: 10})
	setCursor(t, j, "b", Cursor{Applied: 13})
	workers := []string{"a", "b"}
	now := inspectBase.Add(time.Hour)
	list := func(opts InspectOptions) Listing {
		t.Helper()
		opts.Now = now
		l, err := List(j, workers, opts)
		if err != nil {
			t.Fatalf("List(%+v): %v", opts, err)
		}
		return l
	}

	// Default: after the lowest cursor (a's).
	l := list(InspectOptions{})
	if got := entrySeqs(l.Entries); !slices.Equal(got, seqRange(11, 16)) || l.From != 11 || l.More != 0 || l.Limit != DefaultListLimit {
		t.Fatalf("ls: seqs %v from %d more %d", got, l.From, l.More)
	}
	e := l.Entries[0]
	if !reflect.DeepEqual(e.Op(), ops[10]) || e.DataBytes != 8192 || e.AgeSeconds != 3600-11 || !slices.Equal(e.Lacking, []string{"a"}) {
		t.Fatalf("entry %+v, want op %+v lacking a", e, ops[10])
	}
	if last := l.Entries[len(l.Entries)-1]; !slices.Equal(last.Lacking, []string{"a", "b"}) || l.Entries[2].Seq != 13 || !slices.Equal(l.Entries[3].Lacking, []string{"a", "b"}) || !slices.Equal(l.Entries[2].Lacking, []string{"a"}) {
		t.Fatalf("lacking: %+v", l.Entries)
	}
	// One worker.
	if got := entrySeqs(list(InspectOptions{Worker: "b"}).Entries); !slices.Equal(got, seqRange(14, 16)) {
		t.Fatalf("ls --worker b: %v", got)
	}
	// A new worker lacks everything, and so makes the default list everything.
	setCursor(t, j, "c", Cursor{Applied: 16})
	if l, err := List(j, []string{"a", "b", "c", "new"}, InspectOptions{}); err != nil || !slices.Equal(entrySeqs(l.Entries), seqRange(1, 16)) {
		t.Fatalf("ls with a new worker: %v, %v", entrySeqs(l.Entries), err)
	}
	if l, err := List(j, []string{"c"}, InspectOptions{Worker: "c"}); err != nil || len(l.Entries) != 0 {
		t.Fatalf("ls of a current worker: %v, %v", entrySeqs(l.Entries), err)
	}

	// Path globs, against all ops (worker "new").
	all := []string{"new"}
	for _, tc := range []struct {
		glob string
		want []uint64
	}{
		{"htdocs/index.html", []uint64{2, 3, 4, 6, 8}},
		{"/htdocs/index.html", []uint64{2, 3, 4, 6, 8}}, // leading slash ignored
		{"./index.html", []uint64{8, 9, 10, 13}},        // NewPath of the link, then Path
		{"htdocs", []uint64{1, 2, 3, 4, 6, 8, 14}},      // the dir, below it, a rename's new path; not symlink 7's target
		{"htdocs/", []uint64{1, 2, 3, 4, 6, 8, 14}},     // trailing slash ignored
		{"htdocs/img", []uint64{14}},                    // parent dir of the new path
		{"*.html", []uint64{8, 9, 10, 13}},              // * does not cross /
		{"*/*.html", []uint64{2, 3, 4, 6, 8}},
		{"img*", []uint64{11, 12, 14, 16}},
		{"run/f?fo", []uint64{5}},
		{"nothing", []uint64{}},
		{"", seqRange(1, 16)},
		{"/", seqRange(1, 16)},
	} {
		l, err := List(j, all, InspectOptions{Worker: "new", Path: tc.glob})
		if err != nil {
			t.Fatalf("glob %q: %v", tc.glob, err)
		}
		if got := entrySeqs(l.Entries); !slices.Equal(got, tc.want) {
			t.Errorf("glob %q: seqs %v, want %v", tc.glob, got, tc.want)
		}
	}
	if MatchPath("htdocs", Op{Kind: KindSymlink, Path: "current", Target: "htdocs"}) {
		t.Fatal("a symlink's target matched a path glob")
	}
}

func TestListLimitAndPaging(t *testing.T) {
	j, _ := newTestJournal(t)
	// More than one default page (4096), appended concurrently so that
	// group commit keeps this fast.
	const n = DefaultPageSize + 904
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 64)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			op := writeOp(i)
			op.Path = "d/f"
			if i%2 == 1 {
				op.Path = "e/f"
			}
			if _, err := j.Append(t.Context(), op); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	setCursor(t, j, "w", Cursor{Applied: 100})

	st, err := Inspect(j, []string{"w"}, InspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ws := st.Workers[0]; ws.Pending != n-100 || ws.OldestSeq != 101 || ws.DataBytes != 4096*(n-100) || ws.DataFiles != n-100 {
		t.Fatalf("stats across pages: %+v", ws)
	}
	// Default page size, default limit.
	l, err := List(j, []string{"w"}, InspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Entries) != DefaultListLimit || l.Entries[0].Seq != 101 || l.More != n-100-DefaultListLimit || l.NextFrom != 101+DefaultListLimit {
		t.Fatalf("default limit: %d entries from %d, more %d next %d", len(l.Entries), l.Entries[0].Seq, l.More, l.NextFrom)
	}
	// Paging with From, a small page size and a path filter: every
	// matching op exactly once, in order.
	var got []uint64
	from := uint64(0)
	for pages := 0; ; pages++ {
		l, err := List(j, []string{"w"}, InspectOptions{Path: "e", Limit: 1000, From: from, PageSize: 333})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range l.Entries {
			if e.Path != "e/f" {
				t.Fatalf("glob e matched %q", e.Path)
			}
		}
		got = append(got, entrySeqs(l.Entries)...)
		if l.More == 0 {
			if l.NextFrom != 0 {
				t.Fatalf("NextFrom %d with nothing more", l.NextFrom)
			}
			break
		}
		from = l.NextFrom
		if pages > 10 {
			t.Fatal("paging does not end")
		}
	}
	var want []uint64
	for _, op := range readAll(t, j, 101) {
		if op.Path == "e/f" {
			want = append(want, op.Seq)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("paged listing: %d seqs, want %d", len(got), len(want))
	}
	// From before the cursor does not list what the worker has.
	if l, err := List(j, []string{"w"}, InspectOptions{Worker: "w", From: 5, Limit: 1}); err != nil || l.Entries[0].Seq != 101 {
		t.Fatalf("from below the cursor: %v, %v", entrySeqs(l.Entries), err)
	}
}

func TestShow(t *testing.T) {
	j, _, ops := inspectJournal(t)
	setCursor(t, j, "a", Cursor{Applied: 10})
	setCursor(t, j, "b", Cursor{Applied: 16})
	setCursor(t, j, "c", Cursor{Applied: 16, FullSync: true})
	workers := []string{"a", "b", "c", "new"}
	now := inspectBase.Add(time.Minute)
	for _, op := range ops {
		d, err := Show(j, workers, op.Seq, InspectOptions{Now: now})
		if err != nil {
			t.Fatalf("Show(%d): %v", op.Seq, err)
		}
		if !reflect.DeepEqual(d.Op.Op(), op) {
			t.Fatalf("Show(%d).Op = %+v, want %+v", op.Seq, d.Op.Op(), op)
		}
		if d.FirstSeq != 1 || d.LastSeq != 16 || len(d.Workers) != 4 {
			t.Fatalf("Show(%d): %+v", op.Seq, d)
		}
		lacks := map[string]bool{}
		for _, w := range d.Workers {
			lacks[w.Name] = w.Lacks
			if w.Reason == "" {
				t.Fatalf("Show(%d): no reason for %+v", op.Seq, w)
			}
		}
		want := map[string]bool{"a": op.Seq > 10, "b": false, "c": true, "new": true}
		if !maps.Equal(lacks, want) {
			t.Fatalf("Show(%d) lacks %v, want %v", op.Seq, lacks, want)
		}
	}

	if _, err := j.Trim(5); err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{0, 4, 17, 1 << 40} {
		_, err := Show(j, workers, seq, InspectOptions{})
		var ie *InputError
		if !errors.Is(err, ErrSeqRange) || !errors.As(err, &ie) || ie.Param != "seq" {
			t.Fatalf("Show(%d): %v, want an InputError on seq wrapping ErrSeqRange", seq, err)
		}
		msg := err.Error()
		for _, s := range []string{"#" + strconv.FormatUint(seq, 10), "#5 to #16"} {
			if !strings.Contains(msg, s) {
				t.Errorf("Show(%d): %q does not name %q", seq, msg, s)
			}
		}
	}
	if _, err := Show(j, workers, 5, InspectOptions{}); err != nil {
		t.Fatalf("Show(first seq): %v", err)
	}
	empty, _ := newTestJournal(t)
	if _, err := Show(empty, workers, 1, InspectOptions{}); !errors.Is(err, ErrSeqRange) || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("Show on an empty journal: %v", err)
	}
}

func TestInspectInputErrors(t *testing.T) {
	j, _, _ := inspectJournal(t)
	workers := []string{"a", "b"}
	check := func(err error, param string) {
		t.Helper()
		var ie *InputError
		if !errors.As(err, &ie) || ie.Param != param || !strings.Contains(err.Error(), param+": ") {
			t.Fatalf("error %v, want an InputError on %s", err, param)
		}
	}
	_, err := Inspect(j, workers, InspectOptions{Worker: "zz"})
	check(err, "worker")
	if !strings.Contains(err.Error(), `"zz"`) || !strings.Contains(err.Error(), "a, b") {
		t.Fatalf("unknown worker error %q does not name it and the known ones", err)
	}
	_, err = List(j, workers, InspectOptions{Worker: "zz"})
	check(err, "worker")
	_, err = Inspect(j, workers, InspectOptions{Path: "a/[b"})
	check(err, "path")
	_, err = List(j, workers, InspectOptions{Path: "["})
	check(err, "path")
	_, err = List(j, workers, InspectOptions{Limit: -1})
	check(err, "limit")
	_, err = List(j, workers, InspectOptions{Limit: MaxListLimit + 1})
	check(err, "limit")
	if MatchPath("[", Op{Path: "["}) {
		t.Fatal("a malformed glob matched")
	}
}

// TestEntryHasEveryOpField: show prints every field of Op, so Entry must
// carry each one (under the same name), and Op() must give it back.
func TestEntryHasEveryOpField(t *testing.T) {
	et := reflect.TypeFor[Entry]()
	ot := reflect.TypeFor[Op]()
	for i := range ot.NumField() {
		if f := ot.Field(i); !f.IsExported() {
			continue
		} else if _, ok := et.FieldByName(f.Name); !ok {
			t.Errorf("Entry lacks Op field %s", f.Name)
		}
	}
	for _, op := range kindOps() {
		op.Seq, op.Time = 7, inspectBase.UnixNano()+123
		if got := NewEntry(op, inspectBase).Op(); !reflect.DeepEqual(got, op) {
			t.Fatalf("NewEntry(%v).Op() = %+v", op, got)
		}
	}
	for k := KindInvalid; k <= kindEnd+1; k++ {
		if got := ParseKind(k.String()); got != k && !(k == KindInvalid && got == KindInvalid) {
			t.Fatalf("ParseKind(%q) = %v", k.String(), got)
		}
	}
}

// TestInspectReadOnlyLeavesJournalAlone: the journal tools' offline path,
// a read-only Open plus Inspect, List and Show, changes no byte of the
// journal directory.
func TestInspectReadOnlyLeavesJournalAlone(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "j")
	j, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, j, 50)
	if err := j.SetCursor("a", Cursor{Applied: 20}); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	before := fingerprint(t, dir)
	ro, err := Open(dir, Options{ReadOnly: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	workers := []string{"a", "b"}
	st, err := Inspect(ro, workers, InspectOptions{PageSize: 7})
	if err != nil || st.Workers[0].Pending != 30 || st.Workers[1].Pending != 50 {
		t.Fatalf("read-only Inspect: %+v, %v", st, err)
	}
	if l, err := List(ro, workers, InspectOptions{Worker: "a", Limit: 10}); err != nil || len(l.Entries) != 10 || l.More != 20 {
		t.Fatalf("read-only List: %+v, %v", l, err)
	}
	if _, err := Show(ro, workers, 30, InspectOptions{}); err != nil {
		t.Fatalf("read-only Show: %v", err)
	}
	if err := ro.Close(); err != nil {
		t.Fatal(err)
	}
	if after := fingerprint(t, dir); !maps.Equal(before, after) {
		t.Fatalf("inspecting changed the journal:\n%v\n%v", before, after)
	}
}
