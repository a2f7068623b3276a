package replicate

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A worker root swapped for a symlink after OpenRoot checked it, before it
// opened it, is refused: the open followed the link. Both the agent
// (NewLocal) and `mirrorfs worker` open their root this way.
func TestOpenRootRefusesRootSwappedAfterCheck(t *testing.T) {
	base := t.TempDir()
	root, outside := filepath.Join(base, "www"), filepath.Join(base, "outside")
	for _, d := range []string{root, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	betweenRootCheckAndOpen = func() {
		if err := os.Rename(root, root+".old"); err != nil {
			t.Error(err)
		}
		if err := os.Symlink(outside, root); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(func() { betweenRootCheckAndOpen = func() {} })

	l, err := NewLocal(root)
	if err == nil {
		l.Close()
		t.Fatalf("NewLocal of %s swapped for a symlink to %s after its check: no error", root, outside)
	}
	for _, want := range []string{root, "replaced while it was opened"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// Chmod and Chtimes change the entry they were asked for, even while a
// user of the worker swaps a symlink to another file in its place again
// and again (RENAME_EXCHANGE): a check then a change by name followed the
// symlink in between (a review saw it within 6 to 1,822 attempts) and
// made a 0600 file 0644, or gave it another mtime.
func TestLocalAttrsNeverFollowASwappedSymlink(t *testing.T) {
	stamp := time.Unix(1_600_000_000, 0)
	for name, change := range map[string]func(l *Local) error{
		"chmod":   func(l *Local) error { return l.Chmod(t.Context(), "page.html", 0o644) },
		"chtimes": func(l *Local) error { return l.Chtimes(t.Context(), "page.html", stamp, stamp) },
	} {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			for name, content := range map[string]string{"page.html": "page", "config.php": "secret"} {
				if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Symlink("config.php", filepath.Join(root, "swap")); err != nil {
				t.Fatal(err)
			}
			l, err := NewLocal(root)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			var stop atomic.Bool
			swapped := make(chan struct{})
			go func() {
				defer close(swapped)
				a, b := filepath.Join(root, "page.html"), filepath.Join(root, "swap")
				for !stop.Load() {
					_ = unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE)
				}
			}()
			defer func() { stop.Store(true); <-swapped }()
			for i := range 5000 {
				_ = change(l) // refused when it meets the symlink
				fi, err := os.Stat(filepath.Join(root, "config.php"))
				if err == nil && (fi.Mode().Perm() != 0o600 || fi.ModTime().Equal(stamp)) {
					t.Fatalf("%s of page.html followed a symlink swapped in: config.php is %v, mtime %v (attempt %d)", name, fi.Mode().Perm(), fi.ModTime(), i+1)
				}
			}
		})
	}
}

// A directory the worker already checked, swapped by a user of the worker
// for a symlink to another directory of the root, redirects nothing: the
// check was cached, and os.Root, which Local used, follows symlinks that
// stay inside the root. Every operation now walks its parents without
// following any symlink.
func TestLocalNeverFollowsACheckedParentSwappedForASymlink(t *testing.T) {
	l, root := newTestLocal(t)
	ctx := t.Context()
	a := Attrs{Perm: 0o644, UID: -1, GID: -1}
	for _, d := range []string{"uploads", "private"} {
		if err := l.Mkdir(ctx, d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.WriteFileAtomic(ctx, "uploads/a.txt", strings.NewReader("a"), a); err != nil {
		t.Fatal(err) // checks (and caches) uploads
	}
	for name, content := range map[string]string{"config.php": "secret", "keep.txt": "keep", "read.txt": "private"} {
		if err := os.WriteFile(filepath.Join(root, "private", name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(filepath.Join(root, "uploads"), filepath.Join(root, "uploads.old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("private", filepath.Join(root, "uploads")); err != nil {
		t.Fatal(err)
	}
	stamp := time.Unix(1_600_000_000, 0)
	for what, err := range map[string]error{
		"write":   l.WriteFileAtomic(ctx, "uploads/b.txt", strings.NewReader("redirected"), a),
		"chmod":   l.Chmod(ctx, "uploads/config.php", 0o644),
		"chtimes": l.Chtimes(ctx, "uploads/config.php", stamp, stamp),
		"remove":  l.Remove(ctx, "uploads/keep.txt"),
		"mkdir":   l.Mkdir(ctx, "uploads/d", 0o755),
		"rename":  l.Rename(ctx, "uploads.old/a.txt", "uploads/a.txt"),
		"hash":    func() error { _, err := l.Hash(ctx, "uploads/read.txt"); return err }(),
	} {
		if !errors.Is(err, ErrSymlink) {
			t.Errorf("%s below uploads, now a symlink to private: %v, want ErrSymlink", what, err)
		}
	}
	ents, err := os.ReadDir(filepath.Join(root, "private"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	fi, err := os.Stat(filepath.Join(root, "private", "config.php"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"config.php", "keep.txt", "read.txt"}) || fi.Mode().Perm() != 0o600 || fi.ModTime().Equal(stamp) {
		t.Errorf("private changed through the symlink: entries %v, config.php %v %v", names, fi.Mode().Perm(), fi.ModTime())
	}
}

// WriteSmallFiles finishes a group's temp files side by side, and each
// finish walks its parent; a walk that fails forgets what dirCheck had
// checked. While a user of the worker swaps the directory for a symlink
// again and again, the goroutines wrote dirCheck's map at once: "fatal
// error: concurrent map writes" killed the agent (a review saw it within
// one to three runs of 10 s; with -race at once).
func TestLocalSmallGroupWhileDirectorySwapped(t *testing.T) {
	l, root := newTestLocal(t)
	ctx := t.Context()
	if err := l.Mkdir(ctx, "d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "elsewhere"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("elsewhere", filepath.Join(root, "s")); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		a, b := filepath.Join(root, "d"), filepath.Join(root, "s")
		for !stop.Load() {
			_ = unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE)
			time.Sleep(50 * time.Microsecond)
		}
	}()
	defer func() { stop.Store(true); <-done }()
	stamp := time.Unix(1_600_000_000, 0)
	deadline := time.Now().Add(3 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		files := make([]SmallFile, 32)
		for j := range files {
			files[j] = SmallFile{Path: fmt.Sprintf("d/f%d-%d", i, j), Data: []byte("x"), Attrs: Attrs{Perm: 0o644, UID: -1, GID: -1, Mtime: stamp}}
		}
		_, _ = l.WriteSmallFiles(ctx, files)
	}
}

// A second Close of a Local closes nothing: it closed whatever descriptor
// had its root's number by then, here another Local's root.
func TestLocalCloseTwice(t *testing.T) {
	a, err := NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Mkdir(t.Context(), "before", 0o755); err != nil {
		t.Fatal(err)
	}
	_ = a.Close() // a second Close of a
	if err := b.Mkdir(t.Context(), "after", 0o755); err != nil {
		t.Errorf("Mkdir in b after a second Close of a: %v", err)
	}
}

// A closed Local refuses to work (fs.ErrClosed, as os.Root did): it
// walked from a descriptor number that another Local may hold by then,
// and its write landed in the other root.
func TestLocalUsedAfterClose(t *testing.T) {
	a, err := NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	other := t.TempDir()
	b, err := NewLocal(other)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	err = a.Mkdir(t.Context(), "from-a", 0o755)
	if _, serr := os.Lstat(filepath.Join(other, "from-a")); serr == nil || !errors.Is(err, fs.ErrClosed) {
		t.Errorf("Mkdir on a closed Local: %v (created in another Local's root: %v); want fs.ErrClosed", err, serr == nil)
	}
}

// newTestLocal is a Local on a new directory, closed when the test ends.
func newTestLocal(t *testing.T) (*Local, string) {
	t.Helper()
	root := t.TempDir()
	l, err := NewLocal(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, root
}
