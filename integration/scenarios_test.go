package integration

import (
	"bytes"
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const converge = 60 * time.Second

// TestFileOperations covers every kind of change a deploy makes, each
// group ending with every worker equal to the store.
func TestFileOperations(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 3})
	m := c.Mount

	t.Run("create overwrite append truncate delete", func(t *testing.T) {
		writeFile(t, m+"/index.html", "<h1>v1</h1>")
		writeFile(t, m+"/gone.txt", "short-lived")
		c.waitConverged(t, converge)
		writeFile(t, m+"/index.html", "<h1>version two, longer</h1>")
		appendFile(t, m+"/index.html", "\n<p>appended</p>")
		writeFile(t, m+"/big.bin", strings.Repeat("0123456789", 100_000))
		if err := os.Truncate(m+"/big.bin", 12345); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(m + "/gone.txt"); err != nil {
			t.Fatal(err)
		}
		writeFile(t, m+"/empty", "")
		c.waitConverged(t, converge)
	})

	t.Run("directories", func(t *testing.T) {
		mkdirAll(t, m+"/assets/css/vendor")
		mkdirAll(t, m+"/assets/js")
		writeFile(t, m+"/assets/css/site.css", "body{}")
		writeFile(t, m+"/assets/css/vendor/x.css", "x{}")
		mkdirAll(t, m+"/tmp/a/b/c")
		c.waitConverged(t, converge)
		for _, d := range []string{"/tmp/a/b/c", "/tmp/a/b", "/tmp/a", "/tmp"} {
			if err := os.Remove(m + d); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.RemoveAll(m + "/assets/css/vendor"); err != nil {
			t.Fatal(err)
		}
		c.waitConverged(t, converge)
	})

	t.Run("renames", func(t *testing.T) {
		writeFile(t, m+"/a.txt", "A")
		writeFile(t, m+"/b.txt", "B")
		c.waitConverged(t, converge)
		mustRename(t, m+"/a.txt", m+"/a2.txt")           // plain rename
		mustRename(t, m+"/b.txt", m+"/a2.txt")           // rename over an existing file
		mustRename(t, m+"/assets", m+"/static")          // directory with content
		mustRename(t, m+"/static/js", m+"/static/js-v2") // nested directory
		writeFile(t, m+"/new.txt", "written then moved")
		mustRename(t, m+"/new.txt", m+"/static/moved.txt") // write then rename in one batch
		c.waitConverged(t, converge)
		if got := readFile(t, c.Workers[0].Root+"/a2.txt"); got != "B" {
			t.Fatalf("a2.txt on worker = %q, want B", got)
		}
	})

	t.Run("symlinks and hard links", func(t *testing.T) {
		mkdirAll(t, m+"/releases/1")
		mkdirAll(t, m+"/releases/2")
		writeFile(t, m+"/releases/1/index.html", "one")
		writeFile(t, m+"/releases/2/index.html", "two")
		if err := os.Symlink("releases/1", m+"/current"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/etc/passwd", m+"/abs-link"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("does-not-exist", m+"/dangling"); err != nil {
			t.Fatal(err)
		}
		c.waitConverged(t, converge)
		// Switch the release atomically, as deploy tools do (ln -sfn).
		if err := os.Symlink("releases/2", m+"/current.tmp"); err != nil {
			t.Fatal(err)
		}
		mustRename(t, m+"/current.tmp", m+"/current")
		writeFile(t, m+"/shared.txt", "shared content")
		if err := os.Link(m+"/shared.txt", m+"/releases/1/shared.txt"); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(m+"/shared.txt", m+"/releases/2/shared.txt"); err != nil {
			t.Fatal(err)
		}
		c.waitConverged(t, converge)
		// Writing through one name changes every name on the workers too.
		writeFile(t, m+"/releases/2/shared.txt", "changed through one link")
		c.waitConverged(t, converge)
		if err := os.Remove(m + "/releases/1/shared.txt"); err != nil {
			t.Fatal(err)
		}
		c.waitConverged(t, converge)
		for _, w := range c.Workers {
			if got, err := os.Readlink(w.Root + "/current"); err != nil || got != "releases/2" {
				t.Fatalf("%s: current -> %q (%v), want releases/2", w.Name, got, err)
			}
		}
	})

	t.Run("modes and times", func(t *testing.T) {
		writeFile(t, m+"/script.sh", "#!/bin/sh\n")
		if err := os.Chmod(m+"/script.sh", 0o4755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(m+"/static", 0o2775); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(m+"/index.html", 0o600); err != nil {
			t.Fatal(err)
		}
		old := time.Date(2019, 3, 4, 5, 6, 7, 0, time.UTC)
		if err := os.Chtimes(m+"/index.html", old, old); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(m+"/releases", old, old); err != nil {
			t.Fatal(err)
		}
		c.waitConverged(t, converge)
		for _, w := range c.Workers {
			st, err := os.Stat(w.Root + "/index.html")
			if err != nil || !st.ModTime().Equal(old) {
				t.Fatalf("%s: index.html mtime %v (%v), want %v", w.Name, st.ModTime(), err, old)
			}
		}
	})
}

func mustRename(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}

// TestBurst writes 2,000 small files as fast as possible.
func TestBurst(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 3})
	for i := range 2000 {
		dir := fmt.Sprintf("%s/d%02d", c.Mount, i%20)
		if i < 20 {
			mkdirAll(t, dir)
		}
		writeFile(t, fmt.Sprintf("%s/f%04d.html", dir, i), fmt.Sprintf("file %d\n", i))
	}
	c.waitConverged(t, converge)
}

// TestOpenFileIsHeldUntilClose: a file written for 3 s while open never
// appears half-written on a worker.
func TestOpenFileIsHeldUntilClose(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 3})
	f, err := os.Create(c.Mount + "/upload.bin")
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
		for _, w := range c.Workers {
			if _, err := os.Lstat(w.Root + "/upload.bin"); err == nil {
				t.Fatalf("%s shows upload.bin while its writer still has it open", w.Name)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	c.waitConverged(t, converge)
}

// TestOutage: one worker's sshd stops; the other two stay current; when it
// returns it catches up from its cursor without re-sending unchanged files.
func TestOutage(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 3})
	for i := range 50 {
		writeFile(t, fmt.Sprintf("%s/stable%02d.html", c.Mount, i), fmt.Sprintf("stable %d", i))
	}
	c.waitConverged(t, converge)
	down, up := c.Workers[0], c.Workers[1:]
	before := inodes(t, down.Root)

	down.Stop(t)
	for i := range 200 {
		writeFile(t, fmt.Sprintf("%s/during%03d.html", c.Mount, i), fmt.Sprintf("written while %s was down: %d", down.Name, i))
	}
	mustRename(t, c.Mount+"/stable00.html", c.Mount+"/renamed.html")
	if err := os.Remove(c.Mount + "/stable01.html"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, converge, "the workers that are up to converge", func() error {
		for _, w := range up {
			if d := c.compare(c.Store, w.Root); len(d) > 0 {
				return fmt.Errorf("%s: %v", w.Name, d[:min(len(d), 5)])
			}
		}
		return nil
	})
	if d := c.compare(c.Store, down.Root); len(d) == 0 {
		t.Fatal("the stopped worker converged while its sshd was down: the test proves nothing")
	}
	st := c.status(t)
	if ws, ok := st.worker(down.Name); !ok || ws.Pending == 0 {
		t.Fatalf("status while %s is down: %+v, want pending operations", down.Name, ws)
	}

	down.Start(t)
	c.waitConverged(t, converge)
	c.verify(t)
	// Files that did not change were not sent again: the worker still has
	// the very same inodes (every send replaces the file by a new one).
	after := inodes(t, down.Root)
	for name, ino := range before {
		if name == "stable00.html" || name == "stable01.html" {
			continue
		}
		if after[name] != ino {
			t.Errorf("%s was re-sent after the outage (inode %d -> %d)", name, ino, after[name])
		}
	}
	if ino := after["renamed.html"]; ino != before["stable00.html"] {
		t.Errorf("renamed.html was re-sent instead of renamed (inode %d, was %d)", ino, before["stable00.html"])
	}
}

func inodes(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dir, e.Name()), &st); err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = st.Ino
	}
	return out
}

// TestCrash: kill -9 of the daemon in the middle of a burst; every write
// that returned before the kill reaches every worker after a restart.
func TestCrash(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 3})
	writeFile(t, c.Mount+"/index.html", "before the burst\n")
	c.waitConverged(t, converge) // the first full copies are done
	var done atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var acked sync.Map
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			p := fmt.Sprintf("%s/burst%05d.txt", c.Mount, i)
			content := fmt.Sprintf("acknowledged write %d\n", i)
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				return // the daemon is gone
			}
			acked.Store(fmt.Sprintf("burst%05d.txt", i), content)
			done.Add(1)
		}
	})
	waitFor(t, converge, "the burst to get going", func() error {
		if done.Load() < 300 {
			return fmt.Errorf("%d files written", done.Load())
		}
		return nil
	})
	c.Kill(t)
	close(stop)
	wg.Wait()
	t.Logf("%d writes acknowledged before kill -9", done.Load())

	// Read from the journal with no daemon running, status and journal
	// stats tell what the next start does: compare every worker.
	for _, ws := range c.status(t).Workers {
		if !ws.InitialCopy {
			t.Errorf("status after kill -9: %s shows no initial copy (%+v)", ws.Name, ws)
		}
	}
	var stats journalStatsJSON
	c.journalJSON(t, &stats, "stats")
	for _, w := range stats.Workers {
		if !w.NeedsFullCopy {
			t.Errorf("journal stats after kill -9: %s needs no full copy (%+v)", w.Name, w)
		}
	}

	c.Start(t)
	c.waitConverged(t, converge)
	c.verify(t)
	for _, w := range c.Workers {
		acked.Range(func(k, v any) bool {
			data, err := os.ReadFile(filepath.Join(w.Root, k.(string)))
			if err != nil || string(data) != v.(string) {
				t.Errorf("%s: acknowledged %s = %q (%v), want %q", w.Name, k, data, err, v)
				return false
			}
			return true
		})
	}
}

// TestNoTornFiles: while a 10 MiB file is rewritten again and again through
// the mount, a reader on a worker only ever sees whole versions.
func TestNoTornFiles(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 1})
	const size = 10 << 20
	version := func(v int) []byte { return bytes.Repeat([]byte{byte('A' + v%26)}, size) }
	writeFile(t, c.Mount+"/big.bin", string(version(0)))
	c.waitConverged(t, converge)

	target := c.Workers[0].Root + "/big.bin"
	stop := make(chan struct{})
	var reads, torn atomic.Int64
	var firstTorn atomic.Value
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			data, err := os.ReadFile(target)
			if err != nil {
				torn.Add(1)
				firstTorn.CompareAndSwap(nil, fmt.Sprintf("read: %v", err))
				continue
			}
			reads.Add(1)
			if len(data) != size || bytes.Count(data, data[:1]) != size {
				torn.Add(1)
				firstTorn.CompareAndSwap(nil, fmt.Sprintf("len %d, first byte %q, %d bytes equal to it", len(data), data[:min(1, len(data))], bytes.Count(data, data[:min(1, len(data))])))
			}
		}
	})
	for v := 1; v <= 15; v++ {
		f, err := os.OpenFile(c.Mount+"/big.bin", os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			t.Fatal(err)
		}
		data := version(v)
		for off := 0; off < size; off += 1 << 20 {
			if _, err := f.Write(data[off : off+1<<20]); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		// The next version only once the worker's reader has had a turn
		// (and at least 50 ms), so that a loaded machine still reads the
		// file while it is replaced, not only before and after.
		seen := reads.Load() + torn.Load()
		deadline := time.Now().Add(10 * time.Second)
		time.Sleep(50 * time.Millisecond)
		for reads.Load()+torn.Load() == seen && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	c.waitConverged(t, converge)
	close(stop)
	wg.Wait()
	t.Logf("%d reads on the worker while rewriting", reads.Load())
	if torn.Load() > 0 {
		t.Fatalf("%d torn reads on the worker; first: %v", torn.Load(), firstTorn.Load())
	}
	if reads.Load() < 10 {
		t.Fatalf("only %d reads happened: the test proves nothing", reads.Load())
	}
}

// TestInPlaceInitialCopy: a pre-filled directory mounted in place keeps its
// files, its content reaches empty workers, and changes made during that
// first copy are not lost.
func TestInPlaceInitialCopy(t *testing.T) {
	var prefilled []string
	c := newCluster(t, clusterOptions{Workers: 3, InPlace: true, Prefill: func(dir string) {
		for i := range 3000 {
			d := fmt.Sprintf("%s/old%02d", dir, i%30)
			os.MkdirAll(d, 0o755)
			p := fmt.Sprintf("%s/page%04d.html", d, i)
			os.WriteFile(p, []byte(fmt.Sprintf("existing page %d\n", i)), 0o644)
			prefilled = append(prefilled, strings.TrimPrefix(p, dir+"/"))
		}
		os.Symlink("old00", dir+"/latest")
	}})
	// The mount shows the directory's old content at once.
	if got := readFile(t, c.Mount+"/"+prefilled[0]); got != "existing page 0\n" {
		t.Fatalf("pre-filled file through the mount = %q", got)
	}
	// Changes while the first copy runs.
	writeFile(t, c.Mount+"/during-copy.html", "made during the initial copy")
	writeFile(t, c.Mount+"/"+prefilled[2999], "changed during the initial copy")
	if err := os.Remove(c.Mount + "/" + prefilled[1500]); err != nil {
		t.Fatal(err)
	}
	mustRename(t, c.Mount+"/old05", c.Mount+"/renamed05")
	c.waitConverged(t, converge)

	c.Stop(t)
	// After unmount the directory holds exactly what the mount last showed.
	if got := readFile(t, c.Mount+"/during-copy.html"); got != "made during the initial copy" {
		t.Fatalf("after unmount during-copy.html = %q", got)
	}
	if got := readFile(t, c.Mount+"/"+prefilled[2999]); got != "changed during the initial copy" {
		t.Fatalf("after unmount %s = %q", prefilled[2999], got)
	}
	if _, err := os.Stat(c.Mount + "/old05"); !os.IsNotExist(err) {
		t.Fatalf("after unmount old05 still exists: %v", err)
	}
	for _, w := range c.Workers {
		if d := c.compare(c.Mount, w.Root); len(d) > 0 {
			t.Fatalf("%s differs from the directory after unmount: %v", w.Name, d[:min(5, len(d))])
		}
	}
}

// A file with a hard link made before the daemon started (so the mount has
// never seen that name), opened by its other name, which is then removed
// while the writer goes on: the journal cannot name the file any more, so
// when the writer closes it the daemon compares the workers with the
// store, and the change reaches the worker's remaining link.
func TestChangeThroughUnknownHardLinkReachesWorkers(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 1, Prefill: func(store string) {
		writeFile(t, filepath.Join(store, "upload.dat"), "version 1\n")
		if err := os.Link(filepath.Join(store, "upload.dat"), filepath.Join(store, "published.dat")); err != nil {
			t.Fatal(err)
		}
	}})
	c.waitConverged(t, converge)

	f, err := os.OpenFile(filepath.Join(c.Mount, "upload.dat"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(c.Mount, "upload.dat")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("version 2\n"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	c.waitConverged(t, converge)
	if got := readFile(t, filepath.Join(c.Workers[0].Root, "published.dat")); got != "version 2\n" {
		t.Errorf("worker's published.dat = %q, want %q", got, "version 2\n")
	}
}

// The same, with the file's mtime put back after the change, as cp -p,
// rsync or touch -r leave it: size and mtime then match the worker's old
// copy, and the comparison that the lost name asks for must still send the
// file, which the journal knows changed. It used to trust the quick check
// and leave the worker's published.dat at version 1 for good (found by
// TestRandomOperations on SFTP, where the quick check sees mtimes to the
// second only, so a change within the same second is enough).
func TestChangeKeepingMtimeThroughUnknownHardLinkReachesWorkers(t *testing.T) {
	for _, transport := range []string{"", "sftp"} {
		t.Run(cmp.Or(transport, "agent"), func(t *testing.T) {
			c := newCluster(t, clusterOptions{Workers: 1, Transport: transport, Prefill: func(store string) {
				writeFile(t, filepath.Join(store, "upload.dat"), "version 1\n")
				if err := os.Link(filepath.Join(store, "upload.dat"), filepath.Join(store, "published.dat")); err != nil {
					t.Fatal(err)
				}
			}})
			c.waitConverged(t, converge)
			p := filepath.Join(c.Mount, "upload.dat")
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte("version 2\n"), 0); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(p, st.ModTime(), st.ModTime()); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			waitFor(t, converge, "published.dat at version 2 on the worker", func() error {
				if got := readFile(t, filepath.Join(c.Workers[0].Root, "published.dat")); got != "version 2\n" {
					return fmt.Errorf("worker's published.dat = %q", got)
				}
				return nil
			})
			c.waitConverged(t, converge)
		})
	}
}
