package replicate

import (
	"os"

	"golang.org/x/sys/unix"
)

// writebackChunk is how much a temp file takes before its writeback is
// started (see writebackFile).
const writebackChunk = 8 << 20

// writebackFile writes a temp file and starts the kernel's writeback of
// every writebackChunk bytes written as soon as they are (sync_file_range
// SYNC_FILE_RANGE_WRITE, which does not wait). The fsync before the rename
// then finds most of the file on disk already: for a 256 MiB file on the
// development VM's disk, write + fsync took 67–69 ms instead of 105–209 ms.
// A hint only: its errors are ignored, the fsync reports what matters.
type writebackFile struct {
	f       *os.File
	off     int64 // where Write writes: the file is new and written in order
	written int64 // bytes since the last writeback started
	lo, hi  int64 // file range written since then
}

func (w *writebackFile) note(off int64, n int) {
	if n <= 0 {
		return
	}
	if w.written == 0 {
		w.lo, w.hi = off, off
	}
	w.lo, w.hi = min(w.lo, off), max(w.hi, off+int64(n))
	w.written += int64(n)
	if w.written >= writebackChunk {
		_ = unix.SyncFileRange(int(w.f.Fd()), w.lo, w.hi-w.lo, unix.SYNC_FILE_RANGE_WRITE)
		w.written = 0
	}
}

func (w *writebackFile) Write(b []byte) (int, error) {
	n, err := w.f.Write(b)
	w.note(w.off, n)
	w.off += int64(n)
	return n, err
}

func (w *writebackFile) WriteAt(b []byte, off int64) (int, error) {
	n, err := w.f.WriteAt(b, off)
	w.note(off, n)
	return n, err
}

func (w *writebackFile) Truncate(size int64) error { return w.f.Truncate(size) }
