package fs

import (
	"context"
	"sync/atomic"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/mirrorfs/mirrorfs/journal"
)

// handle is an open file of the mount: go-fuse's loopback file with writes
// journaled and writer bookkeeping for Close records.
type handle struct {
	*gofs.LoopbackFile
	node   *node
	writer bool
	// unnamedChange: a change through this handle could not be journaled
	// (see unnamedLinks); its close asks for a comparison of the workers.
	unnamedChange atomic.Bool
}

var (
	_ gofs.FileWriter    = (*handle)(nil)
	_ gofs.FileReleaser  = (*handle)(nil)
	_ gofs.FileFlusher   = (*handle)(nil)
	_ gofs.FileFsyncer   = (*handle)(nil)
	_ gofs.FileAllocater = (*handle)(nil)
)

// PassthroughFd refuses kernel passthrough: the kernel would then read and
// write the backing file itself and the journal would miss writes.
func (h *handle) PassthroughFd() (int, bool) { return -1, false }

// storeFd is the descriptor of the store file the handle holds, which
// PassthroughFd keeps from the kernel, not from the mount.
func (h *handle) storeFd() (int, bool) { return h.LoopbackFile.PassthroughFd() }

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if errno := h.node.m.writable(); errno != 0 {
		return 0, errno
	}
	n, errno := h.LoopbackFile.Write(ctx, data, off)
	if errno != 0 || n == 0 {
		return n, errno
	}
	return n, h.recordData(ctx, journal.Op{Kind: journal.KindWrite, Offset: off, Length: int64(n)})
}

func (h *handle) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	if errno := h.node.m.writable(); errno != 0 {
		return errno
	}
	if errno := h.LoopbackFile.Allocate(ctx, off, size, mode); errno != 0 {
		return errno
	}
	return h.recordData(ctx, journal.Op{Kind: journal.KindFallocate, Offset: int64(off), Length: int64(size), Flags: mode})
}

// recordData journals a change of this file's bytes. A file with no name
// (unlinked while open) has nothing to replicate.
func (h *handle) recordData(ctx context.Context, op journal.Op) syscall.Errno {
	p, ok := h.node.relPath()
	if !ok {
		if h.unnamedLinks() {
			h.unnamedChange.Store(true)
		}
		return 0
	}
	op.File, op.Path = h.node.id(), p
	return h.node.m.recordData(ctx, op)
}

// publishUnnamed asks for a comparison of the workers with the store when
// this handle changed a file the journal cannot name, now that its writer
// closes or syncs it (close-to-open, as for journaled files).
func (h *handle) publishUnnamed() {
	if h.unnamedChange.Swap(false) && h.node.m.onUnnamed != nil {
		h.node.m.onUnnamed()
	}
}

// recordClose journals that the file's content is now one its writer
// meant to publish.
func (h *handle) recordClose(ctx context.Context, fsync bool) syscall.Errno {
	p, ok := h.node.relPath()
	if !ok {
		return 0
	}
	return h.node.m.recordClose(ctx, h.node.id(), p, fsync)
}

// Flush runs on every close(2). When the last writer closes, the Close
// record is journaled here, before close returns, rather than at the
// asynchronous Release.
func (h *handle) Flush(ctx context.Context) syscall.Errno {
	errno := h.LoopbackFile.Flush(ctx)
	h.publishUnnamed()
	if h.writer && h.node.m.takeDirty(h.node.id(), true) {
		if e := h.recordClose(ctx, false); errno == 0 {
			errno = e
		}
	}
	return errno
}

func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if errno := h.LoopbackFile.Fsync(ctx, flags); errno != 0 {
		return errno
	}
	h.publishUnnamed()
	if h.writer && h.node.m.takeDirty(h.node.id(), false) {
		return h.recordClose(ctx, true)
	}
	// Nothing to journal (a reader's fsync, or the Close is journaled),
	// but the file's last changes may still wait for the background sync:
	// fsync returns once they are on disk too, as it promises.
	return h.node.m.syncJournal()
}

func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.node.m.dropHandle(h.node.id(), h)
	h.publishUnnamed()
	errno := h.LoopbackFile.Release(ctx)
	if h.writer && h.node.m.closeWriter(h.node.id()) {
		h.recordClose(ctx, false)
	}
	return errno
}

// unnamedLinks reports whether this handle's file, which the mount knows
// no name of, still has hard links: names made before the mount started
// and not looked up since. A change to it cannot be journaled (no path);
// the workers are compared with the store instead (Options.OnUnnamedChange)
// when its writer closes it. Said once per file in the log.
func (h *handle) unnamedLinks() bool {
	fd, ok := h.storeFd()
	if !ok {
		return false
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Nlink == 0 {
		return false // really gone: nothing to replicate
	}
	if _, warned := h.node.m.warnedUnnamed.LoadOrStore(h.node.id(), true); !warned {
		h.node.m.log.Warn("a file changed through a hard link whose other names this mount has not seen since it started: it cannot be journaled; the workers are compared with the store when its writer closes it",
			"file", h.node.id(), "links", st.Nlink)
	}
	return true
}
