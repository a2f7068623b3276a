package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A worker account that allows SFTP only (a forced sftp-server command, as
// hosting providers set up) cannot run the agent: mirrorfs says why in its
// log and replicates over SFTP on the same connection.
func TestAgentFallsBackToSFTP(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 1, Transport: "sftp-only", PrefillWorker: func(w *sshWorker) {
		keys, err := os.ReadFile(w.AuthorizedKeys)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for line := range strings.SplitSeq(strings.TrimSpace(string(keys)), "\n") {
			out = append(out, `restrict,command="/usr/lib/openssh/sftp-server" `+line)
		}
		if err := os.WriteFile(w.AuthorizedKeys, []byte(strings.Join(out, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}})
	if _, err := os.Stat("/usr/lib/openssh/sftp-server"); err != nil {
		requireReal(t, "/usr/lib/openssh/sftp-server (Debian: openssh-sftp-server)")
	}
	writeFile(t, c.Mount+"/index.html", "served over sftp\n")
	mkdirAll(t, c.Mount+"/css")
	writeFile(t, c.Mount+"/css/site.css", "body{}\n")
	c.waitConverged(t, converge)
	log := readFile(t, c.LogPath)
	if !strings.Contains(log, "agent transport unavailable on this worker: using SFTP") {
		t.Fatalf("no logged reason for the SFTP fallback in the daemon log:\n%s", logTail(c.LogPath, 40))
	}
}

// agentCachePath is where the master keeps the agent build of bin on a
// worker: the SSH user's (root's) home, .cache/mirrorfs, mirrorfs-<id>.
func agentCachePath(t *testing.T, bin string) string {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(u.HomeDir, ".cache/mirrorfs", "mirrorfs-"+mustSHA256(t, bin)[:16])
}

func mustSHA256(t *testing.T, p string) string {
	t.Helper()
	sum, err := fileSHA256(p)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// replaceFile puts data at p through a rename: p may be a running
// executable, which cannot be written in place.
func replaceFile(t *testing.T, p string, data []byte, perm os.FileMode) {
	t.Helper()
	tmp := p + ".replace"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
}

// damagedCopy is bin with one letter of a log message changed: it still
// runs, as the agent, but it is another build (another SHA-256) of the
// same size.
func damagedCopy(t *testing.T, bin string) []byte {
	t.Helper()
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(data, []byte("uploaded the agent"))
	if i < 0 {
		t.Fatalf("%s: no %q to change", bin, "uploaded the agent")
	}
	data[i] = 'U'
	return data
}

// A worker's cached agent that runs but is another build under this
// build's name (a damaged upload) is replaced over the same connection,
// and replication goes on with the agent.
func TestAgentReplacesDamagedUpload(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 1})
	writeFile(t, c.Mount+"/index.html", "first\n")
	c.waitConverged(t, converge)
	cached := agentCachePath(t, c.Bin)
	want := mustSHA256(t, c.Bin)
	if got := mustSHA256(t, cached); got != want {
		t.Fatalf("%s: SHA-256 %.16s, want the master's build %.16s", cached, got, want)
	}
	c.Stop(t)
	replaceFile(t, cached, damagedCopy(t, c.Bin), 0o700)
	restartExpectingUpload(t, c)
	if got := mustSHA256(t, cached); got != want {
		t.Errorf("%s: SHA-256 %.16s after the restart, want %.16s", cached, got, want)
	}
}

// A worker's cached agent of the right size that its shell cannot run (here
// not executable; also a file pruned by another master's upload between
// this master's look and its start) is uploaded again over the same
// connection instead of sending the worker to SFTP until the next redial.
func TestAgentReplacesCachedAgentThatDoesNotRun(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 1})
	writeFile(t, c.Mount+"/index.html", "first\n")
	c.waitConverged(t, converge)
	cached := agentCachePath(t, c.Bin)
	c.Stop(t)
	if err := os.Chmod(cached, 0o600); err != nil {
		t.Fatal(err)
	}
	restartExpectingUpload(t, c)
	if fi, err := os.Stat(cached); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("%s after the restart: %v, %v; want mode 0700", cached, fi.Mode(), err)
	}
}

// restartExpectingUpload starts the stopped cluster c, replicates one
// change and fails unless the daemon uploaded the agent again and stayed
// on the agent transport.
func restartExpectingUpload(t *testing.T, c *cluster) {
	t.Helper()
	logged := len(readFile(t, c.LogPath))
	c.Start(t)
	writeFile(t, c.Mount+"/index.html", "second\n")
	c.waitConverged(t, converge)
	log := readFile(t, c.LogPath)[logged:]
	if strings.Contains(log, "agent transport unavailable") || !strings.Contains(log, "uploaded the agent") {
		t.Fatalf("the cached agent was not replaced, or replication fell back to SFTP; daemon log since the restart:\n%s", lastLines(log, 40))
	}
}

// When a package upgrade replaces the master's executable while the
// daemon runs, a worker that needs the agent again gets the build that
// runs, not the new file at the executable's path (which would run as
// another build and push the worker to SFTP).
func TestAgentUploadIsTheRunningBuild(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 1})
	c.Stop(t)
	// A private copy of the binary, which the test may replace.
	running := filepath.Join(c.Dir, "mirrorfs")
	orig, err := os.ReadFile(c.Bin)
	if err != nil {
		t.Fatal(err)
	}
	replaceFile(t, running, orig, 0o755)
	c.Bin = running
	cached := agentCachePath(t, running)
	c.Start(t)
	writeFile(t, c.Mount+"/index.html", "first\n")
	c.waitConverged(t, converge)

	// The upgrade, then a worker that lacks the build and must reconnect.
	replaceFile(t, running, damagedCopy(t, running), 0o755)
	if err := os.Remove(cached); err != nil {
		t.Fatal(err)
	}
	logged := len(readFile(t, c.LogPath))
	killAgents(t, cached)

	writeFile(t, c.Mount+"/index.html", "second\n")
	c.waitConverged(t, converge)
	log := readFile(t, c.LogPath)[logged:]
	if strings.Contains(log, "agent transport unavailable") {
		t.Fatalf("replication fell back to SFTP after the upgrade; daemon log since:\n%s", lastLines(log, 40))
	}
	sum := sha256.Sum256(orig)
	if got, want := mustSHA256(t, cached), hex.EncodeToString(sum[:]); got != want {
		t.Errorf("%s: SHA-256 %.16s, want the running build's %.16s", cached, got, want)
	}
}

// killAgents kills the agent processes running the executable exe (this
// test's own: exe is named after its build), so that the master dials again.
func killAgents(t *testing.T, exe string) {
	t.Helper()
	procs, err := filepath.Glob("/proc/[0-9]*/exe")
	if err != nil {
		t.Fatal(err)
	}
	killed := 0
	for _, p := range procs {
		if target, err := os.Readlink(p); err == nil && strings.TrimSuffix(target, " (deleted)") == exe {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
				killed++
			}
		}
	}
	if killed == 0 {
		t.Fatalf("no agent process runs %s", exe)
	}
}

// An upload of the agent removes the other builds from the worker's cache
// (one more per upgrade of the master) and uploads cut off long ago, but
// not an upload that may still be under way.
func TestAgentUploadRemovesOldBuilds(t *testing.T) {
	bin := mirrorfsBinary(t)
	cached := agentCachePath(t, bin)
	dir := filepath.Dir(cached)
	mkdirAll(t, dir)
	if err := os.Remove(cached); err != nil && !os.IsNotExist(err) { // so that this start uploads
		t.Fatal(err)
	}
	oldBuild := filepath.Join(dir, "mirrorfs-0000000000000000")
	cutOff := filepath.Join(dir, ".mirrorfs-tmp-cut-off-upload")
	underWay := filepath.Join(dir, ".mirrorfs-tmp-upload-under-way")
	for _, p := range []string{oldBuild, cutOff, underWay} {
		writeFile(t, p, "not an agent\n")
	}
	t.Cleanup(func() { os.Remove(underWay) })
	twoHoursAgo := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(cutOff, twoHoursAgo, twoHoursAgo); err != nil {
		t.Fatal(err)
	}

	c := newCluster(t, clusterOptions{Workers: 1})
	writeFile(t, c.Mount+"/index.html", "served by the agent\n")
	c.waitConverged(t, converge)
	if !strings.Contains(readFile(t, c.LogPath), "uploaded the agent") {
		t.Fatalf("the agent was not uploaded; daemon log:\n%s", logTail(c.LogPath, 40))
	}
	for p, want := range map[string]bool{cached: true, oldBuild: false, cutOff: false, underWay: true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s: exists = %v, want %v", p, err == nil, want)
		}
	}
}

// An agent whose master went away without closing the connection (a
// network cut leaves sshd, and with it the agent's input, open for hours)
// exits once nothing came for --idle-exit, saying why; and the master
// starts its agents with it (it pings them while idle: agent package).
func TestAgentExitsWhenTheMasterIsSilent(t *testing.T) {
	bin := mirrorfsBinary(t)
	cmd := exec.Command(bin, "agent", "--root", t.TempDir(), "--idle-exit", "300ms")
	in, err := cmd.StdinPipe() // held open, never written: a master cut off
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err == nil || !strings.Contains(stderr.String(), "nothing from the master") {
			t.Errorf("agent exit: %v, stderr %q; want a failure saying nothing came from the master", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Fatal("agent with --idle-exit 300ms still running 10 s after its master went silent")
	}

	c := newCluster(t, clusterOptions{Workers: 1})
	writeFile(t, c.Mount+"/index.html", "served by the agent\n")
	c.waitConverged(t, converge)
	root := c.Workers[0].Root
	var cmdlines []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		line := strings.Join(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), " ")
		if strings.Contains(line, " agent --root "+root) {
			cmdlines = append(cmdlines, line)
		}
	}
	if len(cmdlines) != 1 || !strings.HasSuffix(cmdlines[0], " --idle-exit 10m0s") {
		t.Errorf("agents of %s: %q; want one, run with --idle-exit 10m0s", root, cmdlines)
	}
}
