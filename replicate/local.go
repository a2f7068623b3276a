package replicate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
	"time"
)

// Local is a Transport that applies to a directory on this machine. It is
// the reference implementation of the conformance suite and the transport
// of the shipper's unit tests. All access goes through an [os.Root], and
// parents that are symlinks are refused.
type Local struct {
	root *os.Root
	dirs dirCheck
}

var _ Transport = (*Local)(nil)

// NewLocal opens the directory dir as a worker root.
func NewLocal(dir string) (*Local, error) {
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("local transport: %w", err)
	}
	return &Local{root: r}, nil
}

func rootName(p string) string {
	if p == "" {
		return "."
	}
	return p
}

// prep validates p and its parents.
func (l *Local) prep(ctx context.Context, p string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := ValidPath(p); err != nil {
		return err
	}
	return l.dirs.check(ctx, p, l.lstatRaw)
}

func (l *Local) lstatRaw(_ context.Context, p string) (FileInfo, error) {
	fi, err := l.root.Lstat(rootName(p))
	if err != nil {
		return FileInfo{}, err
	}
	return localInfo(fi), nil
}

func localInfo(fi fs.FileInfo) FileInfo {
	out := FileInfo{Name: fi.Name(), Mode: fi.Mode(), Size: fi.Size(), Mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		out.UID, out.GID = st.Uid, st.Gid
	}
	return out
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
	if fi, err := l.root.Lstat(rootName(p)); err != nil {
		return nil, err
	} else if fi.Mode()&fs.ModeSymlink != 0 {
		return nil, fmt.Errorf("readdir %s: %w", p, ErrSymlink)
	}
	d, err := l.root.Open(rootName(p))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	ents, err := d.ReadDir(-1)
	if err != nil {
		return nil, err
	}
	out := make([]FileInfo, 0, len(ents))
	for _, e := range ents {
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, localInfo(fi))
	}
	return out, nil
}

// Readlink implements Transport.
func (l *Local) Readlink(ctx context.Context, p string) (string, error) {
	if err := l.prep(ctx, p); err != nil {
		return "", err
	}
	return l.root.Readlink(rootName(p))
}

// Mkdir implements Transport.
func (l *Local) Mkdir(ctx context.Context, p string, perm fs.FileMode) error {
	if err := l.prep(ctx, p); err != nil {
		return err
	}
	return l.root.Mkdir(p, perm)
}

// Remove implements Transport.
func (l *Local) Remove(ctx context.Context, p string) error {
	if err := l.prep(ctx, p); err != nil {
		return err
	}
	fi, err := l.root.Lstat(rootName(p))
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return &fs.PathError{Op: "remove", Path: p, Err: syscall.EISDIR}
	}
	l.dirs.invalidate(p)
	return l.root.Remove(p)
}

// Rmdir implements Transport.
func (l *Local) Rmdir(ctx context.Context, p string) error {
	if err := l.prep(ctx, p); err != nil {
		return err
	}
	if p == "" {
		return fmt.Errorf("rmdir: %w: the root", ErrInvalidPath)
	}
	fi, err := l.root.Lstat(p)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return &fs.PathError{Op: "rmdir", Path: p, Err: syscall.ENOTDIR}
	}
	l.dirs.invalidate(p)
	return l.root.Remove(p)
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
	l.dirs.invalidate(from)
	l.dirs.invalidate(to)
	return l.root.Rename(from, to)
}

// Symlink implements Transport.
func (l *Local) Symlink(ctx context.Context, target, p string) error {
	if err := l.prep(ctx, p); err != nil {
		return err
	}
	if p == "" || target == "" {
		return fmt.Errorf("symlink: %w", ErrInvalidPath)
	}
	return l.root.Symlink(target, p)
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
	return l.root.Link(existing, p)
}

// noSymlink refuses to set attributes through a symlink.
func (l *Local) noSymlink(p string) error {
	fi, err := l.root.Lstat(rootName(p))
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s: %w", p, ErrSymlink)
	}
	return nil
}

// Chmod implements Transport.
func (l *Local) Chmod(ctx context.Context, p string, perm fs.FileMode) error {
	if err := l.prep(ctx, p); err != nil {
		return err
	}
	if err := l.noSymlink(p); err != nil {
		return err
	}
	return l.root.Chmod(rootName(p), perm&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
}

// Chown implements Transport.
func (l *Local) Chown(ctx context.Context, p string, uid, gid int) error {
	if err := l.prep(ctx, p); err != nil {
		return err
	}
	if err := l.noSymlink(p); err != nil {
		return err
	}
	return l.root.Lchown(rootName(p), uid, gid)
}

// Chtimes implements Transport.
func (l *Local) Chtimes(ctx context.Context, p string, atime, mtime time.Time) error {
	if err := l.prep(ctx, p); err != nil {
		return err
	}
	if err := l.noSymlink(p); err != nil {
		return err
	}
	return l.root.Chtimes(rootName(p), atime, mtime)
}

// WriteFileAtomic implements Transport.
func (l *Local) WriteFileAtomic(ctx context.Context, p string, r io.Reader, a Attrs) (err error) {
	if err := l.prep(ctx, p); err != nil {
		return err
	}
	if p == "" {
		return fmt.Errorf("write: %w: the root", ErrInvalidPath)
	}
	tmp := joinPath(parentDir(p), TempName())
	f, err := l.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			f.Close()
			_ = l.root.Remove(tmp)
		}
	}()
	if sr, ok := r.(SparseReader); ok {
		if err := writeSparse(ctx, f, sr); err != nil {
			return err
		}
	} else if _, err := io.Copy(f, ctxReader{ctx, r}); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Chmod(a.Perm & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)); err != nil {
		return err
	}
	var ownerErr error
	if a.UID >= 0 || a.GID >= 0 {
		if err := f.Chown(a.UID, a.GID); err != nil {
			if !errors.Is(err, fs.ErrPermission) {
				return err
			}
			ownerErr = fmt.Errorf("%s: %w: %w", p, ErrOwner, err)
		} else if a.Perm&(fs.ModeSetuid|fs.ModeSetgid) != 0 {
			// chown clears setuid/setgid: set the mode again.
			if err := f.Chmod(a.Perm & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)); err != nil {
				return err
			}
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if !a.Mtime.IsZero() {
		at := a.Atime
		if at.IsZero() {
			at = a.Mtime
		}
		if err := l.root.Chtimes(tmp, at, a.Mtime); err != nil {
			return err
		}
	}
	l.dirs.invalidate(p)
	if err := l.root.Rename(tmp, p); err != nil {
		return err
	}
	committed = true
	if d, err := l.root.Open(rootName(parentDir(p))); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return ownerErr
}

// Close implements Transport.
func (l *Local) Close() error { return l.root.Close() }

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
