package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestVerifyAndResync: verify finds each kind of drift made behind
// mirrorfs's back (a same-size same-mtime edit only with --checksum),
// resync --dry-run lists it, resync repairs it through the daemon, and the
// other worker is left alone.
func TestVerifyAndResync(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 2})
	mkdirAll(t, c.Mount+"/css")
	writeFile(t, c.Mount+"/index.html", "<h1>hello</h1>\n")
	writeFile(t, c.Mount+"/about.html", "about us\n")
	writeFile(t, c.Mount+"/gone.html", "soon deleted on w1\n")
	writeFile(t, c.Mount+"/css/site.css", "body{color:red}\n")
	c.waitConverged(t, converge)

	run := func(args ...string) (string, string, int) {
		t.Helper()
		return runMirrorfs(t, c.Bin, append([]string{args[0], "--config", c.Config}, args[1:]...)...)
	}
	if out, errOut, code := run("verify", "--checksum"); code != 0 {
		t.Fatalf("verify on converged workers: exit %d\n%s%s", code, out, errOut)
	}

	w1 := c.worker(t, "w1")
	w2 := c.worker(t, "w2")
	w2Before := ctimes(t, w2.Root)

	// Drift on w1, behind mirrorfs's back.
	edited := filepath.Join(w1.Root, "index.html")
	st := statT(t, edited)
	writeFile(t, edited, "<h1>HELLO</h1>\n") // same size
	if err := unix.UtimesNano(edited, []unix.Timespec{unix.Timespec(st.Atim), unix.Timespec(st.Mtim)}); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(w1.Root, "gone.html")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(w1.Root, "css/extra.css"), "not in the store\n")
	if err := os.Chmod(filepath.Join(w1.Root, "about.html"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Only the mtime of css/site.css: the resync sends it again (the
	// comparison goes by size and mtime), which the dry run must say.
	touched := time.Unix(1_600_000_000, 0)
	if err := os.Chtimes(filepath.Join(w1.Root, "css/site.css"), touched, touched); err != nil {
		t.Fatal(err)
	}

	out, errOut, code := run("verify")
	if code != 1 {
		t.Fatalf("verify after drift: exit %d, want 1\n%s%s", code, out, errOut)
	}
	t.Logf("verify after drift:\n%s", out)
	for _, want := range []string{"missing  gone.html", "extra    css/extra.css", "mode     about.html", "w1: DRIFT", "w2: in sync"} {
		if !strings.Contains(out, want) {
			t.Errorf("verify output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "index.html") {
		t.Errorf("verify without --checksum reported the same-size same-mtime edit:\n%s", out)
	}
	out, errOut, code = run("verify", "--checksum", "--worker", "w1", "--json")
	if code != 1 {
		t.Fatalf("verify --checksum --json: exit %d, want 1\n%s%s", code, out, errOut)
	}
	var rep struct {
		Workers []struct {
			Name        string
			Status      string
			Differences []struct{ Path, What, Store, Worker string }
		}
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("verify --json: %v\n%s", err, out)
	}
	got := map[string]string{}
	if len(rep.Workers) == 1 && rep.Workers[0].Name == "w1" && rep.Workers[0].Status == "drift" {
		for _, d := range rep.Workers[0].Differences {
			got[d.Path] += d.What + " "
		}
	} else {
		t.Errorf("verify --worker w1 --json: %+v", rep)
	}
	for p, what := range map[string]string{"index.html": "content", "gone.html": "missing", "css/extra.css": "extra", "about.html": "mode"} {
		if !strings.Contains(got[p], what) {
			t.Errorf("verify --checksum: %s: got %q, want %q (all: %v)", p, got[p], what, got)
		}
	}

	out, errOut, code = run("resync", "w1", "--dry-run", "--checksum")
	if code != 0 {
		t.Fatalf("resync --dry-run: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("resync w1 --dry-run:\n%s", out)
	for _, want := range []string{"send         gone.html", "delete       css/extra.css", "fix mode     about.html", "replace      index.html", "replace      css/site.css"} {
		if !strings.Contains(out, want) {
			t.Errorf("resync --dry-run output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(w1.Root, "css/extra.css")); err != nil {
		t.Errorf("resync --dry-run changed the worker: %v", err)
	}

	if _, errOut, code := run("resync", "nosuch"); code == 0 || !strings.Contains(errOut, "w1, w2") {
		t.Errorf("resync of an unknown worker: exit %d, stderr %q; want the configured names", code, errOut)
	}

	out, errOut, code = run("resync", "w1", "--checksum")
	if code != 0 {
		t.Fatalf("resync w1: exit %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "w1: resync done") {
		t.Errorf("resync output lacks its summary:\n%s", out)
	}
	t.Logf("resync w1:\n%s", out)

	if out, errOut, code := run("verify", "--checksum"); code != 0 {
		t.Fatalf("verify --checksum after resync: exit %d\n%s%s", code, out, errOut)
	}
	c.assertConverged(t)
	if after := ctimes(t, w2.Root); !equalMaps(w2Before, after) {
		t.Errorf("resync of w1 changed w2:\nbefore %v\nafter  %v", w2Before, after)
	}

	// Replication goes on after the resync.
	writeFile(t, c.Mount+"/after.html", "after the resync\n")
	c.waitConverged(t, converge)

	// Exit 2 names the worker that cannot be reached; resync needs the daemon.
	w2.Stop(t)
	out, errOut, code = run("verify")
	if code != 2 || !strings.Contains(out+errOut, "w2") {
		t.Errorf("verify with w2 down: exit %d, want 2 naming w2\n%s%s", code, out, errOut)
	}
	c.Stop(t)
	if _, errOut, code := run("resync", "w1"); code == 0 || !strings.Contains(errOut, "running daemon") || !strings.Contains(errOut, "mirrorfs verify") {
		t.Errorf("resync without a daemon: exit %d, stderr %q", code, errOut)
	}
}

func statT(t *testing.T, p string) *syscall.Stat_t {
	t.Helper()
	st, err := lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// ctimes maps every path under root to its inode and ctime: any change
// to a file, even of attributes only, shows.
func ctimes(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := statT(t, p)
		out[p] = fmt.Sprintf("ino %d ctime %s", st.Ino, fmtTimeNs(st.Ctim))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// With the master's own store unreadable, verify fails as a command (exit
// 1, the store named), not as every worker unreachable (exit 2, which the
// runbook's monitoring alerts on per worker).
func TestVerifyStoreUnreadable(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 2})
	writeFile(t, c.Mount+"/index.html", "x\n")
	c.waitConverged(t, converge)
	c.Stop(t)
	if err := os.Rename(c.Store, c.Store+".away"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Rename(c.Store+".away", c.Store) })
	_, errOut, code := runMirrorfs(t, c.Bin, "verify", "--config", c.Config)
	if code != 1 || !strings.Contains(errOut, c.Store) || strings.Contains(errOut, "could not verify worker") {
		t.Errorf("verify with the store gone: exit %d, %q; want exit 1 naming the store", code, strings.TrimSpace(errOut))
	}
}
