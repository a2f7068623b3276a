package replicate

import (
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultReplyTimeout is how long a worker may leave a request unanswered,
// with not a byte coming back meanwhile, before its connection is closed.
// Generous: the slowest honest request (hashing or syncing a large file on
// a slow disk) sends nothing until it is done.
const DefaultReplyTimeout = 5 * time.Minute

// A StallWatch closes a connection whose worker stops answering: a request
// has waited longer than its limit with nothing received on the channel,
// and nothing sent either, meanwhile. SSH keepalives cannot tell, since sshd answers them while the
// sftp-server or agent behind it hangs on a dead disk or NFS mount; without
// the watch such a worker stayed "connected" forever, and the journal kept
// every record it lacked.
type StallWatch struct {
	limit   time.Duration
	kill    func()
	log     *slog.Logger
	waiting atomic.Int32 // requests waiting for an answer
	last    atomic.Int64 // monoNow: the last byte received, or the start of a wait
	stop    chan struct{}
	once    sync.Once
}

// NewStallWatch watches until Stop; kill closes the connection.
func NewStallWatch(limit time.Duration, kill func(), log *slog.Logger) *StallWatch {
	w := &StallWatch{limit: limit, kill: kill, log: log, stop: make(chan struct{})}
	w.last.Store(monoNow())
	go w.run()
	return w
}

func (w *StallWatch) run() {
	tick := time.NewTicker(max(w.limit/4, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-tick.C:
		}
		if w.waiting.Load() == 0 {
			continue
		}
		if quiet := time.Duration(monoNow() - w.last.Load()); quiet > w.limit {
			w.log.Warn("the worker stopped answering: closing the connection", "waited", quiet.Round(time.Millisecond), "reply_timeout", w.limit)
			w.kill()
			return
		}
	}
}

// Reader counts what r delivers as the worker's answers.
func (w *StallWatch) Reader(r io.Reader) io.Reader { return stallReader{r, w} }

type stallReader struct {
	r io.Reader
	w *StallWatch
}

func (s stallReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.w.moved(n)
	return n, err
}

// moved notes n bytes received or sent.
func (w *StallWatch) moved(n int) {
	if n > 0 {
		w.last.Store(monoNow())
	}
}

// Writer counts what w accepts as progress too: a request streaming data
// to the worker is not stalled while the worker takes it in.
func (w *StallWatch) Writer(wc io.WriteCloser) io.WriteCloser { return stallWriter{wc, w} }

type stallWriter struct {
	wc io.WriteCloser
	w  *StallWatch
}

func (s stallWriter) Write(p []byte) (int, error) {
	n, err := s.wc.Write(p)
	s.w.moved(n)
	return n, err
}

func (s stallWriter) Close() error { return s.wc.Close() }

// Begin marks a request waiting for its answer until end is called.
func (w *StallWatch) Begin() (end func()) {
	// The wait starts now, before it counts: the watch must not see it
	// waiting since the last byte of an idle spell. (A request already
	// waiting keeps its start: its answer moves last anyway.)
	if w.waiting.Load() == 0 {
		w.last.Store(monoNow())
	}
	w.waiting.Add(1)
	return func() { w.waiting.Add(-1) }
}

// Stop ends the watch.
func (w *StallWatch) Stop() { w.once.Do(func() { close(w.stop) }) }

// started is this process's start, with a monotonic clock reading.
var started = time.Now()

// monoNow is the time since started in nanoseconds, on the monotonic
// clock: a wait measured on the wall clock would end at once when the
// clock is stepped forward (a healthy connection closed), or last on when
// it is stepped back (a hung worker kept).
func monoNow() int64 { return int64(time.Since(started)) }
