package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
)

// recordVersion is the first byte of every encoded Op. Bump it when the
// layout below changes; Decode keeps reading every older version it knows.
const recordVersion = 1

// Record layout, version 1:
//
//	version  byte
//	kind     byte
//	seq      uvarint
//	time     varint (zigzag)
//	present  uvarint: bit i set when field i below is non-zero
//	fields   in bit order, only those present:
//	         integers as (u)varints, strings and bytes as uvarint length + bytes
//
// Ops carry few non-zero fields (a write is File, Path, Offset, Length), so a
// presence mask keeps records at a few dozen bytes. The encoding is canonical:
// a field is present exactly when it is non-zero and varints are minimal, so
// Decode accepts one byte string per Op and Encode(Decode(b)) == b.
const (
	fFile = 1 << iota
	fPath
	fNewPath
	fTarget
	fOffset
	fLength
	fSize
	fMode
	fUID
	fGID
	fRdev
	fAtime
	fMtime
	fMask
	fFlags
	fXattrName
	fXattrValue
	fieldCount = iota
	fAll       = 1<<fieldCount - 1
)

var fieldNames = [fieldCount]string{
	"file", "path", "new_path", "target", "offset", "length", "size", "mode",
	"uid", "gid", "rdev", "atime", "mtime", "mask", "flags", "xattr_name", "xattr_value",
}

// maxHeader bounds the bytes before the presence mask: version, kind and two
// 10-byte varints.
const maxHeader = 2 + 2*binary.MaxVarintLen64

// Encode returns the versioned binary encoding of op. It encodes any Op,
// including ones Decode would reject (an invalid Kind); Append validates.
func Encode(op Op) []byte {
	b := make([]byte, 0, maxHeader+bodySizeHint(op))
	b = appendHeader(b, op.Kind, op.Seq, op.Time)
	return appendBody(b, op)
}

func appendHeader(b []byte, k Kind, seq uint64, t int64) []byte {
	b = append(b, recordVersion, byte(k))
	b = binary.AppendUvarint(b, seq)
	return binary.AppendVarint(b, t)
}

// bodySizeHint is enough for the mask and every numeric field of a typical op
// plus the variable-length ones, so appendBody rarely grows the buffer.
func bodySizeHint(op Op) int {
	return 64 + len(op.Path) + len(op.NewPath) + len(op.Target) + len(op.XattrName) + len(op.XattrValue)
}

// appendBody appends the presence mask and the present fields: everything
// but the header, so Append can encode outside the committer, which then only
// prefixes the seq it assigns.
func appendBody(b []byte, op Op) []byte {
	var m uint64
	set := func(bit uint64, nonzero bool) {
		if nonzero {
			m |= bit
		}
	}
	set(fFile, op.File != 0)
	set(fPath, op.Path != "")
	set(fNewPath, op.NewPath != "")
	set(fTarget, op.Target != "")
	set(fOffset, op.Offset != 0)
	set(fLength, op.Length != 0)
	set(fSize, op.Size != 0)
	set(fMode, op.Mode != 0)
	set(fUID, op.UID != 0)
	set(fGID, op.GID != 0)
	set(fRdev, op.Rdev != 0)
	set(fAtime, op.Atime != 0)
	set(fMtime, op.Mtime != 0)
	set(fMask, op.Mask != 0)
	set(fFlags, op.Flags != 0)
	set(fXattrName, op.XattrName != "")
	set(fXattrValue, len(op.XattrValue) != 0)

	b = binary.AppendUvarint(b, m)
	str := func(bit uint64, s string) {
		if m&bit != 0 {
			b = binary.AppendUvarint(b, uint64(len(s)))
			b = append(b, s...)
		}
	}
	uv := func(bit uint64, v uint64) {
		if m&bit != 0 {
			b = binary.AppendUvarint(b, v)
		}
	}
	sv := func(bit uint64, v int64) {
		if m&bit != 0 {
			b = binary.AppendVarint(b, v)
		}
	}
	uv(fFile, op.File)
	str(fPath, op.Path)
	str(fNewPath, op.NewPath)
	str(fTarget, op.Target)
	sv(fOffset, op.Offset)
	sv(fLength, op.Length)
	sv(fSize, op.Size)
	uv(fMode, uint64(op.Mode))
	uv(fUID, uint64(op.UID))
	uv(fGID, uint64(op.GID))
	uv(fRdev, op.Rdev)
	sv(fAtime, op.Atime)
	sv(fMtime, op.Mtime)
	uv(fMask, uint64(op.Mask))
	uv(fFlags, uint64(op.Flags))
	str(fXattrName, op.XattrName)
	if m&fXattrValue != 0 {
		b = binary.AppendUvarint(b, uint64(len(op.XattrValue)))
		b = append(b, op.XattrValue...)
	}
	return b
}

var errRecord = errors.New("bad journal record")

// Decode parses a record written by Encode. It never panics and never
// allocates more than len(b) bytes for the Op's strings: records come from
// disk, and a corrupt one must surface as an error. Unknown versions and
// kinds, non-canonical encodings and trailing bytes are rejected.
func Decode(b []byte) (Op, error) {
	if len(b) == 0 {
		return Op{}, fmt.Errorf("%w: empty", errRecord)
	}
	if b[0] != recordVersion {
		return Op{}, fmt.Errorf("%w: record format version %d not supported (this build reads %d)",
			errRecord, b[0], recordVersion)
	}
	if len(b) < 2 {
		return Op{}, fmt.Errorf("%w: truncated before kind", errRecord)
	}
	d := decoder{b: b[2:]}
	op := Op{Kind: Kind(b[1])}
	if !op.Kind.Valid() {
		return Op{}, fmt.Errorf("%w: unknown op kind %d", errRecord, b[1])
	}
	op.Seq = d.uvarint("seq")
	op.Time = d.varint("time")
	m := d.uvarint("field mask")
	if d.err == nil && m&^fAll != 0 {
		return Op{}, fmt.Errorf("%w: unknown fields in mask %#x", errRecord, m)
	}
	// Each reader below runs only for fields marked present and rejects a
	// present zero value, which Encode never writes: that keeps the encoding
	// canonical, so a record that decodes re-encodes to the same bytes.
	u64 := func(bit int, p *uint64) {
		if m&(1<<bit) != 0 {
			*p = d.uvarint(fieldNames[bit])
			d.nonzero(bit, *p != 0)
		}
	}
	u32 := func(bit int, p *uint32) {
		if m&(1<<bit) != 0 {
			v := d.uvarint(fieldNames[bit])
			if v > math.MaxUint32 {
				d.fail("%s %d overflows uint32", fieldNames[bit], v)
			}
			*p = uint32(v)
			d.nonzero(bit, v != 0)
		}
	}
	i64 := func(bit int, p *int64) {
		if m&(1<<bit) != 0 {
			*p = d.varint(fieldNames[bit])
			d.nonzero(bit, *p != 0)
		}
	}
	str := func(bit int, p *string) {
		if m&(1<<bit) != 0 {
			s := d.bytes(fieldNames[bit])
			*p = string(s)
			d.nonzero(bit, len(s) != 0)
		}
	}
	u64(bits.TrailingZeros(fFile), &op.File)
	str(bits.TrailingZeros(fPath), &op.Path)
	str(bits.TrailingZeros(fNewPath), &op.NewPath)
	str(bits.TrailingZeros(fTarget), &op.Target)
	i64(bits.TrailingZeros(fOffset), &op.Offset)
	i64(bits.TrailingZeros(fLength), &op.Length)
	i64(bits.TrailingZeros(fSize), &op.Size)
	u32(bits.TrailingZeros(fMode), &op.Mode)
	u32(bits.TrailingZeros(fUID), &op.UID)
	u32(bits.TrailingZeros(fGID), &op.GID)
	u64(bits.TrailingZeros(fRdev), &op.Rdev)
	i64(bits.TrailingZeros(fAtime), &op.Atime)
	i64(bits.TrailingZeros(fMtime), &op.Mtime)
	u32(bits.TrailingZeros(fMask), &op.Mask)
	u32(bits.TrailingZeros(fFlags), &op.Flags)
	str(bits.TrailingZeros(fXattrName), &op.XattrName)
	if bit := bits.TrailingZeros(fXattrValue); m&(1<<bit) != 0 {
		v := d.bytes(fieldNames[bit])
		d.nonzero(bit, len(v) != 0)
		op.XattrValue = append([]byte(nil), v...) // b may be a reused buffer
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return Op{}, d.err
	}
	return op, nil
}

// decoder reads varints and length-prefixed byte strings, remembering the
// first error so that Decode reads as a straight list of fields.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", errRecord, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) nonzero(bit int, ok bool) {
	if !ok {
		d.fail("field %s present but zero", fieldNames[bit])
	}
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint for %s", what)
		return 0
	}
	if n != uvarintLen(v) {
		d.fail("non-minimal varint for %s", what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint(what string) int64 {
	u := d.uvarint(what)
	// Undo the zigzag mapping binary.AppendVarint applies.
	return int64(u>>1) ^ -int64(u&1)
}

func (d *decoder) bytes(what string) []byte {
	n := d.uvarint(what + " length")
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("%s length %d exceeds the %d bytes left", what, n, len(d.b))
		return nil
	}
	s := d.b[:n]
	d.b = d.b[n:]
	return s
}

func uvarintLen(v uint64) int { return (bits.Len64(v|1) + 6) / 7 }

// Cursor values: version byte, flags byte, uvarint Applied.
const (
	cursorVersion  = 1
	cursorFullSync = 1 << 0
)

func encodeCursor(c Cursor) []byte {
	b := []byte{cursorVersion, 0}
	if c.FullSync {
		b[1] |= cursorFullSync
	}
	return binary.AppendUvarint(b, c.Applied)
}

func decodeCursor(b []byte) (Cursor, error) {
	if len(b) < 3 || b[0] != cursorVersion || b[1]&^cursorFullSync != 0 {
		return Cursor{}, fmt.Errorf("%w: bad cursor value %x", errRecord, b)
	}
	v, n := binary.Uvarint(b[2:])
	if n <= 0 || 2+n != len(b) {
		return Cursor{}, fmt.Errorf("%w: bad cursor value %x", errRecord, b)
	}
	return Cursor{Applied: v, FullSync: b[1]&cursorFullSync != 0}, nil
}
