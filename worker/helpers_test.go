package worker

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// testWorker is a running worker Server on a real TCP listener, with a temp root, an "outside"
// directory beside the root, and one authorized client key.
type testWorker struct {
	base     string // holds root, outside and the key files
	root     string
	outside  string
	authKeys string
	addr     string
	hostKey  ssh.PublicKey
	key      ssh.Signer // listed in authKeys
	logs     *syncBuffer
	stop     func() error // cancels Serve and returns its result
}

// syncBuffer collects log output for assertions.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startWorker starts a worker and stops it (waiting for Serve to return) in cleanup.
func startWorker(t *testing.T) *testWorker {
	t.Helper()
	base := t.TempDir()
	w := &testWorker{
		base:     base,
		root:     filepath.Join(base, "root"),
		outside:  filepath.Join(base, "outside"),
		authKeys: filepath.Join(base, "authorized_keys"),
		logs:     &syncBuffer{},
	}
	for _, d := range []string{w.root, w.outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	hostPub, err := GenerateKeyFiles(filepath.Join(base, "host_key"))
	if err != nil {
		t.Fatal(err)
	}
	w.hostKey = hostPub
	w.key = newKey(t, filepath.Join(base, "client_key"))
	writeAuthorizedKeys(t, w.authKeys, w.key.PublicKey())

	logger := slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), w.logs), &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := New(Options{
		Root:           w.root,
		AuthorizedKeys: w.authKeys,
		HostKey:        filepath.Join(base, "host_key"),
		Logger:         logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.addr = l.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	var once sync.Once
	var serveErr error
	w.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case serveErr = <-done:
			case <-time.After(10 * time.Second):
				t.Errorf("Serve did not return within 10s of cancel")
			}
		})
		return serveErr
	}
	t.Cleanup(func() {
		if err := w.stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return w
}

// newKey writes a fresh key pair with GenerateKeyFiles and returns its signer.
func newKey(t *testing.T, path string) ssh.Signer {
	t.Helper()
	if _, err := GenerateKeyFiles(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		t.Fatal(err)
	}
	return signer
}

func writeAuthorizedKeys(t *testing.T, path string, keys ...ssh.PublicKey) {
	t.Helper()
	var b bytes.Buffer
	b.WriteString("# test keys\n\n")
	for _, k := range keys {
		b.Write(ssh.MarshalAuthorizedKey(k))
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// dial opens an SSH connection with key, verifying the worker's host key.
func (w *testWorker) dial(key ssh.Signer) (*ssh.Client, error) {
	return ssh.Dial("tcp", w.addr, &ssh.ClientConfig{
		User:            "mirrorfs",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(key)},
		HostKeyCallback: ssh.FixedHostKey(w.hostKey),
		Timeout:         10 * time.Second,
	})
}

// client returns an SSH client with the authorized key, closed in cleanup.
func (w *testWorker) client(t *testing.T) *ssh.Client {
	t.Helper()
	c, err := w.dial(w.key)
	if err != nil {
		t.Fatalf("dial with authorized key: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sftp returns an SFTP client over a new connection, closed in cleanup.
func (w *testWorker) sftp(t *testing.T) *sftp.Client {
	t.Helper()
	c, err := sftp.NewClient(w.client(t))
	if err != nil {
		t.Fatalf("sftp client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// inRoot returns the host path of a root-relative name.
func (w *testWorker) inRoot(name string) string {
	return filepath.Join(w.root, filepath.FromSlash(name))
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
