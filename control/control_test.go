package control

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestServeAndFetch(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, sock, func() Status {
			return Status{LastSeq: 7, Workers: []WorkerStatus{{Name: "w1", Pending: 3, Applied: 4}}}
		})
	}()
	var st Status
	var err error
	for range 100 {
		if st, err = Fetch(t.Context(), sock); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if st.LastSeq != 7 || len(st.Workers) != 1 || st.Workers[0].Name != "w1" || st.Workers[0].Pending != 3 {
		t.Fatalf("status = %+v", st)
	}
	if err := Serve(t.Context(), sock, func() Status { return Status{} }); err == nil {
		t.Fatal("a second daemon took over a live control socket")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := Fetch(t.Context(), sock); !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("fetch with no daemon: %v, want ErrNoDaemon", err)
	}
}

// A control path that names a file by mistake is refused, not deleted; a
// stale socket left by a crashed daemon is replaced.
func TestServeKeepsAFileAtThePath(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "mirrorfs.yaml")
	if err := os.WriteFile(conf, []byte("mount: /var/www/html\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithTimeout(t.Context(), 2*time.Second) // ends a Serve that took the path
	defer stop()
	err := Serve(ctx, conf, func() Status { return Status{} })
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Serve on a regular file: %v, want a refusal", err)
	}
	if data, err := os.ReadFile(conf); err != nil || string(data) != "mount: /var/www/html\n" {
		t.Fatalf("the file at the control path: %q, %v", data, err)
	}

	stale := filepath.Join(dir, "ctl.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // a socket file nobody answers on
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, stale, func() Status { return Status{LastSeq: 1} }) }()
	var st Status
	for range 100 {
		if st, err = Fetch(t.Context(), stale); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil || st.LastSeq != 1 {
		t.Fatalf("Fetch after replacing a stale socket: %+v, %v", st, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A socket that refuses the caller (it is root's, the caller is not) is
// not taken for no daemon: the command said none runs and to start one.
func TestRefusedCallerIsNotNoDaemon(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)}
	err := unanswered("/run/mirrorfs/mirrorfs.sock", refused)
	if errors.Is(err, ErrNoDaemon) || !strings.Contains(err.Error(), "run this as root") {
		t.Errorf("permission denied on the socket: %v; want no ErrNoDaemon, and to be told to run as root", err)
	}
	gone := &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ENOENT)}
	if err := unanswered("/run/mirrorfs/mirrorfs.sock", gone); !errors.Is(err, ErrNoDaemon) {
		t.Errorf("no socket: %v, want ErrNoDaemon", err)
	}
}

// Only root and the daemon's user are answered, whatever the socket's
// mode: a caller that connected before the chmod (umask 0) is refused
// too. The test's process is both ends, so the socket is told to answer
// another user only, and the caller's uid must be refused.
func TestServeAnswersOnlyTheDaemonsUser(t *testing.T) {
	if !daemonsUser(0) || !daemonsUser(os.Geteuid()) || daemonsUser(os.Geteuid()+4242) {
		t.Fatalf("daemonsUser refuses root or the daemon's user, or lets another in")
	}
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	me := os.Geteuid()
	owner := me + 4242
	go func() {
		done <- serve(ctx, sock, func(uid int) bool { return uid == owner }, func() Status { return Status{LastSeq: 7} }, nil)
	}()
	var err error
	for range 100 {
		if _, err = Fetch(t.Context(), sock); err == nil || !errors.Is(err, ErrNoDaemon) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "run this as root") {
		t.Errorf("status asked by uid %d of a daemon of uid %d: %v, want 403 and to be told to run as root", me, owner, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
