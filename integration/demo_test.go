package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDemo runs `mirrorfs demo` the way `make demo` does, with
// DEMO_ONESHOT=1: it must replicate its scripted changes to both embedded
// workers and stop cleanly.
func TestDemo(t *testing.T) {
	needFUSE(t)
	bin := mirrorfsBinary(t)
	dir := filepath.Join(t.TempDir(), "demo")
	t.Setenv("DEMO_ONESHOT", "1")
	out, stderr, code := runMirrorfs(t, bin, "demo", "--dir", dir)
	if code != 0 {
		t.Fatalf("demo exited %d\nstdout:\n%s\nstderr:\n%s", code, out, stderr)
	}
	for _, want := range []string{"create index.html", "web-worker-01", "web-worker-02", "DEMO_ONESHOT=1: stopping."} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	for _, w := range []string{"worker1", "worker2"} {
		data, err := os.ReadFile(filepath.Join(dir, w, "index.html"))
		if err != nil || string(data) != "<h1>Version 2</h1>\n<p>appended</p>\n" {
			t.Errorf("%s/index.html = %q, %v", w, data, err)
		}
		if _, err := os.Stat(filepath.Join(dir, w, "css/site.css")); !os.IsNotExist(err) {
			t.Errorf("%s/css/site.css should be gone: %v", w, err)
		}
	}
	if isMounted(filepath.Join(dir, "html")) {
		t.Fatal("demo left its mount behind")
	}
}
