package replicate

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// TestLocalSyncFlushesEachDirectoryOnce: WriteFileAtomic and the namespace
// changes leave their directories to Sync, which flushes each changed
// directory once, whatever the number of changes in it.
func TestLocalSyncFlushesEachDirectoryOnce(t *testing.T) {
	dir := t.TempDir()
	l, err := NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
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
