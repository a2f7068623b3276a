package delta

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

// applyRanges makes the new version: old with each range overwritten by
// fresh bytes, then cut to cut bytes (if cut >= 0) and grown to size.
func applyRanges(rng *rand.Rand, old []byte, rs []Range, cut, size int64) []byte {
	nv := bytes.Clone(old)
	if cut >= 0 && cut < int64(len(nv)) {
		nv = nv[:cut]
	}
	for _, r := range rs {
		if r.End() > int64(len(nv)) {
			nv = append(nv, make([]byte, r.End()-int64(len(nv)))...)
		}
		for i := r.Off; i < r.End(); i++ {
			nv[i] = byte(rng.IntN(256))
		}
	}
	if size > int64(len(nv)) {
		nv = append(nv, make([]byte, size-int64(len(nv)))...)
	}
	return nv[:size]
}

// Patch(old, RangeDelta(old's size, keep, ranges, new)) == new for random
// files, ranges, truncations and growth, and only the bytes in the ranges
// or past keep go as LITERAL.
func TestRangeDeltaProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for iter := range 400 {
		oldSize := rng.Int64N(300_000)
		old := make([]byte, oldSize)
		for i := range old {
			old[i] = byte(rng.IntN(256))
		}
		var rs []Range
		for range rng.IntN(6) {
			off := rng.Int64N(oldSize + 70_000 + 1)
			rs = append(rs, Range{off, rng.Int64N(80_000) + 1})
		}
		cut := int64(-1)
		if rng.IntN(3) == 0 {
			cut = rng.Int64N(oldSize + 1)
		}
		size := oldSize
		for _, r := range rs {
			size = max(size, r.End())
		}
		if cut >= 0 && rng.IntN(2) == 0 {
			size = min(size, cut+rng.Int64N(1000))
		}
		nv := applyRanges(rng, old, rs, cut, size)
		size = int64(len(nv))
		rs = MergeRanges(rs)
		keep := oldSize
		if cut >= 0 {
			keep = cut
		}

		var d bytes.Buffer
		st, err := RangeDelta(oldSize, keep, rs, bytes.NewReader(nv), bytes.NewReader(nv), &d)
		if err != nil {
			t.Fatalf("iter %d: RangeDelta: %v", iter, err)
		}
		var out bytes.Buffer
		if err := Patch(bytes.NewReader(old), bytes.NewReader(d.Bytes()), &out); err != nil {
			t.Fatalf("iter %d (old %d, new %d, keep %d, ranges %v): Patch: %v", iter, oldSize, size, keep, rs, err)
		}
		if !bytes.Equal(out.Bytes(), nv) {
			t.Fatalf("iter %d: patched result differs from the new version", iter)
		}
		var want int64
		for off := int64(0); off < size; off++ {
			lit := off >= min(keep, oldSize)
			for _, r := range rs {
				lit = lit || (r.Off <= off && off < r.End())
			}
			if lit {
				want++
			}
		}
		if st.Literal != want || st.Literal+st.Copied != size {
			t.Fatalf("iter %d: literal %d copied %d, want literal %d of %d", iter, st.Literal, st.Copied, want, size)
		}
	}
}

// 1 KiB changed in the middle of 64 MiB: the delta is about 1 KiB.
func TestRangeDeltaIsSmall(t *testing.T) {
	old := bytes.Repeat([]byte("0123456789abcdef"), 4<<20)
	nv := bytes.Clone(old)
	copy(nv[32<<20:], bytes.Repeat([]byte("X"), 1024))
	var d bytes.Buffer
	st, err := RangeDelta(int64(len(old)), int64(len(old)), []Range{{32 << 20, 1024}}, bytes.NewReader(nv), bytes.NewReader(nv), &d)
	if err != nil {
		t.Fatal(err)
	}
	if st.Literal != 1024 || d.Len() > 1024+128 {
		t.Fatalf("delta of %d bytes, literal %d: want about 1 KiB", d.Len(), st.Literal)
	}
}

// A basis that is not the old version outside the ranges (drift on the
// worker) gives ErrMismatch, never a silently mixed file.
func TestRangeDeltaWrongBasis(t *testing.T) {
	old := bytes.Repeat([]byte("a"), 100_000)
	nv := bytes.Clone(old)
	copy(nv[50_000:], "changed")
	var d bytes.Buffer
	if _, err := RangeDelta(int64(len(old)), int64(len(old)), []Range{{50_000, 7}}, bytes.NewReader(nv), bytes.NewReader(nv), &d); err != nil {
		t.Fatal(err)
	}
	drifted := bytes.Clone(old)
	drifted[10] = 'b'
	err := Patch(bytes.NewReader(drifted), bytes.NewReader(d.Bytes()), &bytes.Buffer{})
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("Patch on a drifted basis: %v, want ErrMismatch", err)
	}
	// A shorter basis than announced: ErrMismatch too.
	err = Patch(bytes.NewReader(old[:60_000]), bytes.NewReader(d.Bytes()), &bytes.Buffer{})
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("Patch on a short basis: %v, want ErrMismatch", err)
	}
}

func TestMergeRanges(t *testing.T) {
	got := MergeRanges([]Range{{10, 5}, {0, 3}, {3, 2}, {12, 10}, {40, 0}, {30, 1}})
	want := []Range{{0, 5}, {10, 12}, {30, 1}}
	if len(got) != len(want) {
		t.Fatalf("MergeRanges = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("MergeRanges = %v, want %v", got, want)
		}
	}
}

// Literals read before the file changed again (the hash pass sees the
// newer bytes) make a delta that Patch refuses, never a mix of the two.
func TestRangeDeltaSourceChangedBetweenPasses(t *testing.T) {
	old := bytes.Repeat([]byte("b"), 200_000)
	first := bytes.Clone(old)
	copy(first[1000:], "first write")
	second := bytes.Clone(first)
	copy(second[1000:], "later write")
	var d bytes.Buffer
	if _, err := RangeDelta(int64(len(old)), int64(len(old)), []Range{{1000, 11}}, bytes.NewReader(first), bytes.NewReader(second), &d); err != nil {
		t.Fatal(err)
	}
	err := Patch(bytes.NewReader(old), bytes.NewReader(d.Bytes()), &bytes.Buffer{})
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("Patch: %v, want ErrMismatch", err)
	}
}
