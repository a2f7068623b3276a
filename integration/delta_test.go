package integration

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// A file replaced by save-by-rename (write a temp file, rename it over, as
// editors do) with 1 KiB changed in the middle of 4 MiB crosses the wire
// as an rsync-style delta against the worker's copy (agent transport).
func TestDeltaSaveByRename(t *testing.T) {
	// Swap files are excluded, as in a real configuration: otherwise a
	// batch that closes between the write of the temp file and the rename
	// ships the temp file whole as a new file, and the test measures that.
	c := newCluster(t, clusterOptions{Workers: 1, Exclude: []string{"*.swp"}})
	w := c.Workers[0]
	const size = 4 << 20
	rng := rand.New(rand.NewPCG(1, 2))
	v1 := make([]byte, size)
	for i := range v1 {
		v1[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(filepath.Join(c.Mount, "big.bin"), v1, 0o644); err != nil {
		t.Fatal(err)
	}
	c.waitConverged(t, converge)
	ws, ok := c.status(t).worker(w.Name)
	if !ok {
		t.Fatalf("no status for %s", w.Name)
	}
	before := ws.BytesSent

	v2 := bytes.Clone(v1)
	for i := size/2 - 512; i < size/2+512; i++ {
		v2[i] = byte(rng.Uint32())
	}
	tmp := filepath.Join(c.Mount, ".big.bin.swp")
	if err := os.WriteFile(tmp, v2, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(c.Mount, "big.bin")); err != nil {
		t.Fatal(err)
	}
	c.waitConverged(t, converge)
	ws, _ = c.status(t).worker(w.Name)
	sent := ws.BytesSent - before
	t.Logf("1 KiB edit of a %d-byte file: %d bytes sent", size, sent)
	if ws.BytesSent < before || sent >= 256<<10 {
		t.Errorf("sent %d bytes (counter %d -> %d) for a 1 KiB edit of 4 MiB, want < 256 KiB", sent, before, ws.BytesSent)
	}
	got, err := os.ReadFile(filepath.Join(w.Root, "big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	store, err := os.ReadFile(filepath.Join(c.Store, "big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, store) || !bytes.Equal(got, v2) {
		t.Error("worker content differs from the store's after the delta")
	}
}
