package delta

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// Range is a byte range [Off, Off+Len) of a file.
type Range struct {
	Off, Len int64
}

// End is the offset just past r.
func (r Range) End() int64 { return r.Off + r.Len }

// MergeRanges sorts ranges and merges the overlapping and adjacent ones,
// dropping empty ones. It reuses the slice.
func MergeRanges(rs []Range) []Range {
	rs = slices.DeleteFunc(rs, func(r Range) bool { return r.Len <= 0 || r.Off < 0 })
	slices.SortFunc(rs, func(a, b Range) int {
		switch {
		case a.Off < b.Off:
			return -1
		case a.Off > b.Off:
			return 1
		}
		return 0
	})
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 && r.Off <= out[n-1].End() {
			out[n-1].Len = max(out[n-1].End(), r.End()) - out[n-1].Off
			continue
		}
		out = append(out, r)
	}
	return out
}

// RangeDelta writes to w a delta that rebuilds the new version from a basis
// of basisSize bytes which equals it everywhere except in ranges and at or
// past keep: those bytes go as LITERAL, read from at, all others as COPY of
// the same offset in the basis. It is what a writer that knows which bytes
// it changed sends instead of computing a signature: no round trip, and
// only the changed bytes on the wire.
//
// The instructions go first, and w is flushed (if it has a Flush method) so
// that the receiver copies while the sender reads whole, the new version
// again, for its SHA-256: the delta ends with it like any other, so Patch
// still proves the result (a basis that is not the expected old version,
// or literals read before a change the hash saw, give ErrMismatch, and the
// caller sends the file whole). The delta uses blocks of one byte, so its
// COPYs address any byte range. ranges must be merged (MergeRanges).
func RangeDelta(basisSize, keep int64, ranges []Range, at io.ReaderAt, whole io.Reader, w io.Writer) (Stats, error) {
	if basisSize < 0 {
		return Stats{}, errors.New("delta: negative basis size")
	}
	// The new version's size, as far as the instructions go: its last
	// written byte, or the basis bytes kept. A file that is longer gets
	// the rest as LITERAL; the hash pass finds its real size.
	keep = min(max(keep, 0), basisSize)
	dw := &deltaWriter{w: bufio.NewWriterSize(w, 64<<10), runStart: -1}
	hdr := append([]byte(deltaMagic), deltaVersion)
	hdr = binary.AppendUvarint(hdr, 1)
	hdr = binary.AppendUvarint(hdr, uint64(basisSize))
	dw.write(hdr)
	copyRun := func(off, n int64) {
		if n <= 0 {
			return
		}
		b := append(dw.tmp[:0], opCopy)
		b = binary.AppendUvarint(b, uint64(off))
		b = binary.AppendUvarint(b, uint64(n))
		dw.write(b)
		dw.stats.Copied += n
		dw.stats.Ops++
	}
	buf := make([]byte, MaxLiteral)
	// literalRun sends [off, end) of the new version, or up to its end
	// when end < 0; it returns where the new version ended, if it did.
	literalRun := func(off, end int64) (eof bool, err error) {
		for end < 0 || off < end {
			n := int64(len(buf))
			if end >= 0 {
				n = min(n, end-off)
			}
			got, err := at.ReadAt(buf[:n], off)
			dw.literal(buf[:got])
			off += int64(got)
			if err == io.EOF {
				return true, nil
			}
			if err != nil {
				return false, fmt.Errorf("delta: reading new version: %w", err)
			}
		}
		return false, nil
	}
	var pos int64
	ended := false
	for _, r := range ranges {
		if ended || r.Off >= keep {
			break
		}
		copyRun(pos, r.Off-pos)
		eof, err := literalRun(r.Off, min(r.End(), keep))
		if err != nil {
			return dw.stats, err
		}
		pos, ended = min(r.End(), keep), eof
	}
	if !ended {
		copyRun(pos, keep-pos)
		if _, err := literalRun(keep, -1); err != nil {
			return dw.stats, err
		}
	}
	if dw.err == nil {
		dw.err = dw.w.Flush()
	}
	if f, ok := w.(interface{ Flush() error }); ok && dw.err == nil {
		dw.err = f.Flush()
	}
	if dw.err != nil {
		return dw.stats, dw.err
	}

	h := sha256.New()
	size, err := io.CopyBuffer(h, whole, buf)
	if err != nil {
		return dw.stats, fmt.Errorf("delta: reading new version: %w", err)
	}
	trailer := append([]byte{opEnd}, binary.AppendUvarint(nil, uint64(size))...)
	trailer = h.Sum(trailer)
	dw.write(trailer)
	if dw.err == nil {
		dw.err = dw.w.Flush()
	}
	return dw.stats, dw.err
}
