package replicate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrorfs/mirrorfs/journal"
)

func workerDir(t testing.TB) string {
	d := filepath.Join(t.TempDir(), "worker")
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

func readWorker(t testing.TB, worker, p string) (string, bool) {
	b, err := os.ReadFile(filepath.Join(worker, p))
	if errors.Is(err, os.ErrNotExist) {
		return "", false
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b), true
}

func TestShipperFollowsJournal(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	s := newShipper(t, f, worker, nil, nil)
	start(t, s)
	waitSynced(t, s, f.j) // the initial copy of an empty store

	f.mkdir("d")
	f.mkdir("d/sub")
	f.writeFile("d/sub/x", "x1")
	f.writeFile("a", "a1")
	f.symlink("d/sub/x", "l")
	f.link("a", "d/a2")
	f.chmod("d/a2", 0o600)
	f.mkdir("gone")
	f.writeFile("gone/y", "y")
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)

	f.rename("d", "e")
	f.writeFile("e/sub/x", "x2 longer")
	f.writeFile("a", "a2") // rewrites the hard-linked file in place
	f.unlink("gone/y")
	f.rmdir("gone")
	f.exchange("l", "e/a2")
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)

	st := s.Status()
	if !st.Connected || st.Pending != 0 || st.Lag != 0 || st.Name != "w1" || st.Applied != f.j.LastSeq() {
		t.Errorf("status = %+v", st)
	}
	b, _ := json.Marshal(st)
	for _, key := range []string{`"name"`, `"connected"`, `"applied"`, `"pending"`, `"lag"`, `"bytes_sent"`, `"bytes_received"`, `"initial_copy"`} {
		if !strings.Contains(string(b), key) {
			t.Errorf("status JSON %s lacks %s", b, key)
		}
	}
}

// The worked example of the design: a write, the file renamed away, a new
// file at the old name.
func TestShipperWorkedExample(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.writeFile("a", "old a")
	s := newShipper(t, f, worker, nil, nil)
	stop := start(t, s)
	waitSynced(t, s, f.j)
	stop()

	id1 := f.writeOpen("a", "new content of id1")
	f.rename("a", "b")
	id2 := f.writeOpen("a", "id2")
	f.closeFile(id1)
	f.closeFile(id2)
	s = newShipper(t, f, worker, nil, nil)
	start(t, s)
	waitSynced(t, s, f.j)
	if got, _ := readWorker(t, worker, "b"); got != "new content of id1" {
		t.Errorf("b = %q", got)
	}
	if got, _ := readWorker(t, worker, "a"); got != "id2" {
		t.Errorf("a = %q", got)
	}
	compareTrees(t, f.store, worker, nil)
}

func TestShipperHoldsOpenFiles(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	s := startedShipper(t, f, worker, nil, nil)

	f.writeFile("old", "old content")
	waitSynced(t, s, f.j)
	before := f.j.LastSeq()
	id := f.writeOpen("new", "half written")
	idOld := f.writeOpen("old", "half")
	f.mkdir("other")
	f.writeFile("other/f", "ships")
	waitFor(t, "other/f", 5*time.Second, func() bool { _, ok := readWorker(t, worker, "other/f"); return ok })
	time.Sleep(20 * time.Millisecond)
	if _, ok := readWorker(t, worker, "new"); ok {
		t.Error("an open new file was shipped")
	}
	if got, _ := readWorker(t, worker, "old"); got != "old content" {
		t.Errorf("open old file shipped: %q", got)
	}
	if c := f.j.cursor("w1"); c.Applied != before {
		t.Errorf("durable cursor = %d, want %d (before the first held op)", c.Applied, before)
	}
	f.closeFile(id)
	waitFor(t, "new", 5*time.Second, func() bool { _, ok := readWorker(t, worker, "new"); return ok })
	// Now pinned just before the first op of old's write.
	waitFor(t, "the cursor to move to the held write of old", 5*time.Second, func() bool {
		return f.j.cursor("w1").Applied == before+2
	})
	time.Sleep(20 * time.Millisecond)
	if c := f.j.cursor("w1"); c.Applied != before+2 {
		t.Errorf("durable cursor = %d, want %d", c.Applied, before+2)
	}
	f.closeFile(idOld)
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
}

func TestShipperHoldOpenAge(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	s := startedShipper(t, f, worker, func(o *Options) { o.HoldOpen = 100 * time.Millisecond }, nil)
	f.writeOpen("log", "line 1\n")
	waitFor(t, "the log to ship after HoldOpen", 5*time.Second, func() bool {
		got, _ := readWorker(t, worker, "log")
		return got == "line 1\n"
	})
	waitSynced(t, s, f.j)
}

// A rename whose source the worker lost (drift) while it still has the
// destination's old file: the destination gets the store's new content,
// not left as it was.
func TestShipperRenameMendsLostSource(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.writeFile("a", "content of a")
	f.writeFile("b", "old b")
	s := startedShipper(t, f, worker, nil, nil)
	waitSynced(t, s, f.j)
	time.Sleep(storeAheadSlack + 50*time.Millisecond) // past the copy: not a replay
	f.must(os.Remove(filepath.Join(worker, "a")))     // drift
	f.rename("a", "b")
	waitSynced(t, s, f.j)
	if got, _ := readWorker(t, worker, "b"); got != "content of a" {
		t.Errorf("worker b = %q, want %q", got, "content of a")
	}
	compareTrees(t, f.store, worker, nil)
}

// A file with two hard links, written through one name that is then
// removed, or replaced by a rename (an editor's save over one of the
// links): the write reaches the worker's other name (by a comparison of
// the worker with the store: the journal does not name b after a's
// unlink), and later writes through the other name are not dropped as
// writes to a dead file. A chmod through the other name in the same batch
// must not put the new mtime on the old content before the comparison
// (same size: only the mtime tells them apart).
func TestShipperWriteThenUnlinkOneHardLink(t *testing.T) {
	for name, change := range map[string]func(f *fsim){
		"unlink":      func(f *fsim) { f.writeFile("a", "new content"); f.unlink("a") },
		"rename over": func(f *fsim) { f.writeFile("a", "new content"); f.rename("x", "a") },
		"chmod the other name, same size": func(f *fsim) {
			f.chmod("b", 0o700)
			f.writeFile("a", "new content"[:3]) // as long as "old"
			f.unlink("a")
		},
		"unlink, then chmod the other name, same size": func(f *fsim) {
			f.writeFile("a", "new content"[:3])
			f.unlink("a")
			f.chmod("b", 0o700)
		},
		"chmod, then unlink":       func(f *fsim) { f.chmod("a", 0o600); f.unlink("a") },
		"utimes, then rename over": func(f *fsim) { f.chtimes("a", time.Unix(1_600_000_000, 0)); f.rename("x", "a") },
	} {
		t.Run(name, func(t *testing.T) {
			f := newFsim(t)
			worker := workerDir(t)
			f.writeFile("a", "old")
			f.link("a", "b")
			f.writeFile("x", "replacement")
			caughtUpThenStopped(t, f, worker, nil, nil)
			compareTrees(t, f.store, worker, nil)

			change(f) // a written in place: the inode b shares
			data, err := os.ReadFile(f.abs("b"))
			if err != nil {
				t.Fatal(err)
			}
			want := string(data)
			s := startedShipper(t, f, worker, nil, nil)
			waitFor(t, "the comparison after a lost its name", 10*time.Second, func() bool {
				got, _ := readWorker(t, worker, "b")
				return got == want
			})
			waitSynced(t, s, f.j)
			compareTrees(t, f.store, worker, nil)

			f.writeFile("b", "newer via b") // a later batch of the same run
			waitSynced(t, s, f.j)
			if got, _ := readWorker(t, worker, "b"); got != "newer via b" {
				t.Errorf("after a later write through b: worker b = %q, want %q", got, "newer via b")
			}
		})
	}
}

// A file written in place through d while it has another hard link c,
// whose name d the store replaces while the shipper sends it: c is still
// linked to what was sent. The shipper looked for the other links through
// the store's d after the send, found the new file there (one link), and
// c kept the old content for good.
func TestShipperLinkedFileReplacedDuringSend(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.writeFile("d", "version one")
	f.link("d", "c")
	caughtUpThenStopped(t, f, worker, nil, nil)

	f.writeFile("d", "VERSION TWO") // in place: c shares the inode
	var once atomic.Bool
	s := startedShipper(t, f, worker, nil, func(tr Transport) Transport {
		return &afterWrite{Transport: tr, after: func(p string) {
			if p == "d" && once.CompareAndSwap(false, true) {
				f.unlink("d")
				f.writeFile("d", "a new file d")
			}
		}}
	})
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
}

// A negative HoldOpen (batch.hold_open: 0) ships a file still open for
// writing at once.
func TestShipperHoldOpenNegativeNeverHolds(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	s := startedShipper(t, f, worker, func(o *Options) { o.HoldOpen = -1 }, nil)
	waitSynced(t, s, f.j) // the first full copy is done: the log goes by the journal
	f.writeOpen("log", "line 1\n")
	waitFor(t, "the open log to ship", 5*time.Second, func() bool {
		got, _ := readWorker(t, worker, "log")
		return got == "line 1\n"
	})
	waitSynced(t, s, f.j)
}

func TestShipperRetriesTransportFailures(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	var failures atomic.Int32
	var dials atomic.Int32
	wrap := func(tr Transport) Transport {
		dials.Add(1)
		return &mockTransport{Transport: tr, before: func(method, p string) error {
			if method == "WriteFileAtomic" && strings.HasPrefix(p, "f") && failures.Add(1) <= 3 {
				return errors.New("injected: connection lost")
			}
			return nil
		}}
	}
	s := startedShipper(t, f, worker, nil, wrap)
	f.mkdir("d")
	f.writeFile("f1", "one")
	f.rename("d", "e")
	f.writeFile("f2", "two")
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
	st := s.Status()
	if !strings.Contains(st.LastError, "injected") && st.LastErrorAt.IsZero() {
		t.Errorf("status has no error: %+v", st)
	}
	if dials.Load() < 2 {
		t.Errorf("dialled %d times; a failure should reconnect", dials.Load())
	}
}

// A dead worker does not stop a healthy one.
func TestShipperIsolation(t *testing.T) {
	f := newFsim(t)
	good := workerDir(t)
	bad := newShipper(t, f, good, func(o *Options) {
		o.Name = "dead"
		o.Dial = func(ctx context.Context) (Transport, error) { return nil, errors.New("connection refused") }
	}, nil)
	start(t, bad)
	s := newShipper(t, f, good, nil, nil)
	start(t, s)
	f.writeFile("x", "x")
	waitSynced(t, s, f.j)
	if st := bad.Status(); st.Connected || !strings.Contains(st.LastError, "refused") || st.Pending == 0 {
		t.Errorf("dead worker status = %+v", st)
	}
}

// Replaying ops the worker already has converges, including a rename whose
// source name was taken by a newer file (worker state is ahead of the op).
func TestShipperIdempotentReplay(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.writeFile("a", "first a")
	f.mkdir("d")
	f.writeFile("d/x", "x")
	s := newShipper(t, f, worker, nil, nil)
	stop := start(t, s)
	waitSynced(t, s, f.j)
	base := f.j.LastSeq()

	f.rename("a", "b")
	f.writeFile("a", "second a")
	f.rename("d", "e")
	f.mkdir("d")
	f.writeFile("d/y", "y")
	f.link("b", "c")
	f.exchange("a", "c")
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
	stop()

	replaySince(t, f, worker, base, 1, 3, 1000)
}

// The worker drifted: files missing, extra files, wrong types. Ops touching
// those paths converge them.
func TestShipperDrift(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	s := newShipper(t, f, worker, nil, nil)
	stop := start(t, s)
	f.mkdir("d")
	f.writeFile("d/x", "x")
	f.writeFile("r", "r")
	f.mkdir("e")
	waitSynced(t, s, f.j)
	stop()
	os.WriteFile(filepath.Join(worker, "d", "extra"), []byte("drift"), 0o644)
	os.Remove(filepath.Join(worker, "r"))
	os.Remove(filepath.Join(worker, "e"))
	os.WriteFile(filepath.Join(worker, "e"), []byte("not a dir"), 0o644)

	f.unlink("d/x")
	f.rmdir("d")        // worker has an extra file in it
	f.rename("r", "r2") // missing on the worker
	f.writeFile("e/new", "n")
	s = newShipper(t, f, worker, nil, nil)
	start(t, s)
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
}

// Saves through an excluded temp file are sent without a look at the
// worker first; where the worker drifted (a directory where the page goes,
// a missing parent directory, a file where a parent directory should be)
// the send fails and is mended and done again. Small pages (one request)
// and large ones (a stream) alike.
func TestShipperSaveMendsDrift(t *testing.T) {
	for _, size := range []int{100, 200 << 10} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			f := newFsim(t)
			worker := workerDir(t)
			f.mkdir("a")
			f.mkdir("b")
			f.mkdir("c")
			f.mkdir("c/d")
			for _, p := range []string{"a/page", "b/page", "c/d/page"} {
				f.writeFile(p, "old")
			}
			caughtUpThenStopped(t, f, worker, func(o *Options) { o.Exclude = []string{"*.swp"} }, nil)
			// a/page is a directory on the worker, b is missing, c is a file.
			f.must(os.Remove(filepath.Join(worker, "a", "page")))
			f.must(os.MkdirAll(filepath.Join(worker, "a", "page", "sub"), 0o755))
			f.must(os.RemoveAll(filepath.Join(worker, "b")))
			f.must(os.RemoveAll(filepath.Join(worker, "c")))
			f.must(os.WriteFile(filepath.Join(worker, "c"), []byte("not a dir"), 0o644))

			content := strings.Repeat("n", size)
			for _, p := range []string{"a/page", "b/page", "c/d/page"} {
				f.writeFile(p+".swp", content)
				f.rename(p+".swp", p)
			}
			startedShipper(t, f, worker, func(o *Options) { o.Exclude = []string{"*.swp"} }, nil)
			e, _ := NewExcluder([]string{"*.swp"})
			compareTrees(t, f.store, worker, e)
		})
	}
}

// An exchange of a directory and a file under a directory-only pattern:
// each name is judged by the entry it holds. After exchanging the
// excluded directory cache with the file f, cache is a file (mirrored)
// and f a directory (mirrored, with what cache held); both used to be
// judged as directories, and the file cache never reached the worker. A
// file named cache exchanged with a directory d leaves the worker's file
// cache (now an excluded directory in the store) removed, and d a file.
func TestShipperExchangeUnderDirectoryOnlyExclude(t *testing.T) {
	dirCache := func(f *fsim) {
		f.mkdir("cache")
		f.writeFile("cache/x", "cached")
		f.writeFile("f", "content of f")
	}
	fileCache := func(f *fsim) {
		f.writeFile("cache", "a file named cache")
		f.mkdir("d")
		f.writeFile("d/x", "in d")
	}
	for _, tc := range []struct {
		setup func(f *fsim)
		a, b  string
	}{{dirCache, "cache", "f"}, {dirCache, "f", "cache"}, {fileCache, "cache", "d"}, {fileCache, "d", "cache"}} {
		t.Run(tc.a+"-"+tc.b, func(t *testing.T) {
			f := newFsim(t)
			worker := workerDir(t)
			excl := []string{"cache/"}
			tc.setup(f)
			caughtUpThenStopped(t, f, worker, func(o *Options) { o.Exclude = excl }, nil)

			f.exchange(tc.a, tc.b)
			startedShipper(t, f, worker, func(o *Options) { o.Exclude = excl }, nil)
			e, _ := NewExcluder(excl)
			compareTrees(t, f.store, worker, e)
		})
	}
}

func TestShipperExcludes(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	excl := []string{"*.tmp", "/cache/"}
	s := startedShipper(t, f, worker, func(o *Options) { o.Exclude = excl }, nil)
	f.mkdir("cache")
	f.writeFile("cache/c", "c")
	f.writeFile("a.tmp", "temp")
	f.writeFile("keep", "k")
	waitSynced(t, s, f.j)
	if _, ok := readWorker(t, worker, "cache/c"); ok {
		t.Error("excluded directory shipped")
	}
	if _, ok := readWorker(t, worker, "a.tmp"); ok {
		t.Error("excluded file shipped")
	}
	f.rename("a.tmp", "a")       // excluded -> included: new content
	f.rename("keep", "keep.tmp") // included -> excluded: deleted
	f.rename("cache", "public")  // excluded dir -> included
	waitSynced(t, s, f.j)
	e, _ := NewExcluder(excl)
	compareTrees(t, f.store, worker, e)
	if _, ok := readWorker(t, worker, "keep"); ok {
		t.Error("a file renamed into an excluded path stayed on the worker")
	}
	if got, _ := readWorker(t, worker, "public/c"); got != "c" {
		t.Errorf("public/c = %q", got)
	}
}

func TestShipperInitialCopy(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	// Store content made before the worker existed (not journaled).
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(f.store, "d/sub"), 0o750))
	must(os.WriteFile(filepath.Join(f.store, "d/sub/f"), []byte("f"), 0o640))
	must(os.WriteFile(filepath.Join(f.store, "same"), []byte("same"), 0o644))
	must(os.WriteFile(filepath.Join(f.store, "changed"), []byte("new"), 0o644))
	must(os.WriteFile(filepath.Join(f.store, "moved-later"), []byte("m"), 0o644))
	must(os.Link(filepath.Join(f.store, "same"), filepath.Join(f.store, "d/same-link")))
	must(os.Symlink("d/sub", filepath.Join(f.store, "sl")))
	must(os.MkdirAll(filepath.Join(f.store, "node_modules/x"), 0o755))
	// The worker has leftovers.
	must(os.MkdirAll(filepath.Join(worker, "stale/deep"), 0o755))
	must(os.WriteFile(filepath.Join(worker, "stale/deep/z"), []byte("z"), 0o644))
	must(os.WriteFile(filepath.Join(worker, "changed"), []byte("old"), 0o644))
	must(os.Chtimes(filepath.Join(worker, "changed"), time.Unix(1e9, 0), time.Unix(1e9, 0)))
	must(os.WriteFile(filepath.Join(worker, TempPrefix+"123"), []byte("t"), 0o600))
	must(os.WriteFile(filepath.Join(worker, "sl"), []byte("should be a symlink"), 0o644))
	must(os.MkdirAll(filepath.Join(worker, "node_modules/worker-only"), 0o755))
	f.writeFile("journaled-before", "jb")

	// A change made during the copy: once the copy wrote "changed", move
	// a file it already copied and write another one.
	var once atomic.Bool
	wrap := func(tr Transport) Transport {
		return &mockTransport{Transport: tr, before: func(method, p string) error {
			if method == "WriteFileAtomic" && p == "changed" && once.CompareAndSwap(false, true) {
				f.rename("moved-later", "d/moved")
				f.writeFile("same", "rewritten during the copy")
			}
			return nil
		}}
	}
	var sawInitial atomic.Bool
	s := newShipper(t, f, worker, func(o *Options) { o.Exclude = []string{"node_modules/"} }, wrap)
	go func() {
		for range 200 {
			if s.Status().InitialCopy {
				sawInitial.Store(true)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	start(t, s)
	waitSynced(t, s, f.j)
	e, _ := NewExcluder([]string{"node_modules/"})
	compareTrees(t, f.store, worker, e)
	if _, err := os.Stat(filepath.Join(worker, "node_modules/worker-only")); err != nil {
		t.Errorf("an excluded worker path was touched: %v", err)
	}
	if sets := f.j.sets; len(sets) < 2 || !sets[0].FullSync || sets[0].Applied != 3 {
		t.Errorf("cursor sets = %+v: the copy must be marked before it starts", sets)
	}
	if !once.Load() {
		t.Error("the concurrent change was not made")
	}
}

func TestShipperFullSyncAfterRetention(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.writeFile("a", "a")
	f.writeFile("b", "b")
	f.j.cursors["w1"] = journal.Cursor{Applied: 1}
	// Trim the journal past the cursor.
	f.j.ops = f.j.ops[3:]
	f.j.first = 4
	startedShipper(t, f, worker, nil, nil)
	compareTrees(t, f.store, worker, nil)
}

// Rule 3: the store file moved before its op reached the journal.
func TestShipperStoreAheadOfJournal(t *testing.T) {
	for _, delay := range []time.Duration{20 * time.Millisecond, 400 * time.Millisecond} {
		t.Run(delay.String(), func(t *testing.T) {
			f := newFsim(t)
			worker := workerDir(t)
			f.writeFile("a", "old")
			s := startedShipper(t, f, worker, nil, nil)

			// Write a, then rename it in the store; the rename's op comes late.
			id := f.writeOpen("a", "new content")
			op := f.renameStore("a", "b")
			f.closeFile(id)
			time.Sleep(delay)
			f.j.Append(op)
			waitSynced(t, s, f.j)
			compareTrees(t, f.store, worker, nil)
			if got, _ := readWorker(t, worker, "b"); got != "new content" {
				t.Errorf("b = %q", got)
			}
		})
	}
}

// Rule 3 with a file replaced (same path, another inode) and then removed.
func TestShipperStoreReplacedAndRemoved(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	s := startedShipper(t, f, worker, nil, nil)
	id := f.writeFile("a", "v1")
	// A new file renamed over a, and a deleted, before the ops land.
	f.must(os.WriteFile(f.abs("t"), []byte("v2"), 0o644))
	idT := f.ino("t")
	f.must(os.Rename(f.abs("t"), f.abs("a")))
	time.Sleep(100 * time.Millisecond)
	f.j.Append(journal.Op{Kind: journal.KindCreate, File: idT, Path: "t"})
	f.j.Append(journal.Op{Kind: journal.KindWrite, File: idT, Path: "t", Length: 2})
	f.j.Append(journal.Op{Kind: journal.KindClose, File: idT})
	f.j.Append(journal.Op{Kind: journal.KindRename, File: idT, Path: "t", NewPath: "a"})
	_ = id
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
}

func TestShipperOwnerRefused(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	var chowns atomic.Int32
	wrap := func(tr Transport) Transport {
		return &ownerRefusing{tr, &chowns}
	}
	s := newShipper(t, f, worker, nil, wrap)
	start(t, s)
	f.writeFile("a", "a")
	f.writeFile("b", "b")
	waitSynced(t, s, f.j)
	if _, ok := readWorker(t, worker, "b"); !ok {
		t.Error("b not shipped")
	}
	if n := chowns.Load(); n != 1 {
		t.Errorf("%d writes asked for an owner after the first refusal", n)
	}
}

// ownerRefusing acts like a worker where the login user may not chown.
type ownerRefusing struct {
	Transport
	n *atomic.Int32
}

func (o *ownerRefusing) WriteFileAtomic(ctx context.Context, p string, r io.Reader, a Attrs) error {
	owner := a.UID >= 0 || a.GID >= 0
	a.UID, a.GID = -1, -1
	if err := o.Transport.WriteFileAtomic(ctx, p, r, a); err != nil {
		return err
	}
	if owner {
		o.n.Add(1)
		return ErrOwner
	}
	return nil
}

func TestBackoff(t *testing.T) {
	f := newFsim(t)
	s := newShipper(t, f, t.TempDir(), func(o *Options) { o.RetryMin, o.RetryMax = time.Second, 8*time.Second }, nil)
	for attempt, want := range []time.Duration{1, 2, 4, 8, 8, 8} {
		s.attempt = attempt
		want *= time.Second
		for range 20 {
			if d := s.backoff(); d < want*8/10 || d > want*12/10 {
				t.Fatalf("attempt %d: backoff %v, want %v ±20%%", attempt, d, want)
			}
		}
	}
}

// Rewriting a hard-linked file makes its other names links again on the
// worker (link to a temp name, rename over): the directories of those
// names change on the worker, and get their store mtime back.
func TestShipperRelinkRestoresDirTimes(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	s := startedShipper(t, f, worker, nil, nil)
	f.mkdir("r1")
	f.mkdir("r2")
	f.writeFile("shared", "v1")
	f.link("shared", "r1/shared")
	f.link("shared", "r2/shared")
	old := time.Unix(1_500_000_000, 0)
	f.chtimes("r1", old)
	f.chtimes("r2", old)
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)

	f.writeFile("r2/shared", "v2, written through one name")
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
	if fi, err := os.Stat(filepath.Join(worker, "r1")); err != nil || !fi.ModTime().Equal(old) {
		t.Errorf("worker r1 mtime = %v (%v), want %v", fi.ModTime(), err, old)
	}
}

// TestShipperRelinkMendsMissingParent: a hard-linked file written through
// one name is linked again at its other names on the worker; a name whose
// directory the worker lacks (drift) gets that directory back, as a file
// sent to a missing directory does. The link used to fail on every retry,
// and the worker got no update any more.
func TestShipperRelinkMendsMissingParent(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.mkdir("d")
	f.writeFile("a", "old")
	f.link("a", "d/b")
	caughtUpThenStopped(t, f, worker, nil, nil)
	f.must(os.RemoveAll(filepath.Join(worker, "d"))) // drift

	f.writeFile("a", "new content")
	startedShipper(t, f, worker, nil, nil)
	compareTrees(t, f.store, worker, nil) // with d/b linked to a
}

// A worker that was unreachable gets the ops journaled meanwhile as they
// are: a rename is a rename (the worker keeps its file), unchanged files
// are not sent again. Only the batch whose apply failed is suspect.
func TestShipperOutageKeepsRenames(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	for i := range 5 {
		f.writeFile(fmt.Sprintf("stable%d", i), fmt.Sprintf("stable %d", i))
	}
	var down atomic.Bool
	var writes atomic.Int32
	// The injected failures are counted: the shipper's LastError shows
	// each only until the next retry, a few milliseconds, too briefly for
	// a loaded machine's poll.
	var lost, refused atomic.Int32
	s := newShipper(t, f, worker, func(o *Options) {
		o.Dial = func(ctx context.Context) (Transport, error) {
			if down.Load() {
				refused.Add(1)
				return nil, errors.New("injected: connection refused")
			}
			l, err := NewLocal(worker)
			if err != nil {
				return nil, err
			}
			return &mockTransport{Transport: l, before: func(method, p string) error {
				if down.Load() {
					lost.Add(1)
					return errors.New("injected: connection lost")
				}
				if method == "WriteFileAtomic" {
					writes.Add(1)
				}
				return nil
			}}, nil
		}
	}, nil)
	start(t, s) // a full copy: the files were journaled before the worker existed
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
	// Ops stamped right after a copy may describe changes the copy saw
	// (see storeAhead): this test is about the ones made later.
	time.Sleep(storeAheadSlack + 50*time.Millisecond)
	before := map[string]uint64{}
	for i := range 5 {
		p := fmt.Sprintf("stable%d", i)
		before[p] = workerIno(t, worker, p)
	}

	down.Store(true)
	f.writeFile("during0", "written while the worker was down") // its batch fails
	waitFor(t, "the batch to fail", 5*time.Second, func() bool { return lost.Load() > 0 })
	f.rename("stable0", "renamed")
	f.unlink("stable1")
	f.writeFile("during1", "also written while down")
	seen := refused.Load()
	waitFor(t, "a failed connect", 5*time.Second, func() bool { return refused.Load() > seen })
	writes.Store(0)
	down.Store(false)
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
	if got := workerIno(t, worker, "renamed"); got != before["stable0"] {
		t.Errorf("renamed was sent again instead of renamed (inode %d, was %d)", got, before["stable0"])
	}
	for _, p := range []string{"stable2", "stable3", "stable4"} {
		if got := workerIno(t, worker, p); got != before[p] {
			t.Errorf("%s was sent again", p)
		}
	}
	if n := writes.Load(); n != 2 {
		t.Errorf("%d files sent after the outage, want 2 (during0, during1)", n)
	}
}

// A rename replayed after a restart, already applied: the destination
// looks like the store's (size and mtime), so it is not sent again.
func TestShipperReplayedRenameNotResent(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.writeFile("a", "content of a")
	s := newShipper(t, f, worker, nil, nil)
	stop := start(t, s)
	waitSynced(t, s, f.j)
	base := f.j.LastSeq()
	f.rename("a", "b")
	f.writeFile("other", "other")
	waitSynced(t, s, f.j)
	stop()
	ino := workerIno(t, worker, "b")

	// Crash before the cursor was saved: the batch is applied again.
	f.j.cursors["w1"] = journal.Cursor{Applied: base}
	s = newShipper(t, f, worker, nil, nil)
	start(t, s)
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
	if got := workerIno(t, worker, "b"); got != ino {
		t.Errorf("b was sent again on replay (inode %d, was %d)", got, ino)
	}
}

// TestShipperReplayAfterDirBecameSymlink: a deploy replaces a directory by
// a symlink (`rm -rf current; ln -s releases/2 current`), and its ops are
// applied again (kill -9 before the cursor was saved). The worker's
// current is a symlink by then, so the unlink, rename and link ops of
// paths below it find nothing to do there: they are no entries of the
// worker's tree (nothing is followed through the symlink). They used to
// fail on every retry, and the worker got no update any more.
func TestShipperReplayAfterDirBecameSymlink(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.mkdir("releases")
	f.mkdir("releases/2")
	f.writeFile("releases/2/index.html", "v2")
	f.mkdir("current")
	f.writeFile("current/index.html", "v1")
	f.writeFile("current/a.css", "css")
	s := newShipper(t, f, worker, nil, nil)
	stop := start(t, s)
	waitSynced(t, s, f.j)
	base := f.j.LastSeq()

	f.rename("current/a.css", "current/b.css")
	f.link("current/index.html", "current/copy.html")
	for _, p := range []string{"current/index.html", "current/b.css", "current/copy.html"} {
		f.unlink(p)
	}
	f.rmdir("current")
	f.symlink("releases/2", "current")
	waitSynced(t, s, f.j)
	stop()
	compareTrees(t, f.store, worker, nil)

	replaySince(t, f, worker, base, 1, 1000) // compares the symlink too
}

// An exchange replayed after the tree moved on (kill -9 before the cursor
// was saved, a dropped connection): one of its names is below a directory
// the worker no longer has. Both names converge from the store instead of
// failing the batch on every retry, whichever name the worker lacks.
func TestShipperReplayExchangeWhoseParentWent(t *testing.T) {
	for name, swap := range map[string]func(f *fsim){
		"first name gone":  func(f *fsim) { f.exchange("b/y", "a") },
		"second name gone": func(f *fsim) { f.exchange("a", "b/y") },
	} {
		t.Run(name, func(t *testing.T) {
			f := newFsim(t)
			worker := workerDir(t)
			f.mkdir("b")
			f.writeFile("b/y", "y")
			f.writeFile("a", "a")
			caughtUpThenStopped(t, f, worker, nil, nil)
			base := f.j.LastSeq()

			swap(f)
			f.unlink("a")
			f.rename("b", "a") // a is the directory now, b is gone
			caughtUpThenStopped(t, f, worker, nil, nil)
			compareTrees(t, f.store, worker, nil)

			replaySince(t, f, worker, base, 1, 1000)
		})
	}
}

// TestShipperConvergeBelowStoreSymlink: a path converged from the store
// after a batch's steps (here the destination of a rename whose source the
// worker lacked; a rename replayed or applied right after a connect is
// converged the same way) that the batch then put below a symlink is
// missing in the store, not the file at the symlink's target: the deploy
// renamed current/a.css, then swapped current for a symlink to releases/2,
// which has a b.css too. The worker used to get that b.css at
// current/b.css, its symlink current replaced by a directory.
func TestShipperConvergeBelowStoreSymlink(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.mkdir("releases")
	f.mkdir("releases/2")
	f.writeFile("releases/2/b.css", "css 2")
	f.mkdir("current")
	f.writeFile("current/a.css", "css 1")
	s := startedShipper(t, f, worker, nil, nil)
	f.must(os.Remove(filepath.Join(worker, "current", "a.css"))) // drift

	// One batch: the deploy's calls come within the batch delay.
	ren := f.renameStore("current/a.css", "current/b.css")
	ino := f.ino("current/b.css")
	f.must(os.Remove(f.abs("current/b.css")))
	f.must(os.Remove(f.abs("current")))
	f.must(os.Symlink("releases/2", f.abs("current")))
	f.j.appendAll(ren,
		journal.Op{Kind: journal.KindUnlink, File: ino, Path: "current/b.css"},
		journal.Op{Kind: journal.KindRmdir, Path: "current"},
		journal.Op{Kind: journal.KindSymlink, File: f.ino("current"), Path: "current", Target: "releases/2"})
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
}

// A batch that failed after part of it reached the worker is applied
// again with its renames suspect: here the rename's source name already
// holds the newer file on the worker.
func TestShipperFailedBatchIsSuspect(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.writeFile("a", "old a")
	var shipped, failed atomic.Bool
	wrap := func(tr Transport) Transport {
		return &mockTransport{Transport: tr, before: func(method, p string) error {
			if method == "WriteFileAtomic" && p == "a" {
				shipped.Store(true)
			}
			if method == "Lstat" && p == "" && shipped.Load() && failed.CompareAndSwap(false, true) {
				return errors.New("injected: connection lost")
			}
			return nil
		}}
	}
	s := startedShipper(t, f, worker, nil, wrap)
	ren := f.renameStore("a", "b")
	f.must(os.WriteFile(f.abs("a"), []byte("new a, longer"), 0o644))
	id := f.ino("a")
	f.j.appendAll(ren,
		journal.Op{Kind: journal.KindCreate, File: id, Path: "a", Mode: 0o100644},
		journal.Op{Kind: journal.KindWrite, File: id, Path: "a", Length: 13},
		journal.Op{Kind: journal.KindClose, File: id, Path: "a"})
	waitSynced(t, s, f.j)
	if !failed.Load() {
		t.Fatal("no failure injected")
	}
	compareTrees(t, f.store, worker, nil)
}

// After a crash in the middle of a transfer, the temp file it left is
// removed by the first batch after the restart, which re-applies the ops
// from the durable cursor (here pinned by a file still open).
func TestShipperSweepsTempLeftovers(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.mkdir("d")
	f.mkdir("quiet")
	var ct atomic.Pointer[countingTransport]
	wrap := func(tr Transport) Transport {
		c := &countingTransport{Transport: tr}
		ct.Store(c)
		return c
	}
	s := newShipper(t, f, worker, nil, wrap)
	stop := start(t, s)
	waitSynced(t, s, f.j)
	held := f.writeOpen("held", "still open")
	f.writeFile("x", "x")
	f.writeFile("d/y", "y")
	waitFor(t, "d/y", 5*time.Second, func() bool { _, ok := readWorker(t, worker, "d/y"); return ok })
	stop() // "kill -9" while a transfer was under way:
	for _, p := range []string{TempPrefix + "0123456789abcdef", "d/" + TempPrefix + "fedcba9876543210"} {
		if err := os.WriteFile(filepath.Join(worker, p), []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	s = newShipper(t, f, worker, nil, wrap)
	start(t, s)
	waitFor(t, "the replay", 5*time.Second, func() bool {
		c := ct.Load()
		return c != nil && c.get("WriteFileAtomic") >= 2
	})
	f.closeFile(held)
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
	c := ct.Load()
	if n := c.get("ReadDir"); n != 2 {
		t.Errorf("%d ReadDir calls after the restart, want 2 (the root and d)", n)
	}
	f.writeFile("d/z", "z")
	waitSynced(t, s, f.j)
	if n := c.get("ReadDir"); n != 2 {
		t.Errorf("later batches list directories too (%d ReadDir calls)", n)
	}
}

// A connection lost in the middle of a transfer leaves its temp file on
// the worker; the batch applied again after the reconnect removes it.
func TestShipperSweepsTempAfterFailure(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.mkdir("d")
	var failed atomic.Bool
	wrap := func(tr Transport) Transport {
		l := &leavingTemp{worker: worker, failed: &failed}
		l.mockTransport = &mockTransport{Transport: tr, before: func(string, string) error {
			if l.dead.Load() {
				return errors.New("injected: connection lost")
			}
			return nil
		}}
		return l
	}
	s := startedShipper(t, f, worker, nil, wrap)
	f.writeFile("d/x", "x")
	waitSynced(t, s, f.j)
	if !failed.Load() {
		t.Fatal("no failure injected")
	}
	compareTrees(t, f.store, worker, nil)
}

// leavingTemp loses the connection in the middle of the first write of
// d/x: the temp file stays, and every later request fails.
type leavingTemp struct {
	*mockTransport
	worker string
	failed *atomic.Bool
	dead   atomic.Bool
}

func (l *leavingTemp) WriteFileAtomic(ctx context.Context, p string, r io.Reader, a Attrs) error {
	if p == "d/x" && l.failed.CompareAndSwap(false, true) {
		tmp := filepath.Join(l.worker, "d", TempName())
		if err := os.WriteFile(tmp, []byte("half"), 0o600); err != nil {
			return err
		}
		l.dead.Store(true)
		return errors.New("injected: connection lost")
	}
	return l.mockTransport.WriteFileAtomic(ctx, p, r, a)
}

// A full copy does not ship a file a writer has open: it ships when its
// Close arrives, though its writes were journaled before the copy.
func TestShipperInitialCopySkipsOpenFiles(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	id := f.writeOpen("upload", "half written")
	f.writeFile("done", "done")
	var open atomic.Bool
	open.Store(true)
	s := newShipper(t, f, worker, func(o *Options) {
		o.OpenForWrite = func(ino uint64) bool { return ino == id && open.Load() }
	}, nil)
	start(t, s)
	waitFor(t, "the full copy", 5*time.Second, func() bool {
		_, ok := readWorker(t, worker, "done")
		return ok && !s.Status().InitialCopy
	})
	time.Sleep(20 * time.Millisecond)
	if _, ok := readWorker(t, worker, "upload"); ok {
		t.Fatal("the full copy shipped a file open for writing")
	}
	f.must(os.WriteFile(f.abs("upload"), []byte("completely written"), 0o644))
	open.Store(false)
	f.closePath(id, "upload")
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
}

// A file a full copy skipped while it was open, whose writer goes on
// without a Close (a log), ships after HoldOpen like any open file.
func TestShipperInitialCopyHeldFileShipsAfterHoldOpen(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.must(os.WriteFile(f.abs("log"), []byte("line 1\n"), 0o644))
	id := f.ino("log")
	s := newShipper(t, f, worker, func(o *Options) {
		o.HoldOpen = 200 * time.Millisecond
		o.OpenForWrite = func(ino uint64) bool { return ino == id }
	}, nil)
	start(t, s)
	waitFor(t, "the log to ship after HoldOpen", 5*time.Second, func() bool {
		got, _ := readWorker(t, worker, "log")
		return got == "line 1\n"
	})
}

// While a new worker gets its full copy, the status does not show it as
// caught up.
func TestShipperStatusDuringInitialCopy(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.writeFile("a", "a")
	f.writeFile("b", "b")
	release := make(chan struct{})
	var once atomic.Bool
	wrap := func(tr Transport) Transport {
		return &mockTransport{Transport: tr, before: func(method, p string) error {
			if method == "WriteFileAtomic" && once.CompareAndSwap(false, true) {
				<-release
			}
			return nil
		}}
	}
	s := newShipper(t, f, worker, nil, wrap)
	start(t, s)
	waitFor(t, "the copy to start", 5*time.Second, func() bool { return once.Load() })
	time.Sleep(10 * time.Millisecond)
	st := s.Status()
	close(release)
	if !st.InitialCopy || st.Applied != 0 || st.Pending != f.j.LastSeq() || st.Lag <= 0 {
		t.Errorf("status during the initial copy = %+v, want Applied 0, Pending %d, a lag", st, f.j.LastSeq())
	}
	waitSynced(t, s, f.j)
	if st := s.Status(); st.Pending != 0 || st.Applied != f.j.LastSeq() {
		t.Errorf("status after the copy = %+v", st)
	}
}

// rsync's pattern: a temp file written and closed, then chmod, utimes and
// rename. When the batch with the setattrs is applied after the store
// already renamed the file, copying the temp name's attributes finds
// nothing; the rename that follows in a later batch must still bring the
// mode and mtime.
func TestShipperSetattrBeforeRenameInLaterBatch(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.mkdir("d")
	s := startedShipper(t, f, worker, nil, nil)
	// Ops stamped after the initial copy plus its slack are not suspect
	// (not converged from the store as possible replays).
	time.Sleep(storeAheadSlack + 50*time.Millisecond)

	id := f.writeFile("d/.x.tmp", "content")
	f.must(os.Chmod(f.abs("d/.x.tmp"), 0o600))
	f.j.Append(journal.Op{Kind: journal.KindSetattr, File: id, Path: "d/.x.tmp", Mask: journal.AttrMode, Mode: 0o600})
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)

	// The store moves ahead: chmod, utimes and rename all happened, but
	// the shipper reads only the setattrs in its next batch.
	tm := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	f.must(os.Chmod(f.abs("d/.x.tmp"), 0o644))
	f.must(os.Chtimes(f.abs("d/.x.tmp"), tm, tm))
	f.must(os.Rename(f.abs("d/.x.tmp"), f.abs("d/x")))
	f.j.Append(journal.Op{Kind: journal.KindSetattr, File: id, Path: "d/.x.tmp", Mask: journal.AttrMode, Mode: 0o644})
	f.j.Append(journal.Op{Kind: journal.KindSetattr, File: id, Path: "d/.x.tmp",
		Mask: journal.AttrAtime | journal.AttrMtime, Atime: tm.UnixNano(), Mtime: tm.UnixNano()})
	waitSynced(t, s, f.j)
	f.j.Append(journal.Op{Kind: journal.KindRename, File: id, Path: "d/.x.tmp", NewPath: "d/x"})
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
}

// The build-tool pattern: a tree written under a temp name, then renamed
// over the live one. When a batch copies the attributes of a directory of
// the tree after the store already renamed it, they are lost unless the
// next batch, with the rename, copies them at the new name.
func TestShipperLostAttrsFollowRename(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.mkdir("tmp")
	f.mkdir("tmp/sub")
	f.mkdir("tmp/sub/deep")
	s := startedShipper(t, f, worker, nil, nil)
	time.Sleep(storeAheadSlack + 50*time.Millisecond) // not suspect: see above

	tm := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	tm2 := tm.Add(time.Hour)
	f.must(os.Chtimes(f.abs("tmp/sub/deep"), tm, tm))
	f.must(os.Chmod(f.abs("tmp/sub"), 0o750))
	f.must(os.Chtimes(f.abs("tmp/sub"), tm2, tm2))
	f.must(os.Rename(f.abs("tmp"), f.abs("dist")))
	f.j.Append(journal.Op{Kind: journal.KindSetattr, Path: "tmp/sub/deep",
		Mask: journal.AttrAtime | journal.AttrMtime, Atime: tm.UnixNano(), Mtime: tm.UnixNano()})
	f.j.Append(journal.Op{Kind: journal.KindSetattr, Path: "tmp/sub", Mask: journal.AttrMode, Mode: 0o40750})
	f.j.Append(journal.Op{Kind: journal.KindSetattr, Path: "tmp/sub",
		Mask: journal.AttrAtime | journal.AttrMtime, Atime: tm2.UnixNano(), Mtime: tm2.UnixNano()})
	waitSynced(t, s, f.j)
	f.j.Append(journal.Op{Kind: journal.KindRename, Path: "tmp", NewPath: "dist"})
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
}

// A refresh lists a symlink, then the store replaces it with a file (an
// exchange, a rename over it) before the refresh reads its target: the
// store moved ahead, which is no error (the op follows in the journal).
// It used to fail the whole batch with "readlinkat: invalid argument" and
// drop the connection.
func TestSyncSymlinkReplacedInStore(t *testing.T) {
	f := newFsim(t)
	s := newShipper(t, f, workerDir(t), nil, nil)
	other := t.TempDir()
	f.must(os.Symlink("x", filepath.Join(other, "l")))
	sfi, err := os.Lstat(filepath.Join(other, "l")) // what the listing saw
	f.must(err)
	f.must(os.WriteFile(f.abs("l"), []byte("now a file"), 0o644))
	if err := s.newSyncer(nil).syncEntry(t.Context(), "l", sfi, nil); err != nil {
		t.Fatalf("syncEntry of a symlink the store replaced by a file: %v", err)
	}
}

// A file the full copy is sending changes by an op that ships no data (a
// chmod through another hard link, journaled after the copy started): the
// copy sends it again instead of leaving it to the journal, and when it
// keeps changing, the copy is done again.
func TestShipperFullCopyResendsFileChangedDuringSend(t *testing.T) {
	for _, changes := range []int32{1, sendAttempts} {
		t.Run(fmt.Sprint(changes), func(t *testing.T) {
			f := newFsim(t)
			worker := workerDir(t)
			f.mkdir("d")
			f.writeFile("a", "a1")
			f.link("a", "d/a2")
			var sends atomic.Int32
			wrap := func(tr Transport) Transport {
				return &mockTransport{Transport: tr, before: func(method, p string) error {
					if method == "WriteFileAtomic" && p == "a" {
						if n := sends.Add(1); n <= changes {
							// Past the ctime's granularity, so that the
							// change shows while "a" is being read.
							time.Sleep(20 * time.Millisecond)
							f.chmod("d/a2", os.FileMode(0o600|n%2*0o040))
						}
					}
					return nil
				}}
			}
			startedShipper(t, f, worker, nil, wrap)
			compareTrees(t, f.store, worker, nil)
			if n := sends.Load(); n != changes+1 {
				t.Errorf("a was sent %d times, want %d", n, changes+1)
			}
		})
	}
}

// A file whose Close the plan saw but that a writer opened again before
// it shipped (a rewrite with O_TRUNC) is not shipped in the making: it
// ships after its next Close. Found by TestNoTornFiles: a worker showed
// the truncated, empty file between two versions.
func TestShipperHoldsFileReopenedForWriting(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.writeFile("warm", "up")
	var reopened atomic.Bool
	var id atomic.Uint64 // read by the shipper's goroutine
	s := newShipper(t, f, worker, func(o *Options) {
		o.OpenForWrite = func(ino uint64) bool { return ino == id.Load() && reopened.Load() }
	}, nil)
	start(t, s)
	waitSynced(t, s, f.j)

	// The next writer opens the file before the Close is journaled, so
	// that no batch can see the Close with the file closed.
	id.Store(f.writeOpen("big", "version 1")) // create, write
	reopened.Store(true)
	f.closeFile(id.Load())
	f.must(os.Truncate(f.abs("big"), 0)) // the next writer's O_TRUNC, not journaled yet
	time.Sleep(100 * time.Millisecond)
	if got, ok := readWorker(t, worker, "big"); ok {
		t.Fatalf("shipped %q while a writer had the file open again", got)
	}
	f.must(os.WriteFile(f.abs("big"), []byte("version 2"), 0o644))
	reopened.Store(false)
	f.closePath(id.Load(), "big")
	waitSynced(t, s, f.j)
	if got, _ := readWorker(t, worker, "big"); got != "version 2" {
		t.Fatalf("worker has %q, want version 2", got)
	}
	compareTrees(t, f.store, worker, nil)
}

// afterWrite runs after each successful WriteFileAtomic.
type afterWrite struct {
	Transport
	after func(p string)
}

func (a *afterWrite) WriteFileAtomic(ctx context.Context, p string, r io.Reader, at Attrs) error {
	err := a.Transport.WriteFileAtomic(ctx, p, r, at)
	if err == nil {
		a.after(p)
	}
	return err
}

// git writes tmp_obj_X, links it to its object name and unlinks
// tmp_obj_X. When the unlink reaches the store just after tmp_obj_X was
// sent, the object name must still become a link to it on the worker
// before the unlink is applied there. Found by TestToolsGit: an object
// was missing on one worker.
func TestShipperLinkSurvivesUnlinkRightAfterSend(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	var once atomic.Bool
	wrap := func(tr Transport) Transport {
		return &afterWrite{Transport: tr, after: func(p string) {
			if p == "tmp_obj" && once.CompareAndSwap(false, true) {
				f.unlink("tmp_obj")
			}
		}}
	}
	f.writeFile("warm", "up")
	s := startedShipper(t, f, worker, nil, wrap)
	f.writeFile("tmp_obj", "blob")
	f.link("tmp_obj", "76")
	waitSynced(t, s, f.j)
	if !once.Load() {
		t.Fatal("tmp_obj was never sent: the test did not exercise the race")
	}
	compareTrees(t, f.store, worker, nil)
}

// Save-by-rename twice in a row, with a batch boundary between the first
// rename and the second save: the batch holding only the first rename
// finds the store's name already holding the second version. It must not
// copy that version's mtime onto the first version's content on the
// worker: a full comparison (after a kill -9, or a resync) compares size
// and mtime and would then keep the old content for good. Found by
// TestKillKeepsPathOrder.
func TestShipperRenameDoesNotCopyNewerVersionsAttrs(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.writeFile(".a.swp", "version 1")
	s := startedShipper(t, f, worker, nil, nil)
	time.Sleep(storeAheadSlack + 50*time.Millisecond) // not suspect: see above

	// The store runs ahead of the journal: the first rename, then the whole
	// second save (same size, another mtime), journaled only partly.
	first := f.renameStore(".a.swp", "a")
	f.must(os.WriteFile(f.abs(".a.swp"), []byte("version 2"), 0o644))
	tm := time.Now().Add(time.Hour)
	f.must(os.Chtimes(f.abs(".a.swp"), tm, tm))
	f.must(os.Rename(f.abs(".a.swp"), f.abs("a")))
	f.j.Append(first)
	waitSynced(t, s, f.j)
	if got, _ := readWorker(t, worker, "a"); got != "version 1" {
		t.Fatalf("worker a = %q after the first rename, want version 1", got)
	}
	wfi, err := os.Lstat(filepath.Join(worker, "a"))
	f.must(err)
	if wfi.ModTime().Equal(tm) {
		t.Fatal("the worker's version 1 got version 2's mtime")
	}

	// A full comparison now (the rest of the journal superseded) must find
	// the worker's a different from the store's and send it.
	resyncExpecting(t, s, worker, "a", "version 2")
}

// A full comparison over a transport that keeps nanosecond mtimes tells
// apart two versions of the same size saved within the same second: the
// quick check used to compare whole seconds, then copied the store's mtime
// onto the worker's old content.
func TestFullCopyComparesNanosecondMtimes(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.writeFile("a", "version 1")
	s := startedShipper(t, f, worker, nil, nil)

	sec := time.Now().Truncate(time.Second).Add(-time.Minute)
	f.must(os.Chtimes(filepath.Join(worker, "a"), sec.Add(100), sec.Add(100)))
	f.must(os.WriteFile(f.abs("a"), []byte("version 2"), 0o644)) // not journaled: drift to find
	f.must(os.Chtimes(f.abs("a"), sec.Add(900), sec.Add(900)))

	resyncExpecting(t, s, worker, "a", "version 2")
}

// Files saved again with the content the worker has (a rewrite in place,
// a save-by-rename) are not sent: the worker keeps its file (same inode)
// and gets the new mtime. A file of the same size with other content is
// sent, and so is one whose worker copy has a user.* xattr the store's
// lacks.
func TestShipperKeepsUnchangedFiles(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.writeFile("same.html", "<p>same</p>")
	f.writeFile("renamed.html", "<p>renamed</p>")
	f.writeFile("other.html", "<p>one</p>")
	f.writeFile("tagged.html", "<p>tagged</p>")
	var writes atomic.Int32
	// Swap files excluded, as in a real configuration: otherwise a batch
	// boundary between the temp file's Close and its rename ships the temp
	// file whole as a new file (a name the worker certainly lacks).
	s := newShipper(t, f, worker, func(o *Options) { o.Exclude = []string{"*.swp"} }, func(tr Transport) Transport {
		return &countingLocal{Local: tr.(*Local), writes: &writes}
	})
	start(t, s)
	waitSynced(t, s, f.j)
	workerIno := func(p string) uint64 {
		fi, err := os.Lstat(filepath.Join(worker, p))
		f.must(err)
		return inode(fi)
	}
	inoSame, inoRenamed := workerIno("same.html"), workerIno("renamed.html")
	f.must(unix.Setxattr(filepath.Join(worker, "tagged.html"), "user.drift", []byte("x"), 0))
	writes.Store(0)

	time.Sleep(20 * time.Millisecond) // a visibly later mtime
	f.writeFile("same.html", "<p>same</p>")
	f.writeFile(".renamed.html.swp", "<p>renamed</p>")
	f.rename(".renamed.html.swp", "renamed.html")
	f.writeFile("other.html", "<p>two</p>")
	f.writeFile("tagged.html", "<p>tagged</p>")
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil) // mtimes included
	if _, err := unix.Getxattr(filepath.Join(worker, "tagged.html"), "user.drift", make([]byte, 8)); err == nil {
		t.Error("tagged.html kept a user.* xattr the store's file lacks")
	}
	if workerIno("same.html") != inoSame || workerIno("renamed.html") != inoRenamed {
		t.Error("an unchanged file was written again on the worker")
	}
	if got, _ := readWorker(t, worker, "other.html"); got != "<p>two</p>" {
		t.Errorf("other.html = %q on the worker", got)
	}
	if n := writes.Load(); n != 2 {
		t.Errorf("%d files written whole, want 2 (other.html, tagged.html)", n)
	}
}

// An editor's save (a temp file, excluded, renamed over the page) reaches
// the worker in one request: no comparison first, no look at the page or
// its parent directories. Each would be a round trip before the new page
// is there. A save of the same content keeps the worker's file.
func TestShipperLoneSaveIsOneRequest(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.mkdir("site")
	f.mkdir("site/css")
	f.writeFile("site/css/style.css", "body { color: black }")
	var calls callLog
	s := startedShipper(t, f, worker, func(o *Options) { o.Exclude = []string{"*.swp"} }, func(tr Transport) Transport {
		return &loggingLocal{Local: tr.(*Local), log: &calls}
	})
	workerIno := func() uint64 { return workerIno(t, worker, "site/css/style.css") }

	save := func(content string) []string {
		calls.reset()
		f.writeFile("site/css/.style.css.swp", content)
		f.rename("site/css/.style.css.swp", "site/css/style.css")
		waitSynced(t, s, f.j)
		compareTrees(t, f.store, worker, nil)
		return calls.get()
	}
	got := save("body { color: navy }")
	// The page, then its directory's attributes (the agent sends the
	// batch's Sync along with them): two round trips.
	want := []string{"WriteSmallFile site/css/style.css", "WriteSmallFiles 1", "SetAttrs site/css"}
	if !slices.Equal(got, want) {
		t.Fatalf("requests for a save: %q, want %q", got, want)
	}
	before := workerIno()
	got = save("body { color: navy }")
	if len(got) == 0 || got[0] != "WriteSmallFile site/css/style.css" {
		t.Fatalf("requests for a save of the same content: %q, want WriteSmallFile of the page first", got)
	}
	if workerIno() != before {
		t.Error("a save of the same content was written again on the worker")
	}
}

// The small files of a batch go to the worker in one batch of requests (one
// round trip), not one request each; a file whose request fails there (a
// directory in the way on the worker) is then sent alone, which mends the
// worker.
func TestShipperSendsSmallFilesTogether(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.mkdir("site")
	var calls callLog
	wrap := func(tr Transport) Transport { return &loggingLocal{Local: tr.(*Local), log: &calls} }
	caughtUpThenStopped(t, f, worker, nil, wrap)

	f.must(os.MkdirAll(filepath.Join(worker, "site", "p07.html", "sub"), 0o755)) // drift
	const n = 20
	for i := range n {
		f.writeFile(fmt.Sprintf("site/p%02d.html", i), strings.Repeat(fmt.Sprintf("page %d\n", i), 50))
	}
	calls.reset()
	startedShipper(t, f, worker, nil, wrap)
	compareTrees(t, f.store, worker, nil)
	got := calls.get()
	if !slices.Contains(got, fmt.Sprintf("WriteSmallFiles %d", n)) {
		t.Errorf("requests: %q; want the %d pages in one WriteSmallFiles", got, n)
	}
	alone := 0
	for _, c := range got {
		if c == "WriteSmallFiles 1" {
			alone++
		}
	}
	if alone != 1 {
		t.Errorf("%d pages sent alone, want 1 (p07.html, whose worker name was a directory): %q", alone, got)
	}
}

// More small files than fit one chunk go in several batches of requests,
// each of a few MiB, and all arrive.
func TestShipperSendsSmallFilesInChunks(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	var calls callLog
	wrap := func(tr Transport) Transport { return &loggingLocal{Local: tr.(*Local), log: &calls} }
	caughtUpThenStopped(t, f, worker, nil, wrap)
	const n, size = 100, 60 << 10 // 6 MB: more than smallChunk
	for i := range n {
		f.writeFile(fmt.Sprintf("p%03d.bin", i), string(pseudoRandomBytes(uint64(i), size)))
	}
	calls.reset()
	startedShipper(t, f, worker, nil, wrap)
	compareTrees(t, f.store, worker, nil)
	batches, files := 0, 0
	for _, c := range calls.get() {
		var k int
		if _, err := fmt.Sscanf(c, "WriteSmallFiles %d", &k); err == nil {
			batches++
			files += k
			if k*size > smallChunk+size {
				t.Errorf("one batch of %d files of %d bytes: more than smallChunk (%d) and one file", k, size, smallChunk)
			}
		}
	}
	if batches < 2 || files != n {
		t.Errorf("%d files in %d batches, want all %d in more than one", files, batches, n)
	}
}

// pseudoRandomBytes is n bytes from a seed: content no compression shrinks.
func pseudoRandomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(b)
	return b
}

// caughtUpThenStopped runs a shipper until the worker caught up, then
// stops it: the ops that follow wait for the next shipper, in one batch.
func caughtUpThenStopped(t testing.TB, f *fsim, worker string, mod func(*Options), wrap func(Transport) Transport) {
	t.Helper()
	s := newShipper(t, f, worker, mod, wrap)
	stop := start(t, s)
	waitSynced(t, s, f.j)
	stop()
}

// callLog records requests to a worker, in order.
type callLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *callLog) add(method, p string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, method+" "+p)
}

func (l *callLog) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = nil
}

func (l *callLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.calls)
}

// loggingLocal is Local (with all its capabilities) logging the requests
// that look at or write a file.
type loggingLocal struct {
	*Local
	log *callLog
}

func (l *loggingLocal) Lstat(ctx context.Context, p string) (FileInfo, error) {
	l.log.add("Lstat", p)
	return l.Local.Lstat(ctx, p)
}

func (l *loggingLocal) KeepIfSame(ctx context.Context, items []KeepItem) ([]bool, error) {
	for _, it := range items {
		l.log.add("KeepIfSame", it.Path)
	}
	return l.Local.KeepIfSame(ctx, items)
}

func (l *loggingLocal) WriteFileAtomic(ctx context.Context, p string, r io.Reader, a Attrs) error {
	l.log.add("WriteFileAtomic", p)
	return l.Local.WriteFileAtomic(ctx, p, r, a)
}

func (l *loggingLocal) WriteSmallFiles(ctx context.Context, files []SmallFile) ([]SmallResult, error) {
	for _, f := range files {
		l.log.add("WriteSmallFile", f.Path)
	}
	l.log.add("WriteSmallFiles", fmt.Sprint(len(files)))
	return l.Local.WriteSmallFiles(ctx, files)
}

func (l *loggingLocal) Chtimes(ctx context.Context, p string, atime, mtime time.Time) error {
	l.log.add("Chtimes", p)
	return l.Local.Chtimes(ctx, p, atime, mtime)
}

func (l *loggingLocal) SetAttrs(ctx context.Context, items []AttrItem) ([]AttrResult, error) {
	for _, it := range items {
		l.log.add("SetAttrs", it.Path)
	}
	return l.Local.SetAttrs(ctx, items)
}

// A batch ends by giving the worker's directories the store's attributes
// (every page saved changes its directory's mtime): one request for all of
// them, not a look and a chtimes per directory.
func TestShipperDirAttrsInOneRequest(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	dirs := []string{"a", "b", "c"}
	for _, d := range dirs {
		f.mkdir(d)
	}
	var calls callLog
	wrap := func(tr Transport) Transport { return &loggingLocal{Local: tr.(*Local), log: &calls} }
	caughtUpThenStopped(t, f, worker, nil, wrap)
	for _, d := range dirs {
		f.writeFile(d+"/index.html", "page "+d)
	}
	calls.reset()
	startedShipper(t, f, worker, nil, wrap)
	compareTrees(t, f.store, worker, nil)
	got := calls.get()
	for _, d := range dirs {
		if !slices.Contains(got, "SetAttrs "+d) {
			t.Errorf("requests: %q; want the attributes of %s set with the others", got, d)
		}
		if slices.Contains(got, "Lstat "+d) || slices.Contains(got, "Chtimes "+d) {
			t.Errorf("requests: %q; want no look or chtimes of %s alone", got, d)
		}
	}
}

// A setuid file given another owner in the store (chown, then chmod: the
// kernel clears the bit on a chown) keeps its bit on the worker, whose own
// chown clears it there too: over
// a transport that sets attributes in one request and over one that does
// not (chmod, chown and chtimes one by one).
func TestShipperChownKeepsSetuid(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to chown")
		}
		t.Skip("needs root to chown")
	}
	for name, wrap := range map[string]func(Transport) Transport{
		"AttrSetter": nil,
		"one by one": func(tr Transport) Transport { return struct{ Transport }{tr} },
	} {
		t.Run(name, func(t *testing.T) {
			f := newFsim(t)
			worker := workerDir(t)
			id := f.writeFile("tool", "#!/bin/sh\n")
			f.chmod("tool", 0o755|fs.ModeSetuid)
			caughtUpThenStopped(t, f, worker, nil, wrap)
			// The store's chown clears the bit too: the owner sets it again.
			f.must(os.Chown(f.abs("tool"), 4242, 4343))
			f.j.Append(journal.Op{Kind: journal.KindSetattr, File: id, Path: "tool", Mask: journal.AttrUID | journal.AttrGID, UID: 4242, GID: 4343})
			f.chmod("tool", 0o755|fs.ModeSetuid)
			startedShipper(t, f, worker, nil, wrap)
			var st unix.Stat_t
			f.must(unix.Lstat(filepath.Join(worker, "tool"), &st))
			if st.Uid != 4242 || st.Gid != 4343 || st.Mode&0o7777 != 0o4755 {
				t.Errorf("worker's tool: uid %d gid %d mode %o; want 4242 4343 4755", st.Uid, st.Gid, st.Mode&0o7777)
			}
		})
	}
}

// A page hard-linked to another name, then saved by rename with the same
// content: the store's page is a new file and the other name keeps the old
// one. The worker must split them the same way; keeping its page (linked to
// the other name) would leave the link group joined and give the other name
// the page's new mtime. Both the lone small save and the batch offer.
func TestShipperResaveSplitsHardLink(t *testing.T) {
	for _, names := range [][]string{{"page.html"}, {"page.html", "other.html"}} {
		t.Run(fmt.Sprint(len(names)), func(t *testing.T) {
			f := newFsim(t)
			worker := workerDir(t)
			for _, n := range names {
				f.writeFile(n, "<p>same</p>")
				f.link(n, "copy-of-"+n)
			}
			s := startedShipper(t, f, worker, func(o *Options) { o.Exclude = []string{"*.swp"} }, nil)
			time.Sleep(20 * time.Millisecond) // a visibly later mtime
			for _, n := range names {
				f.writeFile("."+n+".swp", "<p>same</p>")
				f.rename("."+n+".swp", n)
			}
			waitSynced(t, s, f.j)
			e, _ := NewExcluder([]string{"*.swp"})
			compareTrees(t, f.store, worker, e)
		})
	}
}

// countingLocal is Local (with all its capabilities) counting whole writes.
type countingLocal struct {
	*Local
	writes *atomic.Int32
}

func (c *countingLocal) WriteFileAtomic(ctx context.Context, p string, r io.Reader, a Attrs) error {
	c.writes.Add(1)
	return c.Local.WriteFileAtomic(ctx, p, r, a)
}

// WriteSmallFiles counts the small files it writes, not those it keeps.
func (c *countingLocal) WriteSmallFiles(ctx context.Context, files []SmallFile) ([]SmallResult, error) {
	res, err := c.Local.WriteSmallFiles(ctx, files)
	for _, r := range res {
		if !r.Kept && r.Err == nil {
			c.writes.Add(1)
		}
	}
	return res, err
}

// An idle shipper ships a lone change as soon as the journal is quiet,
// not after the whole batch delay: with a 30 s delay, the change arrives
// within waitSynced's 10 s (it used to wait the delay out).
func TestShipperShipsAtOnceWhenQuiet(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	s := startedShipper(t, f, worker, func(o *Options) { o.Delay = 30 * time.Second }, nil)
	time.Sleep(50 * time.Millisecond) // the shipper waits for ops again
	f.writeFile("index.html", "<h1>now</h1>")
	waitSynced(t, s, f.j)
	if got, _ := readWorker(t, worker, "index.html"); got != "<h1>now</h1>" {
		t.Fatalf("worker index.html = %q", got)
	}
}

// resyncExpecting asks s for a full comparison, waits for it and checks
// that the worker's p then holds want.
func resyncExpecting(t *testing.T, s *Shipper, worker, p, want string) {
	t.Helper()
	s.Resync(false)
	waitFor(t, "the resync", 10*time.Second, func() bool { return s.Status().ResyncDone >= 1 })
	if got, _ := readWorker(t, worker, p); got != want {
		t.Fatalf("worker %s = %q after a full comparison, want %q", p, got, want)
	}
}

// cp -a, setfacl and other ACL-aware tools give a file or directory its
// permissions by setting system.posix_acl_access, which the store's file
// system turns into a mode change: the journal holds only the setxattr.
// The worker's mode must follow all the same. Found by TestToolsEditors:
// a directory copied with cp -a stayed 0700 on a worker.
func TestShipperAccessACLSetsMode(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.mkdir("assets")
	f.writeFile("assets/site.css", "body{}")
	s := startedShipper(t, f, worker, nil, nil)

	for p, mode := range map[string]os.FileMode{"assets": 0o750, "assets/site.css": 0o640} {
		f.must(os.Chmod(f.abs(p), mode)) // what the ACL did to the mode
		f.j.Append(journal.Op{Kind: journal.KindSetxattr, File: f.ino(p), Path: p,
			XattrName: "system.posix_acl_access", XattrValue: []byte{2, 0, 0, 0}})
	}
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
}

// A setxattr of a file still held open (not yet on the worker) does not
// fail the batch: the file's attributes come with its data. It used to
// fail on the worker's listxattr of a path it did not have, forever.
func TestShipperXattrOfHeldFile(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	s := startedShipper(t, f, worker, nil, nil)

	id := f.writeOpen("upload.bin", "partial")
	if err := unix.Setxattr(f.abs("upload.bin"), "user.origin", []byte("cms"), 0); err != nil {
		t.Skipf("the store's file system lacks user xattrs: %v", err)
	}
	f.j.Append(journal.Op{Kind: journal.KindSetxattr, File: id, Path: "upload.bin", XattrName: "user.origin", XattrValue: []byte("cms")})
	f.writeFile("index.html", "<p>after</p>") // journaled after the setxattr
	waitFor(t, "index.html on the worker", 10*time.Second, func() bool {
		got, _ := readWorker(t, worker, "index.html")
		return got == "<p>after</p>"
	})
	if st := s.Status(); st.LastError != "" {
		t.Fatalf("the batch failed: %s", st.LastError)
	}
	f.closePath(id, "upload.bin")
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
	buf := make([]byte, 16)
	if n, err := unix.Getxattr(filepath.Join(worker, "upload.bin"), "user.origin", buf); err != nil || string(buf[:n]) != "cms" {
		t.Errorf("worker upload.bin user.origin = %q, %v; want cms", buf[:max(n, 0)], err)
	}
}

// cp -a over an earlier copy recreates a hard-linked file and links its
// second name again through a temp name renamed over the old one (unlink a,
// create a, link a -> tmp, rename tmp -> hard). When a batch ends between
// the link and the rename, the store has already renamed tmp when the file
// ships: the worker must still get tmp as a link, for the rename that
// follows to move it over hard. Found by TestToolsEditors: a worker kept
// its old hard as a separate file, the kept content equal, the hard-link
// group split for good. The same after a copy, when the ops are applied as
// suspect (possibly applied before).
func TestShipperLinkRenamedBeforeShip(t *testing.T) {
	for _, suspect := range []bool{false, true} {
		t.Run(fmt.Sprintf("suspect=%v", suspect), func(t *testing.T) { testLinkRenamedBeforeShip(t, suspect) })
	}
}

func testLinkRenamedBeforeShip(t *testing.T, suspect bool) {
	f := newFsim(t)
	worker := workerDir(t)
	f.writeFile("a", "version 1")
	f.link("a", "hard")
	s := startedShipper(t, f, worker, nil, nil)
	compareTrees(t, f.store, worker, nil)
	if !suspect {
		// Ops stamped right after a copy may describe changes the copy
		// saw (see storeAhead): this case is about the ones made later.
		time.Sleep(storeAheadSlack + 50*time.Millisecond)
	}

	f.unlink("a")
	f.writeFile("a", "version 1") // the same content, a new inode
	if suspect {
		// The file ships, then the link comes alone and, as suspect, its
		// temp name is converged with the store, which has renamed it
		// already: the worker's old hard (same size and mtime second)
		// must not pass for the renamed link.
		waitSynced(t, s, f.j)
	}
	f.link("a", "tmp")
	rename := f.renameStore("tmp", "hard") // journaled after the batch
	waitSynced(t, s, f.j)
	f.j.Append(rename)
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
	if workerIno(t, worker, "a") != workerIno(t, worker, "hard") {
		t.Error("a and hard are not one file on the worker")
	}
}

// A lone save-by-rename ships when its rename is journaled, without
// waiting for the journal to be quiet: with a quiet gap and a delay of an
// hour, it still arrives within waitSynced's 10 s. A write without a rename
// still waits (it would otherwise ship in the middle of a save).
func TestShipperShipsSaveAtRename(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	s := newShipper(t, f, worker, func(o *Options) {
		o.Delay = time.Hour
		o.Exclude = []string{"*.swp"}
	}, nil)
	s.quietGap = time.Hour
	f.writeFile("page.html", "<p>v1</p>") // journaled before the shipper starts: the full copy
	start(t, s)
	waitSynced(t, s, f.j)
	time.Sleep(2 * saveIdle) // a lone save

	f.writeFile(".page.html.swp", "<p>v2</p>")
	time.Sleep(100 * time.Millisecond)
	if got, _ := readWorker(t, worker, "page.html"); got != "<p>v1</p>" {
		t.Fatalf("worker page.html = %q before the rename", got)
	}
	f.rename(".page.html.swp", "page.html")
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
}

// A shipper that finds changes pending right after a batch settles before
// the next one too: the files that follow one another quickly go in one
// batch, not one round trip's worth at a time (a burst of 1,000 small
// files went one or two per request and per fsync on each worker). The
// idle case is TestShipperShipsAtOnceWhenQuiet.
func TestShipperCoalescesWhileBusy(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	g := &gatedSmall{entered: make(chan struct{}), gate: make(chan struct{})}
	wrap := func(tr Transport) Transport { g.Local = tr.(*Local); return g }
	s := newShipper(t, f, worker, func(o *Options) { o.Delay = time.Hour }, wrap)
	s.quietGap = 500 * time.Millisecond // far more than the writes' spacing below
	f.writeFile("index.html", "home")   // shipped by the first start's full copy
	start(t, s)
	waitSynced(t, s, f.j)
	g.mu.Lock()
	g.calls = nil
	g.mu.Unlock()

	f.writeFile("a.html", "a")
	<-g.entered // the batch of a.html is at the worker
	f.writeFile("b.html", "b")
	close(g.gate)
	for _, p := range []string{"c.html", "d.html", "e.html"} {
		time.Sleep(5 * time.Millisecond)
		f.writeFile(p, p)
	}
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
	if got := g.sizes(); !slices.Equal(got, []int{1, 4}) {
		t.Errorf("small files per request: %v, want [1 4] (a.html; then b.html and the three written after the batch)", got)
	}
}

// A busy shipper's wait ends at a save's rename, as an idle one's does
// after a lone save: saves that follow one another closely (200 per
// second) never leave the journal quiet, and each batch would wait the
// whole delay (here an hour, as the quiet gap).
func TestShipperBusyShipsAtRename(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	g := &gatedSmall{entered: make(chan struct{}), gate: make(chan struct{})}
	wrap := func(tr Transport) Transport { g.Local = tr.(*Local); return g }
	s := newShipper(t, f, worker, func(o *Options) {
		o.Delay = time.Hour
		o.Exclude = []string{"*.swp"}
	}, wrap)
	s.quietGap = time.Hour
	f.writeFile("page.html", "<p>v1</p>") // shipped by the first start's full copy
	start(t, s)
	waitSynced(t, s, f.j)
	time.Sleep(2 * saveIdle) // a lone save: it ships at its rename

	f.writeFile(".a.html.swp", "a")
	f.rename(".a.html.swp", "a.html")
	<-g.entered // the batch of a.html is at the worker
	f.writeFile(".page.html.swp", "<p>v2</p>")
	f.rename(".page.html.swp", "page.html")
	close(g.gate)
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
}

// gatedSmall is Local whose WriteSmallFiles of a.html waits for gate
// (after closing entered); it records how many files each call carried.
type gatedSmall struct {
	*Local
	entered, gate chan struct{}
	mu            sync.Mutex
	held          bool
	calls         []int
}

func (g *gatedSmall) WriteSmallFiles(ctx context.Context, files []SmallFile) ([]SmallResult, error) {
	g.mu.Lock()
	g.calls = append(g.calls, len(files))
	first := !g.held && files[0].Path == "a.html"
	g.held = g.held || first
	g.mu.Unlock()
	if first {
		close(g.entered)
		<-g.gate
	}
	return g.Local.WriteSmallFiles(ctx, files)
}

func (g *gatedSmall) sizes() []int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.calls)
}

// A worker marked for a full copy (after a crash) that cannot be reached
// shows its cursor as applied, as journal stats does, not #0 with every
// op ever journaled pending.
func TestShipperStatusOfUnreachableMarkedWorker(t *testing.T) {
	f := newFsim(t)
	for i := range 5 {
		f.writeFile(fmt.Sprintf("f%d", i), "x")
	}
	f.j.cursors["w1"] = journal.Cursor{Applied: 4, FullSync: true}
	s := newShipper(t, f, workerDir(t), func(o *Options) {
		o.Dial = func(context.Context) (Transport, error) { return nil, errors.New("unreachable") }
	}, nil)
	stop := start(t, s)
	defer stop()
	waitFor(t, "a failed connection", 5*time.Second, func() bool { return s.Status().LastError != "" })
	if st := s.Status(); st.Applied != 4 || st.Pending != f.j.LastSeq()-4 {
		t.Errorf("unreachable worker marked for a full copy at #4: applied #%d, pending %d; want #4 and %d", st.Applied, st.Pending, f.j.LastSeq()-4)
	}
}

// The files a plan remembers dead (unlinked: writes to them are dropped
// for 10 minutes) are forgotten by a full copy: an inode number
// remembered dead may be a new file by then, whose create the copy took
// the place of (journaled before the copy started), and its later writes
// must ship.
func TestShipperFullCopyForgetsDeadFiles(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	id := f.writeFile("page", "v1")
	s := newShipper(t, f, worker, nil, nil)
	s.dead = map[uint64]int64{id: time.Now().UnixNano()} // as a batch before the copy left it
	start(t, s)
	waitSynced(t, s, f.j) // the first full copy, then the journal
	f.writeFile("page", "v2, written after the copy")
	waitSynced(t, s, f.j)
	if got, _ := readWorker(t, worker, "page"); got != "v2, written after the copy" {
		t.Errorf("worker page = %q after a write following the full copy, want v2", got)
	}
}

// The quick look at a worker file during a replayed rename goes by the
// mtime at the grain the transport keeps: over a transport with
// nanoseconds, a file of the same size saved earlier in the same second is
// not the store's (it used to be taken for it, in whole seconds, and the
// replay skipped what it still had to do).
func TestLooksLikeStoreUsesNanoseconds(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.writeFile("page", "v2")
	sfi, err := os.Lstat(f.abs("page"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(worker, "page"), []byte("v1"), 0o644); err != nil {
		t.Fatal(err)
	}
	earlier := sfi.ModTime().Truncate(time.Second)
	if earlier.Equal(sfi.ModTime()) {
		earlier = earlier.Add(time.Nanosecond) // the store's mtime fell on a whole second
	}
	if err := os.Chtimes(filepath.Join(worker, "page"), earlier, earlier); err != nil {
		t.Fatal(err)
	}
	s := newShipper(t, f, worker, nil, nil)
	l, err := NewLocal(worker)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s.t = l // Local keeps nanoseconds (LinkAttrs)
	wfi, err := l.Lstat(t.Context(), "page")
	if err != nil {
		t.Fatal(err)
	}
	if same, err := s.looksLikeStore(t.Context(), "page", &wfi); err != nil || same {
		t.Errorf("looksLikeStore of a same-size file %v older, in the same second: %v, %v; want false", sfi.ModTime().Sub(earlier), same, err)
	}
}

// A full comparison (resync) gives a worker's symlink whose target is
// right the store's owner and mtime, over a transport that sets them: it
// used to stop at the target, and verify kept reporting the drift that
// resync said it had fixed.
func TestShipperResyncFixesSymlinkAttrs(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.writeFile("index.html", "<h1>home</h1>")
	f.symlink("index.html", "home.html")
	s := startedShipper(t, f, worker, nil, nil)
	waitSynced(t, s, f.j)
	link := filepath.Join(worker, "home.html")
	old := time.Unix(1_500_000_000, 0)
	f.must(unix.Lutimes(link, []unix.Timeval{unix.NsecToTimeval(old.UnixNano()), unix.NsecToTimeval(old.UnixNano())}))
	f.must(os.Lchown(link, 4321, 4321)) // drift behind mirrorfs's back
	resyncExpecting(t, s, worker, "index.html", "<h1>home</h1>")
	sfi, err := os.Lstat(f.abs("home.html"))
	f.must(err)
	wfi, err := os.Lstat(link)
	f.must(err)
	sst, wst := sfi.Sys().(*syscall.Stat_t), wfi.Sys().(*syscall.Stat_t)
	if !wfi.ModTime().Equal(sfi.ModTime()) || wst.Uid != sst.Uid || wst.Gid != sst.Gid {
		t.Errorf("worker symlink after a resync: mtime %v owner %d:%d, store %v %d:%d", wfi.ModTime(), wst.Uid, wst.Gid, sfi.ModTime(), sst.Uid, sst.Gid)
	}
}

// The web root's own mode and user.* xattrs changed through the mount
// reach the workers. Their journal records (path "") were skipped as
// invalid paths, with a warning, and only a full comparison fixed them.
func TestShipperRootAttrsAndXattrs(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.writeFile("index.html", "x")
	s := startedShipper(t, f, worker, nil, nil)
	waitSynced(t, s, f.j)
	f.chmod("", 0o750)
	f.must(unix.Setxattr(f.store, "user.root", []byte("r"), 0))
	f.j.Append(journal.Op{Kind: journal.KindSetxattr, File: f.ino(""), Path: "", XattrName: "user.root", XattrValue: []byte("r")})
	waitSynced(t, s, f.j)
	wfi, err := os.Stat(worker)
	f.must(err)
	buf := make([]byte, 16)
	n, xerr := unix.Getxattr(worker, "user.root", buf)
	if wfi.Mode().Perm() != 0o750 || xerr != nil || string(buf[:max(n, 0)]) != "r" {
		t.Errorf("worker root: mode %v, user.root %q (%v); want 0750 and \"r\"", wfi.Mode().Perm(), buf[:max(n, 0)], xerr)
	}
}
