package replicate

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// newLocal returns a Local on a temp directory, closed when the test ends,
// and that directory.
func newLocal(t *testing.T) (*Local, string) {
	t.Helper()
	dir := t.TempDir()
	l, err := NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, dir
}

// noErr fails the test at once on an error.
func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestLocalSyncFlushesEachDirectoryOnce: WriteFileAtomic and the namespace
// changes leave their directories to Sync, which flushes each changed
// directory once, whatever the number of changes in it.
func TestLocalSyncFlushesEachDirectoryOnce(t *testing.T) {
	l, dir := newLocal(t)
	ctx := t.Context()
	for _, d := range []string{"a", "b"} {
		if err := l.Mkdir(ctx, d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 50 {
		for _, d := range []string{"a", "b"} {
			p := fmt.Sprintf("%s/f%d.html", d, i)
			if err := l.WriteFileAtomic(ctx, p, strings.NewReader("page"), Attrs{Perm: 0o644, UID: -1, GID: -1}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := l.Rename(ctx, "a/f0.html", "b/moved.html"); err != nil {
		t.Fatal(err)
	}
	if l.dirSynced != 0 {
		t.Fatalf("%d directories synced before Sync: WriteFileAtomic must leave them to Sync", l.dirSynced)
	}
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if l.dirSynced != 3 { // the root (two mkdirs), a and b
		t.Fatalf("Sync flushed %d directories, want 3 (root, a, b)", l.dirSynced)
	}
	if err := l.Sync(ctx); err != nil || l.dirSynced != 3 {
		t.Fatalf("a second Sync with nothing changed: %v, %d directories flushed in all, want 3", err, l.dirSynced)
	}

	// A directory removed before the Sync is skipped; its parent is synced.
	if err := l.Mkdir(ctx, "c", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := l.WriteFileAtomic(ctx, "c/x", strings.NewReader("x"), Attrs{Perm: 0o644, UID: -1, GID: -1}); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "c")); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(ctx); err != nil {
		t.Fatalf("Sync with a changed directory removed meanwhile: %v", err)
	}
	if l.dirSynced != 4 {
		t.Fatalf("%d directories flushed in all, want 4 (the root again)", l.dirSynced)
	}
}

// TestShipperSyncsWorkerBeforeCursor: a shipper whose transport can Sync
// has every changed worker directory flushed before its cursor passes the
// batch that changed it.
func TestShipperSyncsWorkerBeforeCursor(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	var dialed atomic.Pointer[Local]
	s := newShipper(t, f, worker, nil, func(tr Transport) Transport {
		dialed.Store(tr.(*Local))
		return tr
	})
	start(t, s)
	waitSynced(t, s, f.j)

	f.mkdir("d")
	for i := range 20 {
		f.writeFile(fmt.Sprintf("d/p%d.html", i), "page")
	}
	f.rename("d/p0.html", "index.html")
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
	l := dialed.Load()
	l.mu.Lock()
	pending, synced := len(l.unsynced), l.dirSynced
	l.mu.Unlock()
	if pending != 0 || synced == 0 {
		t.Fatalf("after the cursor reached the end: %d worker directories not synced, %d synced; want 0 and some", pending, synced)
	}
}

// TestLocalSyncSkipsDirectoriesNoLongerThere: a changed directory that is
// no directory of the tree any more when Sync comes (its parent became a
// file or a symlink, or it became a symlink itself; here the symlinks lead
// out of the root) has nothing to flush: Sync skips it, flushes the ancestor
// whose entries that change touched, and succeeds, the next time too.
// It used to fail on every Sync (the agent's, so the worker's cursor
// never advanced again).
func TestLocalSyncSkipsDirectoriesNoLongerThere(t *testing.T) {
	l, dir := newLocal(t)
	ctx := t.Context()
	a := Attrs{Perm: 0o644, UID: -1, GID: -1}
	for _, d := range []string{"file", "file/b", "link", "link/b", "out"} {
		noErr(t, l.Mkdir(ctx, d, 0o755))
	}
	for _, d := range []string{"file/b", "link/b", "out"} {
		noErr(t, l.WriteFileAtomic(ctx, d+"/x", strings.NewReader("x"), a))
	}
	noErr(t, l.Sync(ctx))
	synced := l.dirSynced

	// Each directory gets a change to flush, then is replaced.
	for _, d := range []string{"file/b", "link/b", "out"} {
		noErr(t, l.WriteFileAtomic(ctx, d+"/y", strings.NewReader("y"), a))
	}
	for _, d := range []string{"file", "link", "out"} {
		noErr(t, os.RemoveAll(filepath.Join(dir, d)))
	}
	noErr(t, l.WriteFileAtomic(ctx, "file", strings.NewReader("now a file"), a)) // file/b: ENOTDIR
	noErr(t, l.Symlink(ctx, "/", "link"))                                        // link/b: below a symlink
	noErr(t, l.Symlink(ctx, "/", "out"))                                         // out: a symlink itself
	for i := range 2 {
		if err := l.Sync(ctx); err != nil {
			t.Fatalf("Sync #%d: %v", i+1, err)
		}
	}
	if got := l.dirSynced - synced; got != 1 {
		t.Errorf("Sync flushed %d directories, want 1 (the root)", got)
	}
}

// TestShipperSyncAfterDirReplaced: a batch that changes a directory and
// then replaces it (or its parent) by a file or a symlink is applied, and
// the cursor passes it: the worker's Sync has nothing to flush there.
func TestShipperSyncAfterDirReplaced(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.mkdir("cur")
	f.mkdir("cur/js")
	s := startedShipper(t, f, worker, nil, nil)

	f.mkdir("a")
	f.mkdir("a/b")
	f.symlink("t", "a/b/l")
	f.writeFile("cur/js/app.js", "v1")
	f.unlink("a/b/l")
	f.rmdir("a/b")
	f.rmdir("a")
	f.writeFile("a", "now a file")
	f.unlink("cur/js/app.js")
	f.rmdir("cur/js")
	f.rmdir("cur")
	f.symlink("/srv/releases/42", "cur")
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
}

// TestLocalSyncFollowsRenamedDirectory: files written into a directory
// that is renamed before the Sync (a release built under a temp name and
// moved into place) are flushed at the directory's new name, and so are
// those of its subdirectories. They used to be left unflushed: Sync
// looked for them under the old name, found nothing and skipped them.
func TestLocalSyncFollowsRenamedDirectory(t *testing.T) {
	l, _ := newLocal(t)
	ctx := t.Context()
	a := Attrs{Perm: 0o644, UID: -1, GID: -1}
	noErr(t, l.Mkdir(ctx, "new", 0o755))
	noErr(t, l.Mkdir(ctx, "new/css", 0o755))
	noErr(t, l.Sync(ctx))
	synced := l.dirSynced

	noErr(t, l.WriteFileAtomic(ctx, "new/index.html", strings.NewReader("page"), a))
	noErr(t, l.WriteFileAtomic(ctx, "new/css/site.css", strings.NewReader("css"), a))
	noErr(t, l.Rename(ctx, "new", "live"))
	noErr(t, l.Sync(ctx))
	if got := l.dirSynced - synced; got != 3 {
		t.Errorf("Sync flushed %d directories, want 3 (the root, live, live/css)", got)
	}
	if len(l.unsynced) != 0 {
		t.Errorf("left for the next Sync: %v", l.unsynced)
	}
}

// A deploy that swaps a release directory for a symlink to another release
// holding the same subdirectories (`rm -rf current; ln -s releases/2
// current`), in one batch and replayed: the worker converges. The
// attributes of current/css, a directory the batch changed, were read
// through the store's new symlink (releases/2/css) and sent to a path
// below the worker's symlink, which the worker refused on every retry.
func TestShipperDeployToSymlinkInOneBatch(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	for _, d := range []string{"releases", "releases/2", "releases/2/css", "current", "current/css", "other"} {
		f.mkdir(d)
	}
	f.writeFile("releases/2/css/site.css", "v2")
	f.writeFile("current/css/site.css", "v1")
	f.writeFile("current/a", "a")
	f.writeFile("other/b", "b")
	caughtUpThenStopped(t, f, worker, nil, nil)
	base := f.j.cursor("w1").Applied

	f.exchange("current/a", "other/b")
	f.unlink("current/a")
	f.unlink("current/css/site.css")
	f.rmdir("current/css")
	f.rmdir("current")
	f.symlink("releases/2", "current")
	s := startedShipper(t, f, worker, nil, nil) // every op above in one batch
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
	replaySince(t, f, worker, base, 1, 1000)
}

// A worker that links two files the store keeps apart (same content and
// mtime) gets them split by a full copy: kept, a chmod of one name would
// change the other on the worker.
func TestFullCopySplitsJoinedFiles(t *testing.T) {
	f := newFsim(t)
	worker := workerDir(t)
	f.writeFile("a.html", "same")
	f.writeFile("b.html", "same")
	tm := time.Unix(1_700_000_000, 0)
	f.chtimes("a.html", tm)
	f.chtimes("b.html", tm)
	f.must(os.WriteFile(filepath.Join(worker, "a.html"), []byte("same"), 0o644))
	f.must(os.Link(filepath.Join(worker, "a.html"), filepath.Join(worker, "b.html")))
	f.must(os.Chtimes(filepath.Join(worker, "a.html"), tm, tm))
	s := startedShipper(t, f, worker, nil, nil)
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil) // link groups included
}
