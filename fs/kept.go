package fs

import (
	"path"
	"syscall"

	"golang.org/x/sys/unix"
)

// A rename over a file, or its unlink, removes the file from the store at
// once, while the kernel may already have looked it up for an open that has
// not reached the daemon yet: an nginx worker that found page.html just
// before a deploy renamed a new page.html over it. A local file system
// opens the old file then. The store has it by no name any more, and the
// mount used to answer ESTALE; the kernel looks the name up once more and
// opens the new file, but when that one is replaced too before its open
// arrives (a deploy saving the same page again, a busy machine), the web
// server got the error.
//
// So the mount keeps a descriptor of such a file while the kernel still
// knows its node, and an open of it goes through that descriptor (reopen),
// as a local file system's would. The descriptor is O_PATH: it reads
// nothing, locks nothing and only holds the inode. Only a file whose last
// link goes is kept: its node cannot be found again by any name, and the
// kernel forgets it (OnForget) as soon as nothing uses it, which for an
// open under way is when that open is done. A file with other links is
// still reachable through them.
//
// Keeping a file delays the freeing of its space from the unlink to the
// forget, a few milliseconds later, and moves the freeing itself (which
// for a large, fragmented file takes seconds on ext4) to the close of the
// descriptor. So a file is kept only while it is small next to the store's
// free space (keepable), and the descriptor is closed in the background,
// not while the FORGET request waits.

// maxKept bounds the descriptors kept: past it, an open that was under way
// fails with ESTALE as before, instead of the daemon running out of
// descriptors. It is 16,384, or a quarter of the daemon's descriptor
// limit when that is lower: the rest is for open files, the journal and
// the workers' connections.
var maxKept = keptLimit()

func keptLimit() int {
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) != nil {
		return 1 << 10
	}
	return int(min(1<<14, rl.Cur/4))
}

// maxKeptBytes is the most disk space a kept file may take, and
// keptFreeShare the share of the store's free space: a larger file is not
// kept (an open under way of it may fail with ESTALE), so that removing
// it frees its space at once, as on a local file system, for a deploy
// that writes its replacement next.
const (
	maxKeptBytes  = 64 << 20
	keptFreeShare = 16
)

// keepable reports whether a file taking blocks of 512 bytes may be kept
// on the file system of fd: see maxKeptBytes.
func keepable(fd int, blocks int64) bool {
	size := uint64(blocks) * 512
	if size > maxKeptBytes {
		return false
	}
	var sfs unix.Statfs_t
	if unix.Fstatfs(fd, &sfs) != nil {
		return false
	}
	return size <= sfs.Bavail*uint64(sfs.Bsize)/keptFreeShare
}

// keptFile is a descriptor of a removed file and the node the kernel knows
// it by: only that node's forget closes it.
type keptFile struct {
	fd int
	n  *node
}

// openVictim opens the entry name of directory n, which a rename is about
// to replace or an unlink to remove, when it is a keepable regular file
// with one link and a node the kernel knows. The caller passes the result
// to afterRemoval.
func (n *node) openVictim(name string) (keptFile, bool) {
	child := n.GetChild(name)
	if child == nil {
		return keptFile{}, false
	}
	cn, ok := child.Operations().(*node)
	if !ok {
		return keptFile{}, false
	}
	dir, ok := n.relPath()
	if !ok {
		return keptFile{}, false
	}
	fd, errno := n.m.openAt(path.Join(dir, name), unix.O_PATH|unix.O_NOFOLLOW)
	if errno != 0 {
		return keptFile{}, false
	}
	// One statx for the type, links, size and identity.
	var stx unix.Statx_t
	mask := unix.STATX_TYPE | unix.STATX_NLINK | unix.STATX_BLOCKS | unix.STATX_INO | unix.STATX_BTIME
	if unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, mask, &stx) != nil ||
		stx.Mode&unix.S_IFMT != unix.S_IFREG || stx.Nlink != 1 ||
		!keepable(fd, int64(stx.Blocks)) || cn.ownStatx(&stx) != 0 {
		unix.Close(fd)
		return keptFile{}, false
	}
	return keptFile{fd: fd, n: cn}, true
}

// keepVictim keeps v until the kernel forgets its node. Its descriptor
// may be the file's last reference: it is closed outside m.mu, which every
// open and write takes.
func (m *mirror) keepVictim(v keptFile) {
	m.mu.Lock()
	id := v.n.id()
	_, dup := m.kept[id]
	keep := !dup && len(m.kept) < maxKept
	if keep {
		m.kept[id] = v
	}
	m.mu.Unlock()
	if !keep {
		unix.Close(v.fd)
	}
}

// afterRemoval keeps v, from openVictim (ok), once the store change
// succeeded (errno 0), and closes it when the store still has the file.
func (m *mirror) afterRemoval(v keptFile, ok bool, errno syscall.Errno) {
	switch {
	case !ok:
	case errno != 0:
		unix.Close(v.fd)
	default:
		m.keepVictim(v)
	}
}

// keptFd returns the descriptor kept for file id, if any.
func (m *mirror) keptFd(id uint64) (int, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k, ok := m.kept[id]
	return k.fd, ok
}

// OnForget closes the descriptor kept for n: the kernel has no open of it
// under way, and no name leads to it. The close frees the file's space,
// which can take seconds: it runs on its own goroutine, so that neither
// m.mu nor the FUSE reader that brought the FORGET waits for it.
func (n *node) OnForget() {
	m := n.m
	m.mu.Lock()
	id := n.id()
	k, ok := m.kept[id]
	if ok && k.n == n {
		delete(m.kept, id)
	}
	m.mu.Unlock()
	if ok && k.n == n {
		go unix.Close(k.fd)
	}
}

// closeKept closes every kept descriptor when the mount ends.
func (m *mirror) closeKept() {
	m.mu.Lock()
	kept := m.kept
	m.kept = map[uint64]keptFile{}
	m.mu.Unlock()
	for _, k := range kept {
		unix.Close(k.fd)
	}
}
