package integration

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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
	v1 := pseudoRandom(1, size)
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
	copy(v2[size/2-512:], pseudoRandom(2, 1024))
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

// A file modified in place (1 KiB overwritten in the middle of 16 MiB, as a
// database or an editor writing in place does) crosses the wire as just the
// bytes written: the journal knows the range, so no signature is asked for.
// A reader on the worker polls the file the whole time and only ever sees
// whole versions. Then the worker's copy is damaged behind mirrorfs's back
// and the file written in place again: the ranges no longer fit the
// worker's copy, the agent's SHA-256 check refuses the result, and the file
// goes another way; the worker still ends equal to the store.
func TestRangesInPlace(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 1})
	w := c.Workers[0]
	const size = 16 << 20
	v1 := pseudoRandom(3, size)
	p := filepath.Join(c.Mount, "data.bin")
	if err := os.WriteFile(p, v1, 0o644); err != nil {
		t.Fatal(err)
	}
	c.waitConverged(t, converge)

	// Every version the worker may legitimately show, by SHA-256.
	var mu sync.Mutex
	versions := map[[32]byte]string{sha256.Sum256(v1): "v1"}
	addVersion := func(name string, b []byte) {
		mu.Lock()
		versions[sha256.Sum256(b)] = name
		mu.Unlock()
	}
	var reads atomic.Int64
	stop := make(chan struct{})
	torn := make(chan string, 1)
	var reader sync.WaitGroup
	reader.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			b, err := os.ReadFile(filepath.Join(w.Root, "data.bin"))
			if err != nil {
				continue
			}
			sum := sha256.Sum256(b)
			mu.Lock()
			_, ok := versions[sum]
			mu.Unlock()
			if !ok {
				select {
				case torn <- fmt.Sprintf("%d bytes, SHA-256 %x", len(b), sum[:8]):
				default:
				}
			}
			reads.Add(1)
		}
	})
	defer func() { close(stop); reader.Wait() }()

	writeAt := func(b []byte, off int64) {
		t.Helper()
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	patch := pseudoRandom(4, 1024)
	v2 := bytes.Clone(v1)
	copy(v2[size/2:], patch)
	addVersion("v2", v2)
	before, _ := c.status(t).worker(w.Name)
	logFrom := fileSize(c.LogPath)
	writeAt(patch, size/2)
	c.waitConverged(t, converge)
	after, _ := c.status(t).worker(w.Name)
	sent := after.BytesSent - before.BytesSent
	t.Logf("1 KiB written in place in 16 MiB: %d bytes sent on the SSH connection", sent)
	if sent > 16<<10 {
		t.Errorf("sent %d bytes for a 1 KiB write in place, want at most 16 KiB", sent)
	}
	if log := readFrom(c.LogPath, logFrom); !strings.Contains(log, "shipped as ranges") {
		t.Errorf("the daemon log does not say the file went as ranges:\n%s", lastLines(log, 20))
	}

	// Drift behind mirrorfs's back, then another write in place.
	drifted := bytes.Clone(v2)
	drifted[100] ^= 0xff
	addVersion("drifted", drifted)
	// (atomically, so that the reader does not see the test's own write)
	if err := os.WriteFile(filepath.Join(w.Root, "drift.tmp"), drifted, 0o644); err != nil {
		t.Fatal(err)
	}
	mustRename(t, filepath.Join(w.Root, "drift.tmp"), filepath.Join(w.Root, "data.bin"))
	v3 := bytes.Clone(v2)
	copy(v3[size/4:], patch)
	addVersion("v3", v3)
	logFrom = fileSize(c.LogPath)
	writeAt(patch, size/4)
	c.waitConverged(t, converge)
	if log := readFrom(c.LogPath, logFrom); !strings.Contains(log, "ranges not used") {
		t.Errorf("the damaged worker copy was not noticed:\n%s", lastLines(log, 20))
	}
	if got := readFile(t, filepath.Join(w.Root, "data.bin")); got != string(v3) {
		t.Error("worker content differs from v3")
	}
	select {
	case what := <-torn:
		t.Errorf("a reader on the worker saw a mixed version: %s", what)
	default:
	}
	t.Logf("%d whole reads of the file on the worker", reads.Load())
	if reads.Load() < 5 {
		t.Errorf("only %d reads: the reader did not watch the updates", reads.Load())
	}
}

// fileSize is the size of the file p, 0 when it cannot be read (a log not
// written yet): where to start reading what a daemon logs next.
func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// 300 pages of 8 KiB saved again with the same content, half rewritten in
// place and half by save-by-rename (a deploy that rewrites everything): the
// worker keeps its files and gets the new mtimes, and far less than the
// 2.4 MB of content crosses the wire. The pages are random: the agent
// compresses what it sends, and repetitive pages sent whole would pass.
func TestUnchangedResaveSendsAlmostNothing(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 1, Exclude: []string{"*.swp"}})
	w := c.Workers[0]
	const n, size = 300, 8 << 10
	page := func(i int) []byte { return pseudoRandom(uint64(i)+1, size) }
	mkdirAll(t, c.Mount+"/site")
	for i := range n {
		writeFile(t, fmt.Sprintf("%s/site/p%03d.html", c.Mount, i), string(page(i)))
	}
	c.waitConverged(t, converge)
	before, _ := c.status(t).worker(w.Name)
	for i := range n {
		p := fmt.Sprintf("%s/site/p%03d.html", c.Mount, i)
		if i%2 == 0 {
			writeFile(t, p, string(page(i)))
			continue
		}
		writeFile(t, p+".swp", string(page(i)))
		mustRename(t, p+".swp", p)
	}
	c.waitConverged(t, converge) // mtimes to the nanosecond included
	after, _ := c.status(t).worker(w.Name)
	sent := after.BytesSent - before.BytesSent
	t.Logf("%d unchanged pages of %d bytes saved again: %d bytes sent", n, size, sent)
	// Hashes and attributes only would be a few percent; a third leaves
	// room for a page shipped in a batch cut at the wrong moment.
	if sent > n*size/3 {
		t.Errorf("sent %d bytes to re-save %d unchanged pages (%d bytes of content), want under a third", sent, n, n*size)
	}
}
