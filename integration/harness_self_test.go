package integration

import (
	"bufio"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Tests of the harness itself; none needs the mirrorfs daemon.

// TestHarnessSSHD starts three real sshd workers and checks that the client
// key and known_hosts work, that host keys are really verified, that SFTP
// works, and that Stop drops connections and refuses new ones until Start.
func TestHarnessSSHD(t *testing.T) {
	var workers []*sshWorker
	for i := 1; i <= 3; i++ {
		workers = append(workers, startSSHD(t, fmt.Sprintf("w%d", i)))
	}
	kh := filepath.Join(t.TempDir(), "known_hosts")
	writeKnownHosts(t, kh, workers...)
	key, _ := clientKey(t)

	sshTrue := func(w *sshWorker, knownHosts string) ([]byte, error) {
		return exec.Command("ssh", "-F", "/dev/null", "-i", key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
			"-o", "UserKnownHostsFile="+knownHosts, "-o", "GlobalKnownHostsFile=/dev/null",
			"-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5",
			"-p", strconv.Itoa(w.Port), "root@127.0.0.1", "true").CombinedOutput()
	}
	ports := map[int]bool{}
	for _, w := range workers {
		if out, err := sshTrue(w, kh); err != nil {
			t.Fatalf("ssh to %s: %v\n%s", w.Name, err, out)
		}
		if ports[w.Port] {
			t.Fatalf("port %d used twice", w.Port)
		}
		ports[w.Port] = true
	}

	t.Run("HostKeyVerified", func(t *testing.T) {
		// w1's port with w2's host key: the client must refuse.
		wrong := filepath.Join(t.TempDir(), "known_hosts")
		line := fmt.Sprintf("[127.0.0.1]:%d %s\n", workers[0].Port, workers[1].hostPub)
		if err := os.WriteFile(wrong, []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := sshTrue(workers[0], wrong)
		if err == nil || !strings.Contains(string(out), "Host key verification failed") {
			t.Fatalf("ssh with a wrong known_hosts line: err=%v, output:\n%s", err, out)
		}
	})

	t.Run("SFTP", func(t *testing.T) {
		w := workers[0]
		src := filepath.Join(t.TempDir(), "src")
		writeFile(t, src, "sftp payload")
		batch := fmt.Sprintf("put %s %s/a\nln %s/a %s/b\nrename %s/b %s/c\n", src, w.Root, w.Root, w.Root, w.Root, w.Root)
		cmd := exec.Command("sftp", append([]string{"-b", "-"}, sftpArgs(w.sshArgs(t, kh))...)...)
		cmd.Stdin = strings.NewReader(batch)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("sftp: %v\n%s", err, out)
		}
		if got := readFile(t, filepath.Join(w.Root, "a")); got != "sftp payload" {
			t.Fatalf("a = %q", got)
		}
		a, _ := lstat(filepath.Join(w.Root, "a"))
		c, err := lstat(filepath.Join(w.Root, "c"))
		if err != nil || a.Ino != c.Ino {
			t.Fatalf("hardlink+rename over SFTP: a and c should share an inode (err %v)", err)
		}
	})

	t.Run("StopStart", func(t *testing.T) {
		w := workers[1]
		// A session that would last a minute must be cut by Stop.
		long := exec.Command("ssh", append(w.sshArgs(t, kh), "echo ready; exec sleep 60")...)
		stdout, err := long.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := long.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() {
			line, _ := bufio.NewReader(stdout).ReadString('\n')
			if line != "ready\n" {
				t.Errorf("long session said %q", line)
			}
			exited <- long.Wait()
		}()
		waitFor(t, 5*time.Second, "the long session's sleep", func() error {
			for _, p := range descendants(w.cmd.Process.Pid) {
				if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p)); strings.TrimSpace(string(comm)) == "sleep" {
					return nil
				}
			}
			return fmt.Errorf("no sleep under sshd %d", w.cmd.Process.Pid)
		})
		listener := w.cmd.Process.Pid
		sessions := descendants(listener)

		w.Stop(t)
		select {
		case err := <-exited:
			if err == nil {
				t.Fatal("the ssh session ended with success; expected a dropped connection")
			}
		case <-time.After(5 * time.Second):
			long.Process.Kill()
			t.Fatal("an open ssh session survived Stop")
		}
		// Stop waits for the listener; its session processes got the
		// signal too and may still be on their way out on a loaded
		// machine (seen: state R right after Stop in CI).
		waitFor(t, 5*time.Second, "every process of the stopped sshd to exit", func() error {
			for _, p := range append(sessions, listener) {
				if _, state, ok := procStat(p); ok && state != 'Z' {
					return fmt.Errorf("process %d still alive (state %c)", p, state)
				}
			}
			return nil
		})
		if _, err := net.DialTimeout("tcp", w.Addr(), time.Second); !isConnRefused(err) {
			t.Fatalf("dial stopped worker: %v, want connection refused", err)
		}
		// The others are unaffected.
		if out, err := sshTrue(workers[0], kh); err != nil {
			t.Fatalf("ssh w1 while w2 is down: %v\n%s", err, out)
		}

		w.Start(t)
		if out, err := sshTrue(w, kh); err != nil {
			t.Fatalf("ssh after restart (same port and host key): %v\n%s", err, out)
		}
	})

	t.Run("FreezeThaw", func(t *testing.T) {
		w := workers[2]
		w.Freeze(t)
		if err := sshBanner(w.Addr(), 300*time.Millisecond); err == nil {
			t.Fatal("frozen worker sent an SSH banner")
		}
		w.Thaw(t)
		if out, err := sshTrue(w, kh); err != nil {
			t.Fatalf("ssh after thaw: %v\n%s", err, out)
		}
	})

	t.Run("RotateHostKey", func(t *testing.T) {
		w := workers[2]
		w.RotateHostKey(t)
		if out, err := sshTrue(w, kh); err == nil {
			t.Fatalf("ssh with the old host key line succeeded after rotation:\n%s", out)
		}
		if out, err := sshTrue(w, w.KnownHosts); err != nil {
			t.Fatalf("ssh with the worker's new known_hosts: %v\n%s", err, out)
		}
	})
}

// sftpArgs converts ssh client arguments for sftp, which spells the port -P.
func sftpArgs(sshArgs []string) []string {
	out := append([]string(nil), sshArgs...)
	for i, a := range out {
		if a == "-p" {
			out[i] = "-P"
		}
	}
	return out
}

// baseTime has no sub-second part, so that +500ms stays in the same second.
var baseTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// makeTree builds a small web root with one of each kind of entry.
func makeTree(t *testing.T, root string) {
	t.Helper()
	mkdirAll(t, filepath.Join(root, "dir"))
	mkdirAll(t, filepath.Join(root, "sticky"))
	writeFile(t, filepath.Join(root, "index.html"), "hello")
	writeFile(t, filepath.Join(root, "empty"), "")
	writeFile(t, filepath.Join(root, "dir", "page.html"), "<p>page</p>")
	writeFile(t, filepath.Join(root, "dir", "hard1"), "linked")
	writeFile(t, filepath.Join(root, "same1"), "same")
	writeFile(t, filepath.Join(root, "same2"), "same")
	writeFile(t, filepath.Join(root, "suid"), "#!/bin/sh\n")
	writeFile(t, filepath.Join(root, "x.swp"), "swap")
	must(t, os.Link(filepath.Join(root, "dir", "hard1"), filepath.Join(root, "dir", "hard2")))
	must(t, os.Link(filepath.Join(root, "dir", "hard1"), filepath.Join(root, "hard3")))
	must(t, os.Symlink("../index.html", filepath.Join(root, "dir", "link")))
	must(t, syscall.Chmod(filepath.Join(root, "suid"), 0o4755)) // os.Chmod would drop 04000
	must(t, syscall.Chmod(filepath.Join(root, "sticky"), 0o1777))
	must(t, os.Chmod(root, 0o755))
	resetTimes(t, root, true)
}

// resetTimes sets the mtime of every regular file (if files) and directory
// under root to baseTime.
func resetTimes(t *testing.T, root string, files bool) {
	t.Helper()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || (files && d.Type().IsRegular()) {
			return os.Chtimes(p, baseTime, baseTime)
		}
		return nil
	})
	must(t, err)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestHarnessCompareTrees checks that compareTrees reports each kind of
// difference, exactly once, and nothing for identical trees.
func TestHarnessCompareTrees(t *testing.T) {
	if _, err := exec.LookPath("cp"); err != nil {
		requireReal(t, "cp")
	}
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	makeTree(t, store)
	n := 0
	copyTree := func() string {
		n++
		p := filepath.Join(dir, fmt.Sprintf("worker%d", n))
		mustRun(t, "cp", "-a", store, p)
		return p
	}

	if d := compareTrees(store, store, nil); len(d) != 0 {
		t.Fatalf("tree vs itself: %q", d)
	}
	if d := compareTrees(store, copyTree(), nil); len(d) != 0 {
		t.Fatalf("tree vs cp -a copy: %q", d)
	}

	j := func(p ...string) string { return filepath.Join(p...) }
	cases := []struct {
		name         string
		mutate       func(w string)
		keepDirTimes bool     // do not reset directory mtimes after mutate
		want         []string // substrings, one per expected difference
	}{
		{name: "content", mutate: func(w string) {
			writeFile(t, j(w, "index.html"), "HELLO")
			must(t, os.Chtimes(j(w, "index.html"), baseTime, baseTime))
		}, want: []string{"index.html: content differs (5 bytes)"}},
		{name: "size", mutate: func(w string) {
			writeFile(t, j(w, "index.html"), "hello!")
			must(t, os.Chtimes(j(w, "index.html"), baseTime, baseTime))
		}, want: []string{"index.html: size differs: store 5 bytes, worker 6 bytes"}},
		{name: "mode", mutate: func(w string) {
			must(t, os.Chmod(j(w, "dir", "page.html"), 0o600))
		}, want: []string{"dir/page.html: mode differs: store 0644, worker 0600"}},
		{name: "setuid", mutate: func(w string) {
			must(t, os.Chmod(j(w, "suid"), 0o755))
		}, want: []string{"suid: mode differs: store 4755, worker 0755"}},
		{name: "sticky", mutate: func(w string) {
			must(t, os.Chmod(j(w, "sticky"), 0o777))
		}, want: []string{"sticky: mode differs: store 1777, worker 0777"}},
		{name: "root mode", mutate: func(w string) {
			must(t, os.Chmod(w, 0o700))
		}, want: []string{".: mode differs: store 0755, worker 0700"}},
		{name: "root mtime", keepDirTimes: true, mutate: func(w string) {
			must(t, os.Chtimes(w, baseTime, baseTime.Add(-time.Hour)))
		}, want: []string{".: directory mtime differs"}},
		{name: "root owner", mutate: func(w string) {
			if os.Geteuid() != 0 {
				t.Skip("chown needs root")
			}
			must(t, os.Lchown(w, 1234, 1234))
		}, want: []string{".: owner differs: store 0:0, worker 1234:1234"}},
		{name: "mtime", mutate: func(w string) {
			must(t, os.Chtimes(j(w, "index.html"), baseTime, baseTime.Add(time.Second)))
		}, want: []string{"index.html: mtime differs"}},
		{name: "sub-second mtime ignored", mutate: func(w string) {
			must(t, os.Chtimes(j(w, "index.html"), baseTime, baseTime.Add(500*time.Millisecond)))
		}},
		{name: "directory mtime", keepDirTimes: true, mutate: func(w string) {
			must(t, os.Chtimes(j(w, "dir"), baseTime, baseTime.Add(-time.Hour)))
		}, want: []string{"dir: directory mtime differs"}},
		{name: "symlink target", mutate: func(w string) {
			must(t, os.Remove(j(w, "dir", "link")))
			must(t, os.Symlink("../elsewhere.html", j(w, "dir", "link")))
		}, want: []string{`dir/link: symlink target differs: store "../index.html", worker "../elsewhere.html"`}},
		{name: "symlink became file", mutate: func(w string) {
			must(t, os.Remove(j(w, "dir", "link")))
			writeFile(t, j(w, "dir", "link"), "hello")
		}, want: []string{"dir/link: type differs: store symlink, worker regular file"}},
		{name: "hard link split", mutate: func(w string) {
			must(t, os.Remove(j(w, "dir", "hard2")))
			writeFile(t, j(w, "dir", "hard2"), "linked")
			must(t, os.Chtimes(j(w, "dir", "hard2"), baseTime, baseTime))
		}, want: []string{"dir/hard1: hard-link groups differ: store [dir/hard1 dir/hard2 hard3], worker [dir/hard1 hard3] [dir/hard2]"}},
		{name: "hard link joined", mutate: func(w string) {
			must(t, os.Remove(j(w, "same2")))
			must(t, os.Link(j(w, "same1"), j(w, "same2")))
		}, want: []string{"same1: hard-link groups differ: store [same1] [same2], worker [same1 same2]"}},
		{name: "extra file", mutate: func(w string) {
			writeFile(t, j(w, "dir", "new.html"), "new")
		}, want: []string{"dir/new.html: extra on worker (regular file, 3 bytes)"}},
		{name: "missing file", mutate: func(w string) {
			must(t, os.Remove(j(w, "empty")))
		}, want: []string{"empty: missing on worker (store has regular file, 0 bytes)"}},
		{name: "missing directory reported once", mutate: func(w string) {
			must(t, os.RemoveAll(j(w, "dir")))
		}, want: []string{"dir: missing on worker (store has directory)"}},
		{name: "leftover temp file", mutate: func(w string) {
			writeFile(t, j(w, "dir", workerTempPrefix+"123"), "partial")
		}, want: []string{"dir/.mirrorfs-tmp-123: leftover temp file on worker"}},
		{name: "temp file ignored while not converged", mutate: func(w string) {
			writeFile(t, j(w, "dir", workerTempPrefix+"123"), "partial")
			must(t, os.Remove(j(w, "empty")))
		}, want: []string{"empty: missing on worker"}},
		{name: "owner", mutate: func(w string) {
			if os.Geteuid() != 0 {
				t.Skip("chown needs root")
			}
			must(t, os.Lchown(j(w, "index.html"), 1234, 1234))
		}, want: []string{"index.html: owner differs: store 0:0, worker 1234:1234"}},
		{name: "excluded path differs", mutate: func(w string) {
			writeFile(t, j(w, "x.swp"), "other swap")
			must(t, os.Chtimes(j(w, "x.swp"), baseTime, baseTime))
		}, want: []string{"x.swp: size differs"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := copyTree()
			tc.mutate(w)
			if !tc.keepDirTimes {
				resetTimes(t, w, false)
			}
			checkDiffs(t, compareTrees(store, w, nil), tc.want)
		})
	}

	t.Run("exclusions", func(t *testing.T) {
		w := copyTree()
		writeFile(t, j(w, "x.swp"), "other swap")
		writeFile(t, j(w, "dir", "y.swp"), "extra swap")
		resetTimes(t, w, false)
		checkDiffs(t, compareTrees(store, w, excludeMatcher([]string{"*.swp"})), nil)
	})
}

// checkDiffs checks that diffs has exactly one entry containing each want.
func checkDiffs(t *testing.T, diffs, want []string) {
	t.Helper()
	if len(diffs) != len(want) {
		t.Fatalf("got %d differences, want %d:\n  %s", len(diffs), len(want), strings.Join(diffs, "\n  "))
	}
	for i, w := range want {
		if !strings.Contains(diffs[i], w) {
			t.Errorf("difference %d = %q, want it to contain %q", i, diffs[i], w)
		}
	}
	t.Logf("differences: %q", diffs)
}

func TestHarnessExcludeMatcher(t *testing.T) {
	m := excludeMatcher([]string{"*.swp", ".git", "cache/*", "/top.txt"})
	for rel, want := range map[string]bool{
		"a.swp":        true,
		"dir/b.swp":    true,
		".git":         true,
		"sub/.git":     true,
		"cache/x":      true,
		"sub/cache/x":  false,
		"top.txt":      true,
		"sub/top.txt":  false,
		"index.html":   false,
		"swp":          false,
		"dir/page.swp": true,
	} {
		if got := m(rel); got != want {
			t.Errorf("excluded(%q) = %v, want %v", rel, got, want)
		}
	}
	if excludeMatcher(nil) != nil {
		t.Error("excludeMatcher(nil) should be nil")
	}
}

func TestHarnessMountinfo(t *testing.T) {
	const sample = `22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
36 22 0:31 / /tmp/Test\040x/001/mnt rw,nosuid,nodev,relatime shared:9 - fuse.mirrorfs /tmp/store rw,user_id=0,group_id=0,allow_other
37 22 0:32 / /mnt/plain rw,relatime shared:10 master:3 - fuse /dev/fuse rw,user_id=0
`
	got := parseMountinfo(sample)
	want := []mountEntry{
		{"/", "ext4", "/dev/vda"},
		{"/tmp/Test x/001/mnt", "fuse.mirrorfs", "/tmp/store"},
		{"/mnt/plain", "fuse", "/dev/fuse"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("parseMountinfo:\n got %q\nwant %q", got, want)
	}
	if isMounted(t.TempDir()) {
		t.Fatal("a fresh temp dir reported as a FUSE mount")
	}
}

func TestHarnessConfigYAML(t *testing.T) {
	c := &cluster{
		Mount: "/m/mnt", Store: "/m/store", Journal: "/m/journal", Control: "/m/ctl.sock",
		KnownHosts: "/m/known_hosts", Identity: "/k/id_ed25519",
		opts: clusterOptions{Exclude: []string{"*.swp", `we"ird`}, BatchDelay: "10ms"},
		Workers: []*sshWorker{
			{Name: "w1", Port: 40001, Root: "/r/w1"},
			{Name: "w2", Port: 40002, Root: "/r/w2"},
		},
	}
	want := `# mirrorfs config written by the integration harness
mount: "/m/mnt"
store: "/m/store"
journal: "/m/journal"
control: "/m/ctl.sock"
exclude: ["*.swp", "we\"ird"]
batch: {delay: "10ms", max_ops: 50000, hold_open: 60s}
retry: {min: 50ms, max: 1s}
log: {level: "debug"}
ssh: {user: root, identity: ["/k/id_ed25519"], known_hosts: "/m/known_hosts", connect_timeout: 5s}
workers:
  - {name: "w1", host: 127.0.0.1, port: 40001, root: "/r/w1"}
  - {name: "w2", host: 127.0.0.1, port: 40002, root: "/r/w2"}
`
	if got := c.configYAML(); got != want {
		t.Errorf("config:\n%s\nwant:\n%s", got, want)
	}
	c.opts.InPlace = true
	c.opts.ExtraYAML = "transport: agent"
	got := c.configYAML()
	if strings.Contains(got, "store:") || !strings.HasSuffix(got, "\ntransport: agent\n") {
		t.Errorf("InPlace config:\n%s", got)
	}
}

// TestHarnessProcessTree checks the /proc walk that Stop relies on.
func TestHarnessProcessTree(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 30 & sleep 30 & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	must(t, cmd.Start())
	defer func() {
		// Kill the sleeps, then let the shell reap them and exit.
		for _, p := range descendants(cmd.Process.Pid) {
			syscall.Kill(p, syscall.SIGKILL)
		}
		syscall.Kill(cmd.Process.Pid, syscall.SIGCONT)
		cmd.Wait()
	}()
	waitFor(t, 5*time.Second, "two children", func() error {
		if d := descendants(cmd.Process.Pid); len(d) != 2 {
			return fmt.Errorf("descendants = %v", d)
		}
		return nil
	})
	kids := stopProcessTree(cmd.Process.Pid)
	for _, p := range append(kids, cmd.Process.Pid) {
		if _, state, _ := procStat(p); state != 'T' {
			t.Errorf("process %d state %c, want T (stopped)", p, state)
		}
	}
}
