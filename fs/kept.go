package fs

import (
	"path"

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

// maxKept bounds the descriptors kept: past it, an open that was under way
// fails with ESTALE as before, instead of the daemon running out of
// descriptors.
const maxKept = 1 << 14

// keptFile is a descriptor of a removed file and the node the kernel knows
// it by: only that node's forget closes it.
type keptFile struct {
	fd int
	n  *node
}

// openVictim opens the entry name of directory n, which a rename is about
// to replace or an unlink to remove, when it is a regular file with one
// link and a node the kernel knows. The caller passes the result to
// keepVictim once the store changed, or to dropVictim when it did not.
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
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 1 || cn.checkOwn(fd) != 0 {
		unix.Close(fd)
		return keptFile{}, false
	}
	return keptFile{fd: fd, n: cn}, true
}

// keepVictim keeps v until the kernel forgets its node.
func (m *mirror) keepVictim(v keptFile) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id := v.n.id()
	if _, dup := m.kept[id]; dup || len(m.kept) >= maxKept {
		unix.Close(v.fd)
		return
	}
	m.kept[id] = v
}

// dropVictim closes a victim the store still has (the change failed).
func dropVictim(v keptFile) { unix.Close(v.fd) }

// keptFd returns the descriptor kept for file id, if any.
func (m *mirror) keptFd(id uint64) (int, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k, ok := m.kept[id]
	return k.fd, ok
}

// OnForget closes the descriptor kept for n: the kernel has no open of it
// under way, and no name leads to it.
func (n *node) OnForget() {
	m := n.m
	m.mu.Lock()
	defer m.mu.Unlock()
	id := n.id()
	if k, ok := m.kept[id]; ok && k.n == n {
		delete(m.kept, id)
		unix.Close(k.fd)
	}
}

// closeKept closes every kept descriptor when the mount ends.
func (m *mirror) closeKept() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, k := range m.kept {
		delete(m.kept, id)
		unix.Close(k.fd)
	}
}
