package fs

import (
	"fmt"
	"os"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

// A node reaches its store file by path, and a path can briefly name
// another file or none. A rename or unlink through the mount changes the
// store first, then journals the change (a disk sync), and only then does
// go-fuse move the name in its tree: in between, the replaced file's node
// still has the name that now holds the new file, and the new file's node
// still has its old name, which holds nothing. A web server that opens or
// stats a page during a deploy's rename must get the old file or the new
// one, never the new bytes under the old file's cached size, nor ENOENT.
//
// So an open or stat by path checks that it found the node's own file, and
// waits for the tree to catch up when it did not (nameSettle at most: a
// store changed behind the mount's back never catches up). A file left
// with no name is reached through a descriptor the mount holds; with none,
// ESTALE makes the kernel look the name up again, and it finds the new
// file.

// nameSettle bounds the wait for the tree to catch up with the store.
const nameSettle = 100 * time.Millisecond

// atOwnPath calls try with n's store-relative path until try reports that
// the path holds n's own file (0) or fails for another reason than ENOENT
// or ESTALE (another file is there). named is false when n has no name (the
// caller then uses a descriptor of it).
func (n *node) atOwnPath(try func(rel string) syscall.Errno) (named bool, errno syscall.Errno) {
	deadline := time.Now().Add(nameSettle)
	for wait := 50 * time.Microsecond; ; wait = min(2*wait, 5*time.Millisecond) {
		rel, ok := n.relPath()
		if !ok {
			return false, 0
		}
		errno = try(rel)
		if (errno != syscall.ENOENT && errno != syscall.ESTALE) || time.Now().After(deadline) {
			return true, errno
		}
		time.Sleep(wait)
	}
}

// openOwn opens n's store file with flags, by its path or, when it has no
// name, through a descriptor the mount holds. O_TRUNC never comes here:
// go-fuse does not ask for atomic O_TRUNC, so the kernel truncates with a
// SETATTR after the open, once the file is known.
func (n *node) openOwn(flags uint32) (*os.File, syscall.Errno) {
	var f *os.File
	named, errno := n.atOwnPath(func(rel string) syscall.Errno {
		fd, errno := n.m.openAt(rel, flags)
		if errno == syscall.ELOOP {
			// A symlink on the path (openAt follows none), where a rename
			// put one (mv -T newlink page): not n's file, a regular one.
			return syscall.ESTALE
		}
		if errno != 0 {
			return errno
		}
		if errno := n.checkOwn(fd); errno != 0 {
			unix.Close(fd)
			return errno
		}
		f = os.NewFile(uintptr(fd), rel)
		return 0
	})
	if !named {
		f, errno = n.reopen(flags)
	}
	if errno != 0 {
		return nil, errno
	}
	return f, 0
}

// reopen opens n's file through a descriptor of an open handle of it, for
// a file with no name (unlinked or replaced while open, or O_TMPFILE). The
// handle may be released meanwhile and its number reused by another file:
// the number is first opened with O_PATH (which opens nothing, so a FIFO
// cannot block it) and checked, then the checked descriptor is reopened.
// O_NOFOLLOW goes: /proc/self/fd/N is a link, which the caller (say nginx
// with disable_symlinks) did not ask to follow or not.
func (n *node) reopen(flags uint32) (*os.File, syscall.Errno) {
	hfd, ok := n.m.heldFd(n.id())
	if !ok {
		return nil, syscall.ESTALE
	}
	pfd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", hfd), unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, syscall.ESTALE // released meanwhile
	}
	defer unix.Close(pfd)
	if errno := n.checkOwn(pfd); errno != 0 {
		return nil, syscall.ESTALE
	}
	p := fmt.Sprintf("/proc/self/fd/%d", pfd)
	fd, err := unix.Open(p, int(flags&^(openIgnored|unix.O_NOFOLLOW))|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, gofs.ToErrno(err)
	}
	return os.NewFile(uintptr(fd), p), 0
}

// checkOwn reports ESTALE when fd is not n's file.
func (n *node) checkOwn(fd int) syscall.Errno {
	return n.checkStatx(fd, "", unix.AT_EMPTY_PATH)
}

// checkStatx reports ESTALE when the file at dirfd, path (not followed) is
// not n's: another inode, or n's inode number given to a newer file (its
// birth time is not n's generation).
func (n *node) checkStatx(dirfd int, path string, flags int) syscall.Errno {
	var stx unix.Statx_t
	if err := unix.Statx(dirfd, path, flags|unix.AT_SYMLINK_NOFOLLOW, unix.STATX_INO|unix.STATX_BTIME, &stx); err != nil {
		return gofs.ToErrno(err)
	}
	return n.ownStatx(&stx)
}

// ownStatx is checkStatx's verdict on stx, a statx with at least
// STATX_INO and STATX_BTIME asked for.
func (n *node) ownStatx(stx *unix.Statx_t) syscall.Errno {
	dev := unix.Mkdev(stx.Dev_major, stx.Dev_minor)
	if !n.m.isFile(dev, stx.Ino, n.id()) {
		return syscall.ESTALE
	}
	if stx.Mask&unix.STATX_BTIME != 0 && nodeGen(stx.Btime) != n.StableAttr().Gen {
		return syscall.ESTALE
	}
	return 0
}

// nodeGen is the generation go-fuse's loopback gives a node: its file's
// birth time in nanoseconds, 1 without one. A reused inode number thus
// makes another node.
func nodeGen(btime unix.StatxTimestamp) uint64 {
	if btime.Sec == 0 && btime.Nsec == 0 {
		return 1
	}
	return uint64(btime.Sec)*1e9 + uint64(btime.Nsec)
}

// statOwn is lstat of n's store file by its path (stat for the root), or
// ok=false when n has no name.
func (n *node) statOwn(st *syscall.Stat_t) (named bool, errno syscall.Errno) {
	root := n.EmbeddedInode() == n.m.root.EmbeddedInode()
	return n.atOwnPath(func(rel string) syscall.Errno {
		if root {
			return gofs.ToErrno(syscall.Stat(n.storePath(rel), st))
		}
		if err := syscall.Lstat(n.storePath(rel), st); err != nil {
			return gofs.ToErrno(err)
		}
		return n.checkStatx(unix.AT_FDCWD, n.storePath(rel), 0)
	})
}
