package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/mirrorfs/mirrorfs/delta"
	"github.com/mirrorfs/mirrorfs/replicate"
)

type fileSource struct{ *os.File }

// BenchmarkWriteFileRanges: 1 KiB changed in the middle of 256 MiB, sent as
// ranges to an agent over an in-process pipe: the master's hash pass, the
// agent's copy of the old version, its hash and fsync.
func BenchmarkWriteFileRanges(b *testing.B) {
	const size = 256 << 20
	worker, store := b.TempDir(), b.TempDir()
	data := randomBytes(size, 3)
	if err := os.WriteFile(filepath.Join(worker, "big"), data, 0o644); err != nil {
		b.Fatal(err)
	}
	copy(data[size/2:], randomBytes(1024, 9))
	if err := os.WriteFile(filepath.Join(store, "big"), data, 0o644); err != nil {
		b.Fatal(err)
	}
	c := pipeClient(b, worker)
	b.SetBytes(size)
	for b.Loop() {
		f, err := os.Open(filepath.Join(store, "big"))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.WriteFileRanges(b.Context(), "big", size, size, []delta.Range{{Off: size / 2, Len: 1024}}, fileSource{f}, replicate.Attrs{Perm: 0o644, UID: -1, GID: -1}); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}
