package replicate

import (
	"context"
	"fmt"
	"io/fs"
	"testing"
)

// dirsLstat answers as if every path were a directory.
func dirsLstat(context.Context, string) (FileInfo, error) {
	return FileInfo{Mode: fs.ModeDir | 0o755}, nil
}

// TestDirCheckInvalidate: invalidating a path forgets it and everything
// below it, and nothing else.
func TestDirCheckInvalidate(t *testing.T) {
	var c dirCheck
	for _, p := range []string{"a/b/c/f", "a/bb/f", "x/f"} {
		if err := c.check(t.Context(), p, dirsLstat); err != nil {
			t.Fatal(err)
		}
	}
	c.invalidate("a/b/c/f") // a file: no directory of it is cached
	c.invalidate("a/b")
	for d, want := range map[string]bool{"a": true, "a/b": false, "a/b/c": false, "a/bb": true, "x": true} {
		if c.ok[d] != want {
			t.Errorf("after invalidate(a/b): %q cached = %v, want %v", d, c.ok[d], want)
		}
	}
}

// BenchmarkDirCheckInvalidateFile: the invalidation each file write does,
// with the directories of a large tree cached (a full copy of a web root).
func BenchmarkDirCheckInvalidateFile(b *testing.B) {
	var c dirCheck
	for i := range 10000 {
		if err := c.check(b.Context(), fmt.Sprintf("site/d%d/sub/index.html", i), dirsLstat); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		c.invalidate("site/d5000/sub/index.html")
	}
}
