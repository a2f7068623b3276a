package delta

import (
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/zeebo/xxh3"
	"io"
	"math"
)

const (
	// MinBlockSize and MaxBlockSize bound what BlockSize chooses.
	//
	// 700 is rsync's default/minimum block size: below it the fixed per-block
	// cost (20 signature bytes, one table entry, one COPY per run break)
	// grows past ~3% of the data it describes, while the literal bytes a
	// smaller block could save around a change are only a few hundred.
	//
	// 128 KiB is rsync's MAX_BLOCK_SIZE (protocol >= 30). √size reaches it at
	// 16 GiB; larger files simply get more blocks (2^40 bytes -> 2^23 blocks,
	// a 160 MiB signature), which keeps the literal cost of one change and the
	// memory of NewDelta's sliding window small.
	MinBlockSize = 700
	MaxBlockSize = 128 << 10

	// StrongSize is the most a block's strong hash keeps: XXH3's 128-bit
	// hash (github.com/zeebo/xxh3), as rsync 3.2 uses XXH128 for its block
	// checksums. It runs at memory speed where SHA-256 ran at 1.4 GB/s,
	// which made signature and delta slower than rsync's own. A signature
	// keeps only a prefix of it, see strongLen.
	StrongSize = 16
	// minStrongLen is the shortest prefix a signature keeps.
	minStrongLen = 4

	// maxSigBlockSize is the largest block size NewSignature accepts (callers
	// may pick sizes other than BlockSize's, e.g. tiny ones in tests).
	maxSigBlockSize = 1 << 20
)

// ErrCorrupt reports a malformed signature or delta encoding.
var ErrCorrupt = errors.New("delta: malformed input")

// BlockSize returns the block size to use for a basis of fileSize bytes:
// about √fileSize, rounded down to a multiple of 8 and clamped to
// [MinBlockSize, MaxBlockSize].
//
// A multiple of 8 rather than a power of two: powers of two can be off from
// √size by a factor of up to √2 (which doubles either the signature or the
// literal cost of a change), while rounding to 8 stays within 8 bytes of the
// target. This is also what rsync does.
func BlockSize(fileSize int64) int {
	if fileSize <= MinBlockSize*MinBlockSize {
		return MinBlockSize
	}
	b := int64(math.Sqrt(float64(fileSize)))
	if b >= MaxBlockSize {
		return MaxBlockSize
	}
	b &^= 7
	if b < MinBlockSize {
		return MinBlockSize
	}
	return int(b)
}

// Signature describes a basis file: per block of BlockSize bytes (the last
// one may be shorter) a weak rolling checksum and a truncated strong hash.
type Signature struct {
	blockSize int
	fileSize  int64
	weak      []uint32
	strong    [][StrongSize]byte // bytes past strongLen are zero
	strongLen int
}

// strongLen is how many bytes of each block's strong hash a signature of
// size bytes in blocks blocks keeps. A false match needs a weak-checksum
// collision (2^-32) and a collision of the kept prefix (2^-8n) for one of
// about size × blocks (position, block) pairs; n is chosen to keep the
// expected number of false matches in one file under 2^-30, as rsync sizes
// its own block sums from the file's size. A false match costs no
// correctness: the whole-file SHA-256 at the end of every delta rejects
// the result, and the file is sent whole. XXH3 is not built to resist a
// crafted collision and need not be, for the same reason. For 1 MiB this
// keeps 4 bytes a block (8 on the wire with the weak sum, where 20 were
// sent before), for 256 MiB 5.
func strongLen(size int64, blocks int) int {
	if size <= 0 || blocks <= 0 {
		return minStrongLen
	}
	bits := math.Log2(float64(size)) + math.Log2(float64(blocks)) - 32 + 30
	n := int(math.Ceil(bits / 8))
	return min(max(n, minStrongLen), StrongSize)
}

// truncate keeps the first n bytes of a strong hash.
func truncate(h [StrongSize]byte, n int) [StrongSize]byte {
	clear(h[n:])
	return h
}

// BlockSize returns the block size the signature was computed with.
func (s *Signature) BlockSize() int { return s.blockSize }

// FileSize returns the size of the basis the signature describes.
func (s *Signature) FileSize() int64 { return s.fileSize }

// Blocks returns the number of blocks.
func (s *Signature) Blocks() int { return len(s.weak) }

// blockLen returns the length of block i.
func (s *Signature) blockLen(i int) int {
	off := int64(i) * int64(s.blockSize)
	if rem := s.fileSize - off; rem < int64(s.blockSize) {
		return int(rem)
	}
	return s.blockSize
}

// NewSignature reads the basis once from r and computes its signature.
// Apart from the signature itself, memory use is one block.
func NewSignature(r io.Reader, blockSize int) (*Signature, error) {
	if blockSize < 1 || blockSize > maxSigBlockSize {
		return nil, fmt.Errorf("delta: block size %d out of range [1, %d]", blockSize, maxSigBlockSize)
	}
	s := &Signature{blockSize: blockSize}
	buf := make([]byte, blockSize)
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			b := buf[:n]
			s.weak = append(s.weak, weakSum(b))
			s.strong = append(s.strong, strongSum(b))
			s.fileSize += int64(n)
		}
		switch err {
		case nil:
		case io.EOF, io.ErrUnexpectedEOF:
			s.strongLen = strongLen(s.fileSize, len(s.weak))
			for i := range s.strong {
				s.strong[i] = truncate(s.strong[i], s.strongLen)
			}
			return s, nil
		default:
			return nil, fmt.Errorf("delta: reading basis: %w", err)
		}
	}
}

// weakSum computes rsync's rolling checksum of b: s1 = Σ b[i], s2 = Σ of the
// prefix sums, each mod 2^16, packed as s1 | s2<<16.
func weakSum(b []byte) uint32 {
	var s1, s2 uint32
	// Eight bytes a step: s2 gains 8·s1 plus each byte weighted by how
	// many prefix sums it enters (8 for the first … 1 for the last), which
	// breaks the per-byte dependency chain (about twice as fast).
	for len(b) >= 8 {
		b0, b1, b2, b3 := uint32(b[0]), uint32(b[1]), uint32(b[2]), uint32(b[3])
		b4, b5, b6, b7 := uint32(b[4]), uint32(b[5]), uint32(b[6]), uint32(b[7])
		s2 += 8*s1 + 8*b0 + 7*b1 + 6*b2 + 5*b3 + 4*b4 + 3*b5 + 2*b6 + b7
		s1 += b0 + b1 + b2 + b3 + b4 + b5 + b6 + b7
		b = b[8:]
	}
	for _, c := range b {
		s1 += uint32(c)
		s2 += s1
	}
	return packWeak(s1, s2)
}

func packWeak(s1, s2 uint32) uint32 { return s1&0xffff | s2<<16 }

func strongSum(b []byte) [StrongSize]byte {
	return xxh3.Hash128(b).Bytes()
}

// Signature encoding (version 2; version 1 kept truncated SHA-256s):
//
//	"MFSG" | version (1 byte) | strong size n (1 byte, 4..16) |
//	uvarint block size | uvarint file size |
//	per block: weak (4 bytes little-endian) | strong (n bytes)
//
// The number of blocks is implied by the sizes, so the record area must
// have exactly that length.
const (
	sigMagic   = "MFSG"
	sigVersion = 2
)

// MarshalBinary encodes the signature.
func (s *Signature) MarshalBinary() ([]byte, error) {
	n := s.strongLen
	if n < minStrongLen || n > StrongSize {
		n = StrongSize // a Signature not made by NewSignature
	}
	out := make([]byte, 0, 6+2*binary.MaxVarintLen64+len(s.weak)*(4+n))
	out = append(out, sigMagic...)
	out = append(out, sigVersion, byte(n))
	out = binary.AppendUvarint(out, uint64(s.blockSize))
	out = binary.AppendUvarint(out, uint64(s.fileSize))
	for i, w := range s.weak {
		out = binary.LittleEndian.AppendUint32(out, w)
		out = append(out, s.strong[i][:n]...)
	}
	return out, nil
}

// UnmarshalBinary decodes a signature produced by MarshalBinary. It
// rejects malformed input; allocation is bounded by len(data).
func (s *Signature) UnmarshalBinary(data []byte) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: signature: %s", ErrCorrupt, fmt.Sprintf(format, args...))
	}
	if len(data) < 6 || string(data[:4]) != sigMagic {
		return bad("bad magic")
	}
	if data[4] != sigVersion {
		return bad("unsupported version %d", data[4])
	}
	sl := int(data[5])
	if sl < minStrongLen || sl > StrongSize {
		return bad("strong hash size %d out of range [%d, %d]", sl, minStrongLen, StrongSize)
	}
	sigRecord := uint64(4 + sl)
	p := data[6:]
	bs, n := binary.Uvarint(p)
	if n <= 0 {
		return bad("bad block size")
	}
	p = p[n:]
	if bs < 1 || bs > maxSigBlockSize {
		return bad("block size %d out of range", bs)
	}
	size, n := binary.Uvarint(p)
	if n <= 0 {
		return bad("bad file size")
	}
	p = p[n:]
	if size > math.MaxInt64 {
		return bad("file size %d out of range", size)
	}
	blocks := size / bs
	if size%bs != 0 {
		blocks++
	}
	if uint64(len(p))%sigRecord != 0 || uint64(len(p))/sigRecord != blocks {
		return bad("%d record bytes for %d blocks", len(p), blocks)
	}
	weak := make([]uint32, blocks)
	strong := make([][StrongSize]byte, blocks)
	for i := range weak {
		weak[i] = binary.LittleEndian.Uint32(p)
		copy(strong[i][:sl], p[4:sigRecord])
		p = p[sigRecord:]
	}
	*s = Signature{blockSize: int(bs), fileSize: int64(size), weak: weak, strong: strong, strongLen: sl}
	return nil
}
