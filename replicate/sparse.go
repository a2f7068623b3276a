package replicate

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// SparseReader is an optional capability of the reader WriteFileAtomic
// gets: content of Size bytes of which only the data segments NextData
// returns hold bytes; the rest reads as zeros (holes). A transport that
// knows it writes each segment at its offset into the temp file, then sets
// the file's size to Size (trailing holes), so that holes neither cross the
// wire nor get allocated on the worker. Read still returns the whole
// content, zeros included, for transports (or wrappers) that do not know
// the capability; a caller uses one way or the other, not both.
type SparseReader interface {
	io.Reader
	// Size is the length of the content, holes included.
	Size() int64
	// NextData returns the offset of the next data segment and a reader
	// of its bytes, to be read to its end before NextData is called
	// again. After the last segment it returns io.EOF, or the error that
	// makes the content unusable (such as a source that changed while it
	// was read): the transport then fails and discards its temp file.
	NextData() (off int64, data io.Reader, err error)
}

// sparseFile is what writeSparse writes to: *os.File and *sftp.File.
type sparseFile interface {
	io.WriterAt
	Truncate(size int64) error
}

// writeSparse writes the data segments of r to the empty file f at their
// offsets, then extends f to r's size.
func writeSparse(ctx context.Context, f sparseFile, r SparseReader) error {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		off, data, err := r.NextData()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if _, err := io.CopyBuffer(io.NewOffsetWriter(f, off), ctxReader{ctx, data}, buf); err != nil {
			return err
		}
	}
	return f.Truncate(r.Size())
}

// storeReader reads a store file for WriteFileAtomic, as a plain reader
// or as a SparseReader (whose segments it finds with lseek SEEK_DATA and
// SEEK_HOLE, or the whole file where the file system cannot tell). At the
// end of either it fails with errSourceChanged if the file changed since
// before was taken, so that the worker never gets a mix of two versions
// (WriteFileAtomic then discards its temp file). n counts the bytes read:
// data only when read by segments.
type storeReader struct {
	f      *os.File
	before fs.FileInfo
	n      int64

	pos   int64 // NextData: where to look for the next segment
	want  int64 // NextData: total length of the segments returned
	dense bool  // NextData: SEEK_DATA unsupported, the rest is data
}

var _ SparseReader = (*storeReader)(nil)

func (v *storeReader) Read(b []byte) (int, error) {
	n, err := v.f.Read(b)
	v.n += int64(n)
	if err == io.EOF {
		if v.n != v.before.Size() {
			return n, errSourceChanged
		}
		if cerr := v.check(); cerr != nil {
			return n, cerr
		}
	}
	return n, err
}

// ReadAt reads the store file where it is (RangeSource); Read's check at
// the end covers these reads too.
func (v *storeReader) ReadAt(b []byte, off int64) (int, error) { return v.f.ReadAt(b, off) }

// check fails with errSourceChanged if the file is not the version before.
func (v *storeReader) check() error {
	after, err := v.f.Stat()
	if err != nil {
		return err
	}
	if !sameVersion(v.before, after) {
		return errSourceChanged
	}
	return nil
}

// Size implements SparseReader.
func (v *storeReader) Size() int64 { return v.before.Size() }

// NextData implements SparseReader.
func (v *storeReader) NextData() (int64, io.Reader, error) {
	size := v.before.Size()
	start, end := v.pos, size
	if start < size && !v.dense {
		s, e, err := v.seekData(start)
		switch {
		case errors.Is(err, unix.ENXIO): // only a hole after pos
			start = size
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS):
			v.dense = true
		case err != nil:
			return 0, nil, err
		default:
			start, end = s, min(e, size)
		}
	}
	if start >= size {
		v.pos = size
		if v.n != v.want {
			return 0, nil, errSourceChanged // a segment was shorter
		}
		if err := v.check(); err != nil {
			return 0, nil, err
		}
		return 0, nil, io.EOF
	}
	v.pos = end
	v.want += end - start
	return start, &countReader{r: io.NewSectionReader(v.f, start, end-start), n: &v.n}, nil
}

// seekData returns the data segment [start, end) at or after off.
func (v *storeReader) seekData(off int64) (start, end int64, err error) {
	rc, err := v.f.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	cerr := rc.Control(func(fd uintptr) {
		start, err = unix.Seek(int(fd), off, unix.SEEK_DATA)
		if err != nil {
			return
		}
		end, err = unix.Seek(int(fd), start, unix.SEEK_HOLE)
	})
	if cerr != nil {
		return 0, 0, cerr
	}
	return start, end, err
}

// countReader adds the bytes it reads to *n.
type countReader struct {
	r io.Reader
	n *int64
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	*c.n += int64(n)
	return n, err
}
