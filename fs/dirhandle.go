package fs

import (
	"context"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// dirHandle is an open directory of the mount: go-fuse's loopback
// directory stream, plus access to its descriptor so that fstat of a
// directory that lost its name (renamed over while open) still answers,
// as it does on the store.
type dirHandle struct {
	stream interface {
		gofs.FileReaddirenter
		gofs.FileSeekdirer
		gofs.FileFsyncdirer
		gofs.FileReleasedirer
	}
	node *node

	mu sync.Mutex
	fd int // the stream's descriptor; -1 once released
}

var (
	_ gofs.FileReaddirenter = (*dirHandle)(nil)
	_ gofs.FileSeekdirer    = (*dirHandle)(nil)
	_ gofs.FileFsyncdirer   = (*dirHandle)(nil)
	_ gofs.FileReleasedirer = (*dirHandle)(nil)
	_ gofs.FileGetattrer    = (*dirHandle)(nil)
)

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	return d.stream.Readdirent(ctx)
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	return d.stream.Seekdir(ctx, off)
}

func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	return d.stream.Fsyncdir(ctx, flags)
}

func (d *dirHandle) Releasedir(ctx context.Context, flags uint32) {
	d.node.m.dropDir(d.node.id(), d)
	d.mu.Lock()
	d.fd = -1
	d.mu.Unlock()
	d.stream.Releasedir(ctx, flags)
}

func (d *dirHandle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return syscall.EBADF
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(d.fd, &st); err != nil {
		return gofs.ToErrno(err)
	}
	out.FromStat(&st)
	return 0
}

// OpendirHandle opens the store directory itself so that its descriptor
// can answer for the directory once it has no name.
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	rel, ok := n.relPath()
	if !ok {
		return nil, 0, syscall.ENOENT
	}
	fd, err := syscall.Open(n.storePath(rel), syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, gofs.ToErrno(err)
	}
	ds, errno := gofs.NewLoopbackDirStreamFd(fd)
	if errno != 0 {
		syscall.Close(fd)
		return nil, 0, errno
	}
	stream, ok := ds.(interface {
		gofs.FileReaddirenter
		gofs.FileSeekdirer
		gofs.FileFsyncdirer
		gofs.FileReleasedirer
	})
	if !ok {
		ds.Close()
		return nil, 0, syscall.EIO
	}
	d := &dirHandle{stream: stream, node: n, fd: fd}
	n.m.addDir(n.id(), d)
	return d, 0, 0
}
