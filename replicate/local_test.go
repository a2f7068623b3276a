package replicate

import (
	"os"
	"path/filepath"
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
