package integration

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// badConfig writes a copy of c's config with some top-level keys replaced
// (each "key: value" line whose key is in set) and returns its path.
func badConfig(t *testing.T, c *cluster, set map[string]string) string {
	t.Helper()
	data, err := os.ReadFile(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		for k, v := range set {
			if strings.HasPrefix(l, k+":") {
				l = k + ": " + yamlString(v)
			}
		}
		out = append(out, l)
	}
	p := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(p, []byte(strings.Join(out, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// spareMount returns config overrides for a second daemon next to c's: its
// own mount point and control socket, so that only the key under test can
// make it fail.
func spareMount(t *testing.T, c *cluster) map[string]string {
	mnt := filepath.Join(t.TempDir(), "mnt2")
	mkdirAll(t, mnt)
	return map[string]string{
		"mount":   mnt,
		"control": filepath.Join(filepath.Dir(c.Control), fmt.Sprintf("ctl-%d.sock", time.Now().UnixNano()%1e6)),
		"journal": filepath.Join(t.TempDir(), "journal"),
	}
}

// refuseMount runs `mirrorfs mount` with cfg and asserts it fails at once
// with an error mentioning every string in want, leaving no mount behind.
func refuseMount(t *testing.T, c *cluster, cfg, mnt string, want ...string) string {
	t.Helper()
	start := time.Now()
	_, stderr, code := runMirrorfs(t, c.Bin, "mount", "--config", cfg)
	if code <= 0 {
		t.Fatalf("mount exited %d after %v, want a refusal\nstderr:\n%s", code, time.Since(start), stderr)
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Errorf("refusal does not mention %q:\n%s", w, stderr)
		}
	}
	if isMounted(mnt) {
		unmount(t, mnt)
		t.Fatalf("a refused mount left %s mounted", mnt)
	}
	t.Logf("refused as wanted: %s", strings.TrimSpace(lastLines(stderr, 3)))
	return stderr
}

// mountTmpfs mounts a small tmpfs of our own at a new directory, lets fill
// write into it, then remounts it read-only. It is unmounted when the test
// ends (only this mount, by its path).
func mountTmpfs(t *testing.T, fill func(dir string)) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ro")
	mkdirAll(t, dir)
	mustRun(t, "mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "mirrorfs-test-ro", dir)
	t.Cleanup(func() {
		if out, err := execOut("umount", dir); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	if fill != nil {
		fill(dir)
	}
	mustRun(t, "mount", "-o", "remount,ro", dir)
	return dir
}

// TestBadInputReadOnlyStore: a store on a read-only filesystem is refused
// at start, naming the store; nothing in it changes.
func TestBadInputReadOnlyStore(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	store := mountTmpfs(t, func(dir string) {
		writeFile(t, dir+"/index.html", "<h1>read-only</h1>")
		mkdirAll(t, dir+"/assets")
		writeFile(t, dir+"/assets/site.css", "body{}")
	})
	before := treeFingerprint(t, store, false)
	set := spareMount(t, c)
	set["store"] = store
	refuseMount(t, c, badConfig(t, c, set), set["mount"], store, "read-only")
	requireUnchanged(t, "read-only store", store, before, false)
	c.Stop(t)
}

// TestBadInputReadOnlyJournal: a journal directory on a read-only
// filesystem, existing or still to be created, is refused naming it.
func TestBadInputReadOnlyJournal(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	ro := mountTmpfs(t, func(dir string) { mkdirAll(t, dir+"/journal") })
	for _, j := range []string{ro + "/journal", ro + "/new/journal", ro} {
		t.Run(filepath.Base(j), func(t *testing.T) {
			set := spareMount(t, c)
			set["journal"] = j
			refuseMount(t, c, badConfig(t, c, set), set["mount"], j, "read-only")
		})
	}
	c.Stop(t)
}

// TestBadInputCorruptJournal: after a clean stop, a journal with a damaged
// MANIFEST, table index, table data block or value log is refused at start naming it, and not
// one byte of it changes; a web root given as the journal is refused as
// foreign and left alone. The undamaged journal still starts afterwards.
func TestBadInputCorruptJournal(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 1})
	for i := range 300 {
		writeFile(t, fmt.Sprintf("%s/f%03d.html", c.Mount, i), strings.Repeat("x", i))
	}
	c.waitConverged(t, converge)
	c.Stop(t)

	garbage := []byte("\xde\xad\xbe\xef garbage \x00\xff\x13\x37 overwritten")
	overwrite := func(name string, off func(size int64) int64) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			matches, _ := filepath.Glob(filepath.Join(dir, name))
			if len(matches) == 0 {
				t.Fatalf("no %s in the journal", name)
			}
			p := matches[0]
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(garbage, off(fi.Size())); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
	}
	cases := []struct {
		name    string
		corrupt func(t *testing.T, dir string)
		want    string
	}{
		{"manifest checksum", overwrite("MANIFEST", func(size int64) int64 { return 16 }), "damaged"},
		{"manifest header", overwrite("MANIFEST", func(size int64) int64 { return 0 }), ""},
		{"table index", overwrite("*.sst", func(size int64) int64 { return size - 300 }), "damaged"},
		{"table data block", overwrite("*.sst", func(size int64) int64 { return 64 }), "damaged"},
		{"value log header", overwrite("*.vlog", func(size int64) int64 { return 0 }), "damaged"},
		{"value log data", overwrite("*.vlog", func(size int64) int64 { return 20 }), "damaged"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			j := filepath.Join(t.TempDir(), "journal")
			mustRun(t, "cp", "-a", "--sparse=always", c.Journal, j)
			tc.corrupt(t, j)
			before := treeFingerprint(t, j, false)
			set := spareMount(t, c)
			set["journal"] = j
			want := []string{j}
			if tc.want != "" {
				want = append(want, tc.want)
			}
			refuseMount(t, c, badConfig(t, c, set), set["mount"], want...)
			requireUnchanged(t, "journal", j, before, false)
		})
	}
	t.Run("foreign directory", func(t *testing.T) {
		j := filepath.Join(t.TempDir(), "www")
		mkdirAll(t, j+"/img")
		writeFile(t, j+"/index.html", "<h1>not a journal</h1>")
		writeFile(t, j+"/img/a.png", "png")
		before := treeFingerprint(t, j, false)
		set := spareMount(t, c)
		set["journal"] = j
		refuseMount(t, c, badConfig(t, c, set), set["mount"], j, "not a mirrorfs journal")
		requireUnchanged(t, "foreign directory", j, before, false)
	})
	// The original journal was never touched: it starts and still ships.
	c.Start(t)
	writeFile(t, c.Mount+"/after.html", "after")
	c.waitConverged(t, converge)
	c.Stop(t)
}

// TestBadInputSymlinkWorkerRoot: a worker root that is a symlink escaping
// upward (…/a/x/www -> ../..) is refused, on either transport, with an
// error naming the root and its target; nothing is written where it points.
func TestBadInputSymlinkWorkerRoot(t *testing.T) {
	for _, transport := range []string{"", "sftp"} {
		name := transport
		if name == "" {
			name = "agent"
		}
		t.Run(name, func(t *testing.T) {
			sandbox, err := filepath.EvalSymlinks(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			var root string
			c := newCluster(t, clusterOptions{Workers: 1, Transport: transport, PrefillWorker: func(w *sshWorker) {
				mkdirAll(t, sandbox+"/a/x")
				root = sandbox + "/a/x/www"
				if err := os.Symlink("../..", root); err != nil {
					t.Fatal(err)
				}
				w.Root = root
			}})
			before := treeFingerprint(t, sandbox, false)
			writeFile(t, c.Mount+"/index.html", "must not escape")
			mkdirAll(t, c.Mount+"/dir")
			var last string
			waitFor(t, converge, "the worker to report its root", func() error {
				ws, ok := c.status(t).worker("w1")
				last = ws.LastError
				if !ok || !strings.Contains(ws.LastError, root) || !strings.Contains(ws.LastError, "symlink") {
					return fmt.Errorf("w1 last_error %q", ws.LastError)
				}
				return nil
			})
			t.Logf("w1 refused: %s", last)
			if !strings.Contains(last, "../..") || !strings.Contains(last, sandbox) {
				t.Errorf("error does not name the link's target ../.. and what it resolves to (%s): %s", sandbox, last)
			}
			if ws, _ := c.status(t).worker("w1"); ws.Connected || ws.Applied != 0 {
				t.Errorf("w1 status %+v: connected or applied with a symlink root", ws)
			}
			if transport == "" {
				// The agent refused first (then the SFTP fallback did).
				if log := readFrom(c.LogPath, 0); !strings.Contains(log, "agent root "+root+" is a symlink") {
					t.Errorf("daemon log lacks the agent's refusal:\n%s", logTail(c.LogPath, 40))
				}
			}
			requireUnchanged(t, "the symlink's target "+sandbox, sandbox, before, false)
			c.Stop(t)
		})
	}
}

// TestKillDuringApply: the daemon is SIGKILLed while a worker is applying
// a big batch (2,000 files and a chain of renames whose result depends on
// order). After a restart every write that returned reaches every worker,
// the workers equal the store and no temp file is left on any of them.
func TestKillDuringApply(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 2, BatchDelay: "500ms"})
	const perRound = 2000
	w1 := c.Workers[0]
	countFiles := func(root string) int {
		n := 0
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() && !strings.HasPrefix(d.Name(), workerTempPrefix) {
				n++
			}
			return nil
		})
		return n
	}
	killed := false
	for round := 0; round < 5 && !killed; round++ {
		base := countFiles(w1.Root)
		for i := range perRound {
			dir := fmt.Sprintf("%s/r%d/d%02d", c.Mount, round, i%20)
			if i < 20 {
				mkdirAll(t, dir)
			}
			writeFile(t, fmt.Sprintf("%s/f%04d.html", dir, i), fmt.Sprintf("round %d file %d\n%s", round, i, strings.Repeat("z", 512)))
		}
		chain := fmt.Sprintf("%s/r%d/chain", c.Mount, round)
		mkdirAll(t, chain)
		writeFile(t, chain+"/a", "first")
		mustRename(t, chain+"/a", chain+"/b")
		mustRename(t, chain+"/b", chain+"/c")
		mustRename(t, chain+"/c", chain+"/d")
		writeFile(t, chain+"/d", fmt.Sprintf("final content of round %d", round))
		// Every write above returned. Kill as soon as the worker holds some
		// of this round's files but not all.
		total := base + perRound + 1
		var seen atomic.Int64
		deadline := time.Now().Add(converge)
		for time.Now().Before(deadline) {
			n := countFiles(w1.Root)
			seen.Store(int64(n))
			if n > base && n < total {
				c.Kill(t)
				killed = true
				t.Logf("round %d: killed the daemon with %d of %d files on w1", round, n-base, perRound+1)
				break
			}
			if n >= total {
				t.Logf("round %d: w1 applied everything before the kill (%d files); trying again", round, n-base)
				break
			}
			time.Sleep(time.Millisecond)
		}
		if !killed && seen.Load() < int64(total) {
			t.Fatalf("round %d: w1 has %d of %d files after %v", round, seen.Load()-int64(base), perRound+1, converge)
		}
	}
	if !killed {
		t.Fatal("never caught a worker in the middle of a batch")
	}
	c.Start(t)
	c.waitConverged(t, converge)
	c.verify(t)
	// The store holds every write that returned, and so do the workers.
	rounds, _ := filepath.Glob(c.Store + "/r*")
	for _, r := range rounds {
		round := strings.TrimPrefix(filepath.Base(r), "r")
		for _, w := range c.Workers {
			if got := readFile(t, w.Root+"/r"+round+"/chain/d"); got != "final content of round "+round {
				t.Errorf("%s: r%s/chain/d = %q", w.Name, round, got)
			}
			for _, gone := range []string{"a", "b", "c"} {
				if _, err := os.Lstat(w.Root + "/r" + round + "/chain/" + gone); err == nil {
					t.Errorf("%s: r%s/chain/%s still exists", w.Name, round, gone)
				}
			}
			if n := countFiles(w.Root + "/r" + round); n != perRound+1 {
				t.Errorf("%s: r%s holds %d files, want %d", w.Name, round, n, perRound+1)
			}
		}
	}
	for _, w := range c.Workers {
		filepath.WalkDir(w.Root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && strings.HasPrefix(d.Name(), workerTempPrefix) {
				t.Errorf("%s: temp file left: %s", w.Name, p)
			}
			return nil
		})
	}
	c.Stop(t)
}

// execOut runs a command and returns its combined output.
func execOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
