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

// WatchIdle returns r, watched: idle is called, once, when a Read has
// waited longer than limit for the master. A network cut leaves sshd, and
// with it the agent's standard input, open until TCP gives up hours
// later; an agent left like that after every outage would pile up on the
// worker. Only the time spent waiting in Read counts: an agent busy with
// a long request (hashing a large file) is not idle. stop ends the watch.
func WatchIdle(r io.Reader, limit time.Duration, idle func()) (watched io.Reader, stop func()) {
	w := &idleReader{r: r, done: make(chan struct{})}
	go w.run(limit, idle)
	return w, func() { w.once.Do(func() { close(w.done) }) }
}

type idleReader struct {
	r     io.Reader
	since atomic.Int64 // Unix ns at which the Read under way began; 0: none
	done  chan struct{}
	once  sync.Once
}

func (w *idleReader) Read(p []byte) (int, error) {
	w.since.Store(time.Now().UnixNano())
	defer w.since.Store(0)
	return w.r.Read(p)
}

func (w *idleReader) run(limit time.Duration, idle func()) {
	tick := time.NewTicker(max(limit/8, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-w.done:
			return
		case <-tick.C:
		}
		if since := w.since.Load(); since != 0 && time.Since(time.Unix(0, since)) > limit {
			idle()
			return
		}
	}
}
