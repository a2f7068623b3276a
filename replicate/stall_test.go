package replicate

import (
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"
)

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// The watch kills only a request that waits with nothing moving: not an
// idle connection, not a request whose data keeps flowing.
func TestStallWatch(t *testing.T) {
	const limit = 500 * time.Millisecond // far above a loaded machine's scheduling delays
	var kills atomic.Int32
	w := NewStallWatch(limit, func() { kills.Add(1) }, slog.New(slog.DiscardHandler))
	defer w.Stop()

	time.Sleep(2 * limit) // idle: no request waits
	if kills.Load() != 0 {
		t.Fatal("killed an idle connection")
	}

	end := w.Begin() // a request streaming data: progress every limit/10
	out := w.Writer(nopWriteCloser{io.Discard})
	for range 25 {
		out.Write([]byte("data"))
		time.Sleep(limit / 10)
	}
	end()
	if kills.Load() != 0 {
		t.Fatal("killed a request whose data kept flowing")
	}

	w.Begin() // a request nobody answers
	deadline := time.Now().Add(10 * limit)
	for kills.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(limit / 5)
	}
	if kills.Load() != 1 {
		t.Fatalf("%d kills of a request left unanswered for %v (limit %v), want 1", kills.Load(), 10*limit, limit)
	}
}
