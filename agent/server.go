package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/klauspost/compress/s2"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mirrorfs/mirrorfs/delta"
	"github.com/mirrorfs/mirrorfs/replicate"
)

// The capabilities the agent offers beyond replicate.Transport, served by
// replicate.Local on the worker.
type (
	linkAttrs interface {
		Lchown(ctx context.Context, p string, uid, gid int) error
		Lchtimes(ctx context.Context, p string, atime, mtime time.Time) error
	}
	xattrs interface {
		ListXattrs(ctx context.Context, p string) (map[string][]byte, error)
		SetXattr(ctx context.Context, p, name string, value []byte) error
		RemoveXattr(ctx context.Context, p, name string) error
	}
	special interface {
		Mknod(ctx context.Context, p string, mode fs.FileMode, rdev uint64) error
	}
)

// selfExe names the running executable's own file, even after a package
// upgrade replaced the file at its path (os.Executable would name the new
// one): the build the master uploads is the build it hashed.
const selfExe = "/proc/self/exe"

// BuildID identifies this executable: the SHA-256 of its file. The master
// compares it with the agent's to know whether to upload itself.
var BuildID = sync.OnceValues(func() (string, error) {
	f, err := os.Open(selfExe)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
})

// Serve answers requests from in on out, applying them below root, until
// in ends (nil) or a protocol error (returned). Every path is checked
// against the root by replicate.Local: nothing a request says can reach
// outside it.
func Serve(ctx context.Context, in io.Reader, out io.Writer, root string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l, err := replicate.NewLocal(root)
	if err != nil {
		return fmt.Errorf("agent %w", err)
	}
	defer l.Close()
	s := &server{l: l, log: log, out: bufio.NewWriterSize(out, 64<<10)}
	br := bufio.NewReaderSize(in, 64<<10)
	var buf []byte
	for {
		buf, err = readFrame(br, buf)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		req, err := decodeRequest(buf)
		if err != nil {
			return err
		}
		if !s.hello && req.Op != opHello {
			return errors.New("agent protocol: first request is not hello")
		}
		if s.w == nil && (req.Op == opWriteData || req.Op == opWriteEnd || req.Op == opWriteAbort) {
			return errors.New("agent protocol: file data without a transfer in progress")
		}
		if req.Op == opPing || (req.Op == opWriteSmall && s.w == nil) {
			// The master sends a batch's small files together: the ones
			// already here are written as one group, whose fsyncs share
			// a journal commit (replicate.Local.WriteSmallFiles). A
			// ping is not answered: a run read before it is answered as
			// though it were not there.
			if req.Op == opWriteSmall {
				s.small = append(s.small, smallRequest(req))
			}
			if br.Buffered() > 0 && len(s.small) < smallRunMax {
				continue
			}
			if err := s.writeSmall(ctx); err != nil {
				return err
			}
		} else {
			if err := s.writeSmall(ctx); err != nil { // the run before req
				return err
			}
			resp, answer := s.handle(ctx, req)
			if !answer {
				continue
			}
			parts := []response{resp}
			if req.Op == opReadDir {
				parts = listingFrames(resp)
			}
			for _, part := range parts {
				if err := writeFrame(s.out, fitFrame(req, part.encode())); err != nil {
					return err
				}
			}
		}
		// Flush once nothing more is waiting: a burst of small requests
		// is answered in one write.
		if br.Buffered() == 0 {
			if err := s.out.Flush(); err != nil {
				return err
			}
		}
	}
}

// fitFrame returns body, or an error answer naming req's path when body
// is over one frame: the agent would otherwise end on its own answer (a
// file's extended attributes can take more, on XFS), the master dial
// again and ask again, for good.
func fitFrame(req request, body []byte) []byte {
	if len(body) <= maxFrame {
		return body
	}
	err := fmt.Errorf("%s: the answer takes %d bytes, over the agent protocol's limit of %d", req.Path, len(body), maxFrame)
	resp := errorResponse(err)
	return resp.encode()
}

type server struct {
	l     *replicate.Local
	log   *slog.Logger
	out   *bufio.Writer
	hello bool
	w     *pendingWrite // the WriteFileAtomic in progress, if any
	small []smallFile   // opWriteSmall requests read, not yet answered
}

// smallRunMax bounds the opWriteSmall requests answered together.
const smallRunMax = 256

// testHookSmallRun, set by tests, sees the number of requests in each run
// of small files written together.
var testHookSmallRun func(n int)

// smallFile is one opWriteSmall request: its file, or why its data is
// unusable.
type smallFile struct {
	file replicate.SmallFile
	err  error
}

func smallRequest(r request) smallFile {
	// Bounded before the copy: up to smallRunMax requests wait in memory,
	// and a frame may hold 16 MiB.
	data, err := decodeData(r.Rdev, r.Data, replicate.SmallMax) // a copy: r.Data is the frame buffer's
	return smallFile{file: replicate.SmallFile{Path: r.Path, Data: data, Attrs: r.attrs()}, err: err}
}

// writeSmall writes the small files read since the last answer, as one
// group, and answers each request in order: kept or not, or its error.
func (s *server) writeSmall(ctx context.Context) error {
	if len(s.small) == 0 {
		return nil
	}
	if testHookSmallRun != nil {
		testHookSmallRun(len(s.small))
	}
	var files []replicate.SmallFile
	for _, f := range s.small {
		if f.err == nil {
			files = append(files, f.file)
		}
	}
	res, err := s.l.WriteSmallFiles(ctx, files)
	for _, f := range s.small {
		var resp response
		switch {
		case f.err != nil:
			resp = errorResponse(f.err)
		case err != nil: // the context's: nothing is known of the files
			resp = errorResponse(err)
		default:
			resp = flagResponse(res[0].Kept)
			if res[0].Err != nil {
				resp = errorResponse(res[0].Err)
			}
			res = res[1:]
		}
		if err := writeFrame(s.out, resp.encode()); err != nil {
			return err
		}
	}
	clear(s.small) // drop the data
	s.small = s.small[:0]
	return nil
}

// pendingWrite is a WriteFileAtomic fed by WriteData frames.
type pendingWrite struct {
	segs chan segment
	size int64
	done chan error
	// finished: WriteFileAtomic returned before the master's last frame
	// (it failed): the rest of the transfer's frames are dropped and
	// WriteEnd is answered with err.
	finished bool
	err      error
}

// feed hands one segment to the WriteFileAtomic in progress, unless it
// already returned.
func (w *pendingWrite) feed(s segment) {
	if w.finished {
		return
	}
	select {
	case w.segs <- s:
	case err := <-w.done:
		w.finished, w.err = true, err
	}
}

// wait returns the outcome of the WriteFileAtomic.
func (w *pendingWrite) wait() error {
	if !w.finished {
		w.finished, w.err = true, <-w.done
	}
	return w.err
}

type segment struct {
	off  int64
	data []byte
	err  error // io.EOF at the end, or the master's reason to abort
}

// NextData, Size and Read make pendingWrite a replicate.SparseReader, so
// Local writes each segment at its offset and keeps holes.
func (w *pendingWrite) NextData() (int64, io.Reader, error) {
	s := <-w.segs
	if s.err != nil {
		return 0, nil, s.err
	}
	return s.off, bytes.NewReader(s.data), nil
}

func (w *pendingWrite) Size() int64 { return w.size }

func (w *pendingWrite) Read([]byte) (int, error) {
	return 0, errors.New("agent: write data is read by segments")
}

func ok() response { return response{} }

// flagResponse answers a yes-or-no request (opKeepIfSame, opWriteSmall:
// kept or not); response.flag reads it.
func flagResponse(yes bool) response {
	if yes {
		return response{Data: []byte{1}}
	}
	return response{Data: []byte{0}}
}

func result(err error) response {
	if err != nil {
		return errorResponse(err)
	}
	return ok()
}

// handle serves one request; answer is false for WriteData.
func (s *server) handle(ctx context.Context, r request) (resp response, answer bool) {
	if s.w != nil {
		switch r.Op {
		case opWriteData:
			data, err := frameData(r)
			if err != nil {
				// The write fails with it; WriteEnd answers with that.
				s.w.feed(segment{err: err})
				return response{}, false
			}
			s.w.feed(segment{off: r.Off, data: data})
			return response{}, false
		case opWriteEnd:
			s.w.size = r.Off
			s.w.feed(segment{err: io.EOF})
			return s.finishWrite(), true
		case opWriteAbort:
			s.w.feed(segment{err: fmt.Errorf("master aborted the transfer: %s", r.Path2)})
			return s.finishWrite(), true
		default:
			return errorResponse(errors.New("agent protocol: request in the middle of a file transfer")), true
		}
	}
	l := s.l
	switch r.Op {
	case opHello:
		if r.Off != Version {
			return errorResponse(fmt.Errorf("agent speaks protocol %d, master %d", Version, r.Off)), true
		}
		s.hello = true
		id, err := BuildID()
		if err != nil {
			s.log.Warn("agent build id", "err", err)
		}
		return response{Data: []byte(id)}, true
	case opLstat:
		fi, err := l.Lstat(ctx, r.Path)
		if err != nil {
			return errorResponse(err), true
		}
		return response{Infos: []replicate.FileInfo{fi}}, true
	case opReadDir:
		fis, err := l.ReadDir(ctx, r.Path)
		if err != nil {
			return errorResponse(err), true
		}
		return response{Infos: fis}, true
	case opReadlink:
		t, err := l.Readlink(ctx, r.Path)
		if err != nil {
			return errorResponse(err), true
		}
		return response{Data: []byte(t)}, true
	case opSync:
		return result(l.Sync(ctx)), true
	case opMkdir:
		return result(l.Mkdir(ctx, r.Path, fs.FileMode(r.Mode))), true
	case opRemove:
		return result(l.Remove(ctx, r.Path)), true
	case opRmdir:
		return result(l.Rmdir(ctx, r.Path)), true
	case opRename:
		return result(l.Rename(ctx, r.Path, r.Path2)), true
	case opSymlink:
		return result(l.Symlink(ctx, r.Path2, r.Path)), true
	case opLink:
		return result(l.Link(ctx, r.Path, r.Path2)), true
	case opChmod:
		return result(l.Chmod(ctx, r.Path, fs.FileMode(r.Mode))), true
	case opChown:
		return result(l.Chown(ctx, r.Path, int(r.UID), int(r.GID))), true
	case opChtimes:
		return result(l.Chtimes(ctx, r.Path, decodeTime(r.Atime), decodeTime(r.Mtime))), true
	case opLchown, opLchtimes:
		la, ok := any(l).(linkAttrs)
		if !ok {
			return errorResponse(replicate.ErrUnsupported), true
		}
		if r.Op == opLchown {
			return result(la.Lchown(ctx, r.Path, int(r.UID), int(r.GID))), true
		}
		return result(la.Lchtimes(ctx, r.Path, decodeTime(r.Atime), decodeTime(r.Mtime))), true
	case opListXattrs, opSetXattr, opRemoveXattr:
		x, ok := any(l).(xattrs)
		if !ok {
			return errorResponse(replicate.ErrUnsupported), true
		}
		switch r.Op {
		case opListXattrs:
			m, err := x.ListXattrs(ctx, r.Path)
			if err != nil {
				return errorResponse(err), true
			}
			return response{Xattrs: m}, true
		case opSetXattr:
			if err := xattrAllowed("set", r.Path, r.Path2); err != nil {
				return errorResponse(err), true
			}
			return result(x.SetXattr(ctx, r.Path, r.Path2, r.Data)), true
		default:
			if err := xattrAllowed("remove", r.Path, r.Path2); err != nil {
				return errorResponse(err), true
			}
			return result(x.RemoveXattr(ctx, r.Path, r.Path2)), true
		}
	case opMknod:
		sp, ok := any(l).(special)
		if !ok {
			return errorResponse(replicate.ErrUnsupported), true
		}
		if err := mknodAllowed(r.Path, fs.FileMode(r.Mode)); err != nil {
			return errorResponse(err), true
		}
		return result(sp.Mknod(ctx, r.Path, fs.FileMode(r.Mode), r.Rdev)), true
	case opHash:
		// Served by replicate.Local, which opens the file without
		// following a symlink anywhere on the path.
		sum, err := l.Hash(ctx, r.Path)
		if err != nil {
			return errorResponse(err), true
		}
		return response{Data: sum}, true
	case opWriteBegin:
		a := r.attrs()
		w := &pendingWrite{segs: make(chan segment), done: make(chan error, 1)}
		s.w = w
		go func() { w.done <- l.WriteFileAtomic(ctx, r.Path, w, a) }()
		return response{}, false
	case opKeepIfSame:
		a := r.attrs()
		same, err := l.KeepIfSame(ctx, []replicate.KeepItem{{Path: r.Path, Size: r.Off, Hash: r.Data, Attrs: a}})
		if err != nil {
			return errorResponse(err), true
		}
		return flagResponse(same[0]), true
	case opSetAttrs:
		res, err := l.SetAttrs(ctx, []replicate.AttrItem{{Path: r.Path, Dir: fs.FileMode(r.Mode)&fs.ModeDir != 0, Attrs: r.attrs()}})
		if err != nil {
			return errorResponse(err), true
		}
		resp := flagResponse(res[0].Found)
		if res[0].Err != nil {
			found := resp.Data
			resp = errorResponse(res[0].Err)
			resp.Data = found
		}
		return resp, true
	case opSignature:
		sig, err := s.signature(ctx, r.Path)
		if err != nil {
			return errorResponse(err), true
		}
		return response{Data: sig}, true
	case opPatchBegin:
		a := r.attrs()
		w := &pendingWrite{segs: make(chan segment), done: make(chan error, 1)}
		s.w = w
		go func() { w.done <- s.patch(ctx, r.Path, r.Off, w, a) }()
		return response{}, false
	}
	return errorResponse(fmt.Errorf("agent protocol: unknown op %d", r.Op)), true
}

// replicatedXattrs is the one xattr namespace the master replicates
// (replicate copies user.* only): security.*, trusted.* and system.*
// belong to each machine.
const replicatedXattrs = "user."

// xattrAllowed refuses to set or remove (what) an extended attribute
// outside user.*: the master never sends one, and a security.capability
// or trusted.* attribute set on a worker would grant privileges there.
func xattrAllowed(what, p, name string) error {
	if strings.HasPrefix(name, replicatedXattrs) {
		return nil
	}
	return fmt.Errorf("%s: the agent refuses to %s the extended attribute %q (only %s* attributes are replicated): %w",
		p, what, name, replicatedXattrs, fs.ErrPermission)
}

// mknodAllowed refuses device nodes: the master never sends one (it
// replicates no FIFO, socket or device node), and a device node in a web
// root would give whoever can open it the device. FIFOs and sockets,
// harmless, are left to replicate.Local.
func mknodAllowed(p string, mode fs.FileMode) error {
	if mode&fs.ModeDevice == 0 && mode&fs.ModeCharDevice == 0 {
		return nil
	}
	kind := "block device"
	if mode&fs.ModeCharDevice != 0 {
		kind = "character device"
	}
	return fmt.Errorf("%s: the agent refuses to create a %s node (device nodes are never replicated): %w",
		p, kind, replicate.ErrUnsupported)
}

// signature returns the marshalled delta.Signature of the regular file p.
// A file that cannot serve as a basis (missing, not regular, or whose
// signature would not fit in a frame) is refused with an error wrapping
// replicate.ErrUnsupported.
func (s *server) signature(ctx context.Context, p string) ([]byte, error) {
	f, err := s.l.OpenRead(ctx, p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, replicate.ErrSymlink) {
			err = fmt.Errorf("%w: no basis: %w", replicate.ErrUnsupported, err)
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	bs := delta.BlockSize(fi.Size())
	if blocks := fi.Size()/int64(bs) + 1; blocks*(4+delta.StrongSize) > int64(maxFrame-4096) {
		return nil, fmt.Errorf("%w: %s: signature too large for one frame", replicate.ErrUnsupported, p)
	}
	sig, err := delta.NewSignature(replicate.ContextReader(ctx, f), bs)
	if err != nil {
		return nil, err
	}
	return sig.MarshalBinary()
}

// patch serves opPatchBegin: the delta stream w's segments carry is
// applied by delta.Patch to the worker's current file p (of basisSize
// bytes, as the master expects) and the patched bytes are written by
// Local.WriteFileAtomic through a pipe, so that a failed patch discards
// the temp file and leaves p unchanged. A mismatch or malformed delta is
// returned wrapping delta.ErrMismatch or delta.ErrCorrupt.
func (s *server) patch(ctx context.Context, p string, basisSize int64, w *pendingWrite, a replicate.Attrs) error {
	basis, err := s.l.OpenRead(ctx, p)
	if err != nil {
		return err
	}
	defer basis.Close()
	fi, err := basis.Stat()
	if err != nil {
		return err
	}
	if fi.Size() != basisSize {
		return fmt.Errorf("%w: %s: basis is %d bytes, the master expected %d", delta.ErrMismatch, p, fi.Size(), basisSize)
	}
	pr, pw := io.Pipe()
	quit := make(chan struct{})
	patched := make(chan struct{})
	go func() {
		defer close(patched)
		perr := delta.Patch(basis, &deltaReader{w: w, quit: quit}, pw)
		pw.CloseWithError(perr) // nil: EOF
	}()
	err = s.l.WriteFileAtomic(ctx, p, pr, a)
	// Unblock a Patch still writing or reading before the basis closes.
	pr.CloseWithError(errors.New("agent: patch target closed"))
	close(quit)
	<-patched
	return err
}

// deltaReader reads the delta stream from the segments of the transfer in
// progress; quit ends it once the write is over.
type deltaReader struct {
	w    *pendingWrite
	quit chan struct{}
	cur  []byte
	err  error // sticky: io.EOF at the end, or the master's abort
}

func (d *deltaReader) Read(b []byte) (int, error) {
	for len(d.cur) == 0 {
		if d.err != nil {
			return 0, d.err
		}
		select {
		case s := <-d.w.segs:
			d.cur, d.err = s.data, s.err
		case <-d.quit:
			d.err = errors.New("agent: patch ended")
		}
	}
	n := copy(b, d.cur)
	d.cur = d.cur[n:]
	return n, nil
}

// finishWrite waits for the WriteFileAtomic in progress.
func (s *server) finishWrite() response {
	w := s.w
	s.w = nil
	return result(w.wait())
}

// frameData is the content of a WriteData frame, decompressed if it is (a
// copy either way: the frame's buffer is reused for the next frame). A
// compressed frame may not decode to more than dataChunk bytes.
func frameData(r request) ([]byte, error) {
	limit := dataChunk
	if r.Mode == 0 {
		limit = len(r.Data) // a whole frame, bounded by its reader
	}
	return decodeData(uint64(r.Mode), r.Data, limit)
}

// decodeData is the content data sent with encoding enc (0 or dataS2),
// which may not be more than limit bytes.
func decodeData(enc uint64, data []byte, limit int) ([]byte, error) {
	switch enc {
	case 0:
		if len(data) > limit {
			return nil, fmt.Errorf("agent protocol: data of %d bytes, at most %d", len(data), limit)
		}
		return bytes.Clone(data), nil
	case dataS2:
		n, err := s2.DecodedLen(data)
		if err != nil || n > limit {
			return nil, fmt.Errorf("agent protocol: bad compressed data frame (%d bytes decoded, at most %d): %v", n, limit, err)
		}
		out, err := s2.Decode(make([]byte, n), data)
		if err != nil {
			return nil, fmt.Errorf("agent protocol: bad compressed data frame: %w", err)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("agent protocol: data frame with unknown encoding %d", enc)
	}
}
