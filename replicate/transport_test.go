package replicate_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mirrorfs/mirrorfs/replicate"
	"github.com/mirrorfs/mirrorfs/replicate/transporttest"
	"golang.org/x/crypto/ssh"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func TestLocalConformance(t *testing.T) {
	transporttest.Run(t, func(t *testing.T) (replicate.Transport, string) {
		dir := filepath.Join(t.TempDir(), "root")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		tr, err := replicate.NewLocal(dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		return tr, dir
	})
}

func sftpOptions(t testing.TB, d *transporttest.SSHD, root string) replicate.SFTPOptions {
	return replicate.SFTPOptions{
		Addr: d.Addr, User: d.User, Root: root,
		IdentityFiles: []string{d.IdentityFile}, KnownHosts: d.KnownHosts,
		ConnectTimeout: 5 * time.Second, Logger: testLogger(t),
	}
}

func TestSFTPConformance(t *testing.T) {
	d := transporttest.StartSSHD(t)
	transporttest.Run(t, func(t *testing.T) (replicate.Transport, string) {
		dir := filepath.Join(t.TempDir(), "root")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		tr, err := replicate.DialSFTP(t.Context(), sftpOptions(t, d, dir))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		return tr, dir
	})
}

func TestSFTPHostKeyVerification(t *testing.T) {
	d := transporttest.StartSSHD(t)
	ctx := t.Context()
	dir := t.TempDir()
	fp := ssh.FingerprintSHA256(d.HostKey)

	// Unknown host: the error names the host and the key.
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	o := sftpOptions(t, d, dir)
	o.KnownHosts = empty
	_, err := replicate.DialSFTP(ctx, o)
	if err == nil || !strings.Contains(err.Error(), "unknown") || !strings.Contains(err.Error(), fp) || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Errorf("unknown host: %v", err)
	}

	// Another key listed for the host: a mismatch, naming both keys.
	other, _ := os.ReadFile(d.KnownHosts)
	_, wrongPub := newKey(t)
	wrong := filepath.Join(dir, "wrong")
	line := strings.SplitN(string(other), " ", 2)[0] + " " + string(ssh.MarshalAuthorizedKey(wrongPub))
	os.WriteFile(wrong, []byte(line), 0o600)
	o.KnownHosts = wrong
	_, err = replicate.DialSFTP(ctx, o)
	if err == nil || !strings.Contains(err.Error(), "MISMATCH") || !strings.Contains(err.Error(), fp) || !strings.Contains(err.Error(), ssh.FingerprintSHA256(wrongPub)) {
		t.Errorf("mismatch: %v", err)
	}

	// No known_hosts at all is refused before connecting.
	o.KnownHosts = ""
	if _, err := replicate.DialSFTP(ctx, o); err == nil {
		t.Error("dial without known_hosts succeeded")
	}

	// A key that is not authorized.
	o = sftpOptions(t, d, dir)
	badKey := filepath.Join(dir, "bad_key")
	priv, _ := newKey(t)
	os.WriteFile(badKey, priv, 0o600)
	o.IdentityFiles = []string{badKey}
	t.Setenv("SSH_AUTH_SOCK", "")
	if _, err := replicate.DialSFTP(ctx, o); err == nil {
		t.Error("login with an unauthorized key succeeded")
	}

	// And the good case counts bytes.
	tr, err := replicate.DialSFTP(ctx, sftpOptions(t, d, dir))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	st := tr.(replicate.Stats)
	if st.BytesSent() == 0 || st.BytesReceived() == 0 {
		t.Errorf("counters: sent %d received %d", st.BytesSent(), st.BytesReceived())
	}
}

func TestSFTPConnectTimeout(t *testing.T) {
	// A listener that never speaks SSH.
	d := transporttest.StartSSHD(t)
	o := sftpOptions(t, d, t.TempDir())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // silent until the test ends
		}
	}()
	o.Addr = l.Addr().String()
	o.ConnectTimeout = 300 * time.Millisecond
	start := time.Now()
	_, err = replicate.DialSFTP(context.Background(), o)
	if err == nil {
		t.Fatal("dial succeeded")
	}
	if el := time.Since(start); el > 10*time.Second { // 300 ms asked; a hang is what this catches
		t.Errorf("dial took %v", el)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) && !strings.Contains(err.Error(), "timeout") && !strings.Contains(err.Error(), "deadline") {
		t.Logf("timeout error: %v", err)
	}
}

func newKey(t testing.TB) ([]byte, ssh.PublicKey) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(blk), sp
}

func TestShipperOverSFTP(t *testing.T) {
	d := transporttest.StartSSHD(t)
	worker := filepath.Join(t.TempDir(), "www")
	if err := os.Mkdir(worker, 0o755); err != nil {
		t.Fatal(err)
	}
	dials := 0
	replicate.ShipperScenario(t, worker, func(ctx context.Context) (replicate.Transport, error) {
		dials++
		return replicate.DialSFTP(ctx, sftpOptions(t, d, worker))
	})
	if dials != 1 {
		t.Errorf("dialled %d times, want one kept connection", dials)
	}
}

func TestShipperScenarioLocal(t *testing.T) {
	worker := filepath.Join(t.TempDir(), "www")
	if err := os.Mkdir(worker, 0o755); err != nil {
		t.Fatal(err)
	}
	replicate.ShipperScenario(t, worker, func(ctx context.Context) (replicate.Transport, error) {
		return replicate.NewLocal(worker)
	})
}

// A worker whose sftp-server stops answering (a hung disk or NFS mount)
// while sshd still answers keepalives: the connection is closed once a
// request waited ReplyTimeout with nothing coming back, and the request
// fails instead of holding the worker's shipper (and the journal records
// it lacks) forever.
func TestSFTPGivesUpOnSilentServer(t *testing.T) {
	tr, pid := dialQuickToGiveUp(t, t.TempDir())
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	err := givesUp(t, "Lstat", func() error { _, err := tr.Lstat(context.Background(), "x"); return err })
	if err == nil {
		t.Fatal("Lstat on a stopped sftp-server succeeded")
	}
	t.Logf("Lstat: %v", err)
}

// A request that failed is explained with a statvfs to the same worker
// (full disk? read-only?). A worker that hangs right then must not hold
// the request, nor the worker's shipper, for good: the statvfs is watched
// like the request.
func TestSFTPExplainingAFailureGivesUpOnSilentServer(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "d", "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tr, pid := dialQuickToGiveUp(t, root)
	stopped := false
	replicate.SetBeforeStatVFS(tr, func() {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Error(err)
		}
		stopped = true
	})
	defer syscall.Kill(pid, syscall.SIGCONT)
	// rmdir of a directory that is not empty: sftp-server answers
	// ENOTEMPTY with a bare SSH_FX_FAILURE, which is explained.
	err := givesUp(t, "rmdir, stopped during the statvfs that explains its failure,", func() error { return tr.Rmdir(context.Background(), "d") })
	if !stopped {
		t.Fatalf("the failure was not explained with a statvfs (rmdir: %v)", err)
	}
	if err == nil {
		t.Fatal("rmdir of a directory that is not empty succeeded")
	}
	t.Logf("rmdir: %v", err)
}

// A failure is explained with one statvfs, also when the answer shows
// nothing wrong: WriteFileAtomic explains the failure of its rename, and
// the request around it used to ask again, about the root.
func TestSFTPExplainsAFailureOnce(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "d", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	tr, _ := dialQuickToGiveUp(t, root)
	asked := 0
	replicate.SetBeforeStatVFS(tr, func() { asked++ })
	// The temp file cannot be renamed over a directory that is not
	// empty: a bare SSH_FX_FAILURE.
	err := tr.WriteFileAtomic(t.Context(), "d", strings.NewReader("page"), replicate.Attrs{Perm: 0o644, UID: -1, GID: -1})
	if err == nil {
		t.Fatal("a file written over a directory that is not empty")
	}
	if asked != 1 {
		t.Errorf("statvfs asked %d times for one failure (%v), want 1", asked, err)
	}
}

// On a worker whose disk is full, a failed write is explained as a full
// disk, but a failed rmdir (a directory that is not empty, which
// sftp-server reports with the same bare failure) is not: freeing space
// would not help it.
func TestSFTPFullDiskNamedOnlyForWhatNeedsSpace(t *testing.T) {
	root := t.TempDir()
	if err := syscall.Mount("tmpfs", root, "tmpfs", 0, "size=256k"); err != nil {
		t.Fatalf("mount a small tmpfs for the worker's root on %s: %v", root, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(root, 0); err != nil {
			t.Errorf("unmount %s: %v", root, err)
		}
	})
	if err := os.MkdirAll(filepath.Join(root, "d", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Fill the file system.
	if err := os.WriteFile(filepath.Join(root, "fill"), make([]byte, 1<<20), 0o644); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the 256 KiB tmpfs: %v, want ENOSPC", err)
	}
	tr, _ := dialQuickToGiveUp(t, root)
	err := tr.Rmdir(t.Context(), "d")
	if err == nil || strings.Contains(err.Error(), "no space") {
		t.Errorf("rmdir of a directory that is not empty on a full disk: %v; want a failure that does not blame the disk", err)
	}
	err = tr.WriteFileAtomic(t.Context(), "page.html", bytes.NewReader(make([]byte, 64<<10)), replicate.Attrs{Perm: 0o644, UID: -1, GID: -1})
	if err == nil || !strings.Contains(err.Error(), "no space left on device") {
		t.Errorf("write of 64 KiB on a full disk: %v; want it named a full disk", err)
	}
}

// givesUp returns what call returns, and fails the test (what names the
// call) when it is still waiting 10 s later, far past the reply timeout
// of dialQuickToGiveUp.
func givesUp(t *testing.T, what string, call func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- call() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still waiting 10 s after the sftp-server stopped (reply timeout 300 ms)", what)
		return nil
	}
}

// dialQuickToGiveUp dials SFTP to root through a new test sshd with a
// reply timeout of 300 ms, and returns the transport (closed at the end
// of the test) and the pid of its sftp-server.
func dialQuickToGiveUp(t *testing.T, root string) (replicate.Transport, int) {
	d := transporttest.StartSSHD(t)
	o := sftpOptions(t, d, root)
	o.KeepAlive, o.ReplyTimeout = 100*time.Millisecond, 300*time.Millisecond
	tr, err := replicate.DialSFTP(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr, sftpServerOf(t, d.Dir)
}

// sftpServerOf finds the sftp-server started by the test sshd whose files
// are in dir (its command line names dir).
func sftpServerOf(t *testing.T, dir string) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range procs {
			cmd, err := os.ReadFile(p)
			if err != nil || !strings.Contains(string(cmd), "sftp-server") {
				continue
			}
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			if descendsFrom(pid, dir) {
				return pid
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no sftp-server of the sshd in %s", dir)
	return 0
}

// descendsFrom reports whether pid or one of its ancestors has mark in its
// command line.
func descendsFrom(pid int, mark string) bool {
	for range 10 {
		if pid <= 1 {
			return false
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmd), mark) {
			return true
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return false
		}
		// The fields after the command name: state, ppid, ...
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
		pid, _ = strconv.Atoi(fields[1])
	}
	return false
}

// Dialling a worker whose root is wrong leaves nothing running: the
// shipper dials such a worker again and again.
func TestSFTPFailedDialLeavesNoGoroutine(t *testing.T) {
	d := transporttest.StartSSHD(t)
	watches := func() int {
		buf := make([]byte, 1<<20)
		return strings.Count(string(buf[:runtime.Stack(buf, true)]), "(*StallWatch).run")
	}
	before := watches()
	for range 5 {
		if tr, err := replicate.DialSFTP(t.Context(), sftpOptions(t, d, "/nonexistent/mirrorfs-root")); err == nil {
			tr.Close()
			t.Fatal("dial to a missing root succeeded")
		}
	}
	time.Sleep(50 * time.Millisecond) // stopped watches return
	if n := watches() - before; n > 0 {
		t.Errorf("%d stall watches left running by 5 failed dials", n)
	}
}
