package main

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mirrorfs/mirrorfs/config"
	"github.com/mirrorfs/mirrorfs/control"
)

// serveStatus runs a control socket whose daemon serves mount, until the
// test ends, and returns its path.
func serveStatus(t *testing.T, mount string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "mirrorfs.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		control.Serve(ctx, sock, func() control.Status { return control.Status{Mount: mount} })
	}()
	t.Cleanup(func() { cancel(); <-done })
	for range 100 {
		if _, err := control.Fetch(t.Context(), sock); err == nil {
			return sock
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the control socket never answered")
	return ""
}

// Two configurations with one control: path (the default, say): the CLI
// of one refuses the other's daemon instead of reading, and resyncing,
// its workers; and a second daemon refuses to start instead of running
// without a socket.
func TestControlSocketOfAnotherMount(t *testing.T) {
	sock := serveStatus(t, "/srv/a/html")
	if _, err := ownDaemon(t.Context(), &config.Config{Mount: "/srv/a/html", Control: sock}); err != nil {
		t.Errorf("the daemon of the configuration's own mount: %v", err)
	}
	other := &config.Config{Mount: "/srv/b/html", Control: sock}
	_, err := ownDaemon(t.Context(), other)
	if err == nil || !strings.Contains(err.Error(), "/srv/a/html") || !strings.Contains(err.Error(), "/srv/b/html") {
		t.Errorf("a daemon serving another mount: %v; want an error naming both mounts", err)
	}
	err = runMount(t.Context(), other, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "in use by another mirrorfs daemon (mount /srv/a/html)") {
		t.Errorf("a second daemon on a control socket in use: %v; want it refused", err)
	}
}
