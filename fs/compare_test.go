package fs

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mirrorfs/mirrorfs/journal"
)

// A comparison test runs the same script once through the mount and once
// in a plain directory on the same filesystem as the store, and fails if
// the two runs saw anything different: results, errnos, stat fields. It
// then checks that the store and the plain directory hold the same tree.

// script records what each step of a comparison test observed.
type script struct {
	t     *testing.T
	root  string // where this run works: the mount or the plain directory
	lines []string
	rec   *memRecorder // the mount's, nil in the plain directory
}

// released waits, through the mount, for the kernel to release every
// handle closed so far, so that the ops journaled next come after their
// Close (see memRecorder.settled).
func (s *script) released() {
	if s.rec != nil {
		s.rec.released(s.t)
	}
}

// p is the path of rel in this run's root.
func (s *script) p(rel string) string { return filepath.Join(s.root, rel) }

// logf records an observation.
func (s *script) logf(format string, args ...any) {
	s.lines = append(s.lines, fmt.Sprintf(format, args...))
}

// e records the outcome of a step: "ok" or the errno's name.
func (s *script) e(step string, err error) error {
	s.lines = append(s.lines, step+": "+errName(err))
	return err
}

// must records the outcome of a step that must succeed in both runs.
func (s *script) must(step string, err error) {
	s.t.Helper()
	if s.e(step, err) != nil {
		s.t.Fatalf("%s in %s: %v", step, s.root, err)
	}
}

// stat records the attributes of rel (lstat) that must be equal between
// runs; times only when withTimes is set.
func (s *script) stat(rel string, withTimes bool) {
	var st unix.Stat_t
	if err := unix.Lstat(s.p(rel), &st); err != nil {
		s.e("lstat "+rel, err)
		return
	}
	s.logf("lstat %s: %s", rel, statLine(&st, withTimes))
}

// fstat records fstat of fd like stat.
func (s *script) fstat(what string, fd int, withTimes bool) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		s.e("fstat "+what, err)
		return
	}
	s.logf("fstat %s: %s", what, statLine(&st, withTimes))
}

func statLine(st *unix.Stat_t, withTimes bool) string {
	l := fmt.Sprintf("mode=%o nlink=%d uid=%d gid=%d size=%d blocks=%d rdev=%d", st.Mode, st.Nlink, st.Uid, st.Gid, st.Size, st.Blocks, st.Rdev)
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		// A directory's size and blocks depend on its history.
		l = fmt.Sprintf("mode=%o nlink=%d uid=%d gid=%d", st.Mode, st.Nlink, st.Uid, st.Gid)
	}
	if withTimes {
		l += fmt.Sprintf(" atime=%d.%09d mtime=%d.%09d", st.Atim.Sec, st.Atim.Nsec, st.Mtim.Sec, st.Mtim.Nsec)
	}
	return l
}

// read records the content of rel.
func (s *script) read(rel string) {
	b, err := os.ReadFile(s.p(rel))
	if err != nil {
		s.e("read "+rel, err)
		return
	}
	s.logf("read %q: %q", rel, b)
}

// asNobody runs one operation as uid/gid 65534 in a child process and
// records its outcome.
func (s *script) asNobody(op string, args ...string) {
	s.t.Helper()
	s.logf("as nobody %s %s: %s", op, strings.Join(relAll(s.root, args), " "), runAs(s.t, 65534, 65534, op, args...))
}

func relAll(root string, args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if r, err := filepath.Rel(root, a); err == nil && !strings.HasPrefix(r, "..") {
			a = r
		}
		out[i] = a
	}
	return out
}

func errName(err error) string {
	if err == nil {
		return "ok"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if n := unix.ErrnoName(errno); n != "" {
			return n
		}
		return fmt.Sprintf("errno %d", int(errno))
	}
	return "error " + err.Error()
}

// comparison is one mount and a plain directory beside its store.
type comparison struct {
	mnt, store, plain string
	rec               *memRecorder
}

func newComparison(t *testing.T) *comparison {
	t.Helper()
	mnt, store, rec := newMount(t)
	plain := filepath.Join(filepath.Dir(store), "plain")
	if err := os.Mkdir(plain, 0o755); err != nil {
		t.Fatal(err)
	}
	return &comparison{mnt: mnt, store: store, plain: plain, rec: rec}
}

// run runs fn through the mount and in the plain directory, fails on any
// difference, and returns the ops the mount journaled meanwhile.
func (c *comparison) run(t *testing.T, name string, fn func(s *script)) []journal.Op {
	t.Helper()
	c.rec.settled(t)
	viaMount := &script{t: t, root: c.mnt, rec: c.rec}
	fn(viaMount)
	ops := c.rec.settled(t)
	plain := &script{t: t, root: c.plain}
	fn(plain)
	t.Logf("%s observed:\n  %s", name, strings.Join(viaMount.lines, "\n  "))
	if !slices.Equal(viaMount.lines, plain.lines) {
		t.Errorf("%s: mount and plain directory differ:\n%s", name, diffLines(viaMount.lines, plain.lines))
	}
	for _, o := range ops {
		if strings.Contains(o.Path, ".go-fuse") || strings.Contains(o.NewPath, ".go-fuse") {
			t.Errorf("%s: journaled a synthetic path: %+v", name, o)
		}
	}
	c.sameTree(t, name)
	return ops
}

func diffLines(a, b []string) string {
	var sb strings.Builder
	for i := 0; i < max(len(a), len(b)); i++ {
		var x, y string
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		mark := "  "
		if x != y {
			mark = "! "
		}
		fmt.Fprintf(&sb, "%smount: %s\n%splain: %s\n", mark, x, mark, y)
	}
	return sb.String()
}

// sameTree fails if the store and the plain directory differ in names,
// types, modes, owners, sizes, contents, symlink targets, link counts or
// user xattrs.
func (c *comparison) sameTree(t *testing.T, name string) {
	t.Helper()
	a, b := treeLines(t, c.store), treeLines(t, c.plain)
	if !slices.Equal(a, b) {
		t.Errorf("%s: store and plain directory differ:\n%s", name, diffLines(a, b))
	}
}

func treeLines(t *testing.T, root string) []string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		l := fmt.Sprintf("%q %s", rel, statLine(&st, false))
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			l += fmt.Sprintf(" sha=%x", sha256.Sum256(b))
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			l += fmt.Sprintf(" -> %q", target)
		}
		if rel != "." {
			l += " xattrs=" + xattrLine(p)
		}
		lines = append(lines, l)
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return lines
}

func xattrLine(p string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return errName(err)
	}
	var names []string
	for _, nm := range bytes.Split(buf[:n], []byte{0}) {
		if len(nm) > 0 {
			names = append(names, string(nm))
		}
	}
	sort.Strings(names)
	var parts []string
	for _, nm := range names {
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, nm, v)
		if err != nil {
			parts = append(parts, nm+"="+errName(err))
			continue
		}
		parts = append(parts, fmt.Sprintf("%s=%q", nm, v[:m]))
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// opKinds lists "kind path" of ops, like kinds, with NewPath for renames
// and links.
func opKinds(ops []journal.Op) []string {
	var ks []string
	for _, o := range ops {
		k := o.Kind.String() + " " + o.Path
		if o.NewPath != "" {
			k += " -> " + o.NewPath
		}
		ks = append(ks, k)
	}
	return ks
}

// wantOps fails unless the journaled ops are exactly want (as opKinds).
func wantOps(t *testing.T, step string, ops []journal.Op, want ...string) {
	t.Helper()
	if got := opKinds(ops); !slices.Equal(got, want) {
		t.Errorf("%s journaled %q, want %q", step, got, want)
	}
}

// Child process support: the test binary re-executes itself to run one
// operation under another uid.

const helperEnv = "MIRRORFS_FS_TEST_HELPER"

func TestMain(m *testing.M) {
	if op := os.Getenv(helperEnv); op != "" {
		fmt.Print(helperOp(op, os.Args[len(os.Args)-2:]))
		os.Exit(0)
	}
	code := m.Run()
	if helperDir != "" {
		os.RemoveAll(helperDir)
	}
	os.Exit(code)
}

// The test binary lives in a 0700 build directory: other users get a copy.
var (
	helperOnce sync.Once
	helperDir  string
	helperBin  string
	helperErr  error
)

func helperBinary(t *testing.T) string {
	t.Helper()
	helperOnce.Do(func() {
		exe, err := os.Executable()
		if err != nil {
			helperErr = err
			return
		}
		data, err := os.ReadFile(exe)
		if err != nil {
			helperErr = err
			return
		}
		if helperDir, helperErr = os.MkdirTemp("", "mirrorfs-fs-helper"); helperErr != nil {
			return
		}
		if helperErr = os.Chmod(helperDir, 0o755); helperErr != nil {
			return
		}
		helperBin = filepath.Join(helperDir, "fs.test")
		helperErr = os.WriteFile(helperBin, data, 0o755)
	})
	if helperErr != nil {
		t.Fatalf("copy the test binary for other users: %v", helperErr)
	}
	return helperBin
}

// runAs runs op as uid:gid and returns its outcome ("ok", an errno name,
// or data read).
func runAs(t *testing.T, uid, gid uint32, op string, args ...string) string {
	t.Helper()
	a := append([]string{"-test.run=^$"}, args...)
	for len(a) < 3 {
		a = append(a, "")
	}
	cmd := exec.Command(helperBinary(t), a...)
	cmd.Env = append(os.Environ(), helperEnv+"="+op)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, NoSetGroups: true}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper %s %v as %d: %v: %s", op, args, uid, err, out)
	}
	return string(out)
}

// helperOp runs one operation in the child process; args are its last
// two command-line arguments.
func helperOp(op string, args []string) string {
	a, b := args[0], args[1]
	switch op {
	case "read":
		data, err := os.ReadFile(a)
		if err != nil {
			return errName(err)
		}
		return fmt.Sprintf("ok %q", data)
	case "append":
		f, err := os.OpenFile(a, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return errName(err)
		}
		_, err = f.WriteString(b)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return errName(err)
	case "create":
		f, err := os.OpenFile(a, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return errName(err)
		}
		return errName(f.Close())
	case "tmpfile":
		// O_TMPFILE in directory a, then linked in as a/b.
		fd, err := unix.Open(a, unix.O_TMPFILE|unix.O_RDWR, 0o640)
		if err != nil {
			return "open " + errName(err)
		}
		defer unix.Close(fd)
		if _, err := unix.Write(fd, []byte("by nobody")); err != nil {
			return "write " + errName(err)
		}
		return "link " + errName(unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), unix.AT_FDCWD, filepath.Join(a, b), unix.AT_SYMLINK_FOLLOW))
	case "mkdir":
		return errName(os.Mkdir(a, 0o755))
	case "unlink":
		return errName(unix.Unlink(a))
	case "rename":
		return errName(unix.Rename(a, b))
	case "chmod":
		return errName(unix.Chmod(a, 0o777))
	case "utime-now":
		return errName(unix.UtimesNanoAt(unix.AT_FDCWD, a, nil, 0))
	case "utime-set":
		return errName(unix.UtimesNanoAt(unix.AT_FDCWD, a, []unix.Timespec{{Sec: 1}, {Sec: 2}}, 0))
	case "setxattr":
		return errName(unix.Setxattr(a, "user.nobody", []byte("x"), 0))
	case "readdir":
		ents, err := os.ReadDir(a)
		if err != nil {
			return errName(err)
		}
		return fmt.Sprintf("ok %d entries", len(ents))
	}
	return "unknown op " + op
}
