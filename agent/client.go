package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"github.com/klauspost/compress/s2"
	"io"
	"io/fs"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mirrorfs/mirrorfs/delta"
	"github.com/mirrorfs/mirrorfs/replicate"
)

// Client is a replicate.Transport that talks to a `mirrorfs agent` over a
// byte stream (an SSH exec channel, or a pipe in tests). Besides the
// Transport it offers what SFTP cannot: symlink owners and times,
// nanosecond times, extended attributes, FIFOs and device nodes.
//
// A Client is used by one goroutine at a time, like every Transport. A
// failed or cancelled request breaks it: the caller dials again.
type Client struct {
	r     *bufio.Reader
	wmu   sync.Mutex // guards w: the caller's frames and pingWhileIdle's
	w     *bufio.Writer
	buf   []byte
	zbuf  []byte // sendData's compression buffer
	chunk []byte // stream's read buffer (dataChunk bytes), kept: a burst streams thousands of small files
	// unsynced: a request that may change directory entries was sent
	// since the last Sync.
	unsynced bool
	kill     func() // closes the stream so that blocked calls return
	close    func() error
	stall    *replicate.StallWatch // nil: requests wait as long as it takes
	stats    replicate.Stats       // may be nil
	build    string                // the agent's BuildID
	mu       sync.Mutex            // guards broken against kill from AfterFunc
	broken   error
	closed   sync.Once
	// For pingWhileIdle: when a frame was last sent (monoNow), how many
	// operations are under way (from watch to its stop), and whether w
	// holds frames not flushed yet.
	lastSent  atomic.Int64
	busy      atomic.Int32
	unflushed atomic.Bool
}

var (
	_ replicate.Transport   = (*Client)(nil)
	_ linkAttrs             = (*Client)(nil)
	_ xattrs                = (*Client)(nil)
	_ special               = (*Client)(nil)
	_ replicate.Hasher      = (*Client)(nil)
	_ replicate.DeltaWriter = (*Client)(nil)
	_ replicate.Syncer      = (*Client)(nil)
)

// NewClient greets the agent on r/w and returns the client. kill must make
// blocked reads and writes fail (close the channel or connection); close
// ends the session. stats may be nil.
func NewClient(ctx context.Context, r io.Reader, w io.Writer, kill func(), close func() error, stats replicate.Stats) (*Client, error) {
	c := &Client{r: bufio.NewReaderSize(r, 64<<10), w: bufio.NewWriterSize(w, 64<<10), kill: kill, close: close, stats: stats}
	resp, err := c.call(ctx, request{Op: opHello, Off: Version})
	if err != nil {
		return nil, fmt.Errorf("agent hello: %w", err)
	}
	c.build = string(resp.Data)
	return c, nil
}

// BuildID is the agent's build (the SHA-256 of its executable).
func (c *Client) BuildID() string { return c.build }

// BytesSent implements replicate.Stats when the connection counts.
func (c *Client) BytesSent() uint64 {
	if c.stats == nil {
		return 0
	}
	return c.stats.BytesSent()
}

// BytesReceived implements replicate.Stats when the connection counts.
func (c *Client) BytesReceived() uint64 {
	if c.stats == nil {
		return 0
	}
	return c.stats.BytesReceived()
}

// Close implements replicate.Transport.
func (c *Client) Close() error {
	var err error
	c.closed.Do(func() { err = c.close() })
	return err
}

func (c *Client) fail(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken == nil {
		c.broken = err
	}
	return err
}

func (c *Client) brokenErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.broken
}

func (c *Client) usable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return fmt.Errorf("agent connection broken: %w", c.broken)
	}
	return nil
}

// watch kills the stream when ctx is cancelled, and marks an operation
// under way (no ping meanwhile) until stop; stop reports whether the call
// may go on (false: it was cancelled). Every operation begins with it.
func (c *Client) watch(ctx context.Context) (stop func() bool) {
	c.busy.Add(1)
	stopCtx := context.AfterFunc(ctx, func() {
		c.fail(ctx.Err())
		c.kill()
	})
	var once sync.Once
	return func() bool {
		once.Do(func() { c.busy.Add(-1) })
		return stopCtx()
	}
}

// watchStall has the connection closed when the agent stops answering
// (see replicate.StallWatch). The client's stream must be counted by the
// watch's Reader and Writer.
func (c *Client) watchStall(w *replicate.StallWatch) { c.stall = w }

// waiting marks a request waiting on the agent, for the stall watch.
func (c *Client) waiting() (end func()) {
	if c.stall == nil {
		return func() {}
	}
	return c.stall.Begin()
}

// pingWhileIdle sends opPing when nothing was sent for every and no
// operation is under way, until done: the agent, run with --idle-exit,
// can then tell a master with nothing to replicate from one that went
// away. A ping is never sent while an answer is awaited, so it cannot hide
// an agent that stopped answering from the stall watch.
func (c *Client) pingWhileIdle(every time.Duration, done <-chan struct{}) {
	tick := time.NewTicker(max(every/4, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		if c.busy.Load() > 0 || time.Duration(monoNow()-c.lastSent.Load()) < every {
			continue
		}
		if c.brokenErr() != nil || c.ping() != nil {
			return
		}
	}
}

// ping writes one opPing and flushes it, unless an operation began.
func (c *Client) ping() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.busy.Load() > 0 {
		// Begun since pingWhileIdle looked: its frames go first, and a
		// flush now could wait for an agent busy answering them.
		return nil
	}
	req := request{Op: opPing}
	err := writeFrame(c.w, req.encode())
	if err == nil {
		err = c.w.Flush()
	}
	if err != nil {
		return c.fail(err)
	}
	c.unflushed.Store(false)
	c.lastSent.Store(monoNow())
	return nil
}

// send writes one request frame (buffered).
func (c *Client) send(req request) error {
	defer c.waiting()()
	c.wmu.Lock()
	err := writeFrame(c.w, req.encode())
	c.unflushed.Store(true)
	c.wmu.Unlock()
	c.lastSent.Store(monoNow())
	if err != nil {
		return c.fail(err)
	}
	if req.Op.changesEntries() {
		c.unsynced = true
	}
	return nil
}

// receive flushes what was sent and reads one response. With nothing to
// flush (the further frames of an answer) it does not take the writer's
// lock: a ping may hold it, waiting for an agent that is writing the very
// frames this reads.
func (c *Client) receive() (response, error) {
	defer c.waiting()()
	if c.unflushed.Load() {
		c.wmu.Lock()
		err := c.w.Flush()
		if err == nil {
			c.unflushed.Store(false)
		}
		c.wmu.Unlock()
		if err != nil {
			return response{}, c.fail(err)
		}
	}
	var err error
	c.buf, err = readFrame(c.r, c.buf)
	if err != nil {
		return response{}, c.fail(err)
	}
	resp, err := decodeResponse(c.buf)
	if err != nil {
		return response{}, c.fail(err)
	}
	return resp, nil
}

// call sends req and returns its answer; a remote failure is the error.
func (c *Client) call(ctx context.Context, req request) (response, error) {
	if err := c.usable(ctx); err != nil {
		return response{}, err
	}
	stop := c.watch(ctx)
	defer stop()
	if err := c.send(req); err != nil {
		return response{}, c.ctxErr(ctx, err)
	}
	resp, err := c.receive()
	if err != nil {
		return response{}, c.ctxErr(ctx, err)
	}
	return resp, resp.err()
}

func (c *Client) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

func (c *Client) do(ctx context.Context, req request) error {
	_, err := c.call(ctx, req)
	return err
}

// Lstat implements replicate.Transport.
func (c *Client) Lstat(ctx context.Context, p string) (replicate.FileInfo, error) {
	resp, err := c.call(ctx, request{Op: opLstat, Path: p})
	if err != nil {
		return replicate.FileInfo{}, err
	}
	if len(resp.Infos) != 1 {
		return replicate.FileInfo{}, c.fail(errors.New("agent protocol: lstat answered without one entry"))
	}
	return resp.Infos[0], nil
}

// ReadDir implements replicate.Transport. The agent answers a large
// directory in several frames (listingFrames): every one but the last is
// flagged.
func (c *Client) ReadDir(ctx context.Context, p string) ([]replicate.FileInfo, error) {
	resp, err := c.call(ctx, request{Op: opReadDir, Path: p})
	fis := resp.Infos
	for err == nil && resp.flag() {
		resp, err = c.receiveMore(ctx)
		fis = append(fis, resp.Infos...)
	}
	if err != nil {
		return nil, err
	}
	return fis, nil
}

// receiveMore reads a further frame of the answer call already began to
// read.
func (c *Client) receiveMore(ctx context.Context) (response, error) {
	if err := c.usable(ctx); err != nil {
		return response{}, err
	}
	stop := c.watch(ctx)
	defer stop()
	resp, err := c.receive()
	if err != nil {
		return response{}, c.ctxErr(ctx, err)
	}
	return resp, resp.err()
}

// Readlink implements replicate.Transport.
func (c *Client) Readlink(ctx context.Context, p string) (string, error) {
	resp, err := c.call(ctx, request{Op: opReadlink, Path: p})
	return string(resp.Data), err
}

// Sync implements replicate.Syncer. A batch that changed no directory
// entry (files kept as they were, attributes only) costs no round trip.
func (c *Client) Sync(ctx context.Context) error {
	if !c.unsynced {
		return nil
	}
	if err := c.do(ctx, request{Op: opSync}); err != nil {
		return err
	}
	c.unsynced = false
	return nil
}

// Mkdir implements replicate.Transport.
func (c *Client) Mkdir(ctx context.Context, p string, perm fs.FileMode) error {
	return c.do(ctx, request{Op: opMkdir, Path: p, Mode: uint32(perm)})
}

// Remove implements replicate.Transport.
func (c *Client) Remove(ctx context.Context, p string) error {
	return c.do(ctx, request{Op: opRemove, Path: p})
}

// Rmdir implements replicate.Transport.
func (c *Client) Rmdir(ctx context.Context, p string) error {
	return c.do(ctx, request{Op: opRmdir, Path: p})
}

// Rename implements replicate.Transport.
func (c *Client) Rename(ctx context.Context, from, to string) error {
	return c.do(ctx, request{Op: opRename, Path: from, Path2: to})
}

// Symlink implements replicate.Transport.
func (c *Client) Symlink(ctx context.Context, target, p string) error {
	return c.do(ctx, request{Op: opSymlink, Path: p, Path2: target})
}

// Link implements replicate.Transport.
func (c *Client) Link(ctx context.Context, existing, p string) error {
	return c.do(ctx, request{Op: opLink, Path: existing, Path2: p})
}

// Chmod implements replicate.Transport.
func (c *Client) Chmod(ctx context.Context, p string, perm fs.FileMode) error {
	return c.do(ctx, request{Op: opChmod, Path: p, Mode: uint32(perm)})
}

// Chown implements replicate.Transport.
func (c *Client) Chown(ctx context.Context, p string, uid, gid int) error {
	return c.do(ctx, request{Op: opChown, Path: p, UID: int64(uid), GID: int64(gid)})
}

// Chtimes implements replicate.Transport, with nanoseconds.
func (c *Client) Chtimes(ctx context.Context, p string, atime, mtime time.Time) error {
	return c.do(ctx, request{Op: opChtimes, Path: p, Atime: encodeTime(atime), Mtime: encodeTime(mtime)})
}

// Lchown sets the owner of p itself, also of a symlink.
func (c *Client) Lchown(ctx context.Context, p string, uid, gid int) error {
	return c.do(ctx, request{Op: opLchown, Path: p, UID: int64(uid), GID: int64(gid)})
}

// Lchtimes sets the times of p itself, also of a symlink.
func (c *Client) Lchtimes(ctx context.Context, p string, atime, mtime time.Time) error {
	return c.do(ctx, request{Op: opLchtimes, Path: p, Atime: encodeTime(atime), Mtime: encodeTime(mtime)})
}

// ListXattrs returns the extended attributes of p.
func (c *Client) ListXattrs(ctx context.Context, p string) (map[string][]byte, error) {
	resp, err := c.call(ctx, request{Op: opListXattrs, Path: p})
	if err != nil {
		return nil, err
	}
	if resp.Xattrs == nil {
		resp.Xattrs = map[string][]byte{}
	}
	return resp.Xattrs, nil
}

// SetXattr sets one extended attribute of p.
func (c *Client) SetXattr(ctx context.Context, p, name string, value []byte) error {
	return c.do(ctx, request{Op: opSetXattr, Path: p, Path2: name, Data: value})
}

// RemoveXattr removes one extended attribute of p.
func (c *Client) RemoveXattr(ctx context.Context, p, name string) error {
	return c.do(ctx, request{Op: opRemoveXattr, Path: p, Path2: name})
}

// Mknod creates a FIFO or device node.
func (c *Client) Mknod(ctx context.Context, p string, mode fs.FileMode, rdev uint64) error {
	return c.do(ctx, request{Op: opMknod, Path: p, Mode: uint32(mode), Rdev: rdev})
}

// Hash implements replicate.Hasher: the agent reads and hashes the file
// on the worker; only the digest crosses the connection.
func (c *Client) Hash(ctx context.Context, p string) ([]byte, error) {
	resp, err := c.call(ctx, request{Op: opHash, Path: p})
	if err != nil {
		return nil, err
	}
	if len(resp.Data) != sha256.Size {
		return nil, c.fail(fmt.Errorf("agent protocol: hash answered with %d bytes", len(resp.Data)))
	}
	return bytes.Clone(resp.Data), nil // resp.Data is in the frame buffer, reused
}

// WriteFileAtomic implements replicate.Transport: the agent writes a temp
// file next to p, fsyncs it, sets a and renames it over p. The data is
// streamed without waiting for answers; a SparseReader's holes are not
// sent.
func (c *Client) WriteFileAtomic(ctx context.Context, p string, r io.Reader, a replicate.Attrs) error {
	if err := c.usable(ctx); err != nil {
		return err
	}
	stop := c.watch(ctx)
	defer stop()
	begin := attrsRequest(opWriteBegin, p, a)
	if err := c.send(begin); err != nil {
		return c.ctxErr(ctx, err)
	}
	size, srcErr := c.stream(r)
	if err := c.brokenErr(); err != nil {
		return c.ctxErr(ctx, err)
	}
	end := request{Op: opWriteEnd, Off: size}
	if srcErr != nil {
		end = request{Op: opWriteAbort, Path2: srcErr.Error()}
	}
	if err := c.send(end); err != nil {
		return c.ctxErr(ctx, err)
	}
	resp, err := c.receive()
	if err != nil {
		return c.ctxErr(ctx, err)
	}
	if srcErr != nil {
		return srcErr // the agent removed its temp file
	}
	return resp.err()
}

// sendData sends one WriteData frame (at most dataChunk bytes), compressed
// with S2 when that saves at least an eighth: web roots are mostly text,
// which S2 shrinks two- to fourfold at several hundred MB/s, and it gives up
// on incompressible data (images, archives) at several GB/s.
func (c *Client) sendData(off int64, data []byte) error {
	enc, z := c.compress(data)
	return c.send(request{Op: opWriteData, Off: off, Mode: uint32(enc), Data: z})
}

// compress returns data as sent: S2-compressed (dataS2) when that saves at
// least an eighth, else as it is (0). The result may be c's buffer.
func (c *Client) compress(data []byte) (enc uint64, out []byte) {
	if len(data) >= 512 {
		if n := s2.MaxEncodedLen(len(data)); cap(c.zbuf) < n {
			c.zbuf = make([]byte, n)
		}
		if z := s2.Encode(c.zbuf[:cap(c.zbuf)], data); len(z) <= len(data)-len(data)/8 {
			return dataS2, z
		}
	}
	return 0, data
}

var _ replicate.SmallWriter = (*Client)(nil)

// WriteSmallFiles implements replicate.SmallWriter: the requests go out
// together (pipeline), so a batch of files costs one round trip.
func (c *Client) WriteSmallFiles(ctx context.Context, files []replicate.SmallFile) ([]replicate.SmallResult, error) {
	for _, f := range files {
		if len(f.Data) > replicate.SmallMax {
			return nil, fmt.Errorf("%s: %d bytes, more than a small file's %d", f.Path, len(f.Data), replicate.SmallMax)
		}
	}
	out := make([]replicate.SmallResult, len(files))
	err := c.pipeline(ctx, len(files), func(i int) request {
		f := files[i]
		enc, z := c.compress(f.Data)
		r := attrsRequest(opWriteSmall, f.Path, f.Attrs)
		r.Rdev, r.Data = enc, z
		return r
	}, func(i int, resp response) {
		out[i] = replicate.SmallResult{Kept: resp.flag(), Err: resp.err()}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

var _ replicate.AttrSetter = (*Client)(nil)

// SetAttrs implements replicate.AttrSetter: the requests go out together
// (pipeline), followed by the Sync of the entries changed since the last
// one, if any: the attributes of a batch's directories are its last
// change, so the Sync that ends the batch (replicate.Syncer) then costs no
// round trip of its own. A failed Sync here is left to that one.
func (c *Client) SetAttrs(ctx context.Context, items []replicate.AttrItem) ([]replicate.AttrResult, error) {
	out := make([]replicate.AttrResult, len(items))
	n := len(items)
	syncing := c.unsynced
	if syncing {
		n++
	}
	var synced bool
	err := c.pipeline(ctx, n, func(i int) request {
		if i == len(items) {
			return request{Op: opSync}
		}
		it := items[i]
		r := attrsRequest(opSetAttrs, it.Path, it.Attrs)
		if it.Dir {
			r.Mode |= uint32(fs.ModeDir)
		}
		return r
	}, func(i int, resp response) {
		if i == len(items) {
			synced = resp.err() == nil
			return
		}
		out[i] = replicate.AttrResult{Found: resp.flag(), Err: resp.err()}
	})
	if err != nil {
		return nil, err
	}
	if synced {
		c.unsynced = false
	}
	return out, nil
}

// pipelineMax bounds the requests, and pipelineBytes their data, that
// pipeline sends before it reads their answers: the answers (a few bytes
// each, unless they are errors) must fit the stream's buffers while the
// master is still sending.
const (
	pipelineMax   = 1024
	pipelineBytes = 4 << 20
)

// pipeline sends the n requests req(i) in groups, each sent whole before
// its answers are read and handed to answer: a group costs one round trip.
// Every answer of a group is read, also after a failed one, so the stream
// stays in step. The error is the transport's.
func (c *Client) pipeline(ctx context.Context, n int, req func(i int) request, answer func(i int, resp response)) error {
	if err := c.usable(ctx); err != nil {
		return err
	}
	stop := c.watch(ctx)
	defer stop()
	for start := 0; start < n; {
		end, size := start, 0
		for end < n && end-start < pipelineMax && size < pipelineBytes {
			r := req(end)
			if err := c.send(r); err != nil {
				return c.ctxErr(ctx, err)
			}
			size += len(r.Data)
			end++
		}
		for i := start; i < end; i++ {
			resp, err := c.receive()
			if err != nil {
				return c.ctxErr(ctx, err)
			}
			answer(i, resp)
		}
		start = end
	}
	return nil
}

// stream sends r's data frames and returns the content's size, or the
// error that made the source unusable.
func (c *Client) stream(r io.Reader) (int64, error) {
	if c.chunk == nil {
		c.chunk = make([]byte, dataChunk)
	}
	buf := c.chunk
	sendFrom := func(off int64, src io.Reader) (int64, error) {
		for {
			n, err := io.ReadFull(src, buf)
			if n > 0 {
				if serr := c.sendData(off, buf[:n]); serr != nil {
					return off, serr
				}
				off += int64(n)
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return off, nil
			}
			if err != nil {
				return off, err
			}
		}
	}
	sr, sparse := r.(replicate.SparseReader)
	if !sparse {
		return sendFrom(0, r)
	}
	for {
		off, data, err := sr.NextData()
		if err == io.EOF {
			return sr.Size(), nil
		}
		if err != nil {
			return 0, err
		}
		if _, err := sendFrom(off, data); err != nil {
			return 0, err
		}
	}
}

// deltaMinSize: below it a file is sent whole, a delta would not pay.
const deltaMinSize = 64 << 10

// errHoles: the content has holes, which a delta would fill; it is sent
// whole (by segments) instead.
var errHoles = fmt.Errorf("%w: sparse content is sent whole", replicate.ErrUnsupported)

// WriteFileDelta implements replicate.DeltaWriter: the agent sends the
// signature of its current file p, the delta of r against it is streamed
// in WriteData frames after a PatchBegin, and the agent patches it into a
// temp file renamed over p. A missing, non-regular or small basis, and
// sparse content, give an error wrapping replicate.ErrUnsupported before
// anything is written; a patched result that does not match gives one
// wrapping delta.ErrMismatch. The caller then sends the file whole.
func (c *Client) WriteFileDelta(ctx context.Context, p string, r io.Reader, a replicate.Attrs) (int64, error) {
	sr, sparse := r.(replicate.SparseReader)
	if sparse && sr.Size() < deltaMinSize {
		return 0, fmt.Errorf("%w: %s: too small for a delta", replicate.ErrUnsupported, p)
	}
	resp, err := c.call(ctx, request{Op: opSignature, Path: p})
	if err != nil {
		var re *RemoteError
		if errors.As(err, &re) {
			return 0, fmt.Errorf("%w: %s: no basis: %w", replicate.ErrUnsupported, p, err)
		}
		return 0, err
	}
	// resp.Data is at most one frame (maxFrame): UnmarshalBinary
	// allocates no more than its input.
	var sig delta.Signature
	if err := sig.UnmarshalBinary(resp.Data); err != nil {
		return 0, fmt.Errorf("%w: %s: %w", replicate.ErrUnsupported, p, err)
	}
	if sig.FileSize() < deltaMinSize {
		return 0, fmt.Errorf("%w: %s: basis too small for a delta", replicate.ErrUnsupported, p)
	}
	src := r
	if sparse {
		src = &denseReader{sr: sr}
	}
	return c.sendPatch(ctx, p, sig.FileSize(), a, func(w io.Writer) (delta.Stats, error) {
		return delta.NewDelta(&sig, src, w)
	})
}

var _ replicate.Keeper = (*Client)(nil)

// KeepIfSame implements replicate.Keeper: the requests go out together
// (pipeline), so a batch costs one round trip.
func (c *Client) KeepIfSame(ctx context.Context, items []replicate.KeepItem) ([]bool, error) {
	out := make([]bool, len(items))
	var first error
	err := c.pipeline(ctx, len(items), func(i int) request {
		it := items[i]
		r := attrsRequest(opKeepIfSame, it.Path, it.Attrs)
		r.Off, r.Data = it.Size, it.Hash
		return r
	}, func(i int, resp response) {
		if err := resp.err(); err != nil && first == nil {
			first = err
		}
		out[i] = resp.flag()
	})
	if err != nil {
		return nil, err
	}
	if first != nil {
		return nil, first
	}
	return out, nil
}

// WriteFileRanges implements replicate.RangeWriter: the delta is made from
// the ranges the master knows changed (delta.RangeDelta), with no
// signature and no round trip before the data.
func (c *Client) WriteFileRanges(ctx context.Context, p string, basisSize, keep int64, ranges []delta.Range, r replicate.RangeSource, a replicate.Attrs) (int64, error) {
	return c.sendPatch(ctx, p, basisSize, a, func(w io.Writer) (delta.Stats, error) {
		return delta.RangeDelta(basisSize, keep, ranges, r, r, w)
	})
}

// sendPatch streams the delta that makeDelta writes to the agent, which
// patches the worker's p (of basisSize bytes) into a temp file, checks the
// result's SHA-256, fsyncs, sets a and renames it over p.
func (c *Client) sendPatch(ctx context.Context, p string, basisSize int64, a replicate.Attrs, makeDelta func(io.Writer) (delta.Stats, error)) (int64, error) {
	if err := c.usable(ctx); err != nil {
		return 0, err
	}
	stop := c.watch(ctx)
	defer stop()
	begin := attrsRequest(opPatchBegin, p, a)
	begin.Off = basisSize
	if err := c.send(begin); err != nil {
		return 0, c.ctxErr(ctx, err)
	}
	fw := &frameWriter{c: c, buf: make([]byte, 0, dataChunk)}
	st, derr := makeDelta(fw)
	if derr == nil {
		derr = fw.flush()
	}
	if err := c.brokenErr(); err != nil {
		return 0, c.ctxErr(ctx, err)
	}
	end := request{Op: opWriteEnd, Off: fw.sent}
	if derr != nil {
		end = request{Op: opWriteAbort, Path2: derr.Error()}
	}
	if err := c.send(end); err != nil {
		return 0, c.ctxErr(ctx, err)
	}
	resp, err := c.receive()
	if err != nil {
		return 0, c.ctxErr(ctx, err)
	}
	if derr != nil {
		return 0, derr // the source failed: the agent removed its temp file
	}
	return st.Literal, resp.err()
}

// frameWriter cuts the delta stream into WriteData frames of at most
// dataChunk bytes.
type frameWriter struct {
	c    *Client
	buf  []byte
	sent int64 // bytes of the stream sent so far
}

func (f *frameWriter) Write(b []byte) (int, error) {
	n := len(b)
	for len(b) > 0 {
		k := min(len(b), dataChunk-len(f.buf))
		f.buf = append(f.buf, b[:k]...)
		b = b[k:]
		if len(f.buf) == dataChunk {
			if err := f.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

// Flush sends what is buffered now: delta.RangeDelta flushes its
// instructions so that the agent starts copying while the master hashes.
func (f *frameWriter) Flush() error { return f.flush() }

func (f *frameWriter) flush() error {
	if len(f.buf) == 0 {
		return nil
	}
	if err := f.c.sendData(f.sent, f.buf); err != nil {
		return err
	}
	f.sent += int64(len(f.buf))
	f.buf = f.buf[:0]
	return nil
}

// denseReader reads a SparseReader by its segments (so that its checks for
// a changing source apply) and fails with errHoles at the first hole.
type denseReader struct {
	sr  replicate.SparseReader
	cur io.Reader
	pos int64
	err error
}

func (d *denseReader) Read(b []byte) (int, error) {
	for d.err == nil {
		if d.cur == nil {
			off, data, err := d.sr.NextData()
			switch {
			case err == io.EOF && d.pos != d.sr.Size():
				d.err = errHoles // a trailing hole
			case err != nil:
				d.err = err
			case off != d.pos:
				d.err = errHoles
			default:
				d.cur = data
			}
			continue
		}
		n, err := d.cur.Read(b)
		d.pos += int64(n)
		switch {
		case err == io.EOF:
			d.cur = nil
		case err != nil:
			d.err = err
		}
		if n > 0 {
			return n, nil
		}
	}
	return 0, d.err
}
