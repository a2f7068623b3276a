// Package transporttest is the conformance suite every replicate.Transport
// passes, and a helper that starts a private OpenSSH sshd for tests.
package transporttest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mirrorfs/mirrorfs/replicate"
)

// Factory returns a fresh transport whose worker root is the local
// directory dir (empty), so that the suite can check results on disk.
// The factory registers its own cleanup.
type Factory func(t *testing.T) (tr replicate.Transport, dir string)

// Run runs the conformance suite against the transports newT makes.
func Run(t *testing.T, newT Factory) {
	tests := []struct {
		name string
		f    func(t *testing.T, tr replicate.Transport, dir string)
	}{
		{"InvalidPaths", testInvalidPaths},
		{"MkdirLstatReadDir", testMkdir},
		{"WriteFileAtomic", testWrite},
		{"WriteFileAtomicFailure", testWriteFailure},
		{"WriteFileAtomicSparse", testSparse},
		{"Rename", testRename},
		{"RemoveRmdir", testRemove},
		{"Symlink", testSymlink},
		{"Link", testLink},
		{"Attrs", testAttrs},
		{"SymlinkedParent", testSymlinkedParent},
		{"Cancelled", testCancelled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr, dir := newT(t)
			tc.f(t, tr, dir)
		})
	}
}

func put(t *testing.T, tr replicate.Transport, p, content string, perm fs.FileMode, mtime time.Time) {
	t.Helper()
	a := replicate.Attrs{Perm: perm, UID: -1, GID: -1, Mtime: mtime}
	if err := tr.WriteFileAtomic(t.Context(), p, strings.NewReader(content), a); err != nil {
		t.Fatalf("WriteFileAtomic(%q): %v", p, err)
	}
}

func mustContent(t *testing.T, dir, p, want string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, p))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != want {
		t.Fatalf("%s = %q, want %q", p, b, want)
	}
}

func noTemps(t *testing.T, dir string) {
	t.Helper()
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), replicate.TempPrefix) {
			t.Errorf("temp file left behind: %s", p)
		}
		return nil
	})
}

func testInvalidPaths(t *testing.T, tr replicate.Transport, dir string) {
	ctx := t.Context()
	for _, p := range []string{"..", "../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "a\x00b", "a/"} {
		checks := map[string]error{
			"Lstat":   func() error { _, err := tr.Lstat(ctx, p); return err }(),
			"Mkdir":   tr.Mkdir(ctx, p, 0o755),
			"Remove":  tr.Remove(ctx, p),
			"Rename":  tr.Rename(ctx, "ok", p),
			"Rename2": tr.Rename(ctx, p, "ok"),
			"Symlink": tr.Symlink(ctx, "target", p),
			"Link":    tr.Link(ctx, p, "ok"),
			"Chmod":   tr.Chmod(ctx, p, 0o644),
			"Write":   tr.WriteFileAtomic(ctx, p, strings.NewReader("x"), replicate.Attrs{Perm: 0o644, UID: -1, GID: -1}),
		}
		for name, err := range checks {
			if !errors.Is(err, replicate.ErrInvalidPath) {
				t.Errorf("%s(%q) = %v, want ErrInvalidPath", name, p, err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "x")); err == nil {
		t.Error("a file appeared outside the root")
	}
}

func testMkdir(t *testing.T, tr replicate.Transport, dir string) {
	ctx := t.Context()
	if err := tr.Mkdir(ctx, "d", 0o750); err != nil {
		t.Fatal(err)
	}
	if err := tr.Mkdir(ctx, "d", 0o750); err == nil {
		t.Error("Mkdir of an existing directory succeeded")
	}
	if err := tr.Mkdir(ctx, "missing/d", 0o750); err == nil {
		t.Error("Mkdir under a missing parent succeeded")
	}
	fi, err := tr.Lstat(ctx, "d")
	if err != nil {
		t.Fatal(err)
	}
	if !fi.IsDir() || fi.Name != "d" {
		t.Errorf("Lstat(d) = %+v", fi)
	}
	if _, err := tr.Lstat(ctx, "nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Lstat(nope) = %v, want ErrNotExist", err)
	}
	root, err := tr.Lstat(ctx, "")
	if err != nil || !root.IsDir() {
		t.Errorf("Lstat(root) = %+v, %v", root, err)
	}
	mt := time.Unix(1_600_000_000, 0)
	put(t, tr, "d/f", "hello", 0o640, mt)
	if err := tr.Symlink(ctx, "f", "d/l"); err != nil {
		t.Fatal(err)
	}
	ents, err := tr.ReadDir(ctx, "d")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]replicate.FileInfo{}
	for _, e := range ents {
		got[e.Name] = e
	}
	if len(got) != 2 {
		t.Fatalf("ReadDir(d) = %+v", ents)
	}
	if f := got["f"]; !f.Mode.IsRegular() || f.Size != 5 || f.Mode.Perm() != 0o640 || !f.Mtime.Equal(mt) {
		t.Errorf("ReadDir entry f = %+v", f)
	}
	if l := got["l"]; l.Mode&fs.ModeSymlink == 0 {
		t.Errorf("ReadDir entry l = %+v", l)
	}
	if ents, err := tr.ReadDir(ctx, ""); err != nil || len(ents) != 1 {
		t.Errorf("ReadDir(root) = %+v, %v", ents, err)
	}
}

func testWrite(t *testing.T, tr replicate.Transport, dir string) {
	ctx := t.Context()
	mt := time.Unix(1_500_000_000, 0)
	put(t, tr, "f", "one", 0o644, mt)
	mustContent(t, dir, "f", "one")
	st, err := os.Lstat(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o644 || !st.ModTime().Equal(mt) {
		t.Errorf("f: mode %v mtime %v", st.Mode(), st.ModTime())
	}
	// Replacing: a reader that keeps the old file open still sees it.
	old, err := os.Open(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	if err := tr.WriteFileAtomic(ctx, "f", bytes.NewReader(big), replicate.Attrs{Perm: 0o755 | fs.ModeSetuid, UID: -1, GID: -1}); err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(old); string(b) != "one" {
		t.Errorf("old handle reads %q: the file was modified in place", b)
	}
	b, err := os.ReadFile(filepath.Join(dir, "f"))
	if err != nil || !bytes.Equal(b, big) {
		t.Fatalf("replaced content: %d bytes, %v", len(b), err)
	}
	if st, _ := os.Lstat(filepath.Join(dir, "f")); st.Mode()&(fs.ModePerm|fs.ModeSetuid) != 0o755|fs.ModeSetuid {
		t.Errorf("mode after replace = %v", st.Mode())
	}
	// Owner: setting one's own uid works everywhere.
	uid, gid := os.Getuid(), os.Getgid()
	if err := tr.WriteFileAtomic(ctx, "g", strings.NewReader(""), replicate.Attrs{Perm: 0o600, UID: uid, GID: gid}); err != nil {
		t.Fatal(err)
	}
	fi, err := tr.Lstat(ctx, "g")
	if err != nil || fi.Size != 0 || int(fi.UID) != uid || int(fi.GID) != gid {
		t.Errorf("g = %+v, %v", fi, err)
	}
	if err := tr.WriteFileAtomic(ctx, "missing/f", strings.NewReader("x"), replicate.Attrs{Perm: 0o644, UID: -1, GID: -1}); err == nil {
		t.Error("write under a missing directory succeeded")
	}
	noTemps(t, dir)
}

type failingReader struct{ n int }

func (r *failingReader) Read(b []byte) (int, error) {
	if r.n > 0 {
		r.n--
		return copy(b, "partial"), nil
	}
	return 0, errors.New("source failed")
}

func testWriteFailure(t *testing.T, tr replicate.Transport, dir string) {
	put(t, tr, "f", "intact", 0o644, time.Time{})
	err := tr.WriteFileAtomic(t.Context(), "f", &failingReader{n: 3}, replicate.Attrs{Perm: 0o644, UID: -1, GID: -1})
	if err == nil || !strings.Contains(err.Error(), "source failed") {
		t.Fatalf("WriteFileAtomic with a failing reader = %v", err)
	}
	mustContent(t, dir, "f", "intact")
	noTemps(t, dir)
}

func testRename(t *testing.T, tr replicate.Transport, dir string) {
	ctx := t.Context()
	put(t, tr, "a", "A", 0o644, time.Time{})
	put(t, tr, "b", "B", 0o644, time.Time{})
	if err := tr.Rename(ctx, "a", "b"); err != nil {
		t.Fatalf("rename over an existing file: %v", err)
	}
	mustContent(t, dir, "b", "A")
	if _, err := tr.Lstat(ctx, "a"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("source still there: %v", err)
	}
	if err := tr.Mkdir(ctx, "d", 0o755); err != nil {
		t.Fatal(err)
	}
	put(t, tr, "d/x", "X", 0o644, time.Time{})
	if err := tr.Rename(ctx, "d", "e"); err != nil {
		t.Fatal(err)
	}
	mustContent(t, dir, "e/x", "X")
	if err := tr.Rename(ctx, "nope", "z"); err == nil {
		t.Error("rename of a missing source succeeded")
	}
	if err := tr.Mkdir(ctx, "full", 0o755); err != nil {
		t.Fatal(err)
	}
	put(t, tr, "full/y", "Y", 0o644, time.Time{})
	if err := tr.Rename(ctx, "e", "full"); err == nil {
		t.Error("rename over a non-empty directory succeeded")
	}
}

func testRemove(t *testing.T, tr replicate.Transport, dir string) {
	ctx := t.Context()
	put(t, tr, "f", "x", 0o644, time.Time{})
	if err := tr.Mkdir(ctx, "d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := tr.Remove(ctx, "d"); err == nil {
		t.Error("Remove of a directory succeeded")
	}
	if err := tr.Rmdir(ctx, "f"); err == nil {
		t.Error("Rmdir of a file succeeded")
	}
	if err := tr.Remove(ctx, "f"); err != nil {
		t.Fatal(err)
	}
	if err := tr.Remove(ctx, "f"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Remove of a missing file = %v, want ErrNotExist", err)
	}
	put(t, tr, "d/x", "x", 0o644, time.Time{})
	if err := tr.Rmdir(ctx, "d"); err == nil {
		t.Error("Rmdir of a non-empty directory succeeded")
	}
	if err := tr.Remove(ctx, "d/x"); err != nil {
		t.Fatal(err)
	}
	if err := tr.Rmdir(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("root not empty: %v", ents)
	}
}

func testSymlink(t *testing.T, tr replicate.Transport, dir string) {
	ctx := t.Context()
	if err := tr.Symlink(ctx, "../outside/target", "l"); err != nil {
		t.Fatal(err)
	}
	got, err := tr.Readlink(ctx, "l")
	if err != nil || got != "../outside/target" {
		t.Errorf("Readlink = %q, %v", got, err)
	}
	if got, _ := os.Readlink(filepath.Join(dir, "l")); got != "../outside/target" {
		t.Errorf("on disk: %q", got)
	}
	if err := tr.Symlink(ctx, "x", "l"); err == nil {
		t.Error("Symlink over an existing name succeeded")
	}
	fi, err := tr.Lstat(ctx, "l")
	if err != nil || fi.Mode&fs.ModeSymlink == 0 {
		t.Errorf("Lstat(l) = %+v, %v", fi, err)
	}
	if err := tr.Remove(ctx, "l"); err != nil {
		t.Fatal(err)
	}
}

func testLink(t *testing.T, tr replicate.Transport, dir string) {
	ctx := t.Context()
	put(t, tr, "a", "A", 0o644, time.Time{})
	if err := tr.Link(ctx, "a", "b"); err != nil {
		if errors.Is(err, replicate.ErrUnsupported) {
			t.Skip("hard links unsupported")
		}
		t.Fatal(err)
	}
	sa, _ := os.Stat(filepath.Join(dir, "a"))
	sb, _ := os.Stat(filepath.Join(dir, "b"))
	if !os.SameFile(sa, sb) {
		t.Error("b is not a hard link to a")
	}
	if err := tr.Link(ctx, "a", "b"); err == nil {
		t.Error("Link over an existing name succeeded")
	}
	if err := tr.Link(ctx, "missing", "c"); err == nil {
		t.Error("Link of a missing file succeeded")
	}
}

func testAttrs(t *testing.T, tr replicate.Transport, dir string) {
	ctx := t.Context()
	put(t, tr, "f", "x", 0o644, time.Time{})
	if err := tr.Chmod(ctx, "f", 0o600|fs.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	mt := time.Unix(1_400_000_000, 0)
	if err := tr.Chtimes(ctx, "f", mt, mt); err != nil {
		t.Fatal(err)
	}
	if err := tr.Chown(ctx, "f", os.Getuid(), os.Getgid()); err != nil {
		t.Fatal(err)
	}
	fi, err := tr.Lstat(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode&(fs.ModePerm|fs.ModeSetgid) != 0o600|fs.ModeSetgid || !fi.Mtime.Equal(mt) {
		t.Errorf("f = %v %v", fi.Mode, fi.Mtime)
	}
	if err := tr.Mkdir(ctx, "d", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := tr.Chmod(ctx, "d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := tr.Chtimes(ctx, "d", mt, mt); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Lstat(filepath.Join(dir, "d")); st.Mode().Perm() != 0o755 || !st.ModTime().Equal(mt) {
		t.Errorf("d = %v %v", st.Mode(), st.ModTime())
	}
	// Attributes are never set through a symlink.
	if err := tr.Symlink(ctx, "f", "l"); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"Chmod":   tr.Chmod(ctx, "l", 0o777),
		"Chtimes": tr.Chtimes(ctx, "l", time.Now(), time.Now()),
		"Chown":   tr.Chown(ctx, "l", os.Getuid(), os.Getgid()),
	} {
		if !errors.Is(err, replicate.ErrSymlink) {
			t.Errorf("%s on a symlink = %v, want ErrSymlink", name, err)
		}
	}
	if st, _ := os.Lstat(filepath.Join(dir, "f")); st.Mode().Perm() != 0o600 {
		t.Errorf("chmod went through the symlink: %v", st.Mode())
	}
	if err := tr.Chmod(ctx, "missing", 0o644); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Chmod(missing) = %v, want ErrNotExist", err)
	}
}

func testSymlinkedParent(t *testing.T, tr replicate.Transport, dir string) {
	ctx := t.Context()
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, "esc")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "in"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("in", filepath.Join(dir, "rel")); err != nil {
		t.Fatal(err)
	}
	a := replicate.Attrs{Perm: 0o644, UID: -1, GID: -1}
	for _, parent := range []string{"esc", "rel"} {
		p := parent + "/x"
		checks := map[string]error{
			"Write":   tr.WriteFileAtomic(ctx, p, strings.NewReader("x"), a),
			"Mkdir":   tr.Mkdir(ctx, p, 0o755),
			"Symlink": tr.Symlink(ctx, "t", p),
			"Rename":  tr.Rename(ctx, "in", p),
			"ReadDir": func() error { _, err := tr.ReadDir(ctx, parent); return err }(),
		}
		for name, err := range checks {
			if !errors.Is(err, replicate.ErrSymlink) {
				t.Errorf("%s(%q) = %v, want ErrSymlink", name, p, err)
			}
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("files written outside the root: %v", ents)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "in")); len(ents) != 0 {
		t.Errorf("files written through a symlink: %v", ents)
	}
}

func testCancelled(t *testing.T, tr replicate.Transport, dir string) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := tr.Mkdir(ctx, "d", 0o755); !errors.Is(err, context.Canceled) {
		t.Errorf("Mkdir with a cancelled context = %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "d")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("cancelled Mkdir happened: %v", err)
	}
}
