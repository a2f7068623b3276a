package replicate

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mirrorfs/mirrorfs/journal"
	"golang.org/x/sys/unix"
)

// fakeJournal is an in-memory Journal. Seq n is ops[n-first].
type fakeJournal struct {
	mu      sync.Mutex
	ops     []journal.Op
	first   uint64
	cursors map[string]journal.Cursor
	wake    chan struct{}
	sets    []journal.Cursor // every SetCursor, in order
}

var _ Journal = (*fakeJournal)(nil)

func newFakeJournal() *fakeJournal {
	return &fakeJournal{first: 1, cursors: map[string]journal.Cursor{}, wake: make(chan struct{})}
}

func (j *fakeJournal) Append(op journal.Op) uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	op.Seq = j.first + uint64(len(j.ops))
	if op.Time == 0 {
		op.Time = time.Now().UnixNano()
	}
	j.ops = append(j.ops, op)
	close(j.wake)
	j.wake = make(chan struct{})
	return op.Seq
}

// appendAll appends ops at once: no reader sees only some of them.
func (j *fakeJournal) appendAll(ops ...journal.Op) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, op := range ops {
		op.Seq = j.first + uint64(len(j.ops))
		if op.Time == 0 {
			op.Time = time.Now().UnixNano()
		}
		j.ops = append(j.ops, op)
	}
	close(j.wake)
	j.wake = make(chan struct{})
}

func (j *fakeJournal) Read(from uint64, limit int) ([]journal.Op, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if from < j.first {
		return nil, fmt.Errorf("seq %d was trimmed", from)
	}
	i := int(from - j.first)
	if i >= len(j.ops) {
		return nil, nil
	}
	end := min(len(j.ops), i+limit)
	return slices.Clone(j.ops[i:end]), nil
}

func (j *fakeJournal) LastSeq() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.first + uint64(len(j.ops)) - 1
}

func (j *fakeJournal) FirstSeq() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.first
}

func (j *fakeJournal) Wait(ctx context.Context, after uint64) error {
	for {
		j.mu.Lock()
		last := j.first + uint64(len(j.ops)) - 1
		ch := j.wake
		j.mu.Unlock()
		if last > after {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (j *fakeJournal) Cursor(w string) (journal.Cursor, bool, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	c, ok := j.cursors[w]
	return c, ok, nil
}

func (j *fakeJournal) SetCursor(w string, c journal.Cursor) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.cursors[w] = c
	j.sets = append(j.sets, c)
	return nil
}

func (j *fakeJournal) cursor(w string) journal.Cursor {
	c, _, _ := j.Cursor(w)
	return c
}

// fsim performs changes in a store directory and journals them the way
// the FUSE layer does (store first, then the op).
type fsim struct {
	t     testing.TB
	store string
	j     *fakeJournal
}

func newFsim(t testing.TB) *fsim {
	return &fsim{t: t, store: t.TempDir(), j: newFakeJournal()}
}

func (f *fsim) abs(p string) string { return filepath.Join(f.store, filepath.FromSlash(p)) }

func (f *fsim) ino(p string) uint64 {
	f.t.Helper()
	fi, err := os.Lstat(f.abs(p))
	if err != nil {
		f.t.Fatal(err)
	}
	return inode(fi)
}

func (f *fsim) must(err error) {
	f.t.Helper()
	if err != nil {
		f.t.Fatal(err)
	}
}

// writeOpen writes content to p (created or truncated) without closing.
func (f *fsim) writeOpen(p, content string) uint64 {
	f.t.Helper()
	_, err := os.Lstat(f.abs(p))
	existed := err == nil
	f.must(os.WriteFile(f.abs(p), []byte(content), 0o644))
	id := f.ino(p)
	if existed {
		f.j.Append(journal.Op{Kind: journal.KindSetattr, File: id, Path: p, Mask: journal.AttrSize})
	} else {
		f.j.Append(journal.Op{Kind: journal.KindCreate, File: id, Path: p, Mode: 0o100644})
	}
	f.j.Append(journal.Op{Kind: journal.KindWrite, File: id, Path: p, Length: int64(len(content))})
	return id
}

func (f *fsim) closeFile(id uint64) { f.j.Append(journal.Op{Kind: journal.KindClose, File: id}) }

func (f *fsim) writeFile(p, content string) uint64 {
	f.t.Helper()
	id := f.writeOpen(p, content)
	f.closeFile(id)
	return id
}

func (f *fsim) mkdir(p string) {
	f.t.Helper()
	f.must(os.Mkdir(f.abs(p), 0o755))
	f.j.Append(journal.Op{Kind: journal.KindMkdir, File: f.ino(p), Path: p, Mode: 0o40755})
}

func (f *fsim) rmdir(p string) {
	f.t.Helper()
	f.must(os.Remove(f.abs(p)))
	f.j.Append(journal.Op{Kind: journal.KindRmdir, Path: p})
}

func (f *fsim) unlink(p string) {
	f.t.Helper()
	op := journal.Op{Kind: journal.KindUnlink, Path: p}
	fi, err := os.Lstat(f.abs(p))
	f.must(err)
	if op.File = inode(fi); nlink(fi) > 1 {
		op.Flags = journal.UnlinkOtherLinks
	}
	f.must(os.Remove(f.abs(p)))
	f.j.Append(op)
}

func (f *fsim) renameStore(a, b string) journal.Op {
	f.t.Helper()
	op := journal.Op{Kind: journal.KindRename, File: f.ino(a), Path: a, NewPath: b}
	if fi, err := os.Lstat(f.abs(b)); err == nil && !fi.IsDir() && nlink(fi) > 1 {
		op.Flags = journal.RenameReplacedOtherLinks // as fs journals it
	}
	f.must(os.Rename(f.abs(a), f.abs(b)))
	return op
}

func (f *fsim) rename(a, b string) { f.j.Append(f.renameStore(a, b)) }

func (f *fsim) exchange(a, b string) {
	f.t.Helper()
	f.must(renameExchangeAt(f.abs(a), f.abs(b)))
	f.j.Append(journal.Op{Kind: journal.KindRename, Path: a, NewPath: b, Flags: renameExchange})
}

func (f *fsim) symlink(target, p string) {
	f.t.Helper()
	f.must(os.Symlink(target, f.abs(p)))
	f.j.Append(journal.Op{Kind: journal.KindSymlink, File: f.ino(p), Path: p, Target: target})
}

func (f *fsim) link(a, b string) {
	f.t.Helper()
	f.must(os.Link(f.abs(a), f.abs(b)))
	f.j.Append(journal.Op{Kind: journal.KindLink, File: f.ino(a), Path: a, NewPath: b})
}

func (f *fsim) chmod(p string, mode fs.FileMode) {
	f.t.Helper()
	f.must(os.Chmod(f.abs(p), mode))
	f.j.Append(journal.Op{Kind: journal.KindSetattr, File: f.ino(p), Path: p, Mask: journal.AttrMode, Mode: uint32(mode)})
}

func renameExchangeAt(a, b string) error {
	return unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE)
}

// newShipper makes a shipper from the fsim's store and journal to the
// local directory worker, through wrap (if not nil).
func newShipper(t testing.TB, f *fsim, worker string, mod func(*Options), wrap func(Transport) Transport) *Shipper {
	t.Helper()
	opts := Options{
		Name: "w1", Store: f.store, Journal: f.j,
		Dial: func(ctx context.Context) (Transport, error) {
			l, err := NewLocal(worker)
			if err != nil || wrap == nil {
				return l, err
			}
			return wrap(l), nil
		},
		Delay: -1, HoldOpen: time.Hour, RetryMin: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond,
		Logger: tlog(t),
	}
	if mod != nil {
		mod(&opts)
	}
	s, err := NewShipper(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// start runs s until the test ends (or stop is called).
// startedShipper is newShipper, started (and stopped when the test ends)
// once it has caught up with the journal.
func startedShipper(t testing.TB, f *fsim, worker string, mod func(*Options), wrap func(Transport) Transport) *Shipper {
	t.Helper()
	s := newShipper(t, f, worker, mod, wrap)
	start(t, s)
	waitSynced(t, s, f.j)
	return s
}

func start(t testing.TB, s *Shipper) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitSynced waits until the durable cursor reached the journal's end,
// after the first full copy: a shipper that has not begun it yet has no
// cursor, which an empty journal's end would otherwise match.
func waitSynced(t testing.TB, s *Shipper, j *fakeJournal) {
	t.Helper()
	waitFor(t, "the worker to catch up", 10*time.Second, func() bool {
		st := s.Status()
		c, ok, _ := j.Cursor("w1")
		return ok && !c.FullSync && !st.InitialCopy && st.Applied == j.LastSeq() && c.Applied == j.LastSeq()
	})
}

// replaySince is a crash before the cursor was saved: for each maxOps (the
// ops a batch reads from the journal; with 1, a batch mostly does not see
// the later ops), a fresh shipper replays everything after base to the
// worker, which is then compared with the store.
func replaySince(t testing.TB, f *fsim, worker string, base uint64, maxOps ...int) {
	t.Helper()
	for _, n := range maxOps {
		f.j.cursors["w1"] = journal.Cursor{Applied: base}
		s := newShipper(t, f, worker, func(o *Options) { o.MaxOps = n }, nil)
		stop := start(t, s)
		waitSynced(t, s, f.j)
		stop()
		compareTrees(t, f.store, worker, nil)
	}
}

// treeDesc describes a tree for comparison: one line per entry with type,
// permission bits, owner, mtime (seconds) and content or target, plus the
// hard-link groups.
func treeDesc(t testing.TB, root string, excl *Excluder) []string {
	t.Helper()
	var out []string
	groups := map[uint64][]string{}
	err := filepath.WalkDir(root, func(abs string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, abs)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			rel = ""
		}
		if excl.Excluded(rel, d.IsDir()) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		fi, err := os.Lstat(abs)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		line := fmt.Sprintf("%q %v %d:%d", rel, fi.Mode(), st.Uid, st.Gid)
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(abs)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" mtime=%d %q", fi.ModTime().Unix(), b)
			if st.Nlink > 1 {
				groups[st.Ino] = append(groups[st.Ino], rel)
			}
		case fi.IsDir():
			line += fmt.Sprintf(" mtime=%d", fi.ModTime().Unix())
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(abs)
			line += " -> " + target
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups {
		sort.Strings(g)
		if len(g) > 1 {
			out = append(out, "links "+strings.Join(g, " "))
		}
	}
	sort.Strings(out)
	return out
}

func compareTrees(t testing.TB, store, worker string, excl *Excluder) {
	t.Helper()
	a, b := treeDesc(t, store, excl), treeDesc(t, worker, excl)
	if slices.Equal(a, b) {
		return
	}
	t.Errorf("worker differs from store:\nstore:\n  %s\nworker:\n  %s", strings.Join(a, "\n  "), strings.Join(b, "\n  "))
}

// mockTransport wraps a Transport; before (if set) may fail any call.
type mockTransport struct {
	Transport
	mu     sync.Mutex
	before func(method, p string) error
}

func (m *mockTransport) hook(method, p string) error {
	m.mu.Lock()
	f := m.before
	m.mu.Unlock()
	if f == nil {
		return nil
	}
	return f(method, p)
}

func (m *mockTransport) Lstat(ctx context.Context, p string) (FileInfo, error) {
	if err := m.hook("Lstat", p); err != nil {
		return FileInfo{}, err
	}
	return m.Transport.Lstat(ctx, p)
}

func (m *mockTransport) ReadDir(ctx context.Context, p string) ([]FileInfo, error) {
	if err := m.hook("ReadDir", p); err != nil {
		return nil, err
	}
	return m.Transport.ReadDir(ctx, p)
}

func (m *mockTransport) Mkdir(ctx context.Context, p string, perm fs.FileMode) error {
	if err := m.hook("Mkdir", p); err != nil {
		return err
	}
	return m.Transport.Mkdir(ctx, p, perm)
}

func (m *mockTransport) Remove(ctx context.Context, p string) error {
	if err := m.hook("Remove", p); err != nil {
		return err
	}
	return m.Transport.Remove(ctx, p)
}

func (m *mockTransport) Rename(ctx context.Context, a, b string) error {
	if err := m.hook("Rename", b); err != nil {
		return err
	}
	return m.Transport.Rename(ctx, a, b)
}

func (m *mockTransport) Chown(ctx context.Context, p string, uid, gid int) error {
	if err := m.hook("Chown", p); err != nil {
		return err
	}
	return m.Transport.Chown(ctx, p, uid, gid)
}

func (m *mockTransport) WriteFileAtomic(ctx context.Context, p string, r io.Reader, a Attrs) error {
	if err := m.hook("WriteFileAtomic", p); err != nil {
		return err
	}
	return m.Transport.WriteFileAtomic(ctx, p, r, a)
}

// chtimes sets the times of p (a directory or a file) to tm.
func (f *fsim) chtimes(p string, tm time.Time) {
	f.t.Helper()
	f.must(os.Chtimes(f.abs(p), tm, tm))
	f.j.Append(journal.Op{Kind: journal.KindSetattr, File: f.ino(p), Path: p,
		Mask: journal.AttrAtime | journal.AttrMtime, Atime: tm.UnixNano(), Mtime: tm.UnixNano()})
}

// closePath journals a Close of id as the FUSE layer does (with its path).
func (f *fsim) closePath(id uint64, p string) {
	f.j.Append(journal.Op{Kind: journal.KindClose, File: id, Path: p})
}

func workerIno(t testing.TB, worker, p string) uint64 {
	t.Helper()
	fi, err := os.Lstat(filepath.Join(worker, p))
	if err != nil {
		t.Fatal(err)
	}
	return inode(fi)
}

// countingTransport counts calls by method.
type countingTransport struct {
	Transport
	mu    sync.Mutex
	calls map[string]int
}

func (c *countingTransport) count(m string) {
	c.mu.Lock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[m]++
	c.mu.Unlock()
}

func (c *countingTransport) get(m string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[m]
}

func (c *countingTransport) ReadDir(ctx context.Context, p string) ([]FileInfo, error) {
	c.count("ReadDir")
	return c.Transport.ReadDir(ctx, p)
}

func (c *countingTransport) WriteFileAtomic(ctx context.Context, p string, r io.Reader, a Attrs) error {
	c.count("WriteFileAtomic")
	return c.Transport.WriteFileAtomic(ctx, p, r, a)
}

// inode is the inode number of fi: the identity the mount journals for a
// file on the store's own device (journal.FileID), which the tests' stores
// are.
func inode(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
