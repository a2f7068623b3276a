package delta

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
)

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// roundTrip runs signature -> delta -> patch and checks the result.
func roundTrip(t testing.TB, old, new []byte, bs int) Stats {
	t.Helper()
	sig, err := NewSignature(bytes.NewReader(old), bs)
	if err != nil {
		t.Fatalf("NewSignature: %v", err)
	}
	// The signature survives its encoding.
	enc, err := sig.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var sig2 Signature
	if err := sig2.UnmarshalBinary(enc); err != nil {
		t.Fatalf("UnmarshalBinary: %v", err)
	}
	var d bytes.Buffer
	st, err := NewDelta(&sig2, bytes.NewReader(new), &d)
	if err != nil {
		t.Fatalf("NewDelta: %v", err)
	}
	if st.Literal+st.Copied != int64(len(new)) {
		t.Fatalf("stats %+v do not add up to %d", st, len(new))
	}
	var out bytes.Buffer
	if err := Patch(bytes.NewReader(old), bytes.NewReader(d.Bytes()), &out); err != nil {
		t.Fatalf("Patch (old %d, new %d, bs %d): %v", len(old), len(new), bs, err)
	}
	if !bytes.Equal(out.Bytes(), new) {
		t.Fatalf("round trip differs (old %d, new %d, bs %d)", len(old), len(new), bs)
	}
	return st
}

// mutate returns a variant of old with random inserts, deletes and edits.
func mutate(r *rand.Rand, old []byte) []byte {
	out := append([]byte(nil), old...)
	for range r.IntN(6) {
		p := 0
		if len(out) > 0 {
			p = r.IntN(len(out) + 1)
		}
		n := r.IntN(200) + 1
		switch r.IntN(4) {
		case 0: // insert
			out = append(out[:p], append(randBytes(r, n), out[p:]...)...)
		case 1: // delete
			e := min(len(out), p+n)
			out = append(out[:p], out[e:]...)
		case 2: // overwrite
			for i := p; i < min(len(out), p+n); i++ {
				out[i] = byte(r.Uint32())
			}
		case 3: // duplicate a region elsewhere
			if len(out) > 0 {
				s := r.IntN(len(out))
				seg := append([]byte(nil), out[s:min(len(out), s+n)]...)
				out = append(out[:p], append(seg, out[p:]...)...)
			}
		}
	}
	return out
}

func TestRoundTripProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	blockSizes := []int{1, 2, 3, 7, 16, 64, 700, 1024, 4096}
	for i := range 600 {
		bs := blockSizes[i%len(blockSizes)]
		var old []byte
		switch r.IntN(5) {
		case 0:
			old = nil
		case 1:
			old = randBytes(r, r.IntN(10))
		case 2: // low-entropy data: many identical blocks
			old = bytes.Repeat([]byte{byte(r.IntN(3))}, r.IntN(20000))
		default:
			old = randBytes(r, r.IntN(50000))
		}
		var new []byte
		switch r.IntN(6) {
		case 0:
			new = nil
		case 1:
			new = append([]byte(nil), old...)
		case 2:
			new = randBytes(r, r.IntN(20000))
		default:
			new = mutate(r, old)
		}
		roundTrip(t, old, new, bs)
	}
}

func TestEdgeCases(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	data := randBytes(r, 10007) // not a multiple of any block size used
	for _, bs := range []int{1, 5, 700, 1000, 10007, 10008, 1 << 20} {
		t.Run(fmt.Sprint(bs), func(t *testing.T) {
			roundTrip(t, nil, nil, bs)
			roundTrip(t, nil, data, bs)
			roundTrip(t, data, nil, bs)
			st := roundTrip(t, data, data, bs)
			if st.Literal != 0 {
				t.Errorf("identical file: %d literal bytes", st.Literal)
			}
			if bs <= len(data) && st.Ops != 1 {
				t.Errorf("identical file: %d ops, want one merged COPY", st.Ops)
			}
			roundTrip(t, data[:len(data)-1], data, bs)
			roundTrip(t, data, data[1:], bs)
		})
	}
	if _, err := NewSignature(bytes.NewReader(nil), 0); err == nil {
		t.Error("block size 0 accepted")
	}
}

func TestBlockSize(t *testing.T) {
	for _, c := range []struct {
		size int64
		want int
	}{
		{0, 700}, {1, 700}, {490000, 700}, {1 << 20, 1024}, {64 << 20, 8192},
		{1000000, 1000}, {10 << 30, 103616}, {1 << 40, MaxBlockSize}, {1 << 62, MaxBlockSize},
	} {
		if got := BlockSize(c.size); got != c.want {
			t.Errorf("BlockSize(%d) = %d, want %d", c.size, got, c.want)
		}
	}
	for s := int64(0); s < 1<<36; s = s*3 + 1 {
		b := BlockSize(s)
		if b < MinBlockSize || b > MaxBlockSize || (b != MinBlockSize && b%8 != 0) {
			t.Errorf("BlockSize(%d) = %d", s, b)
		}
	}
}

func TestFindsChanges(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	old := randBytes(r, 1<<20)
	bs := BlockSize(int64(len(old)))
	mid := len(old) / 2
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, c := range []struct {
		name       string
		new        []byte
		maxLiteral int64
		minLiteral int64
	}{
		{"insert100", cat(old[:mid], randBytes(r, 100), old[mid:]), int64(2*bs + 100), 100},
		{"delete100", cat(old[:mid], old[mid+100:]), int64(2 * bs), 0},
		{"shift1", cat([]byte{42}, old), int64(bs + 1), 1},
		{"drop1", old[1:], int64(bs), 0},
		{"append", cat(old, randBytes(r, 5000)), int64(bs + 5000), 5000},
		{"prepend", cat(randBytes(r, 5000), old), int64(bs + 5000), 5000},
		{"overwrite1K", cat(old[:mid], randBytes(r, 1024), old[mid+1024:]), int64(2*bs + 1024), 1024},
		{"moveHalves", cat(old[mid:], old[:mid]), int64(2 * bs), 0},
		{"different", randBytes(r, 1<<20), 1 << 20, 1<<20 - 1024},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := roundTrip(t, old, c.new, bs)
			t.Logf("bs %d: %+v", bs, st)
			if st.Literal > c.maxLiteral || st.Literal < c.minLiteral {
				t.Errorf("literal %d bytes, want in [%d, %d]", st.Literal, c.minLiteral, c.maxLiteral)
			}
		})
	}
}

func makeDelta(t testing.TB, old, new []byte, bs int) []byte {
	t.Helper()
	sig, err := NewSignature(bytes.NewReader(old), bs)
	if err != nil {
		t.Fatal(err)
	}
	var d bytes.Buffer
	if _, err := NewDelta(sig, bytes.NewReader(new), &d); err != nil {
		t.Fatal(err)
	}
	return d.Bytes()
}

func TestDamagedDelta(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	old := randBytes(r, 20000)
	new := mutate(r, old)
	d := makeDelta(t, old, new, 500)
	check := func(name string, basis, delta []byte) {
		t.Helper()
		var out bytes.Buffer
		err := Patch(bytes.NewReader(basis), bytes.NewReader(delta), &out)
		if err == nil {
			if bytes.Equal(out.Bytes(), new) {
				return // a harmless change (e.g. a non-minimal varint): result still right
			}
			t.Fatalf("%s: wrong result without error", name)
		}
		if !errors.Is(err, ErrMismatch) && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: unexpected error kind: %v", name, err)
		}
	}
	// Every truncation is an error.
	for n := range len(d) {
		var out bytes.Buffer
		if err := Patch(bytes.NewReader(old), bytes.NewReader(d[:n]), &out); err == nil {
			t.Fatalf("truncated to %d of %d bytes: no error", n, len(d))
		}
	}
	// Trailing bytes.
	if err := Patch(bytes.NewReader(old), bytes.NewReader(append(bytes.Clone(d), 0)), &bytes.Buffer{}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("trailing byte: %v", err)
	}
	// Single-bit flips everywhere.
	for i := range d {
		for bit := range 8 {
			dd := bytes.Clone(d)
			dd[i] ^= 1 << bit
			check(fmt.Sprintf("flip %d.%d", i, bit), old, dd)
		}
	}
	// Wrong bases: modified, shorter, longer, unrelated, empty.
	wrong := bytes.Clone(old)
	wrong[10000] ^= 1
	check("modified basis", wrong, d)
	check("short basis", old[:len(old)-1], d)
	check("long basis", append(bytes.Clone(old), 1), d)
	check("unrelated basis", randBytes(r, len(old)), d)
	check("empty basis", nil, d)

	var out bytes.Buffer
	err := Patch(bytes.NewReader(wrong), bytes.NewReader(d), &out)
	if !errors.Is(err, ErrMismatch) {
		t.Errorf("modified basis: got %v, want ErrMismatch", err)
	}
}

func TestMalformedDeltas(t *testing.T) {
	basis := make([]byte, 4096)
	hdr := []byte("MFDL\x01\x80\x08\x80\x20") // block size 1024, basis 4096
	for _, c := range []struct {
		name string
		d    []byte
	}{
		{"empty", nil},
		{"bad magic", []byte("XXXX\x01\x01\x00")},
		{"bad version", []byte("MFDL\x09\x01\x00")},
		{"zero block size", []byte("MFDL\x01\x00\x00")},
		{"huge block size", []byte("MFDL\x01\xff\xff\xff\xff\x0f\x00")},
		{"varint overflow", []byte("MFDL\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f")},
		{"copy out of range", append(bytes.Clone(hdr), opCopy, 4, 1)},
		{"copy count overflow", append(bytes.Clone(hdr), opCopy, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)},
		{"copy zero", append(bytes.Clone(hdr), opCopy, 0, 0)},
		{"literal zero", append(bytes.Clone(hdr), opLiteral, 0)},
		{"literal huge", append(bytes.Clone(hdr), opLiteral, 0xff, 0xff, 0xff, 0xff, 0x0f)},
		{"literal truncated", append(bytes.Clone(hdr), opLiteral, 10, 1, 2)},
		{"unknown op", append(bytes.Clone(hdr), 0x07)},
		{"no end", append(bytes.Clone(hdr), opCopy, 0, 4)},
		{"end wrong size", append(append(bytes.Clone(hdr), opEnd, 5), make([]byte, 32)...)},
	} {
		err := Patch(bytes.NewReader(basis), bytes.NewReader(c.d), &bytes.Buffer{})
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrMismatch) {
			t.Errorf("%s: got %v", c.name, err)
		}
	}
	// A basis shorter than the header claims is a mismatch.
	d := makeDelta(t, basis, basis, 1024)
	if err := Patch(bytes.NewReader(basis[:3000]), bytes.NewReader(d), &bytes.Buffer{}); !errors.Is(err, ErrMismatch) {
		t.Errorf("short basis: %v", err)
	}
}

func TestSignatureEncoding(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	sig, err := NewSignature(bytes.NewReader(randBytes(r, 5000)), 700)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := sig.MarshalBinary()
	if want := 6 + 2 + 2 + 8*(4+minStrongLen); len(enc) != want {
		t.Errorf("encoded %d bytes, want %d", len(enc), want)
	}
	var s Signature
	for n := range len(enc) {
		if err := s.UnmarshalBinary(enc[:n]); err == nil {
			t.Errorf("truncated to %d bytes: accepted", n)
		}
	}
	if err := s.UnmarshalBinary(append(bytes.Clone(enc), 0)); err == nil {
		t.Error("trailing byte accepted")
	}
	// A lying file size must not allocate: 2^62 bytes in blocks of 1.
	lie := []byte("MFSG\x02\x10\x01\x80\x80\x80\x80\x80\x80\x80\x80\x40")
	if err := s.UnmarshalBinary(lie); !errors.Is(err, ErrCorrupt) {
		t.Errorf("lying size: %v", err)
	}
	if err := s.UnmarshalBinary(enc); err != nil || s.Blocks() != 8 || s.FileSize() != 5000 || s.BlockSize() != 700 {
		t.Errorf("decode: %v %d %d %d", err, s.Blocks(), s.FileSize(), s.BlockSize())
	}
}

// The strong hash prefix grows with the file: rsync-like sizes, never
// below 4 bytes nor above 16.
func TestStrongLen(t *testing.T) {
	for _, tc := range []struct {
		size int64
		want int
	}{
		{0, 4}, {5000, 4}, {1 << 20, 4}, {256 << 20, 5}, {16 << 30, 7}, {1 << 50, 11},
	} {
		bs := int64(BlockSize(tc.size))
		blocks := int((tc.size + bs - 1) / bs)
		if got := strongLen(tc.size, blocks); got != tc.want {
			t.Errorf("strongLen(%d, %d) = %d, want %d", tc.size, blocks, got, tc.want)
		}
	}
	// A signature with a bad strong size is refused.
	for _, n := range []byte{0, 3, 17} {
		enc := []byte("MFSG\x02")
		enc = append(enc, n, 1, 0)
		var s Signature
		if err := s.UnmarshalBinary(enc); !errors.Is(err, ErrCorrupt) {
			t.Errorf("strong size %d: %v", n, err)
		}
	}
}

func TestRollingChecksum(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	data := randBytes(r, 5000)
	const n = 300
	s1, s2 := uint32(0), uint32(0)
	for _, c := range data[:n] {
		s1 += uint32(c)
		s2 += s1
	}
	for i := 0; i+n < len(data); i++ {
		if got, want := packWeak(s1, s2), weakSum(data[i:i+n]); got != want {
			t.Fatalf("at %d: rolled %08x, direct %08x", i, got, want)
		}
		out, in := uint32(data[i]), uint32(data[i+n])
		s1 += in - out
		s2 += s1 - n*out
	}
}

// fuzzBasis is the fixed basis FuzzPatch applies deltas to.
func fuzzBasis() []byte {
	return randBytes(rand.New(rand.NewPCG(13, 14)), 3000)
}

func FuzzPatch(f *testing.F) {
	basis := fuzzBasis()
	r := rand.New(rand.NewPCG(15, 16))
	for _, bs := range []int{1, 16, 700} {
		f.Add(makeDelta(f, basis, basis, bs))
		f.Add(makeDelta(f, basis, mutate(r, basis), bs))
		f.Add(makeDelta(f, nil, basis[:100], bs))
	}
	f.Add([]byte("MFDL\x01\x80\x08\x80\x20\x02\x00\x04"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, d []byte) {
		var out bytes.Buffer
		err := Patch(bytes.NewReader(basis), bytes.NewReader(d), &out)
		// Output can never exceed what the delta describes: literals are
		// in the delta, each COPY instruction (≥ 3 bytes) yields at most
		// the whole basis.
		if out.Len() > len(d)*len(basis)+len(d) {
			t.Fatalf("output %d bytes from %d delta bytes", out.Len(), len(d))
		}
		if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrMismatch) {
			t.Fatalf("unexpected error kind: %v", err)
		}
	})
}

func FuzzRoundTrip(f *testing.F) {
	r := rand.New(rand.NewPCG(17, 18))
	b := randBytes(r, 2000)
	f.Add([]byte{}, []byte{}, uint16(1))
	f.Add(b, b, uint16(64))
	f.Add(b, mutate(r, b), uint16(100))
	f.Add(b[:500], b, uint16(7))
	f.Add([]byte("hello world"), []byte("hello, world"), uint16(3))
	f.Fuzz(func(t *testing.T, old, new []byte, bs uint16) {
		roundTrip(t, old, new, int(bs%2048)+1)
	})
}

func FuzzSignature(f *testing.F) {
	r := rand.New(rand.NewPCG(19, 20))
	for _, n := range []int{0, 1, 700, 2000} {
		sig, err := NewSignature(bytes.NewReader(randBytes(r, n)), 700)
		if err != nil {
			f.Fatal(err)
		}
		enc, _ := sig.MarshalBinary()
		f.Add(enc)
	}
	f.Add([]byte("MFSG\x02\x10\x01\x80\x80\x80\x80\x80\x80\x80\x80\x40"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s Signature
		if err := s.UnmarshalBinary(data); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if len(s.weak)*(4+s.strongLen) > len(data) {
			t.Fatalf("%d blocks from %d bytes", len(s.weak), len(data))
		}
		enc, err := s.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var s2 Signature
		if err := s2.UnmarshalBinary(enc); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		enc2, _ := s2.MarshalBinary()
		if !bytes.Equal(enc, enc2) {
			t.Fatal("encoding not stable")
		}
		// A decoded signature is usable.
		var d bytes.Buffer
		if _, err := NewDelta(&s, bytes.NewReader([]byte("some new data")), &d); err != nil {
			t.Fatal(err)
		}
	})
}
