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

	// StrongSize is the length of the strong hash kept per block: XXH3's
	// 128-bit hash (github.com/zeebo/xxh3), as rsync 3.2 uses XXH128 for its
	// block checksums. It runs at memory speed where SHA-256 ran at 1.4 GB/s,
	// which made signature and delta slower than rsync's own.
	//
	// A false match needs a weak-checksum collision followed by a collision of
	// the strong hash. Even counting every (position, block) pair as a
	// comparison — 2^40 positions × 2^30 blocks = 2^70 — the chance that one
	// of them collides on 128 well-mixed bits is ≤ 2^70/2^128 = 2^-58. XXH3
	// is not built to resist a crafted collision, and need not be: the
	// whole-file SHA-256 at the end of every delta rejects any result that
	// is not the new version, which is then sent whole.
	StrongSize = 16

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
	strong    [][StrongSize]byte
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
//	"MFSG" | version (1 byte) | strong size (1 byte) |
//	uvarint block size | uvarint file size |
//	per block: weak (4 bytes little-endian) | strong (StrongSize bytes)
//
// The number of blocks is implied by the sizes, so the record area must
// have exactly that length.
const (
	sigMagic   = "MFSG"
	sigVersion = 2
	sigRecord  = 4 + StrongSize
)

// MarshalBinary encodes the signature.
func (s *Signature) MarshalBinary() ([]byte, error) {
	out := make([]byte, 0, 6+2*binary.MaxVarintLen64+len(s.weak)*sigRecord)
	out = append(out, sigMagic...)
	out = append(out, sigVersion, StrongSize)
	out = binary.AppendUvarint(out, uint64(s.blockSize))
	out = binary.AppendUvarint(out, uint64(s.fileSize))
	for i, w := range s.weak {
		out = binary.LittleEndian.AppendUint32(out, w)
		out = append(out, s.strong[i][:]...)
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
	if data[5] != StrongSize {
		return bad("strong hash size %d, want %d", data[5], StrongSize)
	}
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
		copy(strong[i][:], p[4:sigRecord])
		p = p[sigRecord:]
	}
	*s = Signature{blockSize: int(bs), fileSize: int64(size), weak: weak, strong: strong}
	return nil
}
