package integration

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// Worker faults: a worker that refuses the daemon or cannot take what it
// is sent. For each, with two workers w1 (faulty) and w2 (healthy):
//   - `mirrorfs status` shows a clear last_error for w1, and the daemon
//     log has it too;
//   - the daemon keeps retrying w1 with a growing backoff and does not
//     exit;
//   - w1 gets nothing wrong meanwhile (its tree stays as it was, or at
//     worst shows complete files and no temp files);
//   - w2 converges meanwhile;
//   - once the fault is fixed, w1 converges.

// faultRetries is how many more retries of the faulty worker a test waits
// for in the log, to prove that the daemon keeps trying.
const faultRetries = 3

// workerError polls `mirrorfs status` until the worker's last_error
// satisfies ok, and returns it.
func workerError(t *testing.T, c *cluster, w *sshWorker, what string, ok func(string) bool) string {
	t.Helper()
	var last string
	waitFor(t, converge, fmt.Sprintf("status of %s to show %s", w.Name, what), func() error {
		if ps, dead := c.exitedUnexpectedly(); dead {
			t.Fatalf("mirrorfs exited (%v)\nlog:\n%s", ps, logTail(c.LogPath, 60))
		}
		ws, found := c.status(t).worker(w.Name)
		if !found {
			return fmt.Errorf("no worker %s in status", w.Name)
		}
		last = ws.LastError
		if !ok(last) {
			return fmt.Errorf("last_error = %q", last)
		}
		return nil
	})
	return last
}

// containsAll returns a matcher for strings that contain every part.
func containsAll(parts ...string) func(string) bool {
	return func(s string) bool {
		for _, p := range parts {
			if !strings.Contains(s, p) {
				return false
			}
		}
		return true
	}
}

// retryLines returns the daemon log's "replication failed; retrying" lines
// of the worker.
func retryLines(c *cluster, w *sshWorker) []string {
	var out []string
	for line := range strings.SplitSeq(readFrom(c.LogPath, 0), "\n") {
		if strings.Contains(line, `msg="replication failed; retrying"`) && strings.Contains(line, " worker="+w.Name+" ") {
			out = append(out, line)
		}
	}
	return out
}

// retryDelay parses the backoff (in=…) of a retry line.
func retryDelay(line string) (time.Duration, bool) {
	i := strings.LastIndex(line, " in=")
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(line[i+len(" in="):])
	if len(f) == 0 {
		return 0, false
	}
	d, err := time.ParseDuration(f[0])
	return d, err == nil
}

// assertRetrying waits until the daemon logged faultRetries more failed
// attempts for w, each with an error containing every part, and checks
// that the logged backoff grew: the daemon keeps trying, with backoff,
// and is still running.
func assertRetrying(t *testing.T, c *cluster, w *sshWorker, parts ...string) {
	t.Helper()
	match := containsAll(parts...)
	n0 := len(retryLines(c, w))
	var lines []string
	waitFor(t, converge, fmt.Sprintf("%d more logged retries of %s", faultRetries, w.Name), func() error {
		if ps, dead := c.exitedUnexpectedly(); dead {
			t.Fatalf("mirrorfs exited (%v) while %s was failing\nlog:\n%s", ps, w.Name, logTail(c.LogPath, 60))
		}
		lines = retryLines(c, w)
		if len(lines) < n0+faultRetries {
			return fmt.Errorf("%d retries logged, want %d", len(lines)-n0, faultRetries)
		}
		return nil
	})
	for _, l := range lines[n0:] {
		if !match(l) {
			t.Fatalf("daemon log: retry of %s without %q in its error:\n%s", w.Name, parts, l)
		}
	}
	// Backoff: the delays logged since this fault's first failure grow
	// (from retry.min towards retry.max; the attempt count resets only
	// after a successful batch). Compared as logged values, not as
	// measured time.
	start := slices.IndexFunc(lines, match)
	var first, most time.Duration
	for i, l := range lines[start:] {
		d, ok := retryDelay(l)
		if !ok {
			t.Fatalf("daemon log: retry line without a parsable delay: %s", l)
		}
		if i == 0 {
			first = d
		}
		most = max(most, d)
	}
	if most <= first {
		t.Fatalf("backoff of %s did not grow: first delay %v, largest %v\n%s", w.Name, first, most, strings.Join(lines[start:], "\n"))
	}
	if !c.running() {
		t.Fatalf("mirrorfs is not running\nlog:\n%s", logTail(c.LogPath, 60))
	}
}

// assertUnchanged fails if the worker's tree differs from before (mtimes
// aside: a refused write may create and remove a temp file).
func assertUnchanged(t *testing.T, w *sshWorker, before map[string]string) {
	t.Helper()
	requireUnchanged(t, w.Name+" (while it was failing)", w.Root, before, false)
}

// waitWorkerConverged waits until w alone equals the store.
func waitWorkerConverged(t *testing.T, c *cluster, w *sshWorker) {
	t.Helper()
	waitFor(t, converge, w.Name+" to converge", func() error {
		if ps, dead := c.exitedUnexpectedly(); dead {
			t.Fatalf("mirrorfs exited (%v)\nlog:\n%s", ps, logTail(c.LogPath, 60))
		}
		if d := c.compare(c.Store, w.Root); len(d) > 0 {
			return fmt.Errorf("%v", d[:min(len(d), 5)])
		}
		return nil
	})
}

// assertLogged fails unless a daemon log line about w contains every part.
func assertLogged(t *testing.T, c *cluster, w *sshWorker, parts ...string) {
	t.Helper()
	match := containsAll(parts...)
	for line := range strings.SplitSeq(readFrom(c.LogPath, 0), "\n") {
		if strings.Contains(line, " worker="+w.Name+" ") && match(line) {
			return
		}
	}
	t.Fatalf("daemon log has no line for %s with %q:\n%s", w.Name, parts, logTail(c.LogPath, 40))
}

// forTransports runs a test with the default transport (the agent) and
// with SFTP, whose server reports errors in its own, coarser terms.
func forTransports(t *testing.T, test func(t *testing.T, transport string)) {
	for _, tr := range []string{"", "sftp"} {
		name := tr
		if name == "" {
			name = "agent"
		}
		t.Run(name, func(t *testing.T) { test(t, tr) })
	}
}

// faultStart is the common beginning: a converged two-worker cluster with
// some content.
func faultStart(t *testing.T, opts clusterOptions) (*cluster, *sshWorker, *sshWorker) {
	t.Helper()
	opts.Workers = 2
	c := newCluster(t, opts)
	mkdirAll(t, c.Mount+"/site")
	writeFile(t, c.Mount+"/index.html", "<h1>before the fault</h1>\n")
	writeFile(t, c.Mount+"/site/page.html", "page\n")
	c.waitConverged(t, converge)
	return c, c.Workers[0], c.Workers[1]
}

// writeDuringFault makes changes through the mount while w1 is failing:
// w2 must get them.
func writeDuringFault(t *testing.T, c *cluster, healthy *sshWorker) {
	t.Helper()
	writeFile(t, c.Mount+"/during-fault.html", "written while a worker was failing\n")
	writeFile(t, c.Mount+"/index.html", "<h1>changed during the fault</h1>\n")
	waitWorkerConverged(t, c, healthy)
}

// hostKeyFingerprint is the SHA256 fingerprint of a public key file.
func hostKeyFingerprint(t *testing.T, pubFile string) string {
	t.Helper()
	b, err := os.ReadFile(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		t.Fatalf("%s: %v", pubFile, err)
	}
	return ssh.FingerprintSHA256(pub)
}

// TestWorkerHostKeyChanged: a worker whose sshd presents a host key other
// than the one in the daemon's known_hosts is refused (nothing is sent to
// it) with an error naming its address and the fingerprint of the key it
// offered; the old key back, it converges.
func TestWorkerHostKeyChanged(t *testing.T) {
	c, w1, w2 := faultStart(t, clusterOptions{})
	before := treeFingerprint(t, w1.Root, false)
	oldKey, oldPub := readFile(t, w1.HostKey), readFile(t, w1.HostKey+".pub")
	oldFP := hostKeyFingerprint(t, w1.HostKey+".pub")
	restore := func() {
		if err := os.WriteFile(w1.HostKey, []byte(oldKey), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(w1.HostKey+".pub", []byte(oldPub), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// A new host key; the daemon's known_hosts keeps the old one.
	w1.Stop(t)
	os.Remove(w1.HostKey)
	os.Remove(w1.HostKey + ".pub")
	mustRun(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mirrorfs-test-new-"+w1.Name, "-f", w1.HostKey)
	newFP := hostKeyFingerprint(t, w1.HostKey+".pub")
	if newFP == oldFP {
		t.Fatal("ssh-keygen made the same key twice")
	}
	w1.Start(t)

	writeDuringFault(t, c, w2)
	msg := workerError(t, c, w1, "a host key mismatch", containsAll(w1.Addr(), newFP))
	t.Logf("status last_error of %s: %s", w1.Name, msg)
	if !strings.Contains(strings.ToLower(msg), "mismatch") && !strings.Contains(msg, "changed") {
		t.Errorf("last_error does not say the host key changed: %q", msg)
	}
	assertRetrying(t, c, w1, w1.Addr(), newFP)
	assertUnchanged(t, w1, before)

	// The old key back: the worker converges.
	w1.Stop(t)
	restore()
	w1.Start(t)
	c.waitConverged(t, converge)
	c.verify(t)
	if ws, _ := c.status(t).worker(w1.Name); ws.LastError != "" || !ws.Connected {
		t.Fatalf("status of %s after recovery: %+v", w1.Name, ws)
	}
}

// TestWorkerAuthRefused: a worker that no longer accepts the daemon's key
// shows an authentication error naming its address and the user; the key
// back, it converges.
func TestWorkerAuthRefused(t *testing.T) {
	c, w1, w2 := faultStart(t, clusterOptions{})
	before := treeFingerprint(t, w1.Root, false)
	keys := readFile(t, w1.AuthorizedKeys)
	writeFile(t, w1.AuthorizedKeys, "# the daemon's key was removed by the test\n")
	// Drop the daemon's open connection: sshd checks keys at login.
	w1.Stop(t)
	w1.Start(t)

	writeDuringFault(t, c, w2)
	msg := workerError(t, c, w1, "an authentication error", containsAll(w1.Addr(), "unable to authenticate", `user "root"`))
	t.Logf("status last_error of %s: %s", w1.Name, msg)
	assertRetrying(t, c, w1, w1.Addr(), "unable to authenticate")
	assertUnchanged(t, w1, before)

	writeFile(t, w1.AuthorizedKeys, keys)
	c.waitConverged(t, converge)
	c.verify(t)
}

// TestWorkerRootMissing: a worker whose configured root does not exist
// gets an error naming the root, and mirrorfs does not create it; once it
// exists, the worker gets a full copy.
func TestWorkerRootMissing(t *testing.T) {
	forTransports(t, testWorkerRootMissing)
}

func testWorkerRootMissing(t *testing.T, transport string) {
	c := newCluster(t, clusterOptions{Workers: 2, Transport: transport, PrefillWorker: func(w *sshWorker) {
		if w.Name == "w1" {
			if err := os.RemoveAll(w.Root); err != nil {
				t.Fatal(err)
			}
		}
	}})
	w1, w2 := c.Workers[0], c.Workers[1]
	mkdirAll(t, c.Mount+"/site")
	writeFile(t, c.Mount+"/index.html", "<h1>home</h1>\n")
	writeFile(t, c.Mount+"/site/page.html", "page\n")
	waitWorkerConverged(t, c, w2)

	msg := workerError(t, c, w1, "an error naming the root", containsAll(w1.Addr(), w1.Root))
	t.Logf("status last_error of %s: %s", w1.Name, msg)
	assertRetrying(t, c, w1, w1.Root)
	writeDuringFault(t, c, w2)
	if _, err := os.Lstat(w1.Root); !os.IsNotExist(err) {
		t.Fatalf("the missing root %s was created by mirrorfs (lstat: %v)", w1.Root, err)
	}

	if err := os.Mkdir(w1.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(w1.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	c.waitConverged(t, converge)
	c.verify(t)
	assertLogged(t, c, w1, `msg="full copy done"`)
}

// mountedAt reports how many mounts have mount point p.
func mountedAt(p string) int {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0
	}
	n := 0
	for _, m := range parseMountinfo(string(b)) {
		if m.MountPoint == p {
			n++
		}
	}
	return n
}

// mountOver runs mount(8) with args whose last is the mount point p, and
// unmounts that one mount at the end of the test unless unmounted before
// (the returned func, safe to call more than once).
func mountOver(t *testing.T, p string, args ...string) (unmount func()) {
	t.Helper()
	n0 := mountedAt(p)
	mustRun(t, "mount", append(args, p)...)
	if mountedAt(p) != n0+1 {
		t.Fatalf("mount %v: no new mount at %s", args, p)
	}
	var once sync.Once
	unmount = func() {
		once.Do(func() {
			if mountedAt(p) > n0 {
				// A worker process may still have it open (busy):
				// then detach it lazily.
				if _, err := exec.Command("umount", p).CombinedOutput(); err != nil {
					if out, err := exec.Command("umount", "-l", p).CombinedOutput(); err != nil {
						t.Errorf("umount %s: %v: %s", p, err, out)
					}
				}
			}
		})
	}
	t.Cleanup(unmount)
	return unmount
}

// TestWorkerRootReadOnly: a worker root that cannot be written (a
// read-only bind mount over it, which root cannot bypass) gives an error
// naming the path and read-only file system; writable again, it converges.
func TestWorkerRootReadOnly(t *testing.T) {
	forTransports(t, testWorkerRootReadOnly)
}

func testWorkerRootReadOnly(t *testing.T, transport string) {
	c, w1, w2 := faultStart(t, clusterOptions{Transport: transport})
	before := treeFingerprint(t, w1.Root, false)
	// A bind mount of the root over itself, made read-only. sshd is
	// restarted so that the agent opens the root again, through it.
	w1.Stop(t)
	unmount := mountOver(t, w1.Root, "--bind", w1.Root)
	mustRun(t, "mount", "-o", "remount,bind,ro", w1.Root)
	w1.Start(t)
	if err := os.WriteFile(w1.Root+"/probe", nil, 0o644); err == nil {
		t.Fatal("the read-only worker root is writable: the test proves nothing")
	}

	writeDuringFault(t, c, w2)
	msg := workerError(t, c, w1, "a read-only error", containsAll("read-only file system"))
	t.Logf("status last_error of %s: %s", w1.Name, msg)
	if !strings.Contains(msg, w1.Root) && !strings.Contains(msg, "during-fault.html") && !strings.Contains(msg, "index.html") {
		t.Errorf("last_error names neither the root nor the file: %q", msg)
	}
	assertRetrying(t, c, w1, "read-only file system")
	assertUnchanged(t, w1, before)

	unmount()
	c.waitConverged(t, converge)
	c.verify(t)
}

// TestWorkerDiskFull: a worker whose disk is full shows a no-space error;
// the file never shows partially at its final path, the other worker gets
// it meanwhile, and once there is space the worker converges with no temp
// file left behind.
func TestWorkerDiskFull(t *testing.T) {
	forTransports(t, testWorkerDiskFull)
}

func testWorkerDiskFull(t *testing.T, transport string) {
	c := newCluster(t, clusterOptions{Workers: 2, Transport: transport, PrefillWorker: func(w *sshWorker) {
		if w.Name == "w1" {
			mountOver(t, w.Root, "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs")
		}
	}})
	w1, w2 := c.Workers[0], c.Workers[1]
	const oldContent = "previous complete version\n"
	writeFile(t, c.Mount+"/big.bin", oldContent)
	writeFile(t, c.Mount+"/index.html", "<h1>home</h1>\n")
	c.waitConverged(t, converge)

	// Watch the final path on w1: only the old or the complete new content.
	big := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16)
	var torn atomic.Value
	var reads atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			data, err := os.ReadFile(w1.Root + "/big.bin")
			reads.Add(1)
			switch {
			case os.IsNotExist(err):
				torn.CompareAndSwap(nil, "big.bin vanished from w1")
			case err != nil:
				torn.CompareAndSwap(nil, "read big.bin on w1: "+err.Error())
			case string(data) != oldContent && !bytes.Equal(data, big):
				torn.CompareAndSwap(nil, fmt.Sprintf("big.bin on w1 has %d bytes, neither version", len(data)))
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	stopWatch := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}
	t.Cleanup(stopWatch)

	writeFile(t, c.Mount+"/big.bin", string(big))
	waitWorkerConverged(t, c, w2)
	msg := workerError(t, c, w1, "a no-space error", containsAll("no space left on device"))
	t.Logf("status last_error of %s: %s", w1.Name, msg)
	if !strings.Contains(msg, "big.bin") {
		t.Errorf("last_error does not name the file: %q", msg)
	}
	assertRetrying(t, c, w1, "no space left on device")
	stopWatch()
	if v := torn.Load(); v != nil {
		t.Fatalf("while the disk was full: %v", v)
	}
	if got := readFile(t, w1.Root+"/big.bin"); got != oldContent {
		t.Fatalf("big.bin on the full worker = %d bytes, want the previous version", len(got))
	}
	t.Logf("%d reads of big.bin on w1 while its disk was full", reads.Load())

	mustRun(t, "mount", "-o", "remount,size=16m", w1.Root)
	c.waitConverged(t, converge) // also fails on leftover temp files
	c.verify(t)
	filepath.WalkDir(w1.Root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".mirrorfs-tmp-") {
			t.Errorf("temp file left on w1: %s", p)
		}
		return nil
	})
}

// hangSFTPOnWorker makes every new SFTP session on w hang before it
// answers (an sftp-server blocked on a dead disk or a hung NFS home, while
// sshd answers): w's sshd runs a wrapper as its sftp subsystem that sleeps
// while the returned flag file exists. w is restarted with the new
// configuration, which drops the daemon's connection to it.
func hangSFTPOnWorker(t *testing.T, w *sshWorker) (flag string) {
	t.Helper()
	flag = filepath.Join(w.Dir, "sftp-hangs")
	wrapper := filepath.Join(w.Dir, "sftp-wrapper.sh")
	script := fmt.Sprintf("#!/bin/sh\nif [ -e %s ]; then exec sleep 600; fi\nexec %s \"$@\"\n", flag, sftpSubsystem())
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(w.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	hung := strings.Replace(string(cfg), "Subsystem sftp "+sftpSubsystem(), "Subsystem sftp "+wrapper, 1)
	if hung == string(cfg) {
		t.Fatal("no Subsystem line to replace in the worker's sshd_config")
	}
	if err := os.WriteFile(w.ConfigPath, []byte(hung), 0o600); err != nil {
		t.Fatal(err)
	}
	w.Stop(t) // also ends the hung sessions, with their sshd
	w.Start(t)
	return flag
}

// hungSFTPSessions counts the wrapper's sleeping processes below w's sshd.
func hungSFTPSessions(w *sshWorker) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cmd == nil {
		return 0
	}
	n := 0
	for _, p := range descendants(w.cmd.Process.Pid) {
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p)); err == nil && strings.TrimSpace(string(comm)) == "sleep" {
			n++
		}
	}
	return n
}

// TestWorkerSFTPServerHangsAtConnect: the worker's sshd answers, but the
// SFTP server it starts, which the agent transport uses to look at the
// agent cached there, hangs. The connect is bounded by connect_timeout and
// retried; the other worker goes on; SIGTERM stops the daemon. The
// shipper used to wait for the SFTP server's greeting for good, and the
// daemon could then only be killed.
func TestWorkerSFTPServerHangsAtConnect(t *testing.T) {
	c, w1, w2 := faultStart(t, clusterOptions{})
	hangSFTPOnWorker(t, w1)
	writeFile(t, c.Mount+"/after-restart.html", "x\n") // w1's shipper dials again
	waitFor(t, converge, "an SFTP session of the daemon hanging on "+w1.Name, func() error {
		if hungSFTPSessions(w1) == 0 {
			return fmt.Errorf("no hung SFTP session yet")
		}
		return nil
	})
	n0 := len(retryLines(c, w1))
	writeDuringFault(t, c, w2)
	waitFor(t, converge, "a failed connect of "+w1.Name+" logged and retried", func() error {
		if n := len(retryLines(c, w1)); n == n0 {
			return fmt.Errorf("no retry logged since the SFTP server hung")
		}
		return nil
	})
	c.Stop(t) // fails unless the daemon exits within 20s of SIGTERM
}
