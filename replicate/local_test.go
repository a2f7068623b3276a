package replicate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
