package agent

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mirrorfs/mirrorfs/replicate"
)

// WatchIdle calls idle for a Read that waits too long, and only then: not
// while data keeps coming, and not while nobody reads (a busy agent).
func TestWatchIdle(t *testing.T) {
	const limit = 200 * time.Millisecond
	t.Run("silent", func(t *testing.T) {
		r, _ := io.Pipe()
		called := make(chan struct{})
		in, stop := WatchIdle(r, limit, func() { close(called) })
		defer stop()
		go in.Read(make([]byte, 1))
		select {
		case <-called:
		case <-time.After(10 * limit):
			t.Fatalf("a read waiting %s with a limit of %s was not taken for idle", 10*limit, limit)
		}
	})
	t.Run("fed", func(t *testing.T) {
		r, w := io.Pipe()
		var called atomic.Bool
		in, stop := WatchIdle(r, limit, func() { called.Store(true) })
		defer stop()
		go func() {
			for range 16 {
				time.Sleep(limit / 4)
				w.Write([]byte{1})
			}
			w.Close()
		}()
		io.Copy(io.Discard, in)
		if called.Load() {
			t.Fatal("taken for idle while a byte came every quarter of the limit")
		}
	})
	t.Run("busy", func(t *testing.T) {
		r, w := io.Pipe()
		var called atomic.Bool
		in, stop := WatchIdle(r, limit, func() { called.Store(true) })
		go w.Write([]byte{1})
		if _, err := in.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(4 * limit) // no Read under way
		stop()
		if called.Load() {
			t.Fatal("taken for idle while nothing was reading")
		}
	})
}

// idleAgent is a client of an agent that takes its master for gone after
// limit without a frame; idle reports whether it did.
func idleAgent(t *testing.T, dir string, limit time.Duration) (c *Client, idle *atomic.Bool) {
	idle = new(atomic.Bool)
	c = pipeClientWith(t, dir, func(r io.Reader) io.Reader {
		in, stop := WatchIdle(r, limit, func() { idle.Store(true) })
		t.Cleanup(stop)
		return in
	})
	return c, idle
}

// A master with nothing to send pings, and its agent does not take it for
// gone; the agent still answers afterwards.
func TestPingKeepsAnIdleAgent(t *testing.T) {
	dir := t.TempDir()
	c, idle := idleAgent(t, dir, 300*time.Millisecond)
	done := make(chan struct{})
	defer close(done)
	go c.pingWhileIdle(50*time.Millisecond, done)
	time.Sleep(1500 * time.Millisecond)
	if idle.Load() {
		t.Fatal("an agent pinged every 50 ms took its master for gone after 300 ms")
	}
	if _, err := c.Lstat(t.Context(), ""); err != nil {
		t.Fatalf("lstat after an idle spell of pings: %v", err)
	}
}

// Pings sent as often as possible among a burst of small files, a large
// file and listings change none of their answers.
func TestPingsAmongRequests(t *testing.T) {
	dir := t.TempDir()
	c, idle := idleAgent(t, dir, time.Minute)
	done := make(chan struct{})
	defer close(done)
	go c.pingWhileIdle(time.Nanosecond, done)
	a := replicate.Attrs{Perm: 0o644, UID: -1, GID: -1, Mtime: time.Unix(1_600_000_000, 0)}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	for round := range 20 {
		files := make([]replicate.SmallFile, 50)
		for i := range files {
			files[i] = replicate.SmallFile{Path: fmt.Sprintf("r%02d-%02d", round, i), Data: fmt.Appendf(nil, "%d %d\n", round, i), Attrs: a}
		}
		res, err := c.WriteSmallFiles(t.Context(), files)
		if err != nil || len(res) != len(files) {
			t.Fatalf("round %d: WriteSmallFiles: %d results, %v", round, len(res), err)
		}
		for i, r := range res {
			if r.Err != nil {
				t.Fatalf("round %d, file %d: %v", round, i, r.Err)
			}
		}
		if err := c.WriteFileAtomic(t.Context(), fmt.Sprintf("big%02d", round), bytes.NewReader(big), a); err != nil {
			t.Fatalf("round %d: WriteFileAtomic: %v", round, err)
		}
		fis, err := c.ReadDir(t.Context(), "")
		if err != nil || len(fis) != (round+1)*(len(files)+1) {
			t.Fatalf("round %d: ReadDir: %d entries, %v", round, len(fis), err)
		}
	}
	for round := range 20 {
		if b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("big%02d", round))); err != nil || !bytes.Equal(b, big) {
			t.Fatalf("big%02d: %d bytes, %v", round, len(b), err)
		}
	}
	if idle.Load() {
		t.Fatal("the agent took its master for gone")
	}
}

// A master waiting for an answer does not ping: an agent that stopped
// answering is still found out by the stall watch.
func TestPingHidesNoStalledAgent(t *testing.T) {
	toAgent, fromMaster := io.Pipe()
	toMaster, fromAgent := io.Pipe()
	defer fromAgent.Close()
	// An agent that greets, then reads every frame and answers none.
	go func() {
		var buf []byte
		var err error
		if buf, err = readFrame(toAgent, buf); err != nil {
			return
		}
		resp := response{Data: []byte("build")}
		writeFrame(fromAgent, resp.encode())
		for {
			if buf, err = readFrame(toAgent, buf); err != nil {
				return
			}
		}
	}()
	kill := func() {
		fromMaster.CloseWithError(io.ErrClosedPipe)
		toMaster.CloseWithError(io.ErrClosedPipe)
	}
	watch := replicate.NewStallWatch(300*time.Millisecond, kill, slog.New(slog.DiscardHandler))
	defer watch.Stop()
	c, err := NewClient(t.Context(), watch.Reader(toMaster), watch.Writer(fromMaster), kill, func() error { kill(); return nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.watchStall(watch)
	done := make(chan struct{})
	defer close(done)
	go c.pingWhileIdle(10*time.Millisecond, done)
	answered := make(chan error, 1)
	go func() { _, err := c.Lstat(t.Context(), "x"); answered <- err }()
	select {
	case err := <-answered:
		if err == nil {
			t.Fatal("lstat answered by an agent that answers nothing")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("lstat still waiting 10 s on an agent that answers nothing (reply timeout 300 ms, pings every 10 ms)")
	}
}

// A ping right after a run of small files, the last frame the agent has,
// does not hold their answers back: the master waits for them and sends
// nothing more.
func TestPingAfterSmallFilesLetsThemBeAnswered(t *testing.T) {
	fromMaster, toMaster := agentPipes(t, t.TempDir())
	var frames []byte
	for _, r := range []request{
		{Op: opHello, Off: Version},
		{Op: opWriteSmall, Path: "a.html", Mode: 0o644, UID: -1, GID: -1, Atime: noTime, Mtime: noTime, Data: []byte("a")},
		{Op: opWriteSmall, Path: "b.html", Mode: 0o644, UID: -1, GID: -1, Atime: noTime, Mtime: noTime, Data: []byte("b")},
		{Op: opPing},
	} {
		var buf bytes.Buffer
		if err := writeFrame(&buf, r.encode()); err != nil {
			t.Fatal(err)
		}
		frames = append(frames, buf.Bytes()...)
	}
	go fromMaster.Write(frames) // one write: the agent reads all four at once
	answers := make(chan error, 1)
	go func() {
		var buf []byte
		var err error
		for range 3 { // hello, a.html, b.html
			if buf, err = readFrame(toMaster, buf); err != nil {
				break
			}
		}
		answers <- err
	}()
	select {
	case err := <-answers:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("two small files followed by a ping: not answered after 5 s")
	}
}
