package delta

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
)

const benchSize = 64 << 20

// benchData returns 64 MiB of random data and a copy with 1 KiB changed in
// the middle.
func benchData(b *testing.B) (old, new []byte) {
	b.Helper()
	r := rand.New(rand.NewPCG(21, 22))
	old = make([]byte, benchSize)
	for i := 0; i < len(old); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			old[i+j] = byte(v >> (8 * j))
		}
	}
	new = bytes.Clone(old)
	for i := range 1024 {
		new[benchSize/2+i] ^= 0x5a
	}
	return old, new
}

func BenchmarkSignature(b *testing.B) {
	old, _ := benchData(b)
	bs := BlockSize(int64(len(old)))
	b.SetBytes(int64(len(old)))
	b.ResetTimer()
	for b.Loop() {
		if _, err := NewSignature(bytes.NewReader(old), bs); err != nil {
			b.Fatal(err)
		}
	}
}

func benchDelta(b *testing.B, changed bool) {
	old, new := benchData(b)
	if !changed {
		new = old
	}
	sig, err := NewSignature(bytes.NewReader(old), BlockSize(int64(len(old))))
	if err != nil {
		b.Fatal(err)
	}
	var st Stats
	b.SetBytes(int64(len(new)))
	b.ResetTimer()
	for b.Loop() {
		st, err = NewDelta(sig, bytes.NewReader(new), io.Discard)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(st.Literal), "literal-bytes")
	b.ReportMetric(float64(st.Ops), "ops")
}

func BenchmarkDelta(b *testing.B)          { benchDelta(b, true) }
func BenchmarkDeltaUnchanged(b *testing.B) { benchDelta(b, false) }

func BenchmarkPatch(b *testing.B) {
	old, new := benchData(b)
	sig, _ := NewSignature(bytes.NewReader(old), BlockSize(int64(len(old))))
	var d bytes.Buffer
	if _, err := NewDelta(sig, bytes.NewReader(new), &d); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(new)))
	b.ResetTimer()
	for b.Loop() {
		if err := Patch(bytes.NewReader(old), bytes.NewReader(d.Bytes()), io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}
