package fs

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mirrorfs/mirrorfs/journal"
)

// mirror is the state shared by every node of one mount: the recorder and
// the open-writer bookkeeping that decides when a Close is journaled.
type mirror struct {
	rec      Recorder
	log      *slog.Logger
	root     *node
	readOnly atomic.Bool

	mu      sync.Mutex
	writers map[uint64]*writerState // by file identity
}

// writerState counts the writable handles of one file and whether it has
// changed since the last Close record.
type writerState struct {
	open  int
	dirty bool
}

func newMirror(rec Recorder, log *slog.Logger) *mirror {
	return &mirror{rec: rec, log: log, writers: make(map[uint64]*writerState)}
}

// record journals op. The store already changed, so an interrupted caller
// must not stop the record: the context's cancellation is dropped.
func (m *mirror) record(ctx context.Context, op journal.Op) syscall.Errno {
	op.Time = time.Now().UnixNano()
	if _, err := m.rec.Append(context.WithoutCancel(ctx), op); err != nil {
		m.log.Error("journal append failed: the store changed but the change is not journaled",
			"op", op.Kind.String(), "path", op.Path, "err", err)
		return syscall.EIO
	}
	return 0
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
	return false
}

// takeDirty reports whether file id changed since its last Close and clears
// the flag; when onlyLast is set it does so only if one writer is left.
func (m *mirror) takeDirty(id uint64, onlyLast bool) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := m.writers[id]
	if w == nil || !w.dirty || (onlyLast && w.open > 1) {
		return false
	}
	w.dirty = false
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
