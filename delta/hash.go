package delta

import (
	"crypto/sha256"
	"hash"
	"sync"
)

// asyncHash computes a SHA-256 on a goroutine of its own, so that the
// whole-file hash of a delta or a patch (≈1.4 GB/s) runs beside the work
// that reads and matches the data instead of after it. Write copies b into
// a pooled buffer and queues it; Sum waits for the queue to drain.
type asyncHash struct {
	h    hash.Hash
	ch   chan []byte
	done chan struct{}
	once sync.Once
	pool sync.Pool
}

func newAsyncHash() *asyncHash {
	a := &asyncHash{h: sha256.New(), ch: make(chan []byte, 16), done: make(chan struct{})}
	go func() {
		defer close(a.done)
		for b := range a.ch {
			a.h.Write(b)
			a.pool.Put(&b)
		}
	}()
	return a
}

func (a *asyncHash) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var buf []byte
	if p, ok := a.pool.Get().(*[]byte); ok && cap(*p) >= len(b) {
		buf = (*p)[:len(b)]
	} else {
		buf = make([]byte, len(b), max(len(b), 64<<10))
	}
	copy(buf, b)
	a.ch <- buf
	return len(b), nil
}

// Sum appends the hash of everything written to in. The asyncHash cannot
// be written to afterwards.
func (a *asyncHash) Sum(in []byte) []byte {
	a.Close()
	return a.h.Sum(in)
}

// Close stops the goroutine once what was written is hashed; it may be
// called more than once, and after Sum (deferred on error paths).
func (a *asyncHash) Close() {
	a.once.Do(func() {
		close(a.ch)
		<-a.done
	})
}
