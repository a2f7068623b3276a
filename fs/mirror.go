package fs

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/mirrorfs/mirrorfs/journal"
)

// mirror is the state shared by every node of one mount: the recorder and
// the open-writer bookkeeping that decides when a Close is journaled.
type mirror struct {
	rec      Recorder
	log      *slog.Logger
	root     *node
	rootFd   int    // the store directory, O_PATH: base of opens
	storeDev uint64 // the store's device (see journal.FileID)
	readOnly atomic.Bool

	mu      sync.Mutex
	writers map[uint64]*writerState // by file identity
	// handles holds the open handles of each file. A file with no name
	// (unlinked while open, or made with O_TMPFILE) can only be reached
	// through one: for fchmod, fstat without a handle, or linkat.
	handles map[uint64]map[*handle]struct{}
	// dirs holds the open handles of each directory, for the same reason.
	dirs map[uint64]map[*dirHandle]struct{}
	// kept holds descriptors of files removed from the store while the
	// kernel may still open them (kept.go), by file identity.
	kept map[uint64]keptFile
	// warnedUnnamed: files whose unjournaled change was logged (see
	// handle.unnamedLinks).
	warnedUnnamed sync.Map
	onUnnamed     func() // Options.OnUnnamedChange
	// beforeOpen, when set (by tests), runs as an open reaches the node.
	beforeOpen atomic.Pointer[func(*node)]
}

// writerState counts the writable handles of one file and whether it has
// changed since the last Close record.
type writerState struct {
	open  int
	dirty bool
	// published: since the last writable open, the last writer's close(2)
	// or an fsync found the content final (journaled a Close, or nothing
	// had changed) and nothing was written after. The handle itself goes
	// only with the asynchronous RELEASE, which may come long after the
	// writer's close returned; until then the file is still counted open
	// but is not being written.
	published bool
	// onDisk: a change since the last Close record was journaled with a
	// durable Append, so the file's later changes up to its next Close
	// record may use AppendUnsynced (see recordChange).
	onDisk bool
}

func newMirror(rec Recorder, log *slog.Logger) *mirror {
	return &mirror{rec: rec, log: log, writers: make(map[uint64]*writerState), handles: make(map[uint64]map[*handle]struct{}), dirs: make(map[uint64]map[*dirHandle]struct{}), kept: make(map[uint64]keptFile)}
}

// record journals op durably. The store already changed, so an interrupted
// caller must not stop the record: the context's cancellation is dropped.
func (m *mirror) record(ctx context.Context, op journal.Op) syscall.Errno {
	return m.append(ctx, op, true)
}

// recordChange journals op, a change of the bytes or attributes of the
// open file op.File. The first change of a file since its last Close record
// is journaled durably, as every other mutation; the later ones, up to the
// next Close record, only wait for the journal's commit, not for its sync.
// "On disk before the reply" thus holds for the first change of a file, not
// for each of its later ones, and tar -x pays one sync per file (its create)
// instead of six (create, write, chown, chmod, utimens, close), a sequential
// write one per file instead of one per write. Nothing acknowledged is lost
// for that:
//
//   - A crash of the daemon loses nothing: a committed op is in the
//     journal's log, whose pages belong to the kernel.
//   - A power cut can lose the later changes, but the first one is on disk,
//     so the journal still names every file that was being written. The
//     store loses its own unsynced bytes alike, and after any unclean stop
//     every worker is compared with the store once, which brings such a
//     file over whole.
//   - An fsync through the mount journals a durable Close, which covers
//     every change before it (the journal syncs in order), or, with
//     nothing to close, syncs the journal.
func (m *mirror) recordChange(ctx context.Context, op journal.Op) (covered bool, errno syscall.Errno) {
	covered = m.changeCovered(op.File)
	return covered, m.append(ctx, op, !covered)
}

// recordData journals op, a change of the bytes of file op.File at path
// op.Path (a write, a truncate, a fallocate), marks the file dirty, and
// journals a Close at once when no writer has it open (nothing else would).
// A change that waited for the sync covers the file's later ones.
func (m *mirror) recordData(ctx context.Context, op journal.Op) syscall.Errno {
	covered, errno := m.recordChange(ctx, op)
	if errno != 0 {
		return errno
	}
	if m.markDirty(op.File) {
		return m.recordClose(ctx, op.File, op.Path, false)
	}
	if !covered {
		m.coverChanges(op.File)
	}
	return 0
}

// recordClose journals that the content of file id is one its writer meant
// to publish. Only an fsync waits for the sync: a Close changes nothing in
// the store, and after a crash every file counts as closed.
func (m *mirror) recordClose(ctx context.Context, id uint64, p string, fsync bool) syscall.Errno {
	return m.append(ctx, journal.Op{Kind: journal.KindClose, File: id, Path: p}, fsync)
}

func (m *mirror) append(ctx context.Context, op journal.Op, sync bool) syscall.Errno {
	op.Time = time.Now().UnixNano()
	appendOp := m.rec.AppendUnsynced
	if sync {
		appendOp = m.rec.Append
	}
	if _, err := appendOp(context.WithoutCancel(ctx), op); err != nil {
		m.log.Error("journal append failed: the store changed but the change is not journaled",
			"op", op.Kind.String(), "path", op.Path, "err", err)
		return syscall.EIO
	}
	return 0
}

// syncJournal makes every op journaled so far durable.
func (m *mirror) syncJournal() syscall.Errno {
	if err := m.rec.Sync(); err != nil {
		m.log.Error("journal sync failed", "err", err)
		return syscall.EIO
	}
	return 0
}

// openIgnored are the open flags that the store's open must not get: the
// kernel handles O_APPEND (and sends offsets), O_NONBLOCK means nothing for
// a regular file, FMODE_EXEC is the kernel's own.
const openIgnored = syscall.O_APPEND | syscall.O_NONBLOCK | fuse.FMODE_EXEC

// openAt opens the store file at rel: one openat2 below the store's root
// descriptor that refuses symlinks on the way, as go-fuse's loopback does
// with three calls. A web server pays an open per request. O_NONBLOCK
// would only make the Go runtime try to register the descriptor with its
// poller.
func (m *mirror) openAt(rel string, flags uint32) (int, syscall.Errno) {
	how := unix.OpenHow{
		Flags:   uint64(flags&^openIgnored) | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_BENEATH,
	}
	if rel == "" {
		rel = "."
	}
	fd, err := unix.Openat2(m.rootFd, rel, &how)
	if err != nil {
		return -1, gofs.ToErrno(err)
	}
	return fd, 0
}

// isFile reports whether the store file dev, ino has node id id.
func (m *mirror) isFile(dev, ino, id uint64) bool {
	return journal.FileID(dev, ino, m.storeDev) == id
}

// writable refuses mutations after StopWrites.
func (m *mirror) writable() syscall.Errno {
	if m.readOnly.Load() {
		return syscall.EROFS
	}
	return 0
}

// openWriter counts a new writable handle of file id.
func (m *mirror) openWriter(id uint64, dirty bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := m.writers[id]
	if w == nil {
		w = &writerState{}
		m.writers[id] = w
	}
	w.open++
	w.dirty = w.dirty || dirty
	w.published = false
}

// markDirty notes that file id changed. It reports whether no writable
// handle is open, in which case the caller journals a Close right away:
// nothing else will.
func (m *mirror) markDirty(id uint64) (noWriters bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := m.writers[id]
	if w == nil || w.open == 0 {
		return true
	}
	w.dirty = true
	w.published = false
	return false
}

// changeCovered reports whether file id is open for writing and has a change
// since its last Close record that was journaled durably.
func (m *mirror) changeCovered(id uint64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := m.writers[id]
	return w != nil && w.open > 0 && w.dirty && w.onDisk
}

// coverChanges notes that a change of file id that made it dirty was
// journaled durably: later changes up to its next Close record are covered.
func (m *mirror) coverChanges(id uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if w := m.writers[id]; w != nil && w.open > 0 && w.dirty {
		w.onDisk = true
	}
}

// takeDirty reports whether file id changed since its last Close and clears
// the flag; when onlyLast is set it does so only if one writer is left.
// Either way, once no other writer is open (or for an fsync), the content
// counts as published: see writerState.
func (m *mirror) takeDirty(id uint64, onlyLast bool) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := m.writers[id]
	if w == nil || (onlyLast && w.open > 1) {
		return false
	}
	if !w.dirty {
		if onlyLast {
			w.published = true // closed without a change since the last Close
		}
		return false
	}
	w.dirty, w.onDisk = false, false
	w.published = true
	return true
}

// closeWriter drops a writable handle of file id and reports whether the
// file is still dirty with no writer left.
func (m *mirror) closeWriter(id uint64) (dirty bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := m.writers[id]
	if w == nil {
		return false
	}
	w.open--
	if w.open > 0 {
		return false
	}
	delete(m.writers, id)
	return w.dirty
}

// addHandle remembers an open handle of file id.
func (m *mirror) addHandle(id uint64, h *handle) {
	m.mu.Lock()
	defer m.mu.Unlock()
	hs := m.handles[id]
	if hs == nil {
		hs = make(map[*handle]struct{})
		m.handles[id] = hs
	}
	hs[h] = struct{}{}
}

// heldFd returns a descriptor of file id that an open handle holds, or
// the one kept since the file was removed: the way to a file with no name
// (unlinked, replaced, O_TMPFILE).
func (m *mirror) heldFd(id uint64) (int, bool) {
	h := m.anyHandle(id)
	if h == nil {
		return m.keptFd(id)
	}
	return h.storeFd()
}

// anyHandle returns an open handle of file id, or nil.
func (m *mirror) anyHandle(id uint64) *handle {
	m.mu.Lock()
	defer m.mu.Unlock()
	for h := range m.handles[id] {
		return h
	}
	return nil
}

// dropHandle forgets h when it is released.
func (m *mirror) dropHandle(id uint64, h *handle) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.handles[id], h)
	if len(m.handles[id]) == 0 {
		delete(m.handles, id)
	}
}

// addDir remembers an open handle of directory id.
func (m *mirror) addDir(id uint64, d *dirHandle) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ds := m.dirs[id]
	if ds == nil {
		ds = make(map[*dirHandle]struct{})
		m.dirs[id] = ds
	}
	ds[d] = struct{}{}
}

// anyDir returns an open handle of directory id, or nil.
func (m *mirror) anyDir(id uint64) *dirHandle {
	m.mu.Lock()
	defer m.mu.Unlock()
	for d := range m.dirs[id] {
		return d
	}
	return nil
}

// dropDir forgets d when it is released.
func (m *mirror) dropDir(id uint64, d *dirHandle) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.dirs[id], d)
	if len(m.dirs[id]) == 0 {
		delete(m.dirs, id)
	}
}
