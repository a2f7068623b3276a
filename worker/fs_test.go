package worker

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
)

func TestFileRoundTrip(t *testing.T) {
	w := startWorker(t)
	c := w.sftp(t)

	// Create and write at offsets, out of order, leaving a hole.
	f, err := c.OpenFile("/site/index.html", os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err == nil {
		f.Close()
		t.Fatal("created a file in a directory that does not exist")
	}
	if err := c.Mkdir("/site"); err != nil {
		t.Fatal(err)
	}
	f, err = c.OpenFile("/site/index.html", os.O_RDWR|os.O_CREATE|os.O_EXCL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("world"), 6); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("hello"), 0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 11)
	if n, err := f.ReadAt(buf, 0); (err != nil && err != io.EOF) || n != 11 {
		t.Fatalf("read back: n=%d err=%v", n, err)
	}
	if want := "hello\x00world"; string(buf) != want {
		t.Fatalf("read back %q, want %q", buf, want)
	}
	fi, err := f.Stat() // fstat
	if err != nil || fi.Size() != 11 {
		t.Fatalf("fstat: size %v err %v", fi, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, w.inRoot("site/index.html")); got != "hello\x00world" {
		t.Fatalf("on disk %q", got)
	}
	if _, err := c.OpenFile("/site/index.html", os.O_WRONLY|os.O_CREATE|os.O_EXCL); err == nil {
		t.Fatal("O_EXCL create of an existing file succeeded")
	}

	// Overwrite in place, then read with a read-only handle.
	f, err = c.OpenFile("/site/index.html", os.O_WRONLY)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("_"), 5); err != nil {
		t.Fatal(err)
	}
	f.Close()
	r, err := c.Open("site/index.html") // relative paths start at the root
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || string(got) != "hello_world" {
		t.Fatalf("read %q, %v", got, err)
	}

	// Setstat: mode, times (whole seconds on the wire), size.
	if err := c.Chmod("/site/index.html", 0o640|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)
	atime := mtime.Add(time.Hour)
	if err := c.Chtimes("/site/index.html", atime, mtime); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(w.inRoot("site/index.html"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o640 || st.Mode()&os.ModeSetgid == 0 {
		t.Errorf("mode on disk %v, want 0640|setgid", st.Mode())
	}
	if !st.ModTime().Equal(mtime) {
		t.Errorf("mtime on disk %v, want %v", st.ModTime(), mtime)
	}
	fi, err = c.Stat("/site/index.html")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(mtime) || fi.Size() != 11 {
		t.Errorf("stat over sftp: mode %v mtime %v size %d", fi.Mode(), fi.ModTime(), fi.Size())
	}
	if err := c.Truncate("/site/index.html", 5); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, w.inRoot("site/index.html")); got != "hello" {
		t.Errorf("after truncate %q", got)
	}
	// Fsetstat goes through the handle.
	f, err = c.OpenFile("/site/index.html", os.O_WRONLY)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Chmod(0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if st, _ := os.Stat(w.inRoot("site/index.html")); st.Mode().Perm() != 0o644 || st.Size() != 2 {
		t.Errorf("after fsetstat: %v size %d", st.Mode(), st.Size())
	}

	// Ownership: chown to the current owner always works; as root, to any owner.
	uid, gid := os.Getuid(), os.Getgid()
	if err := c.Chown("/site/index.html", uid, gid); err != nil {
		t.Errorf("chown to own ids: %v", err)
	}
	if uid == 0 {
		if err := c.Chown("/site/index.html", 1234, 5678); err != nil {
			t.Fatalf("chown as root: %v", err)
		}
		st, _ := os.Stat(w.inRoot("site/index.html"))
		if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 1234 || sys.Gid != 5678 {
			t.Errorf("owner on disk %d:%d, want 1234:5678", sys.Uid, sys.Gid)
		}
		fi, _ := c.Stat("/site/index.html")
		if fs, ok := fi.Sys().(*sftp.FileStat); !ok || fs.UID != 1234 || fs.GID != 5678 {
			t.Errorf("owner over sftp %+v", fi.Sys())
		}
	} else if err := c.Chown("/site/index.html", uid+1, gid); !errors.Is(err, os.ErrPermission) {
		t.Errorf("chown to another user as non-root: %v, want permission denied", err)
	}

	// Atomic replace: posix-rename over an existing file; plain rename refuses to replace.
	if err := os.WriteFile(w.inRoot("site/.index.html.tmp"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Rename("/site/.index.html.tmp", "/site/index.html"); err == nil {
		t.Fatal("SSH_FXP_RENAME replaced an existing file")
	}
	if err := c.PosixRename("/site/.index.html.tmp", "/site/index.html"); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, w.inRoot("site/index.html")); got != "new" {
		t.Errorf("after posix-rename %q", got)
	}
	if _, err := os.Lstat(w.inRoot("site/.index.html.tmp")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp file still there: %v", err)
	}
	if err := c.Rename("/site/index.html", "/site/moved.html"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rename("/site/moved.html", "/site/index.html"); err != nil {
		t.Fatal(err)
	}

	// Hard link.
	if err := c.Link("/site/index.html", "/site/alias.html"); err != nil {
		t.Fatal(err)
	}
	a, _ := os.Stat(w.inRoot("site/index.html"))
	b, _ := os.Stat(w.inRoot("site/alias.html"))
	if !os.SameFile(a, b) {
		t.Error("hardlink@openssh.com did not create a hard link")
	}

	// Symlinks keep any target, relative or absolute, dangling or not.
	if err := c.Mkdir("/releases"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mkdir("/releases/5"); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{
		"/current":  "releases/5",
		"/abs":      "/var/www/shared",
		"/up":       "../../etc/passwd",
		"/dangling": "nowhere",
	} {
		if err := c.Symlink(target, link); err != nil {
			t.Fatalf("symlink %s -> %s: %v", link, target, err)
		}
		got, err := c.ReadLink(link)
		if err != nil || got != target {
			t.Errorf("readlink %s = %q, %v; want %q", link, got, err, target)
		}
		if got, err := os.Readlink(w.inRoot(link)); err != nil || got != target {
			t.Errorf("on disk %s -> %q, %v; want %q", link, got, err, target)
		}
		fi, err := c.Lstat(link)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Errorf("lstat %s: %v, %v", link, fi, err)
		}
	}
	// Stat follows a symlink that stays inside the root; no change goes
	// through one, even inside the root: a user of the worker who swaps a
	// directory for a symlink must not redirect the master's changes.
	if fi, err := c.Stat("/current"); err != nil || !fi.IsDir() {
		t.Errorf("stat through symlink: %v, %v", fi, err)
	}
	if err := c.Mkdir("/current/css"); !errors.Is(err, os.ErrPermission) {
		t.Errorf("mkdir through an inner symlink: %v, want permission denied", err)
	}
	if _, err := os.Stat(w.inRoot("releases/5/css")); err == nil {
		t.Error("mkdir through an inner symlink created releases/5/css")
	}
	if err := c.Mkdir("/releases/5/css"); err != nil {
		t.Fatal(err)
	}

	// Directory listing.
	entries, err := c.ReadDir("/")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		if e.Name() == "current" && e.Mode()&os.ModeSymlink == 0 {
			t.Error("readdir follows symlinks")
		}
	}
	slices.Sort(names)
	if want := []string{"abs", "current", "dangling", "releases", "site", "up"}; !slices.Equal(names, want) {
		t.Errorf("readdir / = %v, want %v", names, want)
	}

	// Removal: Remove deletes files and links (not their targets), RemoveDirectory empty dirs only.
	if err := c.Remove("/current"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(w.inRoot("releases/5/css")); err != nil {
		t.Errorf("removing a symlink removed its target: %v", err)
	}
	if err := c.RemoveDirectory("/releases/5"); err == nil {
		t.Error("rmdir of a non-empty directory succeeded")
	}
	if err := c.RemoveDirectory("/site/alias.html"); err == nil {
		t.Error("rmdir of a file succeeded")
	}
	if err := c.RemoveDirectory("/releases/5/css"); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove("/site/alias.html"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(w.inRoot("site/alias.html")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("file still there after remove: %v", err)
	}
	if _, err := c.Stat("/site/alias.html"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat of a removed file: %v, want not exist", err)
	}

	// RealPath, Getwd, StatVFS.
	if p, err := c.RealPath("site/../site/./index.html"); err != nil || p != "/site/index.html" {
		t.Errorf("realpath = %q, %v", p, err)
	}
	if wd, err := c.Getwd(); err != nil || wd != "/" {
		t.Errorf("getwd = %q, %v", wd, err)
	}
	if vfs, err := c.StatVFS("/"); err != nil || vfs.Bsize == 0 || vfs.Namemax == 0 {
		t.Errorf("statvfs = %+v, %v", vfs, err)
	}
}

func TestExtensions(t *testing.T) {
	w := startWorker(t)
	c := w.sftp(t)
	for _, ext := range []string{"posix-rename@openssh.com", "hardlink@openssh.com", "statvfs@openssh.com"} {
		if _, ok := c.HasExtension(ext); !ok {
			t.Errorf("extension %s not advertised", ext)
		}
	}

	// fsync@openssh.com cannot be routed by pkg/sftp's request server; the client reports that
	// cleanly and the data is synced on close instead.
	f, err := c.Create("/file")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("data")); err != nil {
		t.Fatal(err)
	}
	err = f.Sync()
	var se *sftp.StatusError
	if !errors.As(err, &se) || se.FxCode() != sftp.ErrSSHFxOpUnsupported {
		t.Fatalf("Sync = %v, want SSH_FX_OP_UNSUPPORTED", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, w.inRoot("file")); got != "data" {
		t.Errorf("on disk %q", got)
	}
}

// A large copy makes the client send many concurrent writes on one handle.
func TestLargeConcurrentWrite(t *testing.T) {
	w := startWorker(t)
	c := w.sftp(t)
	data := make([]byte, 3<<20+17)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	f, err := c.Create("/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadFrom(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(w.inRoot("big.bin")); !bytes.Equal(got, data) {
		t.Fatalf("on disk: %d bytes, differs from the %d sent", len(got), len(data))
	}
	r, err := c.Open("/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var back bytes.Buffer
	if _, err := r.WriteTo(&back); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back.Bytes(), data) {
		t.Fatal("read back differs")
	}
}

// ".." and absolute paths are interpreted inside the root.
func TestDotDotAndAbsolutePathsStayInRoot(t *testing.T) {
	w := startWorker(t)
	c := w.sftp(t)
	parent := filepath.Dir(w.root)
	// The directories an absolute path names, made inside the root, so
	// that creating /PARENT/escape5 can succeed there.
	if err := os.MkdirAll(w.inRoot(parent), 0o755); err != nil {
		t.Fatal(err)
	}

	for _, p := range []string{"../escape1", "/../escape2", "../../../../../escape3", "a/../../escape4", "/" + parent + "/escape5"} {
		f, err := c.Create(p)
		if err != nil {
			// Only acceptable if it did not land outside either.
			t.Logf("create %s: %v", p, err)
		} else {
			f.Write([]byte("x"))
			f.Close()
		}
	}
	if err := c.Mkdir("../escape-dir"); err != nil {
		t.Logf("mkdir: %v", err)
	}
	if err := c.Symlink("x", "../escape-link"); err != nil {
		t.Logf("symlink: %v", err)
	}
	entries, _ := os.ReadDir(parent)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	if want := []string{"authorized_keys", "client_key", "client_key.pub", "host_key", "host_key.pub", "outside", "root"}; !slices.Equal(names, want) {
		t.Errorf("directory around the root changed: %v, want %v", names, want)
	}
	for _, n := range []string{"escape1", "escape2", "escape3", "escape4", "escape-dir", "escape-link"} {
		if _, err := os.Lstat(w.inRoot(n)); err != nil {
			t.Errorf("%s did not land in the root: %v", n, err)
		}
	}
	// The absolute path /PARENT/escape5 names ROOT/PARENT/escape5, never
	// PARENT/escape5 beside the root.
	if _, err := os.Lstat(w.inRoot(parent + "/escape5")); err != nil {
		t.Errorf("an absolute path did not land in the root: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(parent, "escape5")); err == nil {
		t.Errorf("an absolute path escaped the root")
	}

	// Reading above the root: /../../etc/passwd is /etc/passwd of the root, which does not exist.
	if _, err := c.Stat("../../../../etc/passwd"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat ../../../../etc/passwd: %v, want not exist", err)
	}
	if _, err := c.Open("/etc/passwd"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("open /etc/passwd: %v, want not exist", err)
	}
	if p, err := c.RealPath("../../.."); err != nil || p != "/" {
		t.Errorf("realpath ../../.. = %q, %v", p, err)
	}
}

// Symlinks inside the root that point outside it can be created, listed and removed, but no
// operation follows them.
func TestSymlinkOutOfRootNotFollowed(t *testing.T) {
	w := startWorker(t)
	c := w.sftp(t)

	secret := filepath.Join(w.outside, "secret.txt")
	if err := os.WriteFile(secret, []byte("original"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := os.Chtimes(secret, old, old); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{
		"outabs":  w.outside,                    // absolute, to the directory
		"outrel":  "../outside",                 // relative, climbing out
		"fileabs": secret,                       // absolute, to the file
		"filerel": "../outside/secret.txt",      // relative, to the file
		"deep":    "a/../../outside/secret.txt", // climbs out through a component
	}
	for link, target := range links {
		if err := os.Symlink(target, w.inRoot(link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(w.inRoot("ok.txt"), []byte("ok"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A link made over sftp to an absolute target is not followed either.
	if err := c.Symlink(w.outside, "/madeover"); err != nil {
		t.Fatal(err)
	}

	mustFail := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s succeeded through a symlink out of the root", what)
		}
	}
	openWrite := func(p string, flags int) error {
		f, err := c.OpenFile(p, flags)
		if err == nil {
			_, err = f.Write([]byte("pwned"))
			f.Close()
			return errors.Join(errors.New("opened"), err) // opening at all is a failure
		}
		return nil
	}
	for _, dir := range []string{"outabs", "outrel", "madeover"} {
		if err := openWrite(dir+"/secret.txt", os.O_WRONLY|os.O_TRUNC); err != nil {
			t.Errorf("write %s/secret.txt: %v", dir, err)
		}
		if err := openWrite(dir+"/new.txt", os.O_WRONLY|os.O_CREATE); err != nil {
			t.Errorf("create %s/new.txt: %v", dir, err)
		}
		_, err := c.Open(dir + "/secret.txt")
		mustFail("read "+dir+"/secret.txt", err)
		_, err = c.ReadDir(dir)
		mustFail("readdir "+dir, err)
		_, err = c.Stat(dir + "/secret.txt")
		mustFail("stat "+dir+"/secret.txt", err)
		mustFail("mkdir "+dir+"/d", c.Mkdir(dir+"/d"))
		mustFail("symlink in "+dir, c.Symlink("x", dir+"/l"))
		mustFail("rename into "+dir, c.Rename("/ok.txt", dir+"/ok.txt"))
		mustFail("posix-rename into "+dir, c.PosixRename("/ok.txt", dir+"/ok.txt"))
		mustFail("posix-rename out of "+dir, c.PosixRename(dir+"/secret.txt", "/stolen"))
		mustFail("hardlink from "+dir, c.Link(dir+"/secret.txt", "/stolen"))
		mustFail("remove in "+dir, c.Remove(dir+"/secret.txt"))
		mustFail("chmod in "+dir, c.Chmod(dir+"/secret.txt", 0o666))
	}
	for _, f := range []string{"fileabs", "filerel", "deep"} {
		if err := openWrite(f, os.O_WRONLY); err != nil {
			t.Errorf("write %s: %v", f, err)
		}
		if err := openWrite(f, os.O_RDWR|os.O_CREATE|os.O_TRUNC); err != nil {
			t.Errorf("create/truncate %s: %v", f, err)
		}
		_, err := c.Open(f)
		mustFail("read "+f, err)
		mustFail("chmod "+f, c.Chmod(f, 0o666))
		mustFail("chtimes "+f, c.Chtimes(f, time.Now(), time.Now()))
		mustFail("truncate "+f, c.Truncate(f, 0))
		mustFail("chown "+f, c.Chown(f, os.Getuid(), os.Getgid()))
		_, err = c.Stat(f)
		mustFail("stat "+f, err)
	}

	// Escapes are reported as permission denied, and logged.
	if _, err := c.Open("filerel"); !errors.Is(err, os.ErrPermission) {
		t.Errorf("open filerel: %v, want permission denied", err)
	}
	if !bytes.Contains([]byte(w.logs.String()), []byte("path escapes the root")) {
		t.Error("escape attempts were not logged")
	}

	// The links themselves are ordinary entries of the root.
	for link, target := range links {
		if got, err := c.ReadLink(link); err != nil || got != target {
			t.Errorf("readlink %s = %q, %v; want %q", link, got, err, target)
		}
		if fi, err := c.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Errorf("lstat %s: %v, %v", link, fi, err)
		}
	}
	if err := c.Remove("filerel"); err != nil {
		t.Errorf("remove the link filerel: %v", err)
	}
	if err := c.PosixRename("/ok.txt", "/fileabs"); err != nil {
		t.Errorf("posix-rename over the link fileabs: %v", err)
	}

	// Nothing outside changed.
	st, err := os.Stat(secret)
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, secret); got != "original" || st.Mode().Perm() != 0o600 || !st.ModTime().Equal(old) {
		t.Errorf("outside file changed: %q mode %v mtime %v", got, st.Mode(), st.ModTime())
	}
	entries, _ := os.ReadDir(w.outside)
	if len(entries) != 1 {
		t.Errorf("outside directory changed: %v", entries)
	}
	if fi, err := os.Lstat(w.inRoot("fileabs")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("posix-rename over a link should replace the link: %v, %v", fi, err)
	}
}

// pkg/sftp turns a change through an open handle (FSETSTAT) into one by
// the name the handle was opened with. A user of the worker who renames
// the master's temp file away and puts a symlink to another file of the
// root at its name must not get the mode, owner, size or times meant for
// the temp file on that other file: here a 0600 file with a password.
func TestSetstatThroughHandleNeverFollowsASwappedName(t *testing.T) {
	w := startWorker(t)
	c := w.sftp(t)
	secret := []byte("<?php $db_password='s3cret';")
	if err := os.WriteFile(w.inRoot("config.php"), secret, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := c.OpenFile("/.tmp-upload", os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Rename(w.inRoot(".tmp-upload"), w.inRoot(".tmp-upload.away")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("config.php", w.inRoot(".tmp-upload")); err != nil {
		t.Fatal(err)
	}
	stamp := time.Unix(1_600_000_000, 0)
	for what, err := range map[string]error{
		"fchmod":    f.Chmod(0o644),
		"fchown":    f.Chown(33, 33),
		"ftruncate": f.Truncate(0),
		"futimes":   c.Chtimes("/.tmp-upload", stamp, stamp),
	} {
		if err == nil {
			t.Errorf("%s through a symlink swapped in at the handle's name: no error", what)
		}
	}
	fi, err := os.Stat(w.inRoot("config.php"))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o600 || st.Uid == 33 || fi.Size() != int64(len(secret)) || fi.ModTime().Equal(stamp) {
		t.Errorf("config.php, the target of the symlink, changed: mode %v, uid %d, size %d, mtime %v", fi.Mode().Perm(), st.Uid, fi.Size(), fi.ModTime())
	}
}

// A FIFO in the root (any user who can write there can make one) is not
// opened: a blocking open of it stalled the whole SFTP session, whose
// requests pkg/sftp answers in order.
func TestFifoNotOpened(t *testing.T) {
	w := startWorker(t)
	c := w.sftp(t)
	if err := syscall.Mkfifo(w.inRoot("page.html"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, open := range []func() (*sftp.File, error){
		func() (*sftp.File, error) { return c.Open("/page.html") },
		func() (*sftp.File, error) { return c.OpenFile("/page.html", os.O_WRONLY) },
	} {
		done := make(chan error, 1)
		go func() {
			f, err := open()
			if err == nil {
				f.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil {
				t.Error("a FIFO was opened")
			}
		case <-time.After(5 * time.Second):
			// Unblock the worker so that the test can stop it.
			if f, err := os.OpenFile(w.inRoot("page.html"), os.O_RDWR, 0); err == nil {
				f.Close()
			}
			<-done
			t.Fatal("the worker's open of a FIFO did not answer within 5s: the SFTP session is stuck")
		}
	}
	if _, err := c.Stat("/"); err != nil {
		t.Errorf("the session after the FIFO: %v", err)
	}
}

// A directory swapped by a user of the worker for a symlink to another
// directory of the root redirects none of the master's changes: os.Root,
// which the server used, follows symlinks that stay inside the root, and
// a chmod and a create below uploads (now a symlink to private) landed in
// private.
func TestNoChangeThroughASymlinkedParent(t *testing.T) {
	w := startWorker(t)
	c := w.sftp(t)
	for _, d := range []string{"uploads", "private"} {
		if err := c.Mkdir("/" + d); err != nil {
			t.Fatal(err)
		}
	}
	secret := filepath.Join(w.root, "private", "config.php")
	if err := os.WriteFile(secret, []byte("<?php $pw='s3cret';"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(w.root, "uploads"), filepath.Join(w.root, "uploads.old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("private", filepath.Join(w.root, "uploads")); err != nil {
		t.Fatal(err)
	}
	if err := c.Chmod("/uploads/config.php", 0o644); err == nil {
		t.Errorf("chmod uploads/config.php, uploads now a symlink to private: no error")
	}
	if f, err := c.OpenFile("/uploads/new.php", os.O_WRONLY|os.O_CREATE|os.O_EXCL); err == nil {
		f.Write([]byte("<?php system($_GET['c']);"))
		f.Close()
		t.Errorf("create uploads/new.php, uploads now a symlink to private: no error")
	}
	fi, err := os.Stat(secret)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("private/config.php changed through the symlinked parent uploads: mode %v", fi.Mode().Perm())
	}
	if _, err := os.Lstat(filepath.Join(w.root, "private", "new.php")); err == nil {
		t.Errorf("private/new.php created through the symlinked parent uploads")
	}
}
