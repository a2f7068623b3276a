package journal

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
)

// sampleOps returns, for every kind, an op filled the way the FUSE layer
// fills it and one with every field set to an extreme value.
func sampleOps() []Op {
	var ops []Op
	for k := KindInvalid + 1; k < kindEnd; k++ {
		ops = append(ops,
			Op{Seq: uint64(k), Time: 1_700_000_000_123_456_789, Kind: k, File: 4242, Path: "htdocs/index.html"},
			Op{
				Seq: math.MaxUint64, Time: math.MinInt64, Kind: k,
				File: math.MaxUint64, Path: "a/b/ünïcødé/\x00\xff", NewPath: "c/d", Target: "../../etc/passwd",
				Offset: math.MaxInt64, Length: -1, Size: math.MinInt64,
				Mode: math.MaxUint32, UID: 1, GID: math.MaxUint32, Rdev: 1 << 40,
				Atime: -5, Mtime: 5, Mask: AttrMode | AttrMtime, Flags: 1,
				XattrName: "user.mirrorfs", XattrValue: []byte{0, 1, 2},
			})
	}
	return append(ops,
		Op{Kind: KindWrite, File: 7, Path: "wp-content/uploads/2024/01/photo.jpg", Offset: 1 << 20, Length: 65536},
		Op{Kind: KindRename, File: 9, Path: "site/.index.html.swp", NewPath: "site/index.html", Flags: 1},
		Op{Kind: KindSetattr, File: 3, Path: "a", Mask: AttrSize, Size: 0}, // size 0 with AttrSize: truncate to empty
		Op{Kind: KindMkdir, Path: ""}, // the root itself
		Op{Kind: KindSetxattr, Path: "x", XattrName: "user.big", XattrValue: bytes.Repeat([]byte("v"), 65536)},
	)
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, op := range sampleOps() {
		b := Encode(op)
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(Encode(%v)): %v", op, err)
		}
		if !reflect.DeepEqual(got, op) {
			t.Fatalf("round trip changed the op:\n got %#v\nwant %#v", got, op)
		}
		if b[0] != recordVersion {
			t.Fatalf("first byte %d, want record version %d", b[0], recordVersion)
		}
	}
}

func TestEncodeIsCompact(t *testing.T) {
	op := Op{Seq: 123456, Time: 1_700_000_000_123_456_789, Kind: KindWrite, File: 1234567,
		Path: "wp-content/uploads/2024/01/photo.jpg", Offset: 1 << 20, Length: 65536}
	// 36 bytes of path + header (2 + 3 + 9) + mask (3) + file (3) + offset (3) + length (3).
	if n := len(Encode(op)); n > 64 {
		t.Fatalf("write op encodes to %d bytes, want at most 64", n)
	}
}

// TestDecodeCopies makes sure a decoded op does not alias the record:
// Badger reuses value buffers once the read transaction ends.
func TestDecodeCopies(t *testing.T) {
	b := Encode(Op{Kind: KindSetxattr, Path: "p", XattrName: "user.x", XattrValue: []byte("value")})
	op, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	clear(b)
	if op.Path != "p" || op.XattrName != "user.x" || string(op.XattrValue) != "value" {
		t.Fatalf("decoded op changed with its buffer: %#v", op)
	}
}

func TestDecodeRejects(t *testing.T) {
	valid := Encode(Op{Seq: 1, Time: 2, Kind: KindWrite, File: 3, Path: "p", Length: 4})
	cases := map[string][]byte{
		"empty":             {},
		"version 0":         {0, byte(KindWrite), 1, 0, 0},
		"version 2":         {2, byte(KindWrite), 1, 0, 0},
		"version only":      {recordVersion},
		"kind invalid":      {recordVersion, byte(KindInvalid), 1, 0, 0},
		"kind unknown":      {recordVersion, byte(kindEnd), 1, 0, 0},
		"kind 255":          {recordVersion, 255, 1, 0, 0},
		"trailing byte":     append(append([]byte{}, valid...), 0),
		"non-minimal seq":   {recordVersion, byte(KindClose), 0x81, 0x00, 0, 0},
		"seq overflow":      append([]byte{recordVersion, byte(KindClose)}, bytes.Repeat([]byte{0xff}, 11)...),
		"unknown field":     {recordVersion, byte(KindClose), 1, 0, 0x80, 0x80, 0x10},
		"present zero file": {recordVersion, byte(KindClose), 1, 0, fFile, 0},
		"present empty str": {recordVersion, byte(KindClose), 1, 0, fPath, 0},
		"string too long":   {recordVersion, byte(KindClose), 1, 0, fPath, 5, 'a'},
		"huge string len":   append([]byte{recordVersion, byte(KindClose), 1, 0, fPath}, binary.AppendUvarint(nil, math.MaxUint64)...),
		"mode over uint32":  append([]byte{recordVersion, byte(KindClose), 1, 0, fMode}, binary.AppendUvarint(nil, math.MaxUint32+1)...),
	}
	for i := range len(valid) { // every truncation of a valid record
		cases[fmt.Sprintf("truncated at %d", i)] = valid[:i]
	}
	for name, b := range cases {
		if op, err := Decode(b); err == nil {
			t.Errorf("%s: Decode(%x) = %v, want an error", name, b, op)
		}
	}
}

func TestDecodeErrorNamesVersionAndKind(t *testing.T) {
	_, err := Decode([]byte{9, byte(KindWrite)})
	if err == nil || !strings.Contains(err.Error(), "version 9") {
		t.Fatalf("unknown version: err = %v, want it to name version 9", err)
	}
	_, err = Decode([]byte{recordVersion, 200, 0, 0, 0})
	if err == nil || !strings.Contains(err.Error(), "kind 200") {
		t.Fatalf("unknown kind: err = %v, want it to name kind 200", err)
	}
}

func TestCursorCodec(t *testing.T) {
	for _, c := range []Cursor{{}, {Applied: 1}, {Applied: math.MaxUint64, FullSync: true}, {FullSync: true}} {
		got, err := decodeCursor(encodeCursor(c))
		if err != nil || got != c {
			t.Fatalf("cursor round trip: %v, %v; want %v", got, err, c)
		}
	}
	for _, b := range [][]byte{nil, {1}, {1, 0}, {2, 0, 0}, {1, 2, 0}, {1, 0, 0, 0}, {1, 0, 0x80}} {
		if c, err := decodeCursor(b); err == nil {
			t.Errorf("decodeCursor(%x) = %v, want an error", b, c)
		}
	}
}

// FuzzDecode: Decode never panics, and whatever it accepts is canonical:
// it re-encodes to the same bytes, which decode to the same op.
func FuzzDecode(f *testing.F) {
	for _, op := range sampleOps() {
		f.Add(Encode(op))
	}
	f.Add([]byte{})
	f.Add([]byte{recordVersion})
	f.Add([]byte{recordVersion, byte(KindWrite), 0x81, 0x00, 0, 0})
	f.Add([]byte{recordVersion, byte(KindClose), 1, 0, 0xff, 0xff, 0x07})
	f.Add([]byte("garbage that is not a record"))
	f.Fuzz(func(t *testing.T, b []byte) {
		op, err := Decode(b)
		if err != nil {
			return
		}
		b2 := Encode(op)
		if !bytes.Equal(b2, b) {
			t.Fatalf("accepted a non-canonical record:\n  in %x\n out %x", b, b2)
		}
		op2, err := Decode(b2)
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if !reflect.DeepEqual(op, op2) {
			t.Fatalf("re-decoded op differs:\n%#v\n%#v", op, op2)
		}
	})
}
