// Package control is the daemon's local control socket: a small HTTP API
// on a unix socket that `mirrorfs status` (and later the journal tools)
// use to ask the running daemon, since Badger lets only one process open
// the journal.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// WorkerStatus is one worker's replication state as shown by `status`.
type WorkerStatus struct {
	Name        string  `json:"name"`
	Addr        string  `json:"addr"`
	Connected   bool    `json:"connected"`
	LastError   string  `json:"last_error"`
	LastErrorAt string  `json:"last_error_at,omitempty"`
	Pending     uint64  `json:"pending"`
	LagSeconds  float64 `json:"lag_seconds"`
	Applied     uint64  `json:"applied"`
	InitialCopy bool    `json:"initial_copy"`
	BytesSent   uint64  `json:"bytes_sent"`
	// Full copy and resync progress (see replicate.Status): regular
	// files compared so far by the running (or last) copy, and by
	// content in a resync's second pass; totals of the last finished
	// copy; resync requests made and the last one served.
	CopyChecked     uint64  `json:"copy_checked"`
	CopyHashed      uint64  `json:"copy_hashed"`
	CopyFiles       uint64  `json:"copy_files"`
	CopyBytes       uint64  `json:"copy_bytes"`
	CopySeconds     float64 `json:"copy_seconds"`
	ResyncRequested uint64  `json:"resync_requested"`
	ResyncDone      uint64  `json:"resync_done"`
	ResyncDoneAt    string  `json:"resync_done_at,omitempty"`
}

// Status is the daemon's answer to GET /status.
type Status struct {
	Mount   string         `json:"mount"`
	LastSeq uint64         `json:"last_seq"`
	Workers []WorkerStatus `json:"workers"`
}

// ErrNoDaemon means nothing listens on the control socket.
var ErrNoDaemon = errors.New("no mirrorfs daemon is listening")

// Route is one more endpoint of the control socket (the journal tools,
// resync): a Go 1.22 ServeMux pattern such as "GET /journal/stats".
type Route struct {
	Pattern string
	Handler http.HandlerFunc
}

// Serve answers status requests, and those of routes, on the unix socket
// at path until ctx is done. A stale socket file from a crashed daemon is
// replaced; a socket a live daemon answers on is not.
func Serve(ctx context.Context, path string, status func() Status, routes ...Route) error {
	return serve(ctx, path, daemonsUser, status, routes)
}

// daemonsUser reports whether uid may use the control socket: root and
// the daemon's own user.
func daemonsUser(uid int) bool { return uid == 0 || uid == os.Geteuid() }

// serve is Serve answering only callers whose user allowed accepts.
func serve(ctx context.Context, path string, allowed func(uid int) bool, status func() Status, routes []Route) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("control socket %s: another mirrorfs daemon is answering on it", path)
	}
	// Only a socket is replaced: a `control:` that names a file by mistake
	// (the config itself, say) must not delete it.
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return fmt.Errorf("control socket %s: a %s is there, not a socket: refusing to replace it (check control: in the configuration)", path, fileKind(fi.Mode()))
		}
		os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	// Status shows paths and errors only, but resync and the journal
	// tools act: keep it to the daemon's user. The mode stops others at
	// connect; the peer check also covers a caller that connected in the
	// instant before the chmod, while the umask's mode applied.
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(status())
	})
	for _, r := range routes {
		mux.HandleFunc(r.Pattern, r.Handler)
	}
	srv := &http.Server{
		Handler:           onlyFor(allowed, mux),
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext:       withPeer,
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	os.Remove(path)
	return nil
}

// peerKey holds, in a request's context, the user of the process at the
// other end of its connection (-1 when unknown).
type peerKey struct{}

// withPeer notes the connection's peer user (SO_PEERCRED) in ctx.
func withPeer(ctx context.Context, c net.Conn) context.Context {
	uid := -1
	if uc, ok := c.(*net.UnixConn); ok {
		if raw, err := uc.SyscallConn(); err == nil {
			_ = raw.Control(func(fd uintptr) {
				if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
					uid = int(cred.Uid)
				}
			})
		}
	}
	return context.WithValue(ctx, peerKey{}, uid)
}

// onlyFor refuses every request whose caller's user allowed refuses.
func onlyFor(allowed func(uid int) bool, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if uid, _ := r.Context().Value(peerKey{}).(int); !allowed(uid) {
			http.Error(w, fmt.Sprintf("the control socket answers only root and the daemon's user (uid %d), not uid %d: run this as root", os.Geteuid(), uid), http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Fetch asks the daemon listening on path for its status.
func Fetch(ctx context.Context, path string) (Status, error) {
	var st Status
	err := Call(ctx, path, http.MethodGet, "/status", &st)
	return st, err
}

// Call sends one request to the daemon listening on the socket at path
// and decodes its JSON answer into out (unless out is nil). An answer
// other than 200 OK is an error carrying the daemon's message; no daemon
// at all wraps ErrNoDaemon. target is the request path with its query.
func Call(ctx context.Context, path, method, target string, out any) error {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, method, "http://mirrorfs"+target, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return unanswered(path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("control socket %s: %s: %s", path, resp.Status, strings.TrimSpace(string(msg)))
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("control socket %s: bad answer: %w", path, err)
	}
	return nil
}

// unanswered is the error of a request to the socket at path that got no
// answer: ErrNoDaemon, unless the socket refused the caller, whose
// command would otherwise tell a non-root operator that no daemon runs
// and to start one.
func unanswered(path string, err error) error {
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("control socket %s: %w: it is root's; run this as root", path, err)
	}
	return fmt.Errorf("%w on %s: %v", ErrNoDaemon, path, err)
}

// WriteJSON answers a control request with v as JSON.
func WriteJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// fileKind names the type of what is at the control path.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m.IsRegular():
		return "regular file"
	}
	return "file of type " + m.Type().String()
}
