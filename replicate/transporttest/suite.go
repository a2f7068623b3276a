// Package transporttest is the conformance suite every replicate.Transport
// passes, and a helper that starts a private OpenSSH sshd for tests.
package transporttest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mirrorfs/mirrorfs/replicate"
	"golang.org/x/sys/unix"
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
		{"LinkAttrs", testLinkAttrs},
		{"Xattrs", testXattrs},
		{"Special", testSpecial},
		{"Hash", testHash},
		{"SmallWriter", testSmallWrite},
		{"AttrSetter", testSetAttrs},
		{"Sync", testSync},
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

// invalidPaths are refused by every method with ErrInvalidPath.
var invalidPaths = []string{"..", "../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "a\x00b", "a/"}

func testInvalidPaths(t *testing.T, tr replicate.Transport, dir string) {
	ctx := t.Context()
	for _, p := range invalidPaths {
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
	// A setuid file with an owner: the chown, which clears setuid and
	// setgid even to the same owner, must not leave it without them.
	if err := tr.WriteFileAtomic(ctx, "h", strings.NewReader("#!/bin/sh\n"), replicate.Attrs{Perm: 0o755 | fs.ModeSetuid | fs.ModeSetgid, UID: uid, GID: gid}); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Lstat(filepath.Join(dir, "h")); st.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid) != 0o755|fs.ModeSetuid|fs.ModeSetgid {
		t.Errorf("h: mode %v after a write with an owner, want setuid and setgid kept", st.Mode())
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

// wantErrs reports each error of checks that is not want.
func wantErrs(t *testing.T, p string, want error, checks map[string]error) {
	t.Helper()
	for name, err := range checks {
		if !errors.Is(err, want) {
			t.Errorf("%s(%q) = %v, want %v", name, p, err, want)
		}
	}
}

// symlinkedParents makes "esc" a symlink to a directory outside the root
// and "rel" one to the directory "in" inside it, each holding a file x,
// and returns the paths through them that a transport must refuse.
func symlinkedParents(t *testing.T, dir string) (paths []string, outside string) {
	t.Helper()
	outside = t.TempDir()
	in := filepath.Join(dir, "in")
	if err := os.Mkdir(in, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{outside, in} {
		if err := os.WriteFile(filepath.Join(d, "x"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(dir, "esc")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("in", filepath.Join(dir, "rel")); err != nil {
		t.Fatal(err)
	}
	return []string{"esc/x", "rel/x", "esc/new", "rel/new"}, outside
}

// swapParent makes the directory sw with a file x, lets use succeed on
// sw/x (so that the transport may remember sw as a checked directory),
// then replaces sw by a symlink to outside behind the transport's back.
// It returns sw/x, which the transport must now refuse with ErrSymlink.
func swapParent(t *testing.T, tr replicate.Transport, dir, outside string, use func(p string) error) string {
	t.Helper()
	if err := tr.Mkdir(t.Context(), "sw", 0o755); err != nil {
		t.Fatal(err)
	}
	put(t, tr, "sw/x", "x", 0o644, time.Time{})
	if err := use("sw/x"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "sw"), filepath.Join(dir, "sw.old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "sw")); err != nil {
		t.Fatal(err)
	}
	return "sw/x"
}

func lstatT(t *testing.T, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func testLinkAttrs(t *testing.T, tr replicate.Transport, dir string) {
	la, ok := tr.(replicate.LinkAttrs)
	if !ok {
		t.Skip("transport lacks the LinkAttrs capability")
	}
	ctx := t.Context()
	for _, p := range invalidPaths {
		wantErrs(t, p, replicate.ErrInvalidPath, map[string]error{
			"Lchown":   la.Lchown(ctx, p, -1, -1),
			"Lchtimes": la.Lchtimes(ctx, p, time.Now(), time.Now()),
		})
	}

	fmt0 := time.Unix(1_500_000_000, 0)
	put(t, tr, "f", "x", 0o644, fmt0)
	if err := tr.Symlink(ctx, "f", "l"); err != nil {
		t.Fatal(err)
	}
	f, l := filepath.Join(dir, "f"), filepath.Join(dir, "l")
	before := lstatT(t, f)

	// Owner of the link itself; changing the owner to another uid needs root.
	uid, gid := os.Getuid(), os.Getgid()
	if os.Geteuid() == 0 {
		uid, gid = 1234, 1234
	} else {
		t.Log("not root: Lchown to one's own ids only")
	}
	if err := la.Lchown(ctx, "l", uid, gid); err != nil {
		t.Fatal(err)
	}
	if st := lstatT(t, l); int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("link owner = %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
	}
	if st := lstatT(t, f); st.Uid != before.Uid || st.Gid != before.Gid {
		t.Errorf("Lchown went through the symlink: target owner %d:%d", st.Uid, st.Gid)
	}
	// A non-symlink works too, and -1 keeps a field.
	if err := la.Lchown(ctx, "f", uid, -1); err != nil {
		t.Fatal(err)
	}
	if st := lstatT(t, f); int(st.Uid) != uid || st.Gid != before.Gid {
		t.Errorf("f owner = %d:%d, want %d:%d", st.Uid, st.Gid, uid, before.Gid)
	}

	// Times of the link itself, nanoseconds kept.
	at := time.Unix(1_300_000_000, 123_456_789)
	mt := time.Unix(1_350_000_000, 987_654_321)
	if err := la.Lchtimes(ctx, "l", at, mt); err != nil {
		t.Fatal(err)
	}
	st := lstatT(t, l)
	if got := time.Unix(st.Atim.Unix()); !got.Equal(at) {
		t.Errorf("link atime = %v, want %v", got, at)
	}
	if got := time.Unix(st.Mtim.Unix()); !got.Equal(mt) {
		t.Errorf("link mtime = %v, want %v", got, mt)
	}
	if st := lstatT(t, f); !time.Unix(st.Mtim.Unix()).Equal(fmt0) {
		t.Errorf("Lchtimes went through the symlink: target mtime %v", time.Unix(st.Mtim.Unix()))
	}
	if err := tr.Mkdir(ctx, "d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := la.Lchtimes(ctx, "d", at, mt); err != nil {
		t.Fatal(err)
	}
	if fi, err := tr.Lstat(ctx, "d"); err != nil || !fi.Mtime.Equal(mt) {
		t.Errorf("Lstat(d) = %v, %v; want mtime %v", fi.Mtime, err, mt)
	}

	for name, err := range map[string]error{
		"Lchown":   la.Lchown(ctx, "missing", uid, gid),
		"Lchtimes": la.Lchtimes(ctx, "missing", at, mt),
	} {
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s(missing) = %v, want ErrNotExist", name, err)
		}
	}

	paths, outside := symlinkedParents(t, dir)
	paths = append(paths, swapParent(t, tr, dir, outside, func(p string) error {
		return la.Lchtimes(ctx, p, at, at)
	}))
	for _, p := range paths {
		wantErrs(t, p, replicate.ErrSymlink, map[string]error{
			"Lchown":   la.Lchown(ctx, p, uid, gid),
			"Lchtimes": la.Lchtimes(ctx, p, at, mt),
		})
	}
	for _, x := range []string{filepath.Join(outside, "x"), filepath.Join(dir, "in", "x")} {
		if st := lstatT(t, x); time.Unix(st.Mtim.Unix()).Equal(mt) || (uid != os.Getuid() && int(st.Uid) == uid) {
			t.Errorf("%s changed through a symlinked parent", x)
		}
	}
}

// osXattrs filters out the attributes the system sets by itself (LSM
// labels, ACLs), which a test cannot predict.
func osXattrs(m map[string][]byte) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		if !strings.HasPrefix(k, "security.") && !strings.HasPrefix(k, "system.") {
			out[k] = string(v)
		}
	}
	return out
}

func sameXattrs(t *testing.T, xa replicate.Xattrs, p string, want map[string]string) {
	t.Helper()
	m, err := xa.ListXattrs(t.Context(), p)
	if err != nil {
		t.Fatalf("ListXattrs(%q): %v", p, err)
	}
	if m == nil {
		t.Errorf("ListXattrs(%q) = nil map", p)
	}
	got := osXattrs(m)
	if len(got) != len(want) {
		t.Errorf("ListXattrs(%q) = %q, want %q", p, got, want)
		return
	}
	for k, v := range want {
		if gv, ok := got[k]; !ok || gv != v {
			t.Errorf("ListXattrs(%q) = %q, want %q", p, got, want)
			return
		}
	}
}

func testXattrs(t *testing.T, tr replicate.Transport, dir string) {
	xa, ok := tr.(replicate.Xattrs)
	if !ok {
		t.Skip("transport lacks the Xattrs capability")
	}
	ctx := t.Context()
	for _, p := range invalidPaths {
		wantErrs(t, p, replicate.ErrInvalidPath, map[string]error{
			"ListXattrs":  func() error { _, err := xa.ListXattrs(ctx, p); return err }(),
			"SetXattr":    xa.SetXattr(ctx, p, "user.a", []byte("1")),
			"RemoveXattr": xa.RemoveXattr(ctx, p, "user.a"),
		})
	}

	put(t, tr, "f", "x", 0o644, time.Time{})
	if err := tr.Mkdir(ctx, "d", 0o755); err != nil {
		t.Fatal(err)
	}
	sameXattrs(t, xa, "f", map[string]string{})
	if err := xa.SetXattr(ctx, "f", "user.a", []byte("1")); errors.Is(err, unix.ENOTSUP) {
		t.Skipf("the file system of %s lacks user xattrs: %v", dir, err)
	}
	for _, p := range []string{"f", "d"} {
		if err := xa.SetXattr(ctx, p, "user.a", []byte("1")); err != nil {
			t.Fatal(err)
		}
		if err := xa.SetXattr(ctx, p, "user.b", []byte("two\x00bytes")); err != nil {
			t.Fatal(err)
		}
		sameXattrs(t, xa, p, map[string]string{"user.a": "1", "user.b": "two\x00bytes"})
		// On disk, independently of the transport.
		buf := make([]byte, 64)
		if n, err := unix.Lgetxattr(filepath.Join(dir, p), "user.b", buf); err != nil || string(buf[:n]) != "two\x00bytes" {
			t.Errorf("%s: user.b on disk = %q, %v", p, buf[:max(n, 0)], err)
		}
		if err := xa.SetXattr(ctx, p, "user.b", []byte("replaced")); err != nil {
			t.Fatal(err)
		}
		if err := xa.RemoveXattr(ctx, p, "user.a"); err != nil {
			t.Fatal(err)
		}
		sameXattrs(t, xa, p, map[string]string{"user.b": "replaced"})
		if err := xa.RemoveXattr(ctx, p, "user.a"); err != nil {
			t.Errorf("RemoveXattr(%q) of a missing attribute = %v", p, err)
		}
	}

	// A final symlink is not followed: the target's attributes are not
	// listed, and one set on the link stays on the link. Linux allows
	// user.* only on files and directories; trusted.* needs root.
	if err := tr.Symlink(ctx, "f", "l"); err != nil {
		t.Fatal(err)
	}
	sameXattrs(t, xa, "l", map[string]string{})
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A FIFO is never opened (that would block): listing it returns.
	sameXattrs(t, xa, "fifo", map[string]string{})
	if os.Geteuid() == 0 {
		for _, p := range []string{"l", "fifo"} {
			err := xa.SetXattr(ctx, p, "trusted.mirrorfs", []byte("v"))
			if errors.Is(err, unix.ENOTSUP) || errors.Is(err, fs.ErrPermission) {
				t.Logf("trusted.* on %s: %v", p, err)
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			sameXattrs(t, xa, p, map[string]string{"trusted.mirrorfs": "v"})
			if err := xa.RemoveXattr(ctx, p, "trusted.mirrorfs"); err != nil {
				t.Fatal(err)
			}
			sameXattrs(t, xa, p, map[string]string{})
		}
		sameXattrs(t, xa, "f", map[string]string{"user.b": "replaced"})
	}

	for name, err := range map[string]error{
		"ListXattrs":  func() error { _, err := xa.ListXattrs(ctx, "missing"); return err }(),
		"SetXattr":    xa.SetXattr(ctx, "missing", "user.a", []byte("1")),
		"RemoveXattr": xa.RemoveXattr(ctx, "missing", "user.a"),
	} {
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s(missing) = %v, want ErrNotExist", name, err)
		}
	}

	paths, outside := symlinkedParents(t, dir)
	for _, x := range []string{filepath.Join(outside, "x"), filepath.Join(dir, "in", "x")} {
		if err := unix.Lsetxattr(x, "user.keep", []byte("k"), 0); err != nil {
			t.Fatal(err)
		}
	}
	paths = append(paths, swapParent(t, tr, dir, outside, func(p string) error {
		_, err := xa.ListXattrs(ctx, p)
		return err
	}))
	for _, p := range paths {
		wantErrs(t, p, replicate.ErrSymlink, map[string]error{
			"ListXattrs":  func() error { _, err := xa.ListXattrs(ctx, p); return err }(),
			"SetXattr":    xa.SetXattr(ctx, p, "user.evil", []byte("1")),
			"RemoveXattr": xa.RemoveXattr(ctx, p, "user.keep"),
		})
	}
	for _, x := range []string{filepath.Join(outside, "x"), filepath.Join(dir, "in", "x")} {
		if _, err := unix.Lgetxattr(x, "user.keep", nil); err != nil {
			t.Errorf("%s: user.keep removed through a symlinked parent: %v", x, err)
		}
		if _, err := unix.Lgetxattr(x, "user.evil", nil); err == nil {
			t.Errorf("%s: user.evil set through a symlinked parent", x)
		}
	}
}

func testSpecial(t *testing.T, tr replicate.Transport, dir string) {
	sp, ok := tr.(replicate.Special)
	if !ok {
		t.Skip("transport lacks the Special capability")
	}
	ctx := t.Context()
	for _, p := range invalidPaths {
		wantErrs(t, p, replicate.ErrInvalidPath, map[string]error{
			"Mknod": sp.Mknod(ctx, p, fs.ModeNamedPipe|0o644, 0),
		})
	}
	if err := sp.Mknod(ctx, "", fs.ModeNamedPipe|0o644, 0); !errors.Is(err, replicate.ErrInvalidPath) {
		t.Errorf("Mknod(root) = %v, want ErrInvalidPath", err)
	}

	// FIFO, with its exact permission bits whatever the umask.
	if err := sp.Mknod(ctx, "fifo", fs.ModeNamedPipe|0o666, 0); err != nil {
		t.Fatal(err)
	}
	if st := lstatT(t, filepath.Join(dir, "fifo")); st.Mode&unix.S_IFMT != unix.S_IFIFO || st.Mode&0o7777 != 0o666 {
		t.Errorf("fifo mode = %#o", st.Mode)
	}
	if fi, err := tr.Lstat(ctx, "fifo"); err != nil || fi.Mode.Type() != fs.ModeNamedPipe {
		t.Errorf("Lstat(fifo) = %v, %v", fi.Mode, err)
	}
	// An existing name fails and is left alone.
	if err := sp.Mknod(ctx, "fifo", fs.ModeNamedPipe|0o600, 0); err == nil {
		t.Error("Mknod over an existing FIFO succeeded")
	}
	put(t, tr, "f", "intact", 0o644, time.Time{})
	if err := sp.Mknod(ctx, "f", fs.ModeNamedPipe|0o600, 0); err == nil {
		t.Error("Mknod over an existing file succeeded")
	}
	mustContent(t, dir, "f", "intact")
	// Not even through a (dangling) symlink.
	if err := tr.Symlink(ctx, "nowhere", "l"); err != nil {
		t.Fatal(err)
	}
	if err := sp.Mknod(ctx, "l", fs.ModeNamedPipe|0o600, 0); err == nil {
		t.Error("Mknod over a symlink succeeded")
	}
	if _, err := os.Lstat(filepath.Join(dir, "nowhere")); err == nil {
		t.Error("Mknod created the target of a symlink")
	}
	// Types other than FIFOs and devices are refused.
	for _, m := range []fs.FileMode{0o644, fs.ModeDir | 0o755, fs.ModeSymlink | 0o777} {
		if err := sp.Mknod(ctx, "bad", m, 0); err == nil {
			t.Errorf("Mknod with mode %v succeeded", m)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "bad")); err == nil {
		t.Error("a refused Mknod created a file")
	}
	if err := sp.Mknod(ctx, "missing/fifo", fs.ModeNamedPipe|0o600, 0); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Mknod under a missing directory = %v, want ErrNotExist", err)
	}

	paths, outside := symlinkedParents(t, dir)
	swapParent(t, tr, dir, outside, func(string) error {
		return sp.Mknod(ctx, "sw/n", fs.ModeNamedPipe|0o600, 0)
	})
	paths = append(paths, "sw/n2")
	for _, p := range paths {
		wantErrs(t, p, replicate.ErrSymlink, map[string]error{
			"Mknod": sp.Mknod(ctx, p, fs.ModeNamedPipe|0o600, 0),
		})
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 1 {
		t.Errorf("files created outside the root: %v", ents)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "in")); len(ents) != 1 {
		t.Errorf("files created through a symlink: %v", ents)
	}

	// Device nodes need CAP_MKNOD.
	devs := []struct {
		name string
		mode fs.FileMode
		typ  uint32
		rdev uint64
	}{
		{"null", fs.ModeDevice | fs.ModeCharDevice | 0o600, unix.S_IFCHR, unix.Mkdev(1, 3)},
		{"blk", fs.ModeDevice | 0o640, unix.S_IFBLK, unix.Mkdev(7, 200)},
	}
	for _, d := range devs {
		err := sp.Mknod(ctx, d.name, d.mode, d.rdev)
		if errors.Is(err, fs.ErrPermission) && os.Geteuid() != 0 {
			t.Logf("device nodes need root: %v", err)
			continue
		}
		if errors.Is(err, replicate.ErrUnsupported) {
			// The agent refuses them: the master never sends one.
			t.Logf("the transport refuses device nodes: %v", err)
			if _, err := os.Lstat(filepath.Join(dir, d.name)); err == nil {
				t.Errorf("a refused device node %s was created", d.name)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		st := lstatT(t, filepath.Join(dir, d.name))
		if st.Mode&unix.S_IFMT != d.typ || st.Mode&0o7777 != uint32(d.mode.Perm()) || uint64(st.Rdev) != d.rdev {
			t.Errorf("%s: mode %#o rdev %#x, want type %#o perm %v rdev %#x", d.name, st.Mode, st.Rdev, d.typ, d.mode.Perm(), d.rdev)
		}
		if fi, err := tr.Lstat(ctx, d.name); err != nil || fi.Mode.Type() != d.mode.Type() {
			t.Errorf("Lstat(%s) = %v, %v", d.name, fi.Mode, err)
		}
		if err := sp.Mknod(ctx, d.name, d.mode, d.rdev); err == nil {
			t.Errorf("Mknod over an existing %s succeeded", d.name)
		}
	}
}

func testHash(t *testing.T, tr replicate.Transport, dir string) {
	h, ok := tr.(replicate.Hasher)
	if !ok {
		t.Skip("transport lacks the Hasher capability")
	}
	ctx := t.Context()
	for _, p := range invalidPaths {
		_, err := h.Hash(ctx, p)
		wantErrs(t, p, replicate.ErrInvalidPath, map[string]error{"Hash": err})
	}
	big := strings.Repeat("0123456789abcdef", 100_000) // several reads and agent frames
	for name, content := range map[string]string{"empty": "", "small": "hello\n", "big": big} {
		put(t, tr, name, content, 0o600, time.Time{})
		got, err := h.Hash(ctx, name)
		if err != nil {
			t.Fatalf("Hash(%s): %v", name, err)
		}
		if want := sha256.Sum256([]byte(content)); !bytes.Equal(got, want[:]) {
			t.Errorf("Hash(%s) = %x, want %x", name, got, want)
		}
	}
	// Two answers in a row are not overwritten by the next one.
	a, errA := h.Hash(ctx, "small")
	b, errB := h.Hash(ctx, "empty")
	if errA != nil || errB != nil || bytes.Equal(a, b) {
		t.Errorf("Hash(small), Hash(empty) = %x, %v; %x, %v", a, errA, b, errB)
	}
	if _, err := h.Hash(ctx, "missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Hash(missing) = %v, want ErrNotExist", err)
	}
	if err := tr.Symlink(ctx, "small", "link"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Hash(ctx, "link"); !errors.Is(err, replicate.ErrSymlink) {
		t.Errorf("Hash(link) = %v, want ErrSymlink", err)
	}
	if err := tr.Mkdir(ctx, "d", 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Hash(ctx, "d"); err == nil {
		t.Error("Hash of a directory succeeded")
	}
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Hash(ctx, "fifo"); err == nil {
		t.Error("Hash of a FIFO succeeded")
	}
	// Not through a symlinked parent, inside the root or out of it.
	paths, _ := symlinkedParents(t, dir)
	for _, p := range paths[:2] {
		if _, err := h.Hash(ctx, p); !errors.Is(err, replicate.ErrSymlink) {
			t.Errorf("Hash(%s) = %v, want ErrSymlink", p, err)
		}
	}
	// The connection is still usable after the refusals.
	if _, err := h.Hash(ctx, "small"); err != nil {
		t.Errorf("Hash(small) after refusals: %v", err)
	}
}

// testSync: a Syncer's Sync succeeds after writes, renames and removals,
// also when a changed directory was removed before it, and with nothing to
// do; a cancelled context stops it with the context's error.
func testSync(t *testing.T, tr replicate.Transport, dir string) {
	sy, ok := tr.(replicate.Syncer)
	if !ok {
		t.Skip("transport has no Syncer capability")
	}
	ctx := t.Context()
	if err := tr.Mkdir(ctx, "d", 0o755); err != nil {
		t.Fatal(err)
	}
	put(t, tr, "d/a", "a", 0o644, time.Time{})
	if err := tr.Rename(ctx, "d/a", "b"); err != nil {
		t.Fatal(err)
	}
	if err := tr.Mkdir(ctx, "gone", 0o755); err != nil {
		t.Fatal(err)
	}
	put(t, tr, "gone/x", "x", 0o644, time.Time{})
	if err := tr.Remove(ctx, "gone/x"); err != nil {
		t.Fatal(err)
	}
	if err := tr.Rmdir(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := sy.Sync(ctx); err != nil {
			t.Fatalf("Sync #%d: %v", i+1, err)
		}
	}
	mustContent(t, dir, "b", "a")
	put(t, tr, "c", "c", 0o644, time.Time{})
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := sy.Sync(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sync with a cancelled context = %v, want context.Canceled", err)
	}
	if err := sy.Sync(ctx); err != nil {
		t.Fatalf("Sync after a cancelled one: %v", err)
	}
}

// testSmallWrite: WriteSmallFiles writes a file atomically like
// WriteFileAtomic, keeps the worker's file (same inode, new attributes)
// when it has the content already, and fails where WriteFileAtomic fails
// (a directory in the way, a missing parent), so that the caller mends it.
func testSmallWrite(t *testing.T, tr replicate.Transport, dir string) {
	sw, ok := tr.(replicate.SmallWriter)
	if !ok {
		t.Skip("transport lacks the SmallWriter capability")
	}
	ctx := t.Context()
	write := func(p string, data []byte, a replicate.Attrs) (bool, error) {
		t.Helper()
		res, err := sw.WriteSmallFiles(ctx, []replicate.SmallFile{{Path: p, Data: data, Attrs: a}})
		if err != nil {
			t.Fatalf("WriteSmallFiles %s: transport failed: %v", p, err)
		}
		if len(res) != 1 {
			t.Fatalf("WriteSmallFiles of one file: %d results", len(res))
		}
		return res[0].Kept, res[0].Err
	}
	ino := func(p string) uint64 {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, p), &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	page := []byte(strings.Repeat("<p>a page that compresses well</p>\n", 100))
	mt := time.Unix(1_600_000_000, 0)
	kept, err := write("p.html", page, replicate.Attrs{Perm: 0o644, UID: -1, GID: -1, Mtime: mt})
	if err != nil || kept {
		t.Fatalf("new file: kept %v, %v", kept, err)
	}
	mustContent(t, dir, "p.html", string(page))
	first := ino("p.html")

	// The same content again, with new attributes: kept.
	mt2 := mt.Add(time.Hour)
	kept, err = write("p.html", page, replicate.Attrs{Perm: 0o600, UID: -1, GID: -1, Mtime: mt2})
	if err != nil || !kept {
		t.Fatalf("same content: kept %v, %v", kept, err)
	}
	st, err := os.Lstat(filepath.Join(dir, "p.html"))
	if err != nil {
		t.Fatal(err)
	}
	if ino("p.html") != first || st.Mode().Perm() != 0o600 || !st.ModTime().Equal(mt2) {
		t.Errorf("kept file: inode %d (was %d), mode %v, mtime %v, want the same inode, 0600, %v", ino("p.html"), first, st.Mode(), st.ModTime(), mt2)
	}

	// Other content of the same size: written anew, and a reader of the
	// old file still sees it whole.
	old, err := os.Open(filepath.Join(dir, "p.html"))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	other := bytes.ToUpper(page)
	kept, err = write("p.html", other, replicate.Attrs{Perm: 0o644, UID: -1, GID: -1, Mtime: mt})
	if err != nil || kept {
		t.Fatalf("changed content: kept %v, %v", kept, err)
	}
	mustContent(t, dir, "p.html", string(other))
	if b, _ := io.ReadAll(old); !bytes.Equal(b, page) {
		t.Error("the old file was modified in place")
	}
	if ino("p.html") == first {
		t.Error("changed content written into the worker's file in place")
	}

	// A worker file with another name is not kept, even with the same
	// content: the new file splits the link group.
	if err := os.Link(filepath.Join(dir, "p.html"), filepath.Join(dir, "q.html")); err != nil {
		t.Fatal(err)
	}
	kept, err = write("p.html", other, replicate.Attrs{Perm: 0o644, UID: -1, GID: -1, Mtime: mt2})
	if err != nil || kept {
		t.Fatalf("same content, hard-linked worker file: kept %v, %v", kept, err)
	}
	mustContent(t, dir, "p.html", string(other))
	if ino("p.html") == ino("q.html") {
		t.Error("p.html is still linked to q.html")
	}
	if st, err := os.Lstat(filepath.Join(dir, "q.html")); err != nil || !st.ModTime().Equal(mt) {
		t.Errorf("q.html: %v, %v; want it untouched (mtime %v)", st, err, mt)
	}

	// Where WriteFileAtomic fails, WriteSmallFile fails too.
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := write("d", page, replicate.Attrs{Perm: 0o644, UID: -1, GID: -1}); err == nil {
		t.Error("a small file written over a directory")
	}
	if _, err := write("missing/f", page, replicate.Attrs{Perm: 0o644, UID: -1, GID: -1}); err == nil {
		t.Error("a small file written under a missing directory")
	}
	for _, p := range invalidPaths {
		_, err := write(p, page, replicate.Attrs{Perm: 0o644, UID: -1, GID: -1})
		wantErrs(t, p, replicate.ErrInvalidPath, map[string]error{"WriteSmallFile": err})
	}

	// Several files at once, each with its own outcome: a failed one
	// changes nothing for the others.
	batch := []replicate.SmallFile{
		{Path: "b1", Data: []byte("one"), Attrs: replicate.Attrs{Perm: 0o644, UID: -1, GID: -1}},
		{Path: "d", Data: []byte("in the way"), Attrs: replicate.Attrs{Perm: 0o644, UID: -1, GID: -1}},
		{Path: "p.html", Data: other, Attrs: replicate.Attrs{Perm: 0o644, UID: -1, GID: -1, Mtime: mt}},
		{Path: "b2", Data: page, Attrs: replicate.Attrs{Perm: 0o600, UID: -1, GID: -1}},
	}
	res, err := sw.WriteSmallFiles(ctx, batch)
	if err != nil || len(res) != len(batch) {
		t.Fatalf("batch: %d results, %v", len(res), err)
	}
	if res[0].Err != nil || res[0].Kept || res[1].Err == nil || res[2].Err != nil || !res[2].Kept || res[3].Err != nil || res[3].Kept {
		t.Errorf("batch results %+v: want b1 written, d refused, p.html kept, b2 written", res)
	}
	mustContent(t, dir, "b1", "one")
	mustContent(t, dir, "b2", string(page))
	noTemps(t, dir)

	// A path twice in one call: the later content wins, whatever the
	// worker had (here the later one: it must not be kept and then
	// replaced by the earlier).
	twice := []replicate.SmallFile{
		{Path: "b1", Data: []byte("earlier"), Attrs: replicate.Attrs{Perm: 0o644, UID: -1, GID: -1}},
		{Path: "b1", Data: []byte("one"), Attrs: replicate.Attrs{Perm: 0o644, UID: -1, GID: -1}},
	}
	if res, err := sw.WriteSmallFiles(ctx, twice); err != nil || len(res) != 2 || res[0].Err != nil || res[1].Err != nil {
		t.Fatalf("the same path twice: %+v, %v", res, err)
	}
	mustContent(t, dir, "b1", "one")

	// Many files at once (more than an implementation may write side by
	// side), one of them refused: each gets its own outcome, in order.
	if err := os.Mkdir(filepath.Join(dir, "many"), 0o755); err != nil {
		t.Fatal(err)
	}
	var many []replicate.SmallFile
	for i := range 300 {
		p := fmt.Sprintf("many/f%03d", i)
		if i == 150 {
			p = "missing/f150"
		}
		many = append(many, replicate.SmallFile{Path: p, Data: []byte(p), Attrs: replicate.Attrs{Perm: 0o644, UID: -1, GID: -1}})
	}
	res, err = sw.WriteSmallFiles(ctx, many)
	if err != nil || len(res) != len(many) {
		t.Fatalf("300 files: %d results, %v", len(res), err)
	}
	for i, r := range res {
		if (r.Err == nil) != (i != 150) || r.Kept {
			t.Errorf("file %d (%s): kept %v, %v; want written, or refused for a missing parent", i, many[i].Path, r.Kept, r.Err)
			continue
		}
		if i != 150 {
			mustContent(t, dir, many[i].Path, many[i].Path)
		}
	}
	noTemps(t, dir)
}

func testSetAttrs(t *testing.T, tr replicate.Transport, dir string) {
	as, ok := tr.(replicate.AttrSetter)
	if !ok {
		t.Skip("transport lacks the AttrSetter capability")
	}
	ctx := t.Context()
	t0, t1, t2 := time.Unix(1_500_000_000, 0), time.Unix(1_600_000_000, 123), time.Unix(1_700_000_000, 456)
	put(t, tr, "f.html", "page", 0o644, t0)
	if err := tr.Mkdir(ctx, "d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := tr.Symlink(ctx, "f.html", "l"); err != nil {
		t.Fatal(err)
	}
	attrs := func(perm fs.FileMode, mt time.Time) replicate.Attrs {
		return replicate.Attrs{Perm: perm, UID: -1, GID: -1, Atime: mt, Mtime: mt}
	}
	items := []replicate.AttrItem{
		{Path: "d", Dir: true, Attrs: attrs(0o750, t1)},
		{Path: "f.html", Attrs: attrs(0o600, t2)},
		{Path: "missing", Attrs: attrs(0o600, t2)},
		{Path: "no/such/parent", Dir: true, Attrs: attrs(0o700, t2)},
		{Path: "l", Attrs: attrs(0o777, t2)},                 // a symlink: left alone, not followed
		{Path: "d", Attrs: attrs(0o700, t2)},                 // not a directory: left alone
		{Path: "f.html", Dir: true, Attrs: attrs(0o700, t1)}, // a directory: left alone
		{Path: "../up", Attrs: attrs(0o700, t1)},
		{Path: "", Dir: true, Attrs: attrs(0o711, t2)}, // the root
	}
	res, err := as.SetAttrs(ctx, items)
	if err != nil || len(res) != len(items) {
		t.Fatalf("SetAttrs: %d results, %v", len(res), err)
	}
	want := []bool{true, true, false, false, false, false, false, false, true}
	for i, r := range res {
		if items[i].Path == "../up" {
			if !errors.Is(r.Err, replicate.ErrInvalidPath) {
				t.Errorf("item ../up: %v, want ErrInvalidPath", r.Err)
			}
			continue
		}
		if r.Err != nil || r.Found != want[i] {
			t.Errorf("item %d (%q, dir %v): found %v, %v; want found %v, no error", i, items[i].Path, items[i].Dir, r.Found, r.Err, want[i])
		}
	}
	check := func(p string, perm fs.FileMode, mt time.Time) {
		t.Helper()
		fi, err := os.Lstat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != perm || !fi.ModTime().Equal(mt) {
			t.Errorf("%s: mode %v, mtime %v; want %v, %v", p, fi.Mode().Perm(), fi.ModTime(), perm, mt)
		}
	}
	check("d", 0o750, t1)
	check("f.html", 0o600, t2)
	check("", 0o711, t2)
	if _, err := os.Lstat(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing: %v, want it still missing", err)
	}

	if os.Geteuid() != 0 {
		return
	}
	// As root: a new owner for a setuid file, whose bit the chown clears.
	put(t, tr, "tool", "#!/bin/sh\n", 0o755|fs.ModeSetuid, t0)
	owned := replicate.Attrs{Perm: 0o755 | fs.ModeSetuid, UID: 4242, GID: 4343, Atime: t1, Mtime: t1}
	res, err = as.SetAttrs(ctx, []replicate.AttrItem{{Path: "tool", Attrs: owned}})
	if err != nil || len(res) != 1 || !res[0].Found || res[0].Err != nil {
		t.Fatalf("SetAttrs of an owner: %+v, %v", res, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "tool"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 4242 || st.Gid != 4343 || st.Mode&0o7777 != 0o4755 {
		t.Errorf("tool: uid %d gid %d mode %o; want 4242 4343 4755", st.Uid, st.Gid, st.Mode&0o7777)
	}
}
