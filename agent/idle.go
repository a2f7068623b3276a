package agent

import (
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// PingInterval is how often a master with nothing to ask pings its agent
// (opPing), and IdleExit how long an agent it starts waits for a word
// before it takes the master for gone (--idle-exit): many missed pings,
// so that a slow network never ends a live session.
const (
	PingInterval = time.Minute
	IdleExit     = 10 * time.Minute
)

// WatchIdle returns r and w, watched: idle is called, once, when a Read
// has waited longer than limit for the master, or a Write for the master
// to take in an answer. A network cut leaves sshd, and with it the
// agent's standard input and output, open until TCP gives up hours later;
// an agent left like that after every outage would pile up on the worker.
// Only the time spent waiting in Read or Write counts: an agent busy with
// a long request (hashing a large file) is not idle. stop ends the watch.
func WatchIdle(r io.Reader, w io.Writer, limit time.Duration, idle func()) (in io.Reader, out io.Writer, stop func()) {
	x := &idleWatch{done: make(chan struct{})}
	go x.run(limit, idle)
	return idleReader{r, x}, idleWriter{w, x}, func() { x.once.Do(func() { close(x.done) }) }
}

type idleWatch struct {
	// monoNow at which the Read, or the Write, under way began; 0: none.
	reading, writing atomic.Int64
	done             chan struct{}
	once             sync.Once
}

// waitingSince marks a wait under way in at until end is called.
func waitingSince(at *atomic.Int64) (end func()) {
	at.Store(max(monoNow(), 1))
	return func() { at.Store(0) }
}

type idleReader struct {
	r io.Reader
	x *idleWatch
}

func (r idleReader) Read(p []byte) (int, error) {
	defer waitingSince(&r.x.reading)()
	return r.r.Read(p)
}

type idleWriter struct {
	w io.Writer
	x *idleWatch
}

func (w idleWriter) Write(p []byte) (int, error) {
	defer waitingSince(&w.x.writing)()
	return w.w.Write(p)
}

// run calls idle once a wait has lasted longer than limit.
func (x *idleWatch) run(limit time.Duration, idle func()) {
	tick := time.NewTicker(max(limit/8, time.Millisecond))
	defer tick.Stop()
	waited := func(at *atomic.Int64) bool {
		since := at.Load()
		return since != 0 && time.Duration(monoNow()-since) > limit
	}
	for {
		select {
		case <-x.done:
			return
		case <-tick.C:
		}
		if waited(&x.reading) || waited(&x.writing) {
			idle()
			return
		}
	}
}

// started is this process's start, with a monotonic clock reading.
var started = time.Now()

// monoNow is the time since started in nanoseconds, on the monotonic
// clock: an idle spell measured with the wall clock would end at once when
// the clock is stepped forward, or last on when it is stepped back.
func monoNow() int64 { return int64(time.Since(started)) }
