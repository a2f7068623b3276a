package fs

import (
	"context"
	"fmt"
	"os"
	"path"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/mirrorfs/mirrorfs/journal"
)

// node is a store file or directory seen through the mount: go-fuse's
// loopback node with every mutation journaled.
type node struct {
	*gofs.LoopbackNode
	m *mirror
}

var (
	_ gofs.NodeWrapChilder    = (*node)(nil)
	_ gofs.NodeCreater        = (*node)(nil)
	_ gofs.NodeOpener         = (*node)(nil)
	_ gofs.NodeMknoder        = (*node)(nil)
	_ gofs.NodeMkdirer        = (*node)(nil)
	_ gofs.NodeRmdirer        = (*node)(nil)
	_ gofs.NodeUnlinker       = (*node)(nil)
	_ gofs.NodeRenamer        = (*node)(nil)
	_ gofs.NodeSymlinker      = (*node)(nil)
	_ gofs.NodeLinker         = (*node)(nil)
	_ gofs.NodeSetattrer      = (*node)(nil)
	_ gofs.NodeSetxattrer     = (*node)(nil)
	_ gofs.NodeRemovexattrer  = (*node)(nil)
	_ gofs.NodeCopyFileRanger = (*node)(nil)
	_ gofs.NodeAllocater      = (*node)(nil)
	_ gofs.NodeTmpfiler       = (*node)(nil)
	_ gofs.NodeGetattrer      = (*node)(nil)
	_ gofs.NodeOpendirHandler = (*node)(nil)
	_ gofs.NodeIoctler        = (*node)(nil)
)

// Ioctl refuses every ioctl, on files and directories alike. go-fuse's
// loopback would run it on the store's descriptor with the daemon's
// privileges (root), for any user of the allow_other mount, since the
// kernel leaves the permission checks of ioctls it forwards to the server
// (nobody could set a root-owned file's ext4 version, and reach ext4's
// root-only ioctls). Nor would the journal see what an ioctl changes.
// chattr and lsattr, which the kernel sends as ioctls too, answer that
// the mount does not support them.
func (n *node) Ioctl(ctx context.Context, f gofs.FileHandle, cmd uint32, arg uint64, input, output []byte) (int32, syscall.Errno) {
	return 0, syscall.ENOTTY
}

// WrapChild makes every node go-fuse creates below the root one of ours.
func (n *node) WrapChild(ctx context.Context, ops gofs.InodeEmbedder) gofs.InodeEmbedder {
	return &node{LoopbackNode: ops.(*gofs.LoopbackNode), m: n.m}
}

// relPath is the node's path relative to the store root, or ok=false when
// the node has no name any more (unlinked while open): nothing to replicate.
func (n *node) relPath() (p string, ok bool) {
	root := n.m.root.EmbeddedInode()
	var segs []string
	for in := n.EmbeddedInode(); in != root; {
		name, parent := in.Parent()
		if parent == nil {
			return "", false
		}
		segs = append(segs, name)
		in = parent
	}
	for i, j := 0, len(segs)-1; i < j; i, j = i+1, j-1 {
		segs[i], segs[j] = segs[j], segs[i]
	}
	return path.Join(segs...), true
}

// child is the store-relative path of name in directory n.
func (n *node) child(name string) string {
	p, _ := n.relPath()
	return path.Join(p, name)
}

func (n *node) id() uint64 { return n.StableAttr().Ino }

// storePath is the absolute path in the store of rel.
func (n *node) storePath(rel string) string {
	return path.Join(n.RootData.Path, rel)
}

// identityOf returns the identity (journal.FileID) of the entry at rel
// without following a symlink, and its link count; 0, 0 if it cannot be
// read.
func (n *node) identityOf(rel string) (id, links uint64) {
	var st unix.Stat_t
	if err := unix.Lstat(n.storePath(rel), &st); err != nil {
		return 0, 0
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR { // a directory's count is of its subdirectories
		links = uint64(st.Nlink)
	}
	return journal.FileID(st.Dev, st.Ino, n.m.storeDev), links
}

// nameless reports whether the node is in no directory: unlinked while
// open, or made with O_TMPFILE. The store has no path for it.
func (n *node) nameless() bool {
	in := n.EmbeddedInode()
	if in == n.m.root.EmbeddedInode() {
		return false
	}
	_, parent := in.Parent()
	return parent == nil
}

// Getattr answers from the handle when there is one, else from the node's
// own store file (see statOwn), else, when the file has no name, from an
// open handle of it or the descriptor kept since its removal: the kernel
// sends fstat of a regular file with its handle, but stat of
// /proc/self/fd/N, of an O_PATH descriptor or of an open directory without
// one.
func (n *node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if d, ok := f.(*dirHandle); ok {
		return d.Getattr(ctx, out)
	}
	if f != nil {
		return n.LoopbackNode.Getattr(ctx, f, out)
	}
	var st syscall.Stat_t
	named, errno := n.statOwn(&st)
	if named {
		if errno == 0 {
			out.FromStat(&st)
		}
		return errno
	}
	if h := n.m.anyHandle(n.id()); h != nil {
		return h.LoopbackFile.Getattr(ctx, out)
	}
	if d := n.m.anyDir(n.id()); d != nil {
		return d.Getattr(ctx, out)
	}
	if fd, ok := n.m.keptFd(n.id()); ok {
		// A removed file the mount keeps (kept.go). The kernel holds the
		// node while it asks, so its forget cannot close fd meanwhile.
		var st syscall.Stat_t
		if err := syscall.Fstat(fd, &st); err != nil {
			return gofs.ToErrno(err)
		}
		out.FromStat(&st)
		return 0
	}
	return syscall.ESTALE
}

// inheritGroup gives a new entry the group of its directory when that
// directory is set-group-ID, as a local filesystem does. go-fuse's loopback
// creates entries as root and then chowns them to the caller's uid and gid,
// which would lose the inherited group.
func (n *node) inheritGroup(name string, attr *fuse.Attr) {
	rel, ok := n.relPath()
	if !ok {
		return
	}
	dir := n.storePath(rel)
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil || st.Mode&syscall.S_ISGID == 0 || st.Gid == attr.Gid {
		return
	}
	p := path.Join(dir, name)
	if err := syscall.Lchown(p, -1, int(st.Gid)); err != nil {
		n.m.log.Warn("give a new entry its set-group-ID directory's group", "path", path.Join(rel, name), "err", err)
		return
	}
	var cst syscall.Stat_t
	if err := syscall.Lstat(p, &cst); err == nil {
		attr.FromStat(&cst)
	}
}

// keepSpecialBits gives a new file or directory the set-user-ID,
// set-group-ID and sticky bits its creator asked for, as a local file
// system does (the kernel has already dropped those the creator may not
// set): go-fuse's loopback loses them, the sticky bit of mkdir(01777) (an
// upload directory's) in its conversion to os.FileMode, a file's set-ID
// bits in the chown to its creator. Bits the store added itself (a
// set-group-ID parent's) stay.
func (n *node) keepSpecialBits(name string, mode uint32, attr *fuse.Attr) {
	want := mode & (syscall.S_ISUID | syscall.S_ISGID | syscall.S_ISVTX)
	if want == 0 || attr.Mode&want == want {
		return
	}
	rel, ok := n.relPath()
	if !ok {
		return
	}
	p := path.Join(n.storePath(rel), name)
	if err := syscall.Chmod(p, attr.Mode&0o7777|want); err != nil {
		n.m.log.Warn("give a new entry the mode bits its creator asked for", "path", path.Join(rel, name), "mode", fmt.Sprintf("%#o", mode&0o7777), "err", err)
		return
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err == nil {
		attr.FromStat(&st)
	}
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if errno := n.m.writable(); errno != 0 {
		return nil, nil, 0, errno
	}
	ch, fh, fuseFlags, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	n.inheritGroup(name, &out.Attr)
	n.keepSpecialBits(name, mode, &out.Attr)
	id := ch.StableAttr().Ino
	n.m.openWriter(id, true)
	h := &handle{LoopbackFile: fh.(*gofs.LoopbackFile), node: ch.Operations().(*node), writer: true}
	n.m.addHandle(id, h)
	errno = n.m.record(ctx, journal.Op{Kind: journal.KindCreate, File: id, Path: n.child(name), Mode: out.Attr.Mode, UID: out.Attr.Uid, GID: out.Attr.Gid})
	if errno != 0 {
		h.Release(ctx)
		return nil, nil, 0, errno
	}
	n.m.coverChanges(id) // the creator's writes and attributes follow
	return ch, h, fuseFlags, 0
}

func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	writer := flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 || flags&syscall.O_TRUNC != 0
	if writer {
		if errno := n.m.writable(); errno != 0 {
			return nil, 0, errno
		}
	}
	if hook := n.m.beforeOpen.Load(); hook != nil {
		(*hook)(n)
	}
	f, errno := n.openOwn(flags)
	if errno != 0 {
		return nil, 0, errno
	}
	var fuseFlags uint32
	h := &handle{LoopbackFile: gofs.NewLoopbackFileFromOS(f), node: n, writer: writer}
	n.m.addHandle(n.id(), h)
	if writer {
		n.m.openWriter(n.id(), false)
	}
	if flags&syscall.O_TRUNC != 0 {
		// With atomic_o_trunc the kernel sends no separate SETATTR.
		if p, ok := n.relPath(); ok {
			n.m.markDirty(n.id())
			if errno := n.m.record(ctx, journal.Op{Kind: journal.KindSetattr, File: n.id(), Path: p, Mask: journal.AttrSize}); errno != 0 {
				h.Release(ctx)
				return nil, 0, errno
			}
			n.m.coverChanges(n.id())
		}
	} else {
		// Every change passes through this mount, so cached pages of the
		// file are still right: keep them (a web server reopens often).
		fuseFlags |= fuse.FOPEN_KEEP_CACHE
	}
	if !writer {
		// A reader's close has nothing to flush or journal (no writeback
		// cache, locks are the kernel's): spare the round trip, which a
		// web server pays on every request.
		fuseFlags |= fuse.FOPEN_NOFLUSH
	}
	return h, fuseFlags, 0
}

func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if errno := n.m.writable(); errno != 0 {
		return nil, errno
	}
	ch, errno := n.LoopbackNode.Mknod(ctx, name, mode, rdev, out)
	if errno != 0 {
		return nil, errno
	}
	n.inheritGroup(name, &out.Attr)
	id, p := ch.StableAttr().Ino, n.child(name)
	if mode&syscall.S_IFMT == syscall.S_IFREG || mode&syscall.S_IFMT == 0 {
		// A regular file made by mknod has no writer to close it.
		if errno := n.m.record(ctx, journal.Op{Kind: journal.KindCreate, File: id, Path: p, Mode: out.Attr.Mode, UID: out.Attr.Uid, GID: out.Attr.Gid}); errno != 0 {
			return nil, errno
		}
		return ch, n.m.record(ctx, journal.Op{Kind: journal.KindClose, File: id, Path: p})
	}
	return ch, n.m.record(ctx, journal.Op{Kind: journal.KindMknod, File: id, Path: p, Mode: out.Attr.Mode, Rdev: uint64(rdev), UID: out.Attr.Uid, GID: out.Attr.Gid})
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if errno := n.m.writable(); errno != 0 {
		return nil, errno
	}
	ch, errno := n.LoopbackNode.Mkdir(ctx, name, mode, out)
	if errno != 0 {
		return nil, errno
	}
	n.inheritGroup(name, &out.Attr)
	n.keepSpecialBits(name, mode, &out.Attr)
	return ch, n.m.record(ctx, journal.Op{Kind: journal.KindMkdir, File: ch.StableAttr().Ino, Path: n.child(name), Mode: out.Attr.Mode, UID: out.Attr.Uid, GID: out.Attr.Gid})
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	if errno := n.m.writable(); errno != 0 {
		return errno
	}
	p := n.child(name)
	id, _ := n.identityOf(p)
	if errno := n.LoopbackNode.Rmdir(ctx, name); errno != 0 {
		return errno
	}
	return n.m.record(ctx, journal.Op{Kind: journal.KindRmdir, File: id, Path: p})
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	if errno := n.m.writable(); errno != 0 {
		return errno
	}
	p := n.child(name)
	op := journal.Op{Kind: journal.KindUnlink, Path: p}
	var links uint64
	if op.File, links = n.identityOf(p); links > 1 {
		op.Flags = journal.UnlinkOtherLinks
	}
	victim, kept := n.openVictim(name)
	errno := n.LoopbackNode.Unlink(ctx, name)
	n.m.afterRemoval(victim, kept, errno)
	if errno != 0 {
		return errno
	}
	return n.m.record(ctx, op)
}

func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if errno := n.m.writable(); errno != 0 {
		return errno
	}
	np, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	from, to := n.child(name), np.child(newName)
	op := journal.Op{Kind: journal.KindRename, Path: from, NewPath: to, Flags: flags}
	op.File, _ = n.identityOf(from)
	if _, links := np.identityOf(to); links > 1 && flags&unix.RENAME_EXCHANGE == 0 {
		op.Flags |= journal.RenameReplacedOtherLinks
	}
	var victim keptFile
	kept := false
	if flags&(unix.RENAME_EXCHANGE|unix.RENAME_NOREPLACE) == 0 && from != to {
		victim, kept = np.openVictim(newName)
	}
	errno := n.LoopbackNode.Rename(ctx, name, np.LoopbackNode, newName, flags)
	n.m.afterRemoval(victim, kept, errno)
	if errno != 0 {
		return errno
	}
	return n.m.record(ctx, op)
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if errno := n.m.writable(); errno != 0 {
		return nil, errno
	}
	ch, errno := n.LoopbackNode.Symlink(ctx, target, name, out)
	if errno != 0 {
		return nil, errno
	}
	n.inheritGroup(name, &out.Attr)
	return ch, n.m.record(ctx, journal.Op{Kind: journal.KindSymlink, File: ch.StableAttr().Ino, Path: n.child(name), Target: target, UID: out.Attr.Uid, GID: out.Attr.Gid})
}

func (n *node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if errno := n.m.writable(); errno != 0 {
		return nil, errno
	}
	tn, ok := target.(*node)
	if !ok {
		return nil, syscall.EXDEV
	}
	from, fromOK := tn.relPath()
	if !fromOK {
		return n.linkTmpfile(ctx, tn, name, out)
	}
	ch, errno := n.LoopbackNode.Link(ctx, tn.LoopbackNode, name, out)
	if errno != 0 {
		return nil, errno
	}
	return ch, n.m.record(ctx, journal.Op{Kind: journal.KindLink, File: tn.id(), Path: from, NewPath: n.child(name)})
}

// Tmpfile is open(2) with O_TMPFILE. The handle is ours, so writes made
// after the file got a name are journaled, and it is remembered so that
// linkat can name the file through its descriptor.
func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if errno := n.m.writable(); errno != 0 {
		return nil, nil, 0, errno
	}
	ch, fh, fuseFlags, errno := n.LoopbackNode.Tmpfile(ctx, flags, mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	cn, ok := ch.Operations().(*node)
	lf, ok2 := fh.(*gofs.LoopbackFile)
	if !ok || !ok2 {
		fh.(gofs.FileReleaser).Release(ctx)
		return nil, nil, 0, syscall.EIO
	}
	// go-fuse's loopback leaves the file to root; give it to the caller,
	// as Create does, with the group a local filesystem would choose.
	if caller, ok := fuse.FromContext(ctx); ok && os.Geteuid() == 0 {
		if fd, ok := lf.PassthroughFd(); ok {
			gid := int(caller.Gid)
			if rel, ok := n.relPath(); ok {
				var dst syscall.Stat_t
				if syscall.Stat(n.storePath(rel), &dst) == nil && dst.Mode&syscall.S_ISGID != 0 {
					gid = int(dst.Gid)
				}
			}
			var st syscall.Stat_t
			if err := syscall.Fchown(fd, int(caller.Uid), gid); err != nil {
				lf.Release(ctx)
				return nil, nil, 0, gofs.ToErrno(err)
			}
			if syscall.Fstat(fd, &st) == nil {
				out.Attr.FromStat(&st)
			}
		}
	}
	// O_TMPFILE needs O_WRONLY or O_RDWR: the handle is always a writer.
	h := &handle{LoopbackFile: lf, node: cn, writer: true}
	n.m.openWriter(cn.id(), false)
	n.m.addHandle(cn.id(), h)
	return ch, h, fuseFlags, 0
}

// linkTmpfile gives a name to a file that has none: one created with
// O_TMPFILE, linked by linkat(2) through its descriptor. The store has no
// path for it either, so it is linked from the descriptor the mount holds.
// The replicas never saw the file, so it is journaled as a new file at
// its new name with all its current bytes.
func (n *node) linkTmpfile(ctx context.Context, tn *node, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	fd, ok := n.m.heldFd(tn.id())
	if !ok {
		// The kernel only lets an O_TMPFILE inode with no links through;
		// without its descriptor there is nothing to link from.
		return nil, syscall.ENOENT
	}
	p := n.child(name)
	dst := n.storePath(p)
	if err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), unix.AT_FDCWD, dst, unix.AT_SYMLINK_FOLLOW); err != nil {
		return nil, gofs.ToErrno(err)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(dst, &st); err != nil {
		syscall.Unlink(dst)
		return nil, gofs.ToErrno(err)
	}
	out.Attr.FromStat(&st)
	id := tn.id()
	if errno := n.m.record(ctx, journal.Op{Kind: journal.KindCreate, File: id, Path: p, Mode: out.Attr.Mode, UID: out.Attr.Uid, GID: out.Attr.Gid}); errno != 0 {
		return nil, errno
	}
	if st.Size > 0 {
		if errno := n.m.record(ctx, journal.Op{Kind: journal.KindWrite, File: id, Path: p, Offset: 0, Length: st.Size}); errno != 0 {
			return nil, errno
		}
	}
	if st.Nlink > 1 && n.m.onUnnamed != nil {
		// Not an O_TMPFILE: a file unlinked while open that lives on
		// under hard links the mount has not seen. The journal tells the
		// new name as a file of its own; the comparison of the workers
		// with the store links it to the others.
		n.m.log.Info("a file known by no name got a name while it keeps other hard links: comparing every worker with the store", "path", p, "links", st.Nlink)
		n.m.onUnnamed()
	}
	if n.m.markDirty(id) {
		return tn.EmbeddedInode(), n.m.record(ctx, journal.Op{Kind: journal.KindClose, File: id, Path: p})
	}
	return tn.EmbeddedInode(), 0
}

func (n *node) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if errno := n.m.writable(); errno != 0 {
		return errno
	}
	if f == nil && n.nameless() {
		// fchmod, fchown and futimens come without a handle; a file with
		// no name can only be changed through one.
		if h := n.m.anyHandle(n.id()); h != nil {
			f = h
		}
	}
	h, _ := f.(*handle)
	if h != nil {
		// The loopback node only knows its own file type.
		f = h.LoopbackFile
	}
	if errno := n.LoopbackNode.Setattr(ctx, f, in, out); errno != 0 {
		return errno
	}
	p, ok := n.relPath()
	if !ok {
		// As for a write (handle.recordData): a file that lives on
		// under links the mount does not know is compared at close.
		if h != nil && h.unnamedLinks() {
			h.unnamedChange.Store(true)
		}
		return 0
	}
	op := journal.Op{Kind: journal.KindSetattr, File: n.id(), Path: p}
	if _, ok := in.GetMode(); ok {
		op.Mask |= journal.AttrMode
		op.Mode = out.Attr.Mode
	}
	if _, ok := in.GetUID(); ok {
		op.Mask |= journal.AttrUID
		op.UID = out.Attr.Uid
	}
	if _, ok := in.GetGID(); ok {
		op.Mask |= journal.AttrGID
		op.GID = out.Attr.Gid
	}
	if _, ok := in.GetATime(); ok {
		op.Mask |= journal.AttrAtime
		op.Atime = int64(out.Attr.Atime)*1e9 + int64(out.Attr.Atimensec)
	}
	if _, ok := in.GetMTime(); ok {
		op.Mask |= journal.AttrMtime
		op.Mtime = int64(out.Attr.Mtime)*1e9 + int64(out.Attr.Mtimensec)
	}
	sized := false
	if sz, ok := in.GetSize(); ok {
		op.Mask |= journal.AttrSize
		op.Size = int64(sz)
		sized = true
	}
	if op.Mask == 0 {
		return 0
	}
	if sized {
		// A truncate is data: the file is dirty until its next Close.
		return n.m.recordData(ctx, op)
	}
	_, errno := n.m.recordChange(ctx, op)
	return errno
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if errno := n.m.writable(); errno != 0 {
		return errno
	}
	if errno := n.LoopbackNode.Setxattr(ctx, attr, data, flags); errno != 0 {
		return errno
	}
	p, ok := n.relPath()
	if !ok {
		return 0
	}
	return n.m.record(ctx, journal.Op{Kind: journal.KindSetxattr, File: n.id(), Path: p, XattrName: attr, XattrValue: append([]byte(nil), data...), Flags: flags})
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if errno := n.m.writable(); errno != 0 {
		return errno
	}
	if errno := n.LoopbackNode.Removexattr(ctx, attr); errno != 0 {
		return errno
	}
	p, ok := n.relPath()
	if !ok {
		return 0
	}
	return n.m.record(ctx, journal.Op{Kind: journal.KindRemovexattr, File: n.id(), Path: p, XattrName: attr})
}

// CopyFileRange copies between two backing descriptors without passing
// through Write, so it is journaled here.
func (n *node) CopyFileRange(ctx context.Context, fhIn gofs.FileHandle, offIn uint64, out *gofs.Inode, fhOut gofs.FileHandle, offOut uint64, length uint64, flags uint64) (uint32, syscall.Errno) {
	if errno := n.m.writable(); errno != 0 {
		return 0, errno
	}
	hin, ok1 := fhIn.(*handle)
	hout, ok2 := fhOut.(*handle)
	if !ok1 || !ok2 {
		return 0, syscall.ENOTSUP
	}
	count, errno := n.LoopbackNode.CopyFileRange(ctx, hin.LoopbackFile, offIn, out, hout.LoopbackFile, offOut, length, flags)
	if errno != 0 || count == 0 {
		return count, errno
	}
	return count, hout.recordData(ctx, journal.Op{Kind: journal.KindCopyRange, Offset: int64(offOut), Length: int64(count)})
}

// Allocate is fallocate without a file handle of ours (the kernel sends it
// with one; see handle.Allocate). Kept so the node interface is complete.
func (n *node) Allocate(ctx context.Context, f gofs.FileHandle, off uint64, size uint64, mode uint32) syscall.Errno {
	h, ok := f.(*handle)
	if !ok {
		return syscall.ENOTSUP
	}
	return h.Allocate(ctx, off, size, mode)
}
