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

// RangeDelta writes to w a delta that rebuilds newVersion from a basis of
// basisSize bytes which equals newVersion everywhere except in ranges and
// at or past keep: those bytes go as LITERAL, all others as COPY of the
// same offset in the basis. It is what a writer that knows which bytes it
// changed sends instead of computing a signature: no round trip, and only
// the changed bytes on the wire.
//
// newVersion is read once, whole, to hash it: the delta ends with the
// SHA-256 of the new version like any other, so Patch still proves the
// result (a basis that is not the expected old version gives ErrMismatch,
// and the caller sends the file whole). The delta uses blocks of one byte,
// so its COPYs address any byte range. ranges must be merged (MergeRanges).
func RangeDelta(basisSize, keep int64, ranges []Range, newVersion io.Reader, w io.Writer) (Stats, error) {
	if basisSize < 0 {
		return Stats{}, errors.New("delta: negative basis size")
	}
	keep = min(max(keep, 0), basisSize)
	dw := &deltaWriter{w: bufio.NewWriterSize(w, 64<<10), runStart: -1}
	hdr := append([]byte(deltaMagic), deltaVersion)
	hdr = binary.AppendUvarint(hdr, 1)
	hdr = binary.AppendUvarint(hdr, uint64(basisSize))
	dw.write(hdr)

	whole := sha256.New()
	buf := make([]byte, MaxLiteral)
	var pos int64 // offset in newVersion of buf[0]
	copyFrom := int64(-1)
	flushCopy := func(to int64) {
		if copyFrom < 0 || to <= copyFrom {
			copyFrom = -1
			return
		}
		b := append(dw.tmp[:0], opCopy)
		b = binary.AppendUvarint(b, uint64(copyFrom))
		b = binary.AppendUvarint(b, uint64(to-copyFrom))
		dw.write(b)
		dw.stats.Copied += to - copyFrom
		dw.stats.Ops++
		copyFrom = -1
	}
	// literal reports whether the byte at off goes as LITERAL, and up to
	// where (exclusive) that answer holds.
	ri := 0
	literal := func(off int64) (bool, int64) {
		if off >= keep {
			return true, 1<<63 - 1
		}
		for ri < len(ranges) && ranges[ri].End() <= off {
			ri++
		}
		if ri < len(ranges) && ranges[ri].Off <= off {
			return true, ranges[ri].End()
		}
		next := keep
		if ri < len(ranges) {
			next = min(next, ranges[ri].Off)
		}
		return false, next
	}
	for {
		n, err := io.ReadFull(newVersion, buf)
		chunk := buf[:n]
		whole.Write(chunk)
		for i := 0; i < len(chunk); {
			off := pos + int64(i)
			lit, until := literal(off)
			j := len(chunk)
			if until-pos < int64(j) {
				j = int(until - pos)
			}
			if lit {
				flushCopy(off)
				dw.literal(chunk[i:j])
			} else if copyFrom < 0 {
				copyFrom = off
			}
			i = j
		}
		pos += int64(n)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return dw.stats, fmt.Errorf("delta: reading new version: %w", err)
		}
	}
	flushCopy(pos)
	trailer := append([]byte{opEnd}, binary.AppendUvarint(nil, uint64(pos))...)
	trailer = whole.Sum(trailer)
	dw.write(trailer)
	if dw.err == nil {
		dw.err = dw.w.Flush()
	}
	return dw.stats, dw.err
}
