package fs

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/mirrorfs/mirrorfs/journal"
)

// memRecorder keeps appended ops in memory; fail makes Append refuse.
type memRecorder struct {
	mount    *Mount // set by mountFresh, for settled
	mu       sync.Mutex
	ops      []journal.Op
	unsynced map[uint64]bool // seqs appended with AppendUnsynced
	seq      uint64
	syncedTo uint64 // the last seq when Sync was last called
	// syncDelay is how long Append takes after recording, as a real
	// journal's disk sync does.
	syncDelay time.Duration
	fail      bool
}

func (r *memRecorder) Sync() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return os.ErrPermission
	}
	r.syncedTo = r.seq
	return nil
}

func (r *memRecorder) Append(ctx context.Context, op journal.Op) (uint64, error) {
	seq, err := r.append(op, true)
	r.mu.Lock()
	d := r.syncDelay
	r.mu.Unlock()
	time.Sleep(d)
	return seq, err
}

func (r *memRecorder) AppendUnsynced(ctx context.Context, op journal.Op) (uint64, error) {
	return r.append(op, false)
}

func (r *memRecorder) append(op journal.Op, sync bool) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return 0, os.ErrPermission
	}
	r.seq++
	op.Seq = r.seq
	r.ops = append(r.ops, op)
	if !sync {
		if r.unsynced == nil {
			r.unsynced = map[uint64]bool{}
		}
		r.unsynced[op.Seq] = true
	}
	return op.Seq, nil
}

// synced reports whether op was appended with Append.
func (r *memRecorder) synced(op journal.Op) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.unsynced[op.Seq]
}

// settled takes the ops journaled once the kernel has released every file
// handle of the mount. close(2) returns before the kernel's asynchronous
// RELEASE, and the Close op of a file written through several handles
// comes from the last one, so a test that takes the ops of a step right
// after its close(2) can miss them on a loaded machine.
func (r *memRecorder) settled(t testing.TB) []journal.Op {
	t.Helper()
	r.released(t)
	return r.take()
}

// released waits until the kernel has released every file handle of the
// mount, and their Releases have journaled what they journal.
func (r *memRecorder) released(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for openHandles(r.mount) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d file handles still open 10 s after the test closed its files", openHandles(r.mount))
		}
		time.Sleep(2 * time.Millisecond)
	}
	// The last Release journals its Close just after it forgets its
	// handle: let a quiet spell show it is done.
	for n := -1; ; time.Sleep(20 * time.Millisecond) {
		r.mu.Lock()
		now := len(r.ops)
		r.mu.Unlock()
		if now == n {
			return
		}
		n = now
	}
}

// openHandles counts the open file handles of m and the files it counts
// as open for writing.
func openHandles(m *Mount) int {
	m.mirror.mu.Lock()
	defer m.mirror.mu.Unlock()
	return len(m.mirror.handles) + len(m.mirror.writers)
}

func (r *memRecorder) take() []journal.Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	ops := r.ops
	r.ops = nil
	return ops
}

// requireFUSE fails in CI and skips elsewhere when FUSE cannot be used.
func requireFUSE(t testing.TB) {
	t.Helper()
	_, err := os.Stat("/dev/fuse")
	if err == nil && os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("FUSE tests need root and /dev/fuse: euid=%d, %v", os.Geteuid(), err)
	}
	t.Skipf("FUSE tests need root and /dev/fuse: euid=%d, %v", os.Geteuid(), err)
}

// newMount mounts a fresh store and unmounts it in cleanup.
func newMount(t *testing.T) (mnt, store string, rec *memRecorder) {
	t.Helper()
	m, mnt, store, rec := mountFresh(t)
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			t.Error(err)
		}
	})
	if ops := rec.take(); len(ops) != 1 || ops[0].Kind != journal.KindClose || ops[0].File != 0 {
		t.Fatalf("mount start journaled %v, want one Close of file 0", ops)
	}
	return mnt, store, rec
}

// mountFresh mounts a fresh store; the caller unmounts.
func mountFresh(t testing.TB) (m *Mount, mnt, store string, rec *memRecorder) {
	t.Helper()
	requireFUSE(t)
	dir := t.TempDir()
	store, mnt = filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
	for _, d := range []string{store, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	rec = &memRecorder{}
	m, err := New(t.Context(), Options{Store: store, Mountpoint: mnt, Recorder: rec, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	rec.mount = m
	return m, mnt, store, rec
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func kinds(ops []journal.Op) []string {
	var ks []string
	for _, o := range ops {
		ks = append(ks, o.Kind.String()+" "+o.Path)
	}
	return ks
}

func ino(t *testing.T, p string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestMutationsAreJournaled(t *testing.T) {
	mnt, store, rec := newMount(t)

	if err := os.WriteFile(filepath.Join(mnt, "a.html"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	ops := rec.settled(t)
	want := []string{"create a.html", "write a.html", "close a.html"}
	if !slices.Equal(kinds(ops), want) {
		t.Fatalf("write file journaled %q, want %q", kinds(ops), want)
	}
	id := ino(t, filepath.Join(store, "a.html"))
	for _, o := range ops {
		if o.File != id {
			t.Errorf("%v: File = %d, want store inode %d", o, o.File, id)
		}
	}
	if ops[1].Offset != 0 || ops[1].Length != 5 {
		t.Errorf("write range = [%d,+%d), want [0,+5)", ops[1].Offset, ops[1].Length)
	}

	steps := []struct {
		name string
		do   func() error
		want []string
	}{
		{"mkdir", func() error { return os.Mkdir(filepath.Join(mnt, "d"), 0o750) }, []string{"mkdir d"}},
		{"rename", func() error { return os.Rename(filepath.Join(mnt, "a.html"), filepath.Join(mnt, "d/b.html")) }, []string{"rename a.html"}},
		{"symlink", func() error { return os.Symlink("d/b.html", filepath.Join(mnt, "cur")) }, []string{"symlink cur"}},
		{"link", func() error { return os.Link(filepath.Join(mnt, "d/b.html"), filepath.Join(mnt, "hl")) }, []string{"link d/b.html"}},
		{"chmod", func() error { return os.Chmod(filepath.Join(mnt, "hl"), 0o600) }, []string{"setattr hl"}},
		{"truncate", func() error { return os.Truncate(filepath.Join(mnt, "hl"), 2) }, []string{"setattr hl", "close hl"}},
		{"unlink", func() error { return os.Remove(filepath.Join(mnt, "hl")) }, []string{"unlink hl"}},
		{"xattr", func() error { return syscall.Setxattr(filepath.Join(mnt, "d/b.html"), "user.k", []byte("v"), 0) }, []string{"setxattr d/b.html"}},
		{"rmxattr", func() error { return syscall.Removexattr(filepath.Join(mnt, "d/b.html"), "user.k") }, []string{"removexattr d/b.html"}},
		{"unlink2", func() error { return os.Remove(filepath.Join(mnt, "d/b.html")) }, []string{"unlink d/b.html"}},
		{"rmdir", func() error { return os.Remove(filepath.Join(mnt, "d")) }, []string{"rmdir d"}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := kinds(rec.settled(t)); !slices.Equal(got, s.want) {
			t.Errorf("%s journaled %q, want %q", s.name, got, s.want)
		}
	}
}

func TestRenameRecordsBothPaths(t *testing.T) {
	mnt, _, rec := newMount(t)
	os.WriteFile(filepath.Join(mnt, "x"), nil, 0o644)
	os.WriteFile(filepath.Join(mnt, "y"), []byte("old"), 0o644)
	rec.take()
	if err := os.Rename(filepath.Join(mnt, "x"), filepath.Join(mnt, "y")); err != nil {
		t.Fatal(err)
	}
	ops := rec.take()
	if len(ops) != 1 || ops[0].Path != "x" || ops[0].NewPath != "y" {
		t.Fatalf("rename over existing journaled %v", ops)
	}
}

// A file kept open gets its Close only when the last writer closes, and
// every write before it is journaled with the file's identity.
func TestCloseOnlyAfterLastWriter(t *testing.T) {
	mnt, _, rec := newMount(t)
	p := filepath.Join(mnt, "log")
	f1, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f2, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f1.Write([]byte("one"))
	f2.WriteAt([]byte("two"), 3)
	f1.Close()
	if got := kinds(rec.take()); slices.Contains(got, "close log") {
		t.Fatalf("Close journaled while a writer is still open: %q", got)
	}
	f2.Close()
	// The Close comes from f2's flush, or from the last asynchronous
	// release if f1's release had not arrived yet.
	var got []string
	for i := 0; i < 100 && len(got) == 0; i++ {
		got = kinds(rec.take())
		time.Sleep(10 * time.Millisecond)
	}
	if !slices.Equal(got, []string{"close log"}) {
		t.Fatalf("last close journaled %q, want [close log]", got)
	}
	// Fsync publishes the content too.
	f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte("three"))
	f.Sync()
	if got := kinds(rec.take()); !slices.Equal(got, []string{"write log", "close log"}) {
		t.Fatalf("write+fsync journaled %q", got)
	}
	f.Close()
	if got := kinds(rec.take()); len(got) != 0 {
		t.Fatalf("clean close journaled %q, want nothing", got)
	}
}

// When the journal refuses a record the caller sees EIO.
func TestJournalFailureIsEIO(t *testing.T) {
	mnt, _, rec := newMount(t)
	rec.mu.Lock()
	rec.fail = true
	rec.mu.Unlock()
	err := os.Mkdir(filepath.Join(mnt, "d"), 0o755)
	if !errorsIs(err, syscall.EIO) {
		t.Fatalf("mkdir with a failing journal: %v, want EIO", err)
	}
}

func errorsIs(err error, errno syscall.Errno) bool {
	pe, ok := err.(*os.PathError)
	return ok && pe.Err == errno
}

func TestStopWrites(t *testing.T) {
	m, mnt, store, _ := mountFresh(t)
	defer m.Unmount()
	m.StopWrites()
	if err := os.WriteFile(filepath.Join(mnt, "f"), nil, 0o644); !errorsIs(err, syscall.EROFS) {
		t.Fatalf("write after StopWrites: %v, want EROFS", err)
	}
	if _, err := New(t.Context(), Options{Store: store, Mountpoint: mnt, Recorder: &memRecorder{}}); err == nil {
		t.Fatal("mounting over a live mount succeeded")
	}
}

func TestOpenForWrite(t *testing.T) {
	m, mnt, store, _ := mountFresh(t)
	defer m.Unmount()
	f, err := os.Create(filepath.Join(mnt, "f"))
	if err != nil {
		t.Fatal(err)
	}
	id := ino(t, filepath.Join(store, "f"))
	if !m.OpenForWrite(id) {
		t.Fatal("OpenForWrite = false while a writer has the file open")
	}
	r, err := os.Open(filepath.Join(mnt, "f"))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	// Release is asynchronous after close(2).
	for i := 0; i < 100 && m.OpenForWrite(id); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if m.OpenForWrite(id) {
		t.Fatal("OpenForWrite = true after the only writer closed (a reader is still open)")
	}
	r.Close()
}

// A writer's close(2) ends its writing at once, although the kernel keeps
// the handle until the asynchronous RELEASE: the replicator must not hold
// back a file whose writer is done (tar writes, closes and moves on). A
// dup'd descriptor keeps the handle open without writing, exactly the
// state between close and RELEASE.
func TestOpenForWriteEndsAtClose(t *testing.T) {
	m, mnt, store, rec := mountFresh(t)
	defer m.Unmount()
	p := filepath.Join(mnt, "f")
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	id := ino(t, filepath.Join(store, "f"))
	if _, err := unix.Write(fd, []byte("one")); err != nil {
		t.Fatal(err)
	}
	dup, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dup)
	unix.Close(fd) // FLUSH; the handle lives on in dup: no RELEASE
	if m.OpenForWrite(id) {
		t.Fatal("OpenForWrite = true after the writer's close(2) journaled its Close")
	}
	if got := kinds(rec.take()); !slices.Contains(got, "close f") {
		t.Fatalf("close(2) journaled %q, want a close", got)
	}
	// Writing again through the same handle is writing again.
	if _, err := unix.Write(dup, []byte("two")); err != nil {
		t.Fatal(err)
	}
	if !m.OpenForWrite(id) {
		t.Fatal("OpenForWrite = false while the handle writes again")
	}
	// A second writer that opens without writing yet may be about to
	// write: a half-made version.
	w2, err := unix.Open(p, unix.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w2dup, err := unix.Dup(w2)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(w2dup)
	unix.Close(w2) // not the last writer: dup's handle is open too
	if !m.OpenForWrite(id) {
		t.Fatal("OpenForWrite = false while another writer is open")
	}
	mustClose := func(fd int) {
		t.Helper()
		if err := unix.Close(fd); err != nil {
			t.Fatal(err)
		}
	}
	mustClose(w2dup) // one of two writable handles: dup's "two" is not published
	if !m.OpenForWrite(id) {
		t.Fatal("OpenForWrite = false with unpublished writes of another handle")
	}
	rec.take()
	mustClose(dup)
	// The Close comes from this flush, or from the last RELEASE if w2's
	// had not arrived yet.
	for i := 0; i < 100 && m.OpenForWrite(id); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if m.OpenForWrite(id) {
		t.Fatal("OpenForWrite = true after every writer closed")
	}
	got := kinds(rec.take())
	for i := 0; i < 100 && !slices.Contains(got, "close f"); i++ {
		time.Sleep(10 * time.Millisecond)
		got = append(got, kinds(rec.take())...)
	}
	if !slices.Contains(got, "close f") {
		t.Fatalf("last close journaled %q, want a close", got)
	}
	// RELEASE is asynchronous: until the kernel sent it for dup's handle,
	// that handle still counts as a writer, and the next one would not be
	// the last.
	for i := 0; i < 100 && writerHandles(m, id) > 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := writerHandles(m, id); n > 0 {
		t.Fatalf("%d writable handles still counted 1 s after every writer closed", n)
	}

	// Opening for writing and closing without a change publishes too.
	fd, err = unix.Open(p, unix.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !m.OpenForWrite(id) {
		t.Fatal("OpenForWrite = false after a writable open")
	}
	dup2, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dup2)
	mustClose(fd)
	if m.OpenForWrite(id) {
		t.Fatal("OpenForWrite = true after a writer closed without writing")
	}
	if got := kinds(rec.take()); len(got) != 0 {
		t.Fatalf("a writer that changed nothing journaled %q", got)
	}
}

// Unmount does not fail when a program still holds a file open: writes
// are stopped and the mount is detached.
func TestUnmountBusy(t *testing.T) {
	m, mnt, _, _ := mountFresh(t)
	f, err := os.Create(filepath.Join(mnt, "busy"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m.StopWrites()
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	if mounted, _ := IsMountPoint(mnt); mounted {
		t.Fatal("still mounted after Unmount")
	}
}

// fallocate, copy_file_range and mknod change the store without passing
// through Write: each is journaled with the file's identity.
func TestOtherDataPathsAreJournaled(t *testing.T) {
	mnt, store, rec := newMount(t)
	src, err := os.Create(filepath.Join(mnt, "src"))
	if err != nil {
		t.Fatal(err)
	}
	src.Write(bytes.Repeat([]byte("s"), 8192))
	dst, err := os.Create(filepath.Join(mnt, "dst"))
	if err != nil {
		t.Fatal(err)
	}
	rec.take()

	if err := unix.Fallocate(int(dst.Fd()), 0, 0, 65536); err != nil {
		t.Fatal(err)
	}
	if got := kinds(rec.take()); !slices.Equal(got, []string{"fallocate dst"}) {
		t.Fatalf("fallocate journaled %q", got)
	}
	offIn, offOut := int64(0), int64(100)
	n, err := unix.CopyFileRange(int(src.Fd()), &offIn, int(dst.Fd()), &offOut, 4096, 0)
	if err != nil || n != 4096 {
		t.Fatalf("copy_file_range = %d, %v", n, err)
	}
	ops := rec.take()
	if got := kinds(ops); !slices.Equal(got, []string{"copy_range dst"}) {
		t.Fatalf("copy_file_range journaled %q", got)
	}
	if ops[0].Offset != 100 || ops[0].Length != 4096 || ops[0].File != ino(t, filepath.Join(store, "dst")) {
		t.Fatalf("copy_range op = %+v", ops[0])
	}
	src.Close()
	dst.Close()
	rec.take()

	if err := unix.Mkfifo(filepath.Join(mnt, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := kinds(rec.take()); !slices.Equal(got, []string{"mknod fifo"}) {
		t.Fatalf("mkfifo journaled %q", got)
	}
	if err := unix.Mknod(filepath.Join(mnt, "plain"), unix.S_IFREG|0o644, 0); err != nil {
		t.Fatal(err)
	}
	if got := kinds(rec.take()); !slices.Equal(got, []string{"create plain", "close plain"}) {
		t.Fatalf("mknod S_IFREG journaled %q", got)
	}
}

// TestOnlyFirstChangeWaitsForSync: the first change of a file since its
// last Close record is journaled durably; the writes and attribute changes
// after it, and the Close itself, wait only for the commit; an fsync's Close
// is durable again, and so is every namespace change.
func TestOnlyFirstChangeWaitsForSync(t *testing.T) {
	mnt, store, rec := newMount(t)
	if err := os.WriteFile(filepath.Join(store, "old.html"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}

	f, err := os.OpenFile(filepath.Join(mnt, "new.html"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := f.Write([]byte("<p>")); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Chmod(0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	g, err := os.OpenFile(filepath.Join(mnt, "old.html"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []func() error{
		func() error { _, err := g.WriteAt([]byte("n"), 0); return err },
		func() error { _, err := g.WriteAt([]byte("e"), 1); return err },
		g.Sync,
		func() error { _, err := g.WriteAt([]byte("w"), 2); return err },
		g.Close,
		func() error { return os.Chmod(filepath.Join(mnt, "old.html"), 0o600) },
		func() error { return os.Rename(filepath.Join(mnt, "new.html"), filepath.Join(mnt, "index.html")) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}

	var got []string
	for _, op := range rec.take() {
		s := op.Kind.String() + " " + op.Path
		if !rec.synced(op) {
			s += " (unsynced)"
		}
		got = append(got, s)
	}
	want := []string{
		"create new.html",
		"write new.html (unsynced)", "write new.html (unsynced)", "write new.html (unsynced)",
		"setattr new.html (unsynced)",
		"close new.html (unsynced)",
		"write old.html",
		"write old.html (unsynced)",
		"close old.html", // fsync
		"write old.html", // first change after that Close
		"close old.html (unsynced)",
		"setattr old.html", // no writer open
		"rename new.html",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("journaled\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// writerHandles is the number of writable handles of file id the mount
// counts (released by the kernel's asynchronous RELEASE).
func writerHandles(m *Mount, id uint64) int {
	m.mirror.mu.Lock()
	defer m.mirror.mu.Unlock()
	if w := m.mirror.writers[id]; w != nil {
		return w.open
	}
	return 0
}

// TestFUSEDescriptorCloseOnExec: once mounted, no /dev/fuse descriptor of
// the process would pass to a program it starts.
func TestFUSEDescriptorCloseOnExec(t *testing.T) {
	newMount(t)
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err != nil || target != "/dev/fuse" {
			continue
		}
		found++
		var fd int
		if _, err := fmt.Sscan(e.Name(), &fd); err != nil {
			t.Fatal(err)
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil {
			t.Fatal(err)
		}
		if flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("/dev/fuse descriptor %d is not close-on-exec", fd)
		}
	}
	if found == 0 {
		t.Fatal("no /dev/fuse descriptor found while mounted")
	}
}

// TestPageCacheKeptAfterWrite: a file written through the mount stays in
// the kernel's page cache when its new attributes are fetched and when it
// is opened again, so that a web server's next read of a just-deployed file
// costs the daemon nothing. Every change passes through the mount, which
// keeps the cached pages right; the kernel's automatic invalidation, on
// seeing the new mtime, dropped them all (sequential reads after a write ran
// at a twentieth of the store's speed).
func TestPageCacheKeptAfterWrite(t *testing.T) {
	mnt, _, _ := newMount(t)
	p := filepath.Join(mnt, "bundle.js")
	data := bytes.Repeat([]byte("var x = 1;\n"), 64<<10) // 704 KiB
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil { // fetches the attributes the write changed
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if cached, pages := residentPages(t, f, len(data)); cached != pages {
		t.Fatalf("%d of %d pages of the written file in the page cache after a stat and an open", cached, pages)
	}
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes (%v), want the %d written", len(got), err, len(data))
	}
	// A write in the middle keeps the other pages and shows the new bytes.
	w, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt([]byte("var y = 2;\n"), 4096*10); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	copy(data[4096*10:], "var y = 2;\n")
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	if cached, pages := residentPages(t, f, len(data)); cached != pages {
		t.Fatalf("%d of %d pages in the page cache after a write in place", cached, pages)
	}
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after a write in place: %d bytes, %v; content differs: %v", len(got), err, !bytes.Equal(got, data))
	}
}

// residentPages maps f and counts the pages of its first size bytes that
// are in the page cache (mincore).
func residentPages(t *testing.T, f *os.File, size int) (cached, pages int) {
	t.Helper()
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (size+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	for _, v := range vec {
		if v&1 != 0 {
			cached++
		}
	}
	return cached, len(vec)
}

// TestPageCacheCoherent: with the page cache kept across writes, every
// other way of changing a file's bytes through the mount also shows in the
// next read of cached pages: the kernel drops or updates the pages it
// changes. Each step reads the whole file first, so that it is cached, then
// compares the mount's content with the store's.
func TestPageCacheCoherent(t *testing.T) {
	mnt, store, _ := newMount(t)
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(mnt, "src"), bytes.Repeat([]byte("S"), len(data)), 0o644))
	steps := []struct {
		name   string
		change func(fd int) error
	}{
		{"punch hole", func(fd int) error {
			return unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 4096, 8192)
		}},
		{"zero range", func(fd int) error { return unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE, 20000, 5000) }},
		{"copy_file_range", func(fd int) error {
			src, err := os.Open(filepath.Join(mnt, "src"))
			if err != nil {
				return err
			}
			defer src.Close()
			offIn, offOut := int64(0), int64(30000)
			_, err = unix.CopyFileRange(int(src.Fd()), &offIn, fd, &offOut, 10000, 0)
			return err
		}},
		{"ftruncate shorter", func(fd int) error { return unix.Ftruncate(fd, 50000) }},
		{"ftruncate longer", func(fd int) error { return unix.Ftruncate(fd, 70000) }},
		{"pwrite", func(fd int) error { _, err := unix.Pwrite(fd, []byte("written"), 100); return err }},
	}
	p := filepath.Join(mnt, "f")
	must(os.WriteFile(p, data, 0o644))
	for _, st := range steps {
		if _, err := os.ReadFile(p); err != nil { // cached
			t.Fatal(err)
		}
		fd, err := unix.Open(p, unix.O_RDWR, 0)
		must(err)
		if err := st.change(fd); err != nil {
			unix.Close(fd)
			t.Fatalf("%s: %v", st.name, err)
		}
		unix.Close(fd)
		got, err := os.ReadFile(p)
		must(err)
		want, err := os.ReadFile(filepath.Join(store, "f"))
		must(err)
		if !bytes.Equal(got, want) {
			t.Fatalf("after %s the mount reads %d bytes that differ from the store's %d", st.name, len(got), len(want))
		}
	}
}

// An fsync with nothing to journal (here through a read-only descriptor,
// as `sync FILE` does) still returns only once the file's earlier changes,
// journaled without waiting for the sync, are durable.
func TestFsyncSyncsTheJournal(t *testing.T) {
	mnt, _, rec := newMount(t)
	p := filepath.Join(mnt, "page.html")
	if err := os.WriteFile(p, []byte("<p>new</p>"), 0o644); err != nil {
		t.Fatal(err)
	}
	ops := rec.take()
	last := ops[len(ops)-1]
	if last.Kind != journal.KindClose || rec.synced(last) {
		t.Fatalf("the test expects the write's Close journaled without a sync; journaled %v", ops)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	syncedTo := rec.syncedTo
	rec.mu.Unlock()
	if syncedTo < last.Seq {
		t.Errorf("after fsync the journal is synced up to seq %d, want at least %d (the Close of page.html)", syncedTo, last.Seq)
	}
}

// A page replaced by rename (how editors and deploy tools save) while
// readers open it through the mount: every read returns the old content or
// the new one, whole, as on a local file system; never ENOENT, never the
// new bytes cut to the old size. Between the store's rename and go-fuse's
// update of its names, the journal's sync (here 300 µs) leaves each node's
// path naming another file or none.
func TestReadersDuringRenameSeeOneVersion(t *testing.T) {
	mnt, _, rec := newMount(t)
	rec.mu.Lock()
	rec.syncDelay = 300 * time.Microsecond
	rec.mu.Unlock()
	page, tmp := filepath.Join(mnt, "page.html"), filepath.Join(mnt, ".page.html.tmp")
	versions := [][]byte{bytes.Repeat([]byte("a"), 100), bytes.Repeat([]byte("b"), 5000)}
	if err := os.WriteFile(page, versions[0], 0o644); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads, missing, torn atomic.Int64
	var example atomic.Value
	// One reader opens as nginx with disable_symlinks does (O_NOFOLLOW).
	for _, flag := range []int{0, syscall.O_NOFOLLOW} {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := readWith(page, flag)
				reads.Add(1)
				switch {
				case err != nil:
					missing.Add(1)
					example.Store(err.Error())
				case !bytes.Equal(got, versions[0]) && !bytes.Equal(got, versions[1]):
					torn.Add(1)
					example.Store(fmt.Sprintf("%d bytes starting %q", len(got), got[:min(len(got), 8)]))
				}
			}
		})
	}
	deadline := time.Now().Add(2 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		if err := os.WriteFile(tmp, versions[i%2], 0o644); err != nil {
			t.Error(err)
			break
		}
		if err := os.Rename(tmp, page); err != nil {
			t.Error(err)
			break
		}
	}
	close(stop)
	wg.Wait()
	// An open can still fail (ESTALE) in rare cases that kept.go leaves
	// out, such as a lookup racing the rename's own look at the page; none
	// did in 5 runs with the race detector or in 5 without (2026-12-08).
	// Without kept.go, 2 to 8 opens in about 4,000 failed with the race
	// detector, when the page was replaced twice before an open arrived.
	// Without the checks of ownpath.go, 0.25 % of the reads failed and
	// 2 % returned neither version.
	if torn.Load() > 0 || missing.Load()*1000 > reads.Load() {
		t.Errorf("%d reads during the renames: %d failed, %d neither version (e.g. %v)", reads.Load(), missing.Load(), torn.Load(), example.Load())
	}
	t.Logf("%d reads, %d failed", reads.Load(), missing.Load())
}

func readWith(p string, flag int) ([]byte, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|flag, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// An open that the kernel sent for a page just before a rename replaced it
// gets that page, whole, as on a local file system: the mount keeps the
// replaced file (kept.go). It used to answer ESTALE; the kernel then looked
// the name up again and opened the new page, and when that one was replaced
// too before its open arrived, the reader got the error. Once the reader is
// done, the kernel forgets the old page and the mount lets go of it.
func TestOpenUnderWayWhenItsFileIsReplaced(t *testing.T) {
	mnt, _, rec := newMount(t)
	m := rec.mount.mirror
	page, tmp := filepath.Join(mnt, "page.html"), filepath.Join(mnt, ".page.html.tmp")
	save := func(content string) {
		t.Helper()
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, page); err != nil {
			t.Fatal(err)
		}
	}
	save("version 0, long enough to tell apart from the others")
	arrived, release := make(chan struct{}), make(chan struct{})
	hook := func(*node) {
		arrived <- struct{}{}
		<-release
	}
	m.beforeOpen.Store(&hook)
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		data, err := os.ReadFile(page)
		done <- result{data, err}
	}()
	// Each open that reaches the daemon waits there while the page is saved
	// again; the reader thus never finds the file it looked up.
	opens := 0
	var got result
wait:
	for {
		select {
		case <-arrived:
			opens++
			if opens > 3 {
				t.Fatal("the kernel keeps retrying the open")
			}
			save(fmt.Sprintf("version %d", opens))
			release <- struct{}{}
		case got = <-done:
			break wait
		case <-time.After(10 * time.Second):
			t.Fatal("the read did not finish within 10 s")
		}
	}
	m.beforeOpen.Store(nil)
	if got.err != nil {
		t.Fatalf("open of a page replaced while its open was under way (%d opens reached the daemon): %v", opens, got.err)
	}
	if want := "version 0, long enough to tell apart from the others"; string(got.data) != want || opens != 1 {
		t.Fatalf("read %q after %d opens, want %q after 1: the page the kernel had looked up", got.data, opens, want)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.mu.Lock()
		kept := len(m.kept)
		m.mu.Unlock()
		if kept == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d replaced files still held 10 s after their last reader closed", kept)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A removed file held by nothing but an O_PATH descriptor: fstat of that
// descriptor still answers (the kernel asks without a handle, since the
// rename made its attributes stale), from the file the mount kept. A file
// too large to keep is not: removing it frees its space at once.
func TestKeptFileAnswersStatAndLargeOnesGo(t *testing.T) {
	mnt, store, rec := newMount(t)
	m := rec.mount.mirror
	keptNow := func() int {
		m.mu.Lock()
		defer m.mu.Unlock()
		return len(m.kept)
	}
	page, tmp := filepath.Join(mnt, "page.html"), filepath.Join(mnt, ".page.html.tmp")
	if err := os.WriteFile(page, []byte("old page"), 0o644); err != nil {
		t.Fatal(err)
	}
	holder, err := unix.Open(page, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(holder)
	if err := os.WriteFile(tmp, []byte("the new page"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, page); err != nil {
		t.Fatal(err)
	}
	if n := keptNow(); n != 1 {
		t.Fatalf("%d files kept after a page held by a descriptor was replaced, want 1", n)
	}
	var st unix.Stat_t
	if err := unix.Fstat(holder, &st); err != nil || st.Size != int64(len("old page")) {
		t.Fatalf("fstat of a descriptor of the replaced page: size %d, %v; want the old page's %d bytes", st.Size, err, len("old page"))
	}

	// 65 MiB: over maxKeptBytes.
	big := filepath.Join(mnt, "big.bin")
	if err := os.WriteFile(filepath.Join(store, "big.bin"), bytes.Repeat([]byte("x"), maxKeptBytes+1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	bigHolder, err := unix.Open(big, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(bigHolder)
	if err := os.Remove(big); err != nil {
		t.Fatal(err)
	}
	if n := keptNow(); n != 1 {
		t.Fatalf("%d files kept after a 65 MiB file was removed, want 1 (the page): a file that large is not kept", n)
	}
}

// The kept descriptors may take a quarter of the descriptor limit, and no
// more than 16,384.
func TestKeptLimit(t *testing.T) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	defer unix.Setrlimit(unix.RLIMIT_NOFILE, &rl)
	for _, c := range []struct{ soft, want uint64 }{{1024, 256}, {min(rl.Max, 1<<20), min(rl.Max/4, 1<<14)}} {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: c.soft, Max: rl.Max}); err != nil {
			t.Fatal(err)
		}
		if got := keptLimit(); uint64(got) != c.want {
			t.Errorf("with a descriptor limit of %d, %d kept descriptors at most, want %d", c.soft, got, c.want)
		}
	}
}

// keepable keeps nothing over maxKeptBytes, nor over a sixteenth of the
// free space of the store's file system.
func TestKeepable(t *testing.T) {
	for _, c := range []struct {
		fsSize string
		bytes  int64
		want   bool
	}{
		{"2g", 64 << 10, true},
		{"2g", maxKeptBytes, true},
		{"2g", maxKeptBytes + 4096, false},
		{"32m", 1 << 20, true},
		{"32m", 4 << 20, false},
	} {
		dir := t.TempDir()
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+c.fsSize); err != nil {
			t.Fatalf("mount a tmpfs of %s on %s: %v", c.fsSize, dir, err)
		}
		fd, err := unix.Open(dir, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		got := keepable(fd, c.bytes/512)
		unix.Close(fd)
		if err := unix.Unmount(dir, 0); err != nil {
			t.Error(err)
		}
		if got != c.want {
			t.Errorf("keepable(%d bytes) on an empty tmpfs of %s = %v, want %v", c.bytes, c.fsSize, got, c.want)
		}
	}
}

// A file unlinked while open can be opened again through its descriptor
// (/proc/self/fd/N), as on a local file system.
func TestReopenUnlinkedThroughProc(t *testing.T) {
	mnt, _, _ := newMount(t)
	p := filepath.Join(mnt, "upload.part")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("kept by its descriptor"); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil || string(got) != "kept by its descriptor" {
		t.Fatalf("reopen through /proc/self/fd: %q, %v", got, err)
	}
}

// An unlink says whether the file keeps other hard links (the replicator
// then does not take the file for dead), and a change to a file the mount
// knows no name of, though it still has links (made before the mount
// started), is not lost: its close asks for a comparison of the workers.
func TestUnlinkOfHardLinkedFile(t *testing.T) {
	dir := t.TempDir()
	store, mnt := filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
	for _, d := range []string{store, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// old and old-link are one file the mount never saw made.
	if err := os.WriteFile(filepath.Join(store, "old"), []byte("v1"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(store, "old"), filepath.Join(store, "old-link")); err != nil {
		t.Fatal(err)
	}
	requireFUSE(t)
	var logged bytes.Buffer
	var logMu sync.Mutex
	rec := &memRecorder{}
	var compares atomic.Int32
	m, err := New(t.Context(), Options{Store: store, Mountpoint: mnt, Recorder: rec,
		Logger:          slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logged}, nil)),
		OnUnnamedChange: func() { compares.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Unmount() })
	rec.take()

	writeTo := func(p string) {
		if err := os.WriteFile(filepath.Join(mnt, p), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeTo("a")
	if err := os.Link(filepath.Join(mnt, "a"), filepath.Join(mnt, "b")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"a", "b"} {
		if err := os.Remove(filepath.Join(mnt, p)); err != nil {
			t.Fatal(err)
		}
	}
	// A rename over one of two links, then over the last one, and over a
	// directory (whose link count is of its subdirectories).
	writeTo("c")
	if err := os.Link(filepath.Join(mnt, "c"), filepath.Join(mnt, "d")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"c", "d"} {
		writeTo("new")
		if err := os.Rename(filepath.Join(mnt, "new"), filepath.Join(mnt, p)); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"dir/sub", "empty"} {
		if err := os.MkdirAll(filepath.Join(mnt, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// os.Rename refuses a directory as the target; rename(2) replaces
	// an empty one.
	if err := unix.Rename(filepath.Join(mnt, "empty"), filepath.Join(mnt, "dir/sub")); err != nil {
		t.Fatal(err)
	}
	var flags []string
	for _, op := range rec.take() {
		if op.Kind == journal.KindUnlink || op.Kind == journal.KindRename {
			flags = append(flags, fmt.Sprintf("%s %s:%#x", op.Kind, op.Path+op.NewPath, op.Flags))
		}
	}
	if want := []string{fmt.Sprintf("unlink a:%#x", journal.UnlinkOtherLinks), "unlink b:0x0",
		fmt.Sprintf("rename newc:%#x", journal.RenameReplacedOtherLinks), "rename newd:0x0", "rename emptydir/sub:0x0"}; !slices.Equal(flags, want) {
		t.Errorf("unlinks and renames journaled with flags %v, want %v", flags, want)
	}

	f, err := os.OpenFile(filepath.Join(mnt, "old"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Remove(filepath.Join(mnt, "old")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("v2"), 0); err != nil {
		t.Fatal(err)
	}
	if n := compares.Load(); n != 0 {
		t.Errorf("%d comparisons asked for before the writer closed the file", n)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if n := compares.Load(); n != 1 {
		t.Errorf("%d comparisons asked for after the writer closed the file changed through an unknown link, want 1", n)
	}
	logMu.Lock()
	out := logged.String()
	logMu.Unlock()
	if !strings.Contains(out, "cannot be journaled") {
		t.Errorf("no warning for a change through a hard link the mount cannot name; log:\n%s", out)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// A file system mounted inside the store (say uploads/ on its own disk):
// its files' identities are journal.FileID, the same in every op and for
// OpenForWrite, and its files open and read through the mount.
func TestIdentityOnMountInsideStore(t *testing.T) {
	m, mnt, store, rec := mountFresh(t)
	uploads := filepath.Join(store, "uploads")
	if err := os.Mkdir(uploads, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", uploads, "tmpfs", 0, "size=1m"); err != nil {
		m.Unmount()
		t.Fatalf("mount a tmpfs inside the store: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			t.Error(err)
		}
		if err := unix.Unmount(uploads, 0); err != nil {
			t.Errorf("unmount %s: %v", uploads, err)
		}
	})
	rec.take()

	f, err := os.Create(filepath.Join(mnt, "uploads", "photo.jpg"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("jpeg"); err != nil {
		t.Fatal(err)
	}
	var st, storeSt unix.Stat_t
	if err := unix.Lstat(filepath.Join(uploads, "photo.jpg"), &st); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(store, &storeSt); err != nil {
		t.Fatal(err)
	}
	if st.Dev == storeSt.Dev {
		t.Fatal("the tmpfs is on the store's device")
	}
	want := journal.FileID(st.Dev, st.Ino, storeSt.Dev)
	if !m.OpenForWrite(want) {
		t.Errorf("OpenForWrite(%d) = false while a writer has uploads/photo.jpg open", want)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "uploads", "photo.jpg")); err != nil || string(got) != "jpeg" {
		t.Errorf("read uploads/photo.jpg through the mount: %q, %v", got, err)
	}
	if err := os.Remove(filepath.Join(mnt, "uploads", "photo.jpg")); err != nil {
		t.Fatal(err)
	}
	for _, op := range rec.take() {
		if op.Path == "uploads/photo.jpg" && op.File != want {
			t.Errorf("%v journaled with File %d, want %d (journal.FileID)", op.Kind, op.File, want)
		}
	}
}

// An open that reaches a file whose name a rename or unlink took away
// meanwhile is served through a descriptor the mount holds, also when the
// caller opened with O_NOFOLLOW (nginx's disable_symlinks): the reopen
// through /proc/self/fd/N, a link, must not refuse to follow it.
func TestOpenNamelessFileWithNoFollow(t *testing.T) {
	m, mnt, store, _ := mountFresh(t)
	t.Cleanup(func() { m.Unmount() })
	p := filepath.Join(mnt, "page.html")
	if err := os.WriteFile(p, []byte("old page"), 0o644); err != nil {
		t.Fatal(err)
	}
	id := ino(t, filepath.Join(store, "page.html"))
	held, err := os.Open(p) // another reader's descriptor: the mount's handle
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	h := m.mirror.anyHandle(id)
	if h == nil {
		t.Fatal("no handle of page.html")
	}
	fh, _, errno := h.node.Open(t.Context(), syscall.O_RDONLY|syscall.O_NOFOLLOW)
	if errno != 0 {
		t.Fatalf("open of the nameless page.html with O_NOFOLLOW: %v", errno)
	}
	got := make([]byte, 16)
	res, errno := fh.(*handle).Read(t.Context(), got, 0)
	if errno != 0 {
		t.Fatal(errno)
	}
	data, _ := res.Bytes(got)
	fh.(*handle).Release(t.Context())
	if string(data) != "old page" {
		t.Errorf("read %q, want %q", data, "old page")
	}
}

// No ioctl reaches the store through the mount: go-fuse's loopback ran
// each with the daemon's privileges, for any user of the mount, and
// without a journal record.
func TestIoctlRefused(t *testing.T) {
	mnt, store, rec := newMount(t)
	if err := os.WriteFile(filepath.Join(mnt, "page.html"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(mnt, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	rec.take()
	for _, p := range []string{"page.html", "dir"} {
		fd, err := unix.Open(filepath.Join(mnt, p), unix.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		// FS_IOC_SETVERSION, _IOW('v', 2, long): root-only on ext4, and a
		// change of the store.
		err = unix.IoctlSetPointerInt(fd, 0x40087602, 424242)
		unix.Close(fd)
		if err != unix.ENOTTY {
			t.Errorf("FS_IOC_SETVERSION on %s through the mount: %v, want ENOTTY", p, err)
		}
	}
	if v, err := storeVersion(filepath.Join(store, "page.html")); err == nil && v == 424242 {
		t.Errorf("the store file's version was set through the mount")
	}
	if ops := rec.take(); len(ops) != 0 {
		t.Errorf("ioctls journaled %v", ops)
	}
}

// storeVersion reads a file's inode generation (FS_IOC_GETVERSION), on
// file systems that have one.
func storeVersion(p string) (int, error) {
	fd, err := unix.Open(p, unix.O_RDONLY, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return unix.IoctlGetInt(fd, 0x80087601) // FS_IOC_GETVERSION, _IOR('v', 1, long)
}

// A chmod, truncate or time change through a descriptor of a file whose
// only name the mount knew was removed, while it keeps hard links made
// before the mount started, is reported like a write through it: the
// journal cannot name the file, so its close asks for a comparison of the
// workers with the store. A new name given to it (linkat) asks for one
// too.
func TestAttrChangeThroughUnknownHardLinkIsReported(t *testing.T) {
	changes := map[string]func(f *os.File) error{
		"fchmod":    func(f *os.File) error { return f.Chmod(0o600) },
		"ftruncate": func(f *os.File) error { return f.Truncate(1) },
		"futimens": func(f *os.File) error {
			return unix.Futimes(int(f.Fd()), []unix.Timeval{{Sec: 1}, {Sec: 1}})
		},
	}
	dir := t.TempDir()
	store, mnt := filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
	for _, d := range []string{store, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"fchmod", "ftruncate", "futimens", "linkat"} {
		if err := os.WriteFile(filepath.Join(store, name), []byte("v1"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(filepath.Join(store, name), filepath.Join(store, name+"-link")); err != nil {
			t.Fatal(err)
		}
	}
	requireFUSE(t)
	var compares atomic.Int32
	m, err := New(t.Context(), Options{Store: store, Mountpoint: mnt, Recorder: &memRecorder{},
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)), OnUnnamedChange: func() { compares.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Unmount() })

	// The same file given a new name through its descriptor (linkat):
	// the journal tells it as a new file; the comparison joins it to
	// its other links.
	changes["linkat"] = func(f *os.File) error {
		return unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.AT_FDCWD, filepath.Join(mnt, "again"), unix.AT_SYMLINK_FOLLOW)
	}
	for name, change := range changes {
		f, err := os.OpenFile(filepath.Join(mnt, name), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(mnt, name)); err != nil {
			t.Fatal(err)
		}
		before := compares.Load()
		if err := change(f); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if n := compares.Load() - before; n != 1 {
			t.Errorf("%s through the descriptor of a file known by no name: %d comparisons asked for at close, want 1", name, n)
		}
	}
}

// A file created with set-ID bits and a directory made with the sticky bit
// (an upload directory) get the mode a plain directory gives them, in the
// store and in the journal. go-fuse's loopback dropped those bits.
func TestCreateKeepsSpecialModeBits(t *testing.T) {
	mnt, store, rec := newMount(t)
	plain := t.TempDir()
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	create := func(dir string) {
		fd, err := unix.Open(filepath.Join(dir, "suid"), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0o6755)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		if err := unix.Mkdir(filepath.Join(dir, "uploads"), 0o1777); err != nil {
			t.Fatal(err)
		}
	}
	create(plain)
	create(mnt)
	journaled := map[string]uint32{}
	for _, op := range rec.take() {
		if op.Kind == journal.KindCreate || op.Kind == journal.KindMkdir {
			journaled[op.Path] = op.Mode
		}
	}
	for _, name := range []string{"suid", "uploads"} {
		var want, got unix.Stat_t
		if err := unix.Lstat(filepath.Join(plain, name), &want); err != nil {
			t.Fatal(err)
		}
		if err := unix.Lstat(filepath.Join(store, name), &got); err != nil {
			t.Fatal(err)
		}
		if got.Mode != want.Mode || journaled[name] != want.Mode {
			t.Errorf("%s: mode %#o in the store, %#o journaled; a plain directory gives %#o", name, got.Mode, journaled[name], want.Mode)
		}
	}
}
