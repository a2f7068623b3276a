package delta

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// ErrMismatch reports that a patched result does not match the whole-file
// hash (or size) recorded in the delta, or that the basis does not fit the
// signature the delta was made against. Callers should resend the file whole.
var ErrMismatch = errors.New("delta: patched result does not match")

// MaxLiteral is the largest LITERAL chunk a delta carries (and Patch accepts).
const MaxLiteral = 64 << 10

const (
	deltaMagic   = "MFDL"
	deltaVersion = 1

	opEnd     = 0x00
	opLiteral = 0x01
	opCopy    = 0x02

	// maxCandidates bounds how many blocks sharing one hash bucket are
	// examined per position, so adversarial bases cannot make delta
	// generation quadratic.
	maxCandidates = 64
)

// Stats describes what a delta carries.
type Stats struct {
	Literal int64 // bytes sent as LITERAL
	Copied  int64 // bytes referenced by COPY
	Ops     int   // LITERAL + COPY instructions
}

// index is a chained hash table over the signature's weak checksums.
type index struct {
	sig   *Signature
	shift uint
	head  []int32 // bucket -> block+1 (0: empty)
	next  []int32 // block -> next block+1 in the same bucket
}

func newIndex(sig *Signature) *index {
	n := len(sig.weak)
	bits := uint(4)
	for (1<<bits) < 4*n && bits < 31 {
		bits++
	}
	ix := &index{sig: sig, shift: 32 - bits, head: make([]int32, 1<<bits), next: make([]int32, n)}
	// Skip exact duplicates (same sums and length) of earlier blocks so
	// they don't crowd chains; the first occurrence stays.
	for i := range n {
		b := ix.bucket(sig.weak[i])
		dup := false
		for j, k := ix.head[b], 0; j != 0 && k < maxCandidates; j, k = ix.next[j-1], k+1 {
			c := int(j - 1)
			if sig.weak[c] == sig.weak[i] && sig.strong[c] == sig.strong[i] && sig.blockLen(c) == sig.blockLen(i) {
				dup = true
				break
			}
		}
		if dup {
			continue
		}
		ix.next[i] = ix.head[b]
		ix.head[b] = int32(i + 1)
	}
	return ix
}

func (ix *index) bucket(weak uint32) uint32 { return (weak * 0x9E3779B1) >> ix.shift }

// deltaWriter emits instructions and merges consecutive COPYs.
type deltaWriter struct {
	w        *bufio.Writer
	sig      *Signature
	stats    Stats
	runStart int // first block of the pending COPY run, -1 if none
	runLen   int
	tmp      [1 + 2*binary.MaxVarintLen64]byte
	err      error // first write error
}

func (d *deltaWriter) write(b []byte) {
	if d.err == nil {
		_, d.err = d.w.Write(b)
	}
}

func (d *deltaWriter) literal(b []byte) {
	if len(b) == 0 {
		return
	}
	d.flushCopy()
	hdr := append(d.tmp[:0], opLiteral)
	hdr = binary.AppendUvarint(hdr, uint64(len(b)))
	d.write(hdr)
	d.write(b)
	d.stats.Literal += int64(len(b))
	d.stats.Ops++
}

func (d *deltaWriter) copyBlock(blk int) {
	if d.runStart >= 0 && d.runStart+d.runLen == blk {
		d.runLen++
	} else {
		d.flushCopy()
		d.runStart, d.runLen = blk, 1
	}
	d.stats.Copied += int64(d.sig.blockLen(blk))
}

func (d *deltaWriter) flushCopy() {
	if d.runStart < 0 {
		return
	}
	b := append(d.tmp[:0], opCopy)
	b = binary.AppendUvarint(b, uint64(d.runStart))
	b = binary.AppendUvarint(b, uint64(d.runLen))
	d.write(b)
	d.stats.Ops++
	d.runStart, d.runLen = -1, 0
}

// NewDelta reads newVersion once and writes to w the instructions that
// rebuild it from the basis sig describes. Memory use apart from a hash
// table over sig is O(block size + MaxLiteral).
func NewDelta(sig *Signature, newVersion io.Reader, w io.Writer) (Stats, error) {
	if sig == nil || sig.blockSize < 1 || sig.blockSize > maxSigBlockSize {
		return Stats{}, errors.New("delta: invalid signature")
	}
	bs := sig.blockSize
	ix := newIndex(sig)
	dw := &deltaWriter{w: bufio.NewWriterSize(w, 64<<10), sig: sig, runStart: -1}

	hdr := append([]byte(deltaMagic), deltaVersion)
	hdr = binary.AppendUvarint(hdr, uint64(bs))
	hdr = binary.AppendUvarint(hdr, uint64(sig.fileSize))
	dw.write(hdr)

	whole := newAsyncHash()
	defer whole.Close()
	var total int64
	readChunk := max(bs, 64<<10)
	buf := make([]byte, MaxLiteral+bs+readChunk)
	// buf[start:pos] is the pending literal, buf[pos:pos+wl] the window the
	// rolling sums s1, s2 cover, buf[:end] the data read so far.
	start, pos, end, wl := 0, 0, 0, 0
	var s1, s2 uint32
	eof := false
	lastBlk := -1 // block matched last, to prefer its successor
	ubs := uint32(bs)

	for {
		if !eof && end-pos < bs {
			if len(buf)-end < bs {
				// Compact: pos-start < MaxLiteral, so at least readChunk frees up.
				copy(buf, buf[start:end])
				pos -= start
				end -= start
				start = 0
			}
			n, err := io.ReadAtLeast(newVersion, buf[end:], min(bs-(end-pos), len(buf)-end))
			whole.Write(buf[end : end+n])
			end += n
			total += int64(n)
			switch err {
			case nil:
			case io.EOF, io.ErrUnexpectedEOF:
				eof = true
			default:
				return dw.stats, fmt.Errorf("delta: reading new version: %w", err)
			}
		}
		target := min(bs, end-pos)
		if target == 0 {
			break
		}
		for wl < target {
			s1 += uint32(buf[pos+wl])
			s2 += s1
			wl++
		}

		// Fast path: roll over full windows whose bucket is empty.
		if wl == bs {
			head, shift := ix.head, ix.shift
			limit := min(end-bs, start+MaxLiteral)
			for pos < limit && head[(packWeak(s1, s2)*0x9E3779B1)>>shift] == 0 {
				out, in := uint32(buf[pos]), uint32(buf[pos+bs])
				s1 += in - out
				s2 += s1 - ubs*out
				pos++
			}
			if pos-start >= MaxLiteral {
				dw.literal(buf[start:pos])
				start = pos
			}
			if pos+bs < end && head[(packWeak(s1, s2)*0x9E3779B1)>>shift] == 0 {
				continue
			}
		}

		if blk := findMatch(ix, packWeak(s1, s2), buf[pos:pos+wl], lastBlk); blk >= 0 {
			dw.literal(buf[start:pos])
			dw.copyBlock(blk)
			lastBlk = blk
			pos += wl
			start = pos
			wl, s1, s2 = 0, 0, 0
			continue
		}

		// No match: slide by one byte (the incoming byte is added above).
		out := uint32(buf[pos])
		s1 -= out
		s2 -= uint32(wl) * out
		wl--
		pos++
		if pos-start >= MaxLiteral {
			dw.literal(buf[start:pos])
			start = pos
		}
		if dw.err != nil {
			return dw.stats, fmt.Errorf("delta: writing delta: %w", dw.err)
		}
	}
	dw.literal(buf[start:pos])
	dw.flushCopy()

	trailer := append([]byte{opEnd}, binary.AppendUvarint(nil, uint64(total))...)
	trailer = whole.Sum(trailer)
	dw.write(trailer)
	if dw.err == nil {
		dw.err = dw.w.Flush()
	}
	if dw.err != nil {
		return dw.stats, fmt.Errorf("delta: writing delta: %w", dw.err)
	}
	return dw.stats, nil
}

// findMatch returns the block whose weak and strong sums match window, or
// -1. The successor of the previous match is tried first so runs merge.
func findMatch(ix *index, weak uint32, window []byte, lastBlk int) int {
	sig := ix.sig
	var strong [StrongSize]byte
	have := false
	check := func(c int) bool {
		if sig.weak[c] != weak || sig.blockLen(c) != len(window) {
			return false
		}
		if !have {
			strong, have = truncate(strongSum(window), sig.strongLen), true
		}
		return sig.strong[c] == strong
	}
	if n := lastBlk + 1; n > 0 && n < len(sig.weak) && check(n) {
		return n
	}
	for j, k := ix.head[ix.bucket(weak)], 0; j != 0 && k < maxCandidates; j, k = ix.next[j-1], k+1 {
		if check(int(j - 1)) {
			return int(j - 1)
		}
	}
	return -1
}

// Patch rebuilds the new version from basis and delta, writing it to out,
// and verifies its size and SHA-256 against the delta's trailer. On a
// mismatch (including a basis shorter than the delta expects) it returns an
// error wrapping ErrMismatch; a malformed delta yields an error wrapping
// ErrCorrupt (or the reader's error). out may have received data before an
// error is reported, so callers must write to a temporary file.
//
// The delta must be the whole of the reader: trailing bytes are rejected.
// Memory use is bounded (a few 64 KiB buffers) whatever the input.
func Patch(basis io.ReaderAt, delta io.Reader, out io.Writer) error {
	br := bufio.NewReaderSize(delta, 64<<10)
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: delta: %s", ErrCorrupt, fmt.Sprintf(format, args...))
	}
	readErr := func(what string, err error) error {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return bad("truncated %s", what)
		}
		return fmt.Errorf("delta: reading %s: %w", what, err)
	}
	uvarint := func(what string) (uint64, error) {
		var v uint64
		for shift := uint(0); ; shift += 7 {
			c, err := br.ReadByte()
			if err != nil {
				return 0, readErr(what, err)
			}
			if shift == 63 && c > 1 || shift > 63 {
				return 0, bad("%s overflows 64 bits", what)
			}
			v |= uint64(c&0x7f) << shift
			if c < 0x80 {
				return v, nil
			}
		}
	}

	var magic [5]byte
	if _, err := io.ReadFull(br, magic[:]); err != nil {
		return readErr("header", err)
	}
	if string(magic[:4]) != deltaMagic {
		return bad("bad magic")
	}
	if magic[4] != deltaVersion {
		return bad("unsupported version %d", magic[4])
	}
	bs, err := uvarint("block size")
	if err != nil {
		return err
	}
	if bs < 1 || bs > maxSigBlockSize {
		return bad("block size %d out of range", bs)
	}
	basisSize, err := uvarint("basis size")
	if err != nil {
		return err
	}
	if basisSize > math.MaxInt64 {
		return bad("basis size %d out of range", basisSize)
	}
	blocks := basisSize / bs
	if basisSize%bs != 0 {
		blocks++
	}

	whole := newAsyncHash()
	defer whole.Close()
	mw := &hashWriter{w: out, h: whole}
	buf := make([]byte, MaxLiteral)
	var total uint64
	for {
		op, err := br.ReadByte()
		if err != nil {
			return readErr("instruction", err)
		}
		switch op {
		case opLiteral:
			n, err := uvarint("literal length")
			if err != nil {
				return err
			}
			if n < 1 || n > MaxLiteral {
				return bad("literal length %d out of range", n)
			}
			if _, err := io.ReadFull(br, buf[:n]); err != nil {
				return readErr("literal", err)
			}
			if err := mw.write(buf[:n]); err != nil {
				return err
			}
			total += n
		case opCopy:
			first, err := uvarint("copy block")
			if err != nil {
				return err
			}
			count, err := uvarint("copy count")
			if err != nil {
				return err
			}
			if count < 1 || first >= blocks || count > blocks-first {
				return bad("copy of blocks [%d, +%d) outside basis of %d blocks", first, count, blocks)
			}
			off := first * bs
			n := min(count*bs, basisSize-off) // no overflow: first+count <= blocks
			if err := copyBasis(basis, int64(off), int64(n), buf, mw); err != nil {
				return err
			}
			total += n
		case opEnd:
			size, err := uvarint("size")
			if err != nil {
				return err
			}
			var want [sha256.Size]byte
			if _, err := io.ReadFull(br, want[:]); err != nil {
				return readErr("trailer", err)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				if err != nil {
					return readErr("end of delta", err)
				}
				return bad("trailing data after end")
			}
			if size != total {
				return fmt.Errorf("%w: rebuilt %d bytes, delta says %d", ErrMismatch, total, size)
			}
			if got := whole.Sum(nil); string(got) != string(want[:]) {
				return fmt.Errorf("%w: SHA-256 %x, delta says %x", ErrMismatch, got, want)
			}
			return nil
		default:
			return bad("unknown instruction 0x%02x", op)
		}
	}
}

type hashWriter struct {
	w io.Writer
	h io.Writer
}

func (hw *hashWriter) write(p []byte) error {
	hw.h.Write(p)
	if _, err := hw.w.Write(p); err != nil {
		return fmt.Errorf("delta: writing output: %w", err)
	}
	return nil
}

func copyBasis(basis io.ReaderAt, off, n int64, buf []byte, hw *hashWriter) error {
	for n > 0 {
		chunk := buf[:min(int64(len(buf)), n)]
		got, err := basis.ReadAt(chunk, off)
		if got > 0 {
			if werr := hw.write(chunk[:got]); werr != nil {
				return werr
			}
		}
		off += int64(got)
		n -= int64(got)
		if got == len(chunk) {
			continue
		}
		if err == io.EOF || (err == nil && got == 0) {
			return fmt.Errorf("%w: basis ends at %d, delta copies %d more bytes", ErrMismatch, off, n)
		}
		if err != nil {
			return fmt.Errorf("delta: reading basis: %w", err)
		}
	}
	return nil
}
