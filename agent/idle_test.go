package agent

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mirrorfs/mirrorfs/replicate"
)

// WatchIdle calls idle for a Read or a Write that waits too long, and only
// then: not while data keeps coming, and not while nobody reads or writes
// (a busy agent).
func TestWatchIdle(t *testing.T) {
	const limit = 400 * time.Millisecond
	t.Run("silent", func(t *testing.T) {
		r, _ := io.Pipe()
		called := make(chan struct{})
		in, _, stop := WatchIdle(r, io.Discard, limit, func() { close(called) })
		defer stop()
		go in.Read(make([]byte, 1))
		select {
		case <-called:
		case <-time.After(10 * limit):
			t.Fatalf("a read waiting %s with a limit of %s was not taken for idle", 10*limit, limit)
		}
	})
	t.Run("not taken in", func(t *testing.T) {
		_, w := io.Pipe() // nobody reads the answer
		called := make(chan struct{})
		_, out, stop := WatchIdle(strings.NewReader(""), w, limit, func() { close(called) })
		defer stop()
		go out.Write([]byte("answer"))
		select {
		case <-called:
		case <-time.After(10 * limit):
			t.Fatalf("a write waiting %s with a limit of %s was not taken for idle", 10*limit, limit)
		}
	})
	t.Run("fed", func(t *testing.T) {
		r, w := io.Pipe()
		var called atomic.Bool
		in, _, stop := WatchIdle(r, io.Discard, limit, func() { called.Store(true) })
		defer stop()
		go func() {
			for range 16 {
				time.Sleep(limit / 8)
				w.Write([]byte{1})
			}
			w.Close()
		}()
		io.Copy(io.Discard, in)
		if called.Load() {
			t.Fatal("taken for idle while a byte came every eighth of the limit")
		}
	})
	t.Run("busy", func(t *testing.T) {
		r, w := io.Pipe()
		var called atomic.Bool
		in, out, stop := WatchIdle(r, io.Discard, limit, func() { called.Store(true) })
		go w.Write([]byte{1})
		if _, err := in.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		if _, err := out.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * limit) // no Read or Write under way
		stop()
		if called.Load() {
			t.Fatal("taken for idle while nothing was reading or writing")
		}
	})
}

// idleAgent is a client of an agent that takes its master for gone after
// limit without a frame; idle reports whether it did.
func idleAgent(t *testing.T, dir string, limit time.Duration) (c *Client, idle *atomic.Bool) {
	idle = new(atomic.Bool)
	c = pipeClientWith(t, dir, func(r io.Reader) io.Reader {
		in, _, stop := WatchIdle(r, io.Discard, limit, func() { idle.Store(true) })
		t.Cleanup(stop)
		return in
	})
	return c, idle
}

// A master with nothing to send pings, and its agent does not take it for
// gone; the agent still answers afterwards.
func TestPingKeepsAnIdleAgent(t *testing.T) {
	dir := t.TempDir()
	c, idle := idleAgent(t, dir, time.Second)
	done := make(chan struct{})
	defer close(done)
	go c.pingWhileIdle(50*time.Millisecond, done)
	time.Sleep(3 * time.Second)
	if idle.Load() {
		t.Fatal("an agent pinged every 50 ms took its master for gone after 1 s")
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

// Pings sent as often as possible while listings come in several frames:
// the master reads the frames after the first without waiting for a ping
// the agent cannot take in while it writes them.
func TestPingsAmongListingFrames(t *testing.T) {
	lowerMaxFrame(t, 64<<10) // restored after the agent stopped
	dir := t.TempDir()
	const n = 2000
	for i := range n {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%04d-%0110d", i, 0)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c, _ := idleAgent(t, dir, time.Minute)
	done := make(chan struct{})
	defer close(done)
	go c.pingWhileIdle(time.Nanosecond, done)
	listed := make(chan error, 1)
	go func() {
		for range 50 {
			fis, err := c.ReadDir(t.Context(), "")
			if err == nil && len(fis) != n {
				err = fmt.Errorf("%d entries, want %d", len(fis), n)
			}
			if err != nil {
				listed <- err
				return
			}
		}
		listed <- nil
	}()
	select {
	case err := <-listed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("50 listings of several frames each, among pings, not done after 30 s")
	}
}

// No ping goes between the frames of one operation, here a transfer
// whose source is slow: the operation is under way, and a ping's flush
// could wait for an agent busy answering its frames (on a stream without
// buffers, such as these pipes, both would then wait for good).
func TestNoPingWithinAnOperation(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var ops []op
	c := pipeClientWith(t, dir, func(r io.Reader) io.Reader {
		// The master's frames pass through here, and are noted.
		pr, pw := io.Pipe()
		go func() {
			var buf []byte
			var err error
			for {
				if buf, err = readFrame(r, buf); err != nil {
					pw.CloseWithError(err)
					return
				}
				mu.Lock()
				ops = append(ops, op(buf[0]))
				mu.Unlock()
				if err := writeFrame(pw, buf); err != nil {
					return
				}
			}
		}()
		return pr
	})
	done := make(chan struct{})
	defer close(done)
	go c.pingWhileIdle(10*time.Millisecond, done)
	chunk := bytes.Repeat([]byte{'x'}, dataChunk)
	src := io.MultiReader(bytes.NewReader(chunk), slowReader{150 * time.Millisecond}, bytes.NewReader(chunk), slowReader{150 * time.Millisecond}, bytes.NewReader(chunk))
	a := replicate.Attrs{Perm: 0o644, UID: -1, GID: -1, Mtime: time.Unix(1_600_000_000, 0)}
	if err := c.WriteFileAtomic(t.Context(), "slow.bin", src, a); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // idle: pings again
	mu.Lock()
	defer mu.Unlock()
	in, pingsIdle := false, 0
	for _, o := range ops {
		switch o {
		case opWriteBegin:
			in = true
		case opWriteEnd:
			in = false
		case opPing:
			if in {
				t.Fatalf("a ping went between the frames of a transfer: %v", ops)
			}
			pingsIdle++
		}
	}
	if pingsIdle == 0 {
		t.Fatalf("no ping while idle, so none could have gone amiss: %v", ops)
	}
}

// slowReader gives nothing, after a while.
type slowReader struct{ d time.Duration }

func (s slowReader) Read([]byte) (int, error) {
	time.Sleep(s.d)
	return 0, io.EOF
}
