package replicate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// copyBufs recycles the 256 KiB buffers of file copies: a burst of small
// files otherwise allocated, zeroed and collected one per file (perf during
// a burst of 10,000 files: memclr and the GC were about a quarter of the
// agent's user time).
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// Local is a Transport that applies to a directory on this machine. It is
// the reference implementation of the conformance suite and the transport
// of the shipper's unit tests. All access goes through an [os.Root], and
// parents that are symlinks are refused.
type Local struct {
	root   *os.Root
	rootFd atomic.Int32 // O_PATH: where walkParent starts; -1 once closed

	mu        sync.Mutex
	unsynced  map[string]bool // directories whose entries changed since Sync
	dirSynced int             // directories Sync flushed, for tests
}

var (
	_ Transport = (*Local)(nil)
	_ Syncer    = (*Local)(nil)
)

// changed notes that the entries of the directories holding paths changed.
func (l *Local) changed(paths ...string) {
	dirs := make([]string, len(paths))
	for i, p := range paths {
		dirs[i] = parentDir(p)
	}
	l.unsyncedDirs(dirs...)
}

// unsyncedDirs notes directories for the next Sync.
func (l *Local) unsyncedDirs(dirs ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.unsynced == nil {
		l.unsynced = map[string]bool{}
	}
	for _, d := range dirs {
		l.unsynced[d] = true
	}
}

// Sync implements Syncer: it fsyncs every directory whose entries changed
// since the last Sync. A directory that is no longer one inside the root
// is skipped (see syncDir): what removed or replaced it changed an
// ancestor, which is synced too.
func (l *Local) Sync(ctx context.Context) error {
	l.mu.Lock()
	dirs := slices.Sorted(maps.Keys(l.unsynced))
	l.unsynced = nil
	l.mu.Unlock()
	for i, d := range dirs {
		if err := ctx.Err(); err != nil {
			l.unsyncedDirs(dirs[i:]...)
			return err
		}
		gone, err := l.syncDir(ctx, d)
		if err != nil {
			l.unsyncedDirs(dirs[i:]...) // for the next Sync
			return fmt.Errorf("sync directory %q: %w", d, err)
		}
		if !gone {
			l.mu.Lock()
			l.dirSynced++
			l.mu.Unlock()
		}
	}
	return nil
}

// checkRoot requires root, a worker's root, to be a real directory, not a
// symlink: a root that is a link (to / or ../.., say) would send every
// change to wherever it points. The message names the target and the
// resolved path to configure instead.
func checkRoot(root string) error {
	fi, err := os.Lstat(root)
	if err != nil {
		return fmt.Errorf("root %s: %w", root, err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		target, _ := os.Readlink(root)
		resolved, rerr := filepath.EvalSymlinks(root)
		if rerr != nil {
			resolved = "unresolvable: " + rerr.Error()
		}
		return fmt.Errorf("root %s is a symlink to %s (resolves to %s): a worker root must be a real directory; configure the resolved path instead", root, target, resolved)
	}
	if !fi.IsDir() {
		return fmt.Errorf("root %s: not a directory", root)
	}
	return nil
}

// betweenRootCheckAndOpen lets a test swap the root in the window that
// OpenRoot's last check closes.
var betweenRootCheckAndOpen = func() {}

// OpenRoot opens a worker's root after checkRoot, and makes sure the
// directory it opened is the path's own entry: os.OpenRoot follows a
// symlink, so one swapped in between the check and the open would send
// every change to wherever it points. The agent (through NewLocal) and
// `mirrorfs worker` (at start and for each session) open their root
// with it.
func OpenRoot(root string) (*os.Root, error) {
	if err := checkRoot(root); err != nil {
		return nil, err
	}
	betweenRootCheckAndOpen()
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, fmt.Errorf("root %s: %w", root, err)
	}
	opened, err := r.Stat(".")
	if err == nil {
		var own os.FileInfo
		if own, err = os.Lstat(root); err == nil && !os.SameFile(opened, own) {
			err = errors.New("it was replaced while it was opened (a symlink swapped in?): refusing it")
		}
	}
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("root %s: %w", root, err)
	}
	return r, nil
}

// syncDir fsyncs the directory d, reached without following a symlink;
// gone reports a d that is no directory of the tree any more: missing,
// below a file or a symlink, or itself a file or a symlink now (a
// directory replaced by `ln -s`). Only these are skipped: an error that
// says nothing about the tree's shape (EIO, say) is returned, and the
// batch is not acknowledged. Skipping only a missing d made every later
// Sync fail on such a d (ENOTDIR, or a symlink leading out of the
// root), and the worker's cursor never advanced again.
func (l *Local) syncDir(ctx context.Context, d string) (gone bool, err error) {
	dfd, name, err := l.openParent(ctx, d)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrSymlink) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	switch err {
	case nil:
	case unix.ENOENT, unix.ENOTDIR, unix.ELOOP: // ELOOP: O_NOFOLLOW met a symlink
		return true, nil
	default:
		return false, &fs.PathError{Op: "open", Path: d, Err: err}
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return false, &fs.PathError{Op: "fsync", Path: d, Err: err}
	}
	return false, nil
}

// NewLocal opens the directory dir as a worker root (see OpenRoot; its
// errors name dir).
func NewLocal(dir string) (*Local, error) {
	r, err := OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	rf, err := r.Open(".")
	if err == nil {
		var rc syscall.RawConn
		if rc, err = rf.SyscallConn(); err == nil {
			fd := -1
			cerr := rc.Control(func(rfd uintptr) {
				fd, err = unix.Openat(int(rfd), ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			})
			rf.Close()
			if err = errors.Join(cerr, err); err == nil {
				l := &Local{root: r}
				l.rootFd.Store(int32(fd))
				return l, nil
			}
		}
	}
	r.Close()
	return nil, fmt.Errorf("root %s: %w", dir, err)
}

func rootName(p string) string {
	if p == "" {
		return "."
	}
	return p
}

// prep validates p. Its parents are checked by the walk every operation
// makes (walkParent), which refuses a symlink or a file among them.
func (l *Local) prep(ctx context.Context, p string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return ValidPath(p)
}

func (l *Local) lstatRaw(_ context.Context, p string) (fi FileInfo, err error) {
	err = l.at(p, func(dfd int, name string) (err error) {
		fi, err = statAt(dfd, name, p)
		return err
	})
	return fi, err
}

// Lstat implements Transport.
func (l *Local) Lstat(ctx context.Context, p string) (FileInfo, error) {
	if err := l.prep(ctx, p); err != nil {
		return FileInfo{}, err
	}
	return l.lstatRaw(ctx, p)
}

// ReadDir implements Transport.
func (l *Local) ReadDir(ctx context.Context, p string) ([]FileInfo, error) {
	if err := l.prep(ctx, p); err != nil {
		return nil, err
	}
	var d *os.File
	err := l.at(p, func(dfd int, name string) (err error) {
		d, err = openAt(dfd, name, p, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		return err
	})
	if errors.Is(err, ErrSymlink) {
		return nil, fmt.Errorf("readdir %s: %w", p, ErrSymlink)
	}
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: p, Err: err}
	}
	out := make([]FileInfo, 0, len(names))
	dfd := int(d.Fd())
	for _, n := range names {
		fi, err := statAt(dfd, n, joinPath(p, n))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, fi)
	}
	return out, nil
}

// Readlink implements Transport.
func (l *Local) Readlink(ctx context.Context, p string) (string, error) {
	if err := l.prep(ctx, p); err != nil {
		return "", err
	}
	var target string
	err := l.at(p, func(dfd int, name string) (err error) {
		target, err = readlinkAt(dfd, name, p)
		return err
	})
	return target, err
}

// Mkdir implements Transport.
func (l *Local) Mkdir(ctx context.Context, p string, perm fs.FileMode) error {
	if err := l.prep(ctx, p); err != nil {
		return err
	}
	if p == "" {
		return &fs.PathError{Op: "mkdir", Path: ".", Err: fs.ErrExist}
	}
	err := l.at(p, func(dfd int, name string) error {
		if err := unix.Mkdirat(dfd, name, unixPerm(perm)); err != nil {
			return &fs.PathError{Op: "mkdir", Path: p, Err: err}
		}
		return nil
	})
	if err != nil {
		return err
	}
	l.changed(p)
	return nil
}

// Remove implements Transport.
func (l *Local) Remove(ctx context.Context, p string) error {
	if err := l.prep(ctx, p); err != nil {
		return err
	}
	if p == "" {
		return &fs.PathError{Op: "remove", Path: ".", Err: syscall.EISDIR}
	}
	err := l.at(p, func(dfd int, name string) error {
		fi, err := statAt(dfd, name, p)
		if err != nil {
			return err
		}
		if fi.IsDir() {
			return &fs.PathError{Op: "remove", Path: p, Err: syscall.EISDIR}
		}
		if err := unix.Unlinkat(dfd, name, 0); err != nil {
			return &fs.PathError{Op: "remove", Path: p, Err: err}
		}
		return nil
	})
	if err != nil {
		return err
	}
	l.changed(p)
	return nil
}

// Rmdir implements Transport.
func (l *Local) Rmdir(ctx context.Context, p string) error {
	if err := l.prep(ctx, p); err != nil {
		return err
	}
	if p == "" {
		return fmt.Errorf("rmdir: %w: the root", ErrInvalidPath)
	}
	err := l.at(p, func(dfd int, name string) error {
		fi, err := statAt(dfd, name, p)
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return &fs.PathError{Op: "rmdir", Path: p, Err: syscall.ENOTDIR}
		}
		if err := unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR); err != nil {
			return &fs.PathError{Op: "rmdir", Path: p, Err: err}
		}
		return nil
	})
	if err != nil {
		return err
	}
	l.changed(p)
	return nil
}

// Rename implements Transport.
func (l *Local) Rename(ctx context.Context, from, to string) error {
	if err := l.prep(ctx, from); err != nil {
		return err
	}
	if err := l.prep(ctx, to); err != nil {
		return err
	}
	if from == "" || to == "" {
		return fmt.Errorf("rename: %w: the root", ErrInvalidPath)
	}
	if err := l.renameRaw(from, to); err != nil {
		return err
	}
	l.renameUnsynced(from, to)
	l.changed(from, to)
	return nil
}

// renameUnsynced moves the directories noted for the next Sync at or below
// from to their names below to: a renamed directory keeps its unflushed
// entries. Under the old name Sync found nothing and skipped them, so the
// files just written into a directory renamed before the Sync (a release
// directory moved into place) were never flushed.
func (l *Local) renameUnsynced(from, to string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var moved []string
	for d := range l.unsynced {
		if from != "" && under(d, from) {
			moved = append(moved, d)
		}
	}
	for _, d := range moved {
		delete(l.unsynced, d)
		l.unsynced[reparent(d, from, to)] = true
	}
}

// Symlink implements Transport.
func (l *Local) Symlink(ctx context.Context, target, p string) error {
	if err := l.prep(ctx, p); err != nil {
		return err
	}
	if p == "" || target == "" {
		return fmt.Errorf("symlink: %w", ErrInvalidPath)
	}
	err := l.at(p, func(dfd int, name string) error {
		if err := unix.Symlinkat(target, dfd, name); err != nil {
			return &os.LinkError{Op: "symlink", Old: target, New: p, Err: err}
		}
		return nil
	})
	if err != nil {
		return err
	}
	l.changed(p)
	return nil
}

// Link implements Transport.
func (l *Local) Link(ctx context.Context, existing, p string) error {
	if err := l.prep(ctx, existing); err != nil {
		return err
	}
	if err := l.prep(ctx, p); err != nil {
		return err
	}
	if existing == "" || p == "" {
		return fmt.Errorf("link: %w: the root", ErrInvalidPath)
	}
	err := l.at(existing, func(edfd int, ename string) error {
		return l.at(p, func(dfd int, name string) error {
			if err := unix.Linkat(edfd, ename, dfd, name, 0); err != nil {
				return &os.LinkError{Op: "link", Old: existing, New: p, Err: err}
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	l.changed(p)
	return nil
}

// Chmod implements Transport (see chmodAt).
func (l *Local) Chmod(ctx context.Context, p string, perm fs.FileMode) error {
	dfd, name, err := l.openParent(ctx, p)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	return chmodAt(dfd, name, p, perm)
}

// Chown implements Transport: a symlink at p is refused (ErrSymlink), not
// changed or followed.
func (l *Local) Chown(ctx context.Context, p string, uid, gid int) error {
	return l.atNoSymlink(ctx, p, func(dfd int, name string) error {
		if err := unix.Fchownat(dfd, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &fs.PathError{Op: "chown", Path: p, Err: err}
		}
		return nil
	})
}

// Chtimes implements Transport: a symlink at p is refused (ErrSymlink).
// By name and following, it set the times of the file a symlink swapped in
// meanwhile points to (see Chmod); it now sets them without following.
func (l *Local) Chtimes(ctx context.Context, p string, atime, mtime time.Time) error {
	return l.atNoSymlink(ctx, p, func(dfd int, name string) error {
		return utimesAt(dfd, name, p, atime, mtime)
	})
}

// atNoSymlink runs fn on p's parent and name after checking that p is no
// symlink, all below one walk.
func (l *Local) atNoSymlink(ctx context.Context, p string, fn func(dfd int, name string) error) error {
	dfd, name, err := l.openParent(ctx, p)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	fi, err := statAt(dfd, name, p)
	if err != nil {
		return err
	}
	if fi.Mode&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s: %w", p, ErrSymlink)
	}
	return fn(dfd, name)
}

// WriteFileAtomic implements Transport.
func (l *Local) WriteFileAtomic(ctx context.Context, p string, r io.Reader, a Attrs) error {
	t, err := l.createTemp(ctx, p)
	if err != nil {
		return err
	}
	defer t.discard()
	wb := &writebackFile{f: t.f}
	if sr, ok := r.(SparseReader); ok {
		err = writeSparse(ctx, wb, sr)
	} else {
		bp := copyBufs.Get().(*[]byte)
		_, err = io.CopyBuffer(wb, ctxReader{ctx, r}, *bp)
		copyBufs.Put(bp)
	}
	if err != nil {
		return err
	}
	ownerErr, err := t.finish(a)
	if err != nil {
		return err
	}
	if err := t.commit(); err != nil {
		return err
	}
	return ownerErr
}

// tempFile is a file written under a temporary name in the directory of
// its path p, then renamed over p once its data is on disk: a web server
// never opens a half-written file at p (promise 2).
type tempFile struct {
	l         *Local
	p, name   string
	f         *os.File // nil once finished
	committed bool
}

// createTemp creates the temp file of p, empty and private (0600).
func (l *Local) createTemp(ctx context.Context, p string) (*tempFile, error) {
	if err := l.prep(ctx, p); err != nil {
		return nil, err
	}
	if p == "" {
		return nil, fmt.Errorf("write: %w: the root", ErrInvalidPath)
	}
	name := joinPath(parentDir(p), TempName())
	var f *os.File
	err := l.at(name, func(dfd int, base string) (err error) {
		f, err = openAt(dfd, base, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o600)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &tempFile{l: l, p: p, name: name, f: f}, nil
}

// finish makes the written data durable (fsync) and gives the file the
// attributes a. A refused owner is ownerErr (ErrOwner): the file is
// otherwise complete and may be committed.
func (t *tempFile) finish(a Attrs) (ownerErr, err error) {
	f := t.f
	if err := f.Sync(); err != nil {
		return nil, err
	}
	// The owner goes first: a chown clears setuid and setgid.
	if a.UID >= 0 || a.GID >= 0 {
		if err := f.Chown(a.UID, a.GID); err != nil {
			if !errors.Is(err, fs.ErrPermission) {
				return nil, err
			}
			ownerErr = fmt.Errorf("%s: %w: %w", t.p, ErrOwner, err)
		}
	}
	if err := f.Chmod(permBits(a.Perm)); err != nil {
		return nil, err
	}
	t.f = nil
	if err := f.Close(); err != nil {
		return nil, err
	}
	if !a.Mtime.IsZero() {
		err := t.l.at(t.name, func(dfd int, name string) error { return utimesAt(dfd, name, t.name, a.atime(), a.Mtime) })
		if err != nil {
			return nil, err
		}
	}
	return ownerErr, nil
}

// commit renames the finished temp file over p. The directory is synced
// by Sync, once per batch.
func (t *tempFile) commit() error {
	if err := t.l.renameRaw(t.name, t.p); err != nil {
		return err
	}
	t.committed = true
	t.l.changed(t.p)
	return nil
}

// discard removes the temp file unless it was committed.
func (t *tempFile) discard() {
	if t.committed {
		return
	}
	if t.f != nil {
		t.f.Close()
		t.f = nil
	}
	_ = t.l.at(t.name, func(dfd int, name string) error { return unix.Unlinkat(dfd, name, 0) })
}

// Close implements Transport.
func (l *Local) Close() error {
	// Once: the number may be another file's by a second call.
	if fd := l.rootFd.Swap(-1); fd >= 0 {
		unix.Close(int(fd))
		return l.root.Close()
	}
	return nil
}

// ContextReader returns a reader of r that fails with ctx's error once
// ctx is done: a long copy stops at the next read.
func ContextReader(ctx context.Context, r io.Reader) io.Reader { return ctxReader{ctx, r} }

// ctxReader stops a copy when its context is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}

// The optional capabilities below work on file descriptors rather than on
// names resolved by the kernel from the root: each call opens the parent
// directory of p one component at a time with O_NOFOLLOW (openParent) and
// then acts on the final name relative to that descriptor with the *at
// system calls and AT_SYMLINK_NOFOLLOW. prep's dirCheck already refuses a
// symlinked parent, but only at the time of the check; the descriptor walk
// keeps a symlink swapped in afterwards from redirecting the call outside
// the root. os.Root cannot be used for these calls: it has no lchown with
// times, xattr or mknod operations, and it follows symlinks in parents
// that stay inside the root.
var (
	_ LinkAttrs = (*Local)(nil)
	_ Xattrs    = (*Local)(nil)
	_ Special   = (*Local)(nil)
)

// openParent validates p and returns an O_PATH descriptor of its parent
// directory and the name of p in it ("." for the root). The caller closes
// the descriptor.
func (l *Local) openParent(ctx context.Context, p string) (int, string, error) {
	if err := l.prep(ctx, p); err != nil {
		return -1, "", err
	}
	return l.walkParent(p)
}

// walkParent is openParent of a p already validated: the walk from the
// root, one directory at a time, each opened with O_NOFOLLOW.
func (l *Local) walkParent(p string) (int, string, error) {
	// O_PATH needs no read permission on the directories walked.
	const dirFlags = unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	root := int(l.rootFd.Load())
	if root < 0 {
		return -1, "", &fs.PathError{Op: "open", Path: p, Err: fs.ErrClosed}
	}
	// One openat2 refusing every symlink does the walk (Linux 5.6);
	// when it fails, or the kernel lacks it, the walk below tells why.
	if dir := parentDir(p); dir != "" {
		how := unix.OpenHow{Flags: dirFlags, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
		if fd, err := unix.Openat2(root, dir, &how); err == nil {
			return fd, baseName(p), nil
		}
	}
	fd, err := unix.Openat(root, ".", dirFlags, 0)
	if err != nil {
		return -1, "", &fs.PathError{Op: "open", Path: ".", Err: err}
	}
	if p == "" {
		return fd, ".", nil
	}
	dir := parentDir(p)
	if dir == "" {
		return fd, p, nil
	}
	walked := ""
	for el := range strings.SplitSeq(dir, "/") {
		walked = joinPath(walked, el)
		nfd, err := unix.Openat(fd, el, dirFlags, 0)
		if err != nil {
			// O_NOFOLLOW|O_DIRECTORY on a symlink gives ELOOP or
			// ENOTDIR: tell a symlink from a file like dirCheck does.
			var st unix.Stat_t
			isLink := (err == unix.ELOOP || err == unix.ENOTDIR) &&
				unix.Fstatat(fd, el, &st, unix.AT_SYMLINK_NOFOLLOW) == nil &&
				st.Mode&unix.S_IFMT == unix.S_IFLNK
			unix.Close(fd)
			switch {
			case isLink:
				return -1, "", fmt.Errorf("%w: parent %q of %q", ErrSymlink, walked, p)
			case err == unix.ENOTDIR:
				return -1, "", fmt.Errorf("parent %q of %q is not a directory: %w", walked, p, fs.ErrNotExist)
			}
			return -1, "", &fs.PathError{Op: "open", Path: walked, Err: err}
		}
		unix.Close(fd)
		fd = nfd
	}
	return fd, baseName(p), nil
}

// Lchown implements LinkAttrs.
func (l *Local) Lchown(ctx context.Context, p string, uid, gid int) error {
	dfd, name, err := l.openParent(ctx, p)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Fchownat(dfd, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "lchown", Path: p, Err: err}
	}
	return nil
}

// Lchtimes implements LinkAttrs.
func (l *Local) Lchtimes(ctx context.Context, p string, atime, mtime time.Time) error {
	dfd, name, err := l.openParent(ctx, p)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	return utimesAt(dfd, name, p, atime, mtime)
}

// Mknod implements Special.
func (l *Local) Mknod(ctx context.Context, p string, mode fs.FileMode, rdev uint64) error {
	dfd, name, err := l.openParent(ctx, p)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if p == "" {
		return fmt.Errorf("mknod: %w: the root", ErrInvalidPath)
	}
	var typ uint32
	switch mode.Type() {
	case fs.ModeNamedPipe:
		typ, rdev = unix.S_IFIFO, 0
	case fs.ModeDevice | fs.ModeCharDevice:
		typ = unix.S_IFCHR
	case fs.ModeDevice:
		typ = unix.S_IFBLK
	case fs.ModeSocket:
		typ, rdev = unix.S_IFSOCK, 0
	default:
		return fmt.Errorf("mknod %s: type %v: %w", p, mode.Type(), ErrUnsupported)
	}
	perm := unixPerm(mode)
	// mknod fails with EEXIST on any existing name, a dangling symlink
	// included, so it never creates anything through a symlink.
	if err := unix.Mknodat(dfd, name, typ|perm, int(rdev)); err != nil {
		return &fs.PathError{Op: "mknod", Path: p, Err: err}
	}
	l.changed(p)
	// mknod applies the umask; set the exact bits, as WriteFileAtomic
	// does. AT_SYMLINK_NOFOLLOW (fchmodat2, Linux 6.6) keeps a symlink
	// swapped in meanwhile from redirecting the chmod; older kernels
	// cannot do that safely and keep the umasked mode.
	if err := unix.Fchmodat(dfd, name, perm, unix.AT_SYMLINK_NOFOLLOW); err != nil && err != unix.EOPNOTSUPP {
		return &fs.PathError{Op: "chmod", Path: p, Err: err}
	}
	return nil
}

// unixPerm converts the permission and special bits of a Go mode.
func unixPerm(m fs.FileMode) uint32 {
	perm := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		perm |= unix.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		perm |= unix.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		perm |= unix.S_ISVTX
	}
	return perm
}

// xattrOps are the xattr calls bound to one file, by descriptor or by path.
type xattrOps struct {
	list   func(dest []byte) (int, error)
	get    func(name string, dest []byte) (int, error)
	set    func(name string, value []byte) error
	remove func(name string) error
}

// withXattrs runs fn with xattr calls bound to p, not following a final
// symlink, and wraps its error in an fs.PathError.
//
// Regular files and directories are opened relative to the parent with
// O_NOFOLLOW and used through f*xattr. A symlink cannot be opened that way,
// and opening a FIFO or device could block or have side effects (a tape
// rewinds), so those, and files this process may not open for reading, go
// through the l*xattr calls on "/proc/self/fd/<parent>/<name>": Linux
// follows the magic link of the parent descriptor and not the final name.
func (l *Local) withXattrs(ctx context.Context, op, p string, fn func(x xattrOps) error) error {
	dfd, name, err := l.openParent(ctx, p)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: op, Path: p, Err: err}
	}
	if t := st.Mode & unix.S_IFMT; t == unix.S_IFREG || t == unix.S_IFDIR {
		fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		if err == nil {
			defer unix.Close(fd)
			var fst unix.Stat_t
			// Use the descriptor only if it is still the file just
			// checked, not something renamed over it in between.
			if unix.Fstat(fd, &fst) == nil && fst.Dev == st.Dev && fst.Ino == st.Ino {
				err := fn(xattrOps{
					list:   func(b []byte) (int, error) { return unix.Flistxattr(fd, b) },
					get:    func(n string, b []byte) (int, error) { return unix.Fgetxattr(fd, n, b) },
					set:    func(n string, v []byte) error { return unix.Fsetxattr(fd, n, v, 0) },
					remove: func(n string) error { return unix.Fremovexattr(fd, n) },
				})
				if err != nil {
					return &fs.PathError{Op: op, Path: p, Err: err}
				}
				return nil
			}
		} else if err == unix.ENOENT {
			return &fs.PathError{Op: op, Path: p, Err: err}
		}
		// Otherwise (EACCES, ELOOP after a swap, a changed file): the
		// path calls below act on whatever is there now, still without
		// following it.
	}
	path := "/proc/self/fd/" + strconv.Itoa(dfd) + "/" + name
	err = fn(xattrOps{
		list:   func(b []byte) (int, error) { return unix.Llistxattr(path, b) },
		get:    func(n string, b []byte) (int, error) { return unix.Lgetxattr(path, n, b) },
		set:    func(n string, v []byte) error { return unix.Lsetxattr(path, n, v, 0) },
		remove: func(n string) error { return unix.Lremovexattr(path, n) },
	})
	if err == unix.ENOENT {
		// Without /proc the path does not resolve; say so rather than
		// report p as missing.
		if _, serr := os.Stat("/proc/self/fd"); serr != nil {
			return fmt.Errorf("%s %s: %w: /proc is not mounted", op, p, ErrUnsupported)
		}
	}
	if err != nil {
		return &fs.PathError{Op: op, Path: p, Err: err}
	}
	return nil
}

// readGrowing calls f first to learn the size, then with a buffer; a
// concurrent change that grew the data (ERANGE) starts over.
func readGrowing(f func(dest []byte) (int, error)) ([]byte, error) {
	for {
		n, err := f(nil)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, n)
		n, err = f(buf)
		if err == unix.ERANGE {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

// ListXattrs implements Xattrs.
func (l *Local) ListXattrs(ctx context.Context, p string) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := l.withXattrs(ctx, "listxattr", p, func(x xattrOps) error {
		names, err := readGrowing(x.list)
		if err == unix.ENOTSUP {
			return nil // no xattr support: no attributes
		}
		if err != nil {
			return err
		}
		for n := range strings.SplitSeq(strings.TrimSuffix(string(names), "\x00"), "\x00") {
			if n == "" {
				continue
			}
			v, err := readGrowing(func(b []byte) (int, error) { return x.get(n, b) })
			if err == unix.ENODATA {
				continue // removed since the list
			}
			if err != nil {
				return err
			}
			out[n] = v
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// SetXattr implements Xattrs.
func (l *Local) SetXattr(ctx context.Context, p, name string, value []byte) error {
	return l.withXattrs(ctx, "setxattr", p, func(x xattrOps) error {
		return x.set(name, value)
	})
}

// RemoveXattr implements Xattrs.
func (l *Local) RemoveXattr(ctx context.Context, p, name string) error {
	return l.withXattrs(ctx, "removexattr", p, func(x xattrOps) error {
		if err := x.remove(name); err != unix.ENODATA {
			return err
		}
		return nil // already absent
	})
}

var _ Hasher = (*Local)(nil)

var _ Keeper = (*Local)(nil)

// KeepIfSame implements Keeper.
func (l *Local) KeepIfSame(ctx context.Context, items []KeepItem) ([]bool, error) {
	out := make([]bool, len(items))
	for i, it := range items {
		same, err := l.keepIfSame(ctx, it.Path, it.Size, func() []byte { return it.Hash }, it.Attrs)
		if err != nil {
			return nil, err
		}
		out[i] = same
	}
	return out, nil
}

// keepIfSame is KeepIfSame for one file p of size bytes whose SHA-256 is
// hash(), asked for only when the sizes match: false, not an error, for
// anything that is not the same content in a regular file with one name
// (missing, another type, hard-linked, another size or hash, user.* xattrs,
// an owner it may not set); true once the file has attributes a.
func (l *Local) keepIfSame(ctx context.Context, p string, size int64, hash func() []byte, a Attrs) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := l.prep(ctx, p); err != nil {
		return false, nil
	}
	ofi, err := l.lstatRaw(ctx, p)
	if err != nil || !ofi.Mode.IsRegular() || ofi.Size != size {
		return false, nil
	}
	if ofi.Nlink != 1 {
		// The master offers only files with one name in the store: a
		// worker file with more is joined to a name the store has split
		// from it (by replacing this one). Keeping it would keep the
		// group joined and give the other names these attributes; a new
		// file splits it.
		return false, nil
	}
	sum, err := l.Hash(ctx, p)
	if err != nil || !bytes.Equal(sum, hash()) {
		return false, nil
	}
	if x, err := l.ListXattrs(ctx, p); err != nil {
		return false, nil
	} else {
		for name := range x {
			if strings.HasPrefix(name, "user.") {
				return false, nil
			}
		}
	}
	if err := l.applyAttrs(p, ofi, a); err != nil {
		return false, nil // a refused owner too: a new file gets the error
	}
	return true, nil
}

var _ AttrSetter = (*Local)(nil)

// SetAttrs implements AttrSetter.
func (l *Local) SetAttrs(ctx context.Context, items []AttrItem) ([]AttrResult, error) {
	out := make([]AttrResult, len(items))
	for i, it := range items {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		out[i].Found, out[i].Err = l.setAttrs(ctx, it)
	}
	return out, nil
}

// setAttrs is SetAttrs for one item.
func (l *Local) setAttrs(ctx context.Context, it AttrItem) (found bool, err error) {
	if err := l.prep(ctx, it.Path); err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrSymlink) {
			// Not an entry of the tree: missing, or below a file or a
			// symlink (never followed), as for wlstat.
			return false, nil
		}
		return false, err
	}
	fi, err := l.lstatRaw(ctx, it.Path)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrSymlink) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if fi.Mode&fs.ModeSymlink != 0 || fi.IsDir() != it.Dir {
		return false, nil
	}
	return true, l.applyAttrs(it.Path, fi, it.Attrs)
}

// applyAttrs gives p, whose lstat is fi (not a symlink), the owner,
// permission bits and times of a where they differ, as WriteFileAtomic
// sets them (a zero atime becomes the mtime). The owner goes first: a
// chown clears a file's setuid and setgid bits, which the chmod after it
// sets again. A refused chown is an ErrOwner error, after the mode and
// times are set.
func (l *Local) applyAttrs(p string, fi FileInfo, a Attrs) error {
	return l.at(p, func(dfd int, name string) error {
		var ownerErr error
		chowned := false
		if a.UID >= 0 && uint32(a.UID) != fi.UID || a.GID >= 0 && uint32(a.GID) != fi.GID {
			switch err := unix.Fchownat(dfd, name, a.UID, a.GID, unix.AT_SYMLINK_NOFOLLOW); {
			case errors.Is(err, fs.ErrPermission):
				ownerErr = fmt.Errorf("%s: %w: %w", p, ErrOwner, &fs.PathError{Op: "lchown", Path: p, Err: err})
			case err != nil:
				return &fs.PathError{Op: "lchown", Path: p, Err: err}
			default:
				chowned = true
			}
		}
		if perm := permBits(a.Perm); chowned || permBits(fi.Mode) != perm {
			if err := chmodAt(dfd, name, p, perm); err != nil {
				return err
			}
		}
		if !a.Mtime.IsZero() && !a.Mtime.Equal(fi.Mtime) {
			if err := utimesAt(dfd, name, p, a.atime(), a.Mtime); err != nil {
				return err
			}
		}
		return ownerErr
	})
}

// WriteSmallFiles implements SmallWriter. The files it writes go in three
// passes over a group: each one's temp file written and its writeback
// started; then all of them fsynced and given their attributes side by
// side; then each renamed over its path, in order. Every file's data is
// still on disk before its rename (promise 2), but on a journaled file
// system the group's fsyncs share one journal commit and its disk cache
// flush, where one file after another cost a commit each: those were a
// third of a burst of 1,000 small files to three workers sharing one disk
// (BENCHMARKS.md, "A worker syncs a group of small files together").
//
// A path that comes again in files starts a new group, so that its second
// content is compared with, and renamed after, its first.
func (l *Local) WriteSmallFiles(ctx context.Context, files []SmallFile) ([]SmallResult, error) {
	out := make([]SmallResult, len(files))
	for start := 0; start < len(files); {
		end := start
		inGroup := map[string]bool{}
		for end < len(files) && end-start < smallGroupMax && !inGroup[files[end].Path] {
			inGroup[files[end].Path] = true
			end++
		}
		if err := l.writeSmallGroup(ctx, files[start:end], out[start:end]); err != nil {
			return nil, err
		}
		start = end
	}
	return out, nil
}

const (
	// smallGroupMax bounds the temp files WriteSmallFiles holds open.
	smallGroupMax = 128
	// smallSyncsMax bounds its fsyncs in flight, each a blocked thread.
	smallSyncsMax = 32
)

// writeSmallGroup is WriteSmallFiles for files with distinct paths; out
// receives their results.
func (l *Local) writeSmallGroup(ctx context.Context, files []SmallFile, out []SmallResult) error {
	temps := make([]*tempFile, len(files))
	defer func() {
		for _, t := range temps {
			if t != nil {
				t.discard() // uncommitted only
			}
		}
	}()
	for i, f := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		temps[i], out[i].Kept, out[i].Err = l.stageSmall(ctx, f, len(files) > 1)
	}
	ownerErrs := make([]error, len(files))
	if len(files) == 1 { // a lone save: no goroutine to wake
		if temps[0] != nil {
			ownerErrs[0], out[0].Err = temps[0].finish(files[0].Attrs)
		}
	} else {
		var wg sync.WaitGroup
		syncs := make(chan struct{}, smallSyncsMax)
		for i, t := range temps {
			if t == nil {
				continue
			}
			syncs <- struct{}{}
			wg.Go(func() {
				defer func() { <-syncs }()
				ownerErrs[i], out[i].Err = t.finish(files[i].Attrs)
			})
		}
		wg.Wait()
	}
	for i, t := range temps {
		if t == nil || out[i].Err != nil {
			continue
		}
		if err := t.commit(); err != nil {
			out[i].Err = err
			continue
		}
		out[i].Err = ownerErrs[i]
	}
	return nil
}

// stageSmall is the first pass of WriteSmallFiles for f: kept when the
// worker's file already has this content (it then has f's attributes
// too), or written into a temp file. In a group (grouped), the file's
// writeback begins at once: its blocks are then allocated in the journal
// transaction that the group's first fsync commits.
func (l *Local) stageSmall(ctx context.Context, f SmallFile, grouped bool) (t *tempFile, kept bool, err error) {
	if len(f.Data) > SmallMax {
		return nil, false, fmt.Errorf("write %s: %d bytes, more than a small file's %d", f.Path, len(f.Data), SmallMax)
	}
	// The data's hash is computed only when the worker's file has its
	// size: a new file (most of a burst) needs none.
	hash := func() []byte { sum := sha256.Sum256(f.Data); return sum[:] }
	same, err := l.keepIfSame(ctx, f.Path, int64(len(f.Data)), hash, f.Attrs)
	if err != nil || same {
		return nil, same, err
	}
	t, err = l.createTemp(ctx, f.Path)
	if err != nil {
		return nil, false, err
	}
	if _, err := t.f.Write(f.Data); err != nil {
		t.discard()
		return nil, false, err
	}
	if grouped {
		_ = unix.SyncFileRange(int(t.f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	}
	return t, false, nil
}

// Hash implements Hasher: the SHA-256 of the regular file p, opened
// without following a final symlink (and without blocking on a FIFO).
func (l *Local) Hash(ctx context.Context, p string) ([]byte, error) {
	f, err := l.openRegular(ctx, p, func(m fs.FileMode) error {
		return &fs.PathError{Op: "hash", Path: p, Err: fmt.Errorf("not a regular file (%s)", m.Type())}
	})
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, ctxReader{ctx, f}); err != nil {
		return nil, &fs.PathError{Op: "hash", Path: p, Err: err}
	}
	return h.Sum(nil), nil
}

// OpenRead opens the regular file p read-only for the agent (the basis of
// a delta), with Hash's rules (see openRegular).
func (l *Local) OpenRead(ctx context.Context, p string) (*os.File, error) {
	return l.openRegular(ctx, p, func(m fs.FileMode) error {
		return &fs.PathError{Op: "open", Path: p, Err: fmt.Errorf("not a regular file (%s): %w", m.Type(), ErrUnsupported)}
	})
}

// openRegular opens the regular file p read-only below one walk: p is
// validated, a symlink is refused with [ErrSymlink] (also one swapped in
// after the look) and any other non-regular file with notRegular, before
// it is opened (opening a device may have side effects), and again after
// (O_NONBLOCK: a FIFO swapped in does not block the open).
func (l *Local) openRegular(ctx context.Context, p string, notRegular func(fs.FileMode) error) (*os.File, error) {
	dfd, name, err := l.openParent(ctx, p)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	if fi, err := statAt(dfd, name, p); err != nil {
		return nil, err
	} else if fi.Mode&fs.ModeSymlink != 0 {
		return nil, fmt.Errorf("%s: %w", p, ErrSymlink)
	} else if !fi.Mode.IsRegular() {
		return nil, notRegular(fi.Mode)
	}
	f, err := openAt(dfd, name, p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = notRegular(fi.Mode())
		}
		return nil, err
	}
	return f, nil
}
