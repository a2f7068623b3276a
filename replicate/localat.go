package replicate

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Local reaches every entry through its parent directory, walked from the
// root one component at a time without following any symlink
// (walkParent), and acts on the entry's name in it with a *at call that
// does not follow it either. os.Root, which Local used before, follows
// symlinks that stay inside the root, even a final one given O_NOFOLLOW:
// a user of the worker who can write in the web root (a web application's
// uploads) could swap a directory the master had checked, or a name
// between its check and its use, for a symlink to elsewhere in the root,
// and redirect the master's writes, removals and attribute changes there.

// at runs fn on p's parent directory and p's name in it ("." for the
// root). p is not validated: callers have done so (prep) or made p.
func (l *Local) at(p string, fn func(dfd int, name string) error) error {
	dfd, name, err := l.walkParent(p)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	return fn(dfd, name)
}

// statAt is the lstat of name in dfd, as a FileInfo of p.
func statAt(dfd int, name, p string) (FileInfo, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return FileInfo{}, &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	return fileInfoOf(baseName(p), &st), nil
}

// fileInfoOf is a FileInfo from a stat, with os.Lstat's mode bits.
func fileInfoOf(name string, st *unix.Stat_t) FileInfo {
	mode := fs.FileMode(st.Mode & 0o777)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		mode |= fs.ModeDevice
	case unix.S_IFCHR:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFDIR:
		mode |= fs.ModeDir
	case unix.S_IFIFO:
		mode |= fs.ModeNamedPipe
	case unix.S_IFLNK:
		mode |= fs.ModeSymlink
	case unix.S_IFSOCK:
		mode |= fs.ModeSocket
	}
	if st.Mode&unix.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if st.Mode&unix.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if st.Mode&unix.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return FileInfo{
		Name: name, Mode: mode, Size: st.Size, Mtime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		UID: st.Uid, GID: st.Gid, Ino: st.Ino, Nlink: uint64(st.Nlink),
	}
}

// openAt opens name in dfd, never through a symlink: one there is
// ErrSymlink (O_NOFOLLOW gives ELOOP, or ENOTDIR with O_DIRECTORY).
func openAt(dfd int, name, p string, flags int, perm uint32) (*os.File, error) {
	fd, err := unix.Openat(dfd, name, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
	var st unix.Stat_t
	if (err == unix.ELOOP || err == unix.ENOTDIR) && unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return nil, fmt.Errorf("%s: %w", p, ErrSymlink)
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	return os.NewFile(uintptr(fd), p), nil
}

// renameRaw renames from to to, both reached without following symlinks.
func (l *Local) renameRaw(from, to string) error {
	return l.at(from, func(fdfd int, fname string) error {
		return l.at(to, func(tdfd int, tname string) error {
			if err := unix.Renameat(fdfd, fname, tdfd, tname); err != nil {
				return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
			}
			return nil
		})
	})
}

// chmodAt sets the permission and special bits of name in dfd through a
// descriptor of the entry itself, refusing a symlink (fchmodat's
// AT_SYMLINK_NOFOLLOW needs Linux 6.6).
func chmodAt(dfd int, name, p string, perm fs.FileMode) error {
	fd, err := unix.Openat(dfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "chmod", Path: p, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &fs.PathError{Op: "chmod", Path: p, Err: err}
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return fmt.Errorf("%s: %w", p, ErrSymlink)
	}
	// The descriptor's /proc link is the entry opened, not a path.
	if err := unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), unixPerm(perm)); err != nil {
		return &fs.PathError{Op: "chmod", Path: p, Err: err}
	}
	return nil
}

// utimesAt sets the times of name in dfd without following it; a zero
// time is left as it is.
func utimesAt(dfd int, name, p string, atime, mtime time.Time) error {
	// Built from Unix() and Nanosecond() rather than UnixNano(), which
	// overflows outside 1678-2262.
	ts := func(t time.Time) unix.Timespec {
		if t.IsZero() {
			return unix.Timespec{Nsec: unix.UTIME_OMIT}
		}
		return unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
	}
	if err := unix.UtimesNanoAt(dfd, name, []unix.Timespec{ts(atime), ts(mtime)}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "lchtimes", Path: p, Err: err}
	}
	return nil
}

// readlinkAt reads the target of the symlink name in dfd.
func readlinkAt(dfd int, name, p string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dfd, name, buf)
		if err != nil {
			return "", &fs.PathError{Op: "readlink", Path: p, Err: err}
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// OpenFile opens p below the root, following no symlink on the way or at
// p (ErrSymlink): for `mirrorfs worker`'s SFTP server, which serves the
// master's opens with the same confinement as the agent's. With O_CREAT,
// p's directory is noted for the next Sync.
func (l *Local) OpenFile(ctx context.Context, p string, flags int, perm uint32) (*os.File, error) {
	dfd, name, err := l.openParent(ctx, p)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	f, err := openAt(dfd, name, p, flags, perm)
	if err == nil && flags&unix.O_CREAT != 0 {
		l.changed(p)
	}
	return f, err
}
