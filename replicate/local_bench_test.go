package replicate

import (
	"fmt"
	"strings"
	"testing"
)

// BenchmarkLocalSmallFiles: what a worker (the agent's side, Local) pays
// for 100 small files written together three directories deep, then each
// looked at (Lstat): each operation walks its path (BENCHMARKS.md, "A
// worker's paths walked without following symlinks").
func BenchmarkLocalSmallFiles(b *testing.B) {
	root := b.TempDir()
	l, err := NewLocal(root)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	ctx := b.Context()
	for _, d := range []string{"a", "a/b", "a/b/c"} {
		if err := l.Mkdir(ctx, d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	files := make([]SmallFile, 100)
	for i := range files {
		files[i] = SmallFile{Path: fmt.Sprintf("a/b/c/f%03d.html", i), Data: []byte(strings.Repeat("x", 2048)), Attrs: Attrs{Perm: 0o644, UID: -1, GID: -1}}
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := l.WriteSmallFiles(ctx, files); err != nil {
			b.Fatal(err)
		}
		for _, f := range files {
			if _, err := l.Lstat(ctx, f.Path); err != nil {
				b.Fatal(err)
			}
		}
	}
}
