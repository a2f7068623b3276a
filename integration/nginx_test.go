package integration

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// nginxBinary is Debian's nginx (package nginx-light, installed by make deps).
const nginxBinary = "/usr/sbin/nginx"

func needNginx(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(nginxBinary); err != nil {
		requireReal(t, nginxBinary+" (Debian: apt-get install nginx-light): "+err.Error())
	}
	if _, err := nginxLookupUser("www-data"); err != nil {
		requireReal(t, "user www-data: "+err.Error())
	}
}

// nginxLookupUser checks that a user name exists in /etc/passwd.
func nginxLookupUser(name string) (string, error) {
	b, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Split(line, ":"); len(f) > 2 && f[0] == name {
			return f[2], nil
		}
	}
	return "", fmt.Errorf("no user %q in /etc/passwd", name)
}

// nginxServer is an nginx master process (master_process on, workers as
// www-data) started by the test, in the foreground, with one server block
// per root, each listening on its own 127.0.0.1 port.
type nginxServer struct {
	Prefix  string // -p: config, pid, logs and temp paths
	Config  string
	ErrLog  string
	Ports   []int // Ports[i] serves roots[i]
	cmd     *exec.Cmd
	done    chan struct{}
	outPath string
}

// nginxOptions shape the generated nginx config.
type nginxOptions struct {
	AccessLog bool // write an access log (off for benchmarks)
	Workers   int  // worker_processes; 0 means 1
	// HTTPExtra is appended verbatim inside the http block (e.g.
	// open_file_cache directives for an experiment).
	HTTPExtra string
}

// URL returns the address of path on the server block for roots[i].
func (n *nginxServer) URL(i int, path string) string {
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(n.Ports[i])) + path
}

func (n *nginxServer) config(roots []string, o nginxOptions) string {
	workers := o.Workers
	if workers == 0 {
		workers = 1
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# nginx config written by the mirrorfs integration tests\n")
	fmt.Fprintf(&b, "user www-data;\n")
	fmt.Fprintf(&b, "worker_processes %d;\n", workers)
	fmt.Fprintf(&b, "pid %s;\n", filepath.Join(n.Prefix, "nginx.pid"))
	fmt.Fprintf(&b, "error_log %s info;\n", n.ErrLog)
	fmt.Fprintf(&b, "events { worker_connections 1024; }\n")
	fmt.Fprintf(&b, "http {\n")
	fmt.Fprintf(&b, "  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n")
	fmt.Fprintf(&b, "  default_type application/octet-stream;\n  log_not_found off;\n")
	if o.AccessLog {
		fmt.Fprintf(&b, "  access_log %s;\n", filepath.Join(n.Prefix, "access.log"))
	} else {
		fmt.Fprintf(&b, "  access_log off;\n")
	}
	for _, tmp := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		fmt.Fprintf(&b, "  %s_temp_path %s;\n", tmp, filepath.Join(n.Prefix, "tmp", tmp))
	}
	if o.HTTPExtra != "" {
		fmt.Fprintf(&b, "  %s\n", strings.TrimSpace(o.HTTPExtra))
	}
	for i, root := range roots {
		fmt.Fprintf(&b, "  server {\n    listen 127.0.0.1:%d;\n    root %s;\n    location / { }\n  }\n", n.Ports[i], nginxQuote(root))
	}
	fmt.Fprintf(&b, "}\n")
	return b.String()
}

// nginxQuote quotes a path for the nginx config.
func nginxQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// startNginx starts nginx serving roots, one server block (and port) each,
// and stops it when the test ends: SIGQUIT (graceful), SIGKILL of the
// master and its workers after 5 s. The roots must be readable by www-data
// (see webMakeTraversable).
func startNginx(t testing.TB, o nginxOptions, roots ...string) *nginxServer {
	t.Helper()
	needNginx(t)
	n := &nginxServer{Prefix: t.TempDir()}
	n.Config = filepath.Join(n.Prefix, "nginx.conf")
	n.ErrLog = filepath.Join(n.Prefix, "error.log")
	n.outPath = filepath.Join(n.Prefix, "nginx.out")
	if err := os.MkdirAll(filepath.Join(n.Prefix, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.stop(t)
		if t.Failed() {
			t.Logf("nginx config %s:\n%s", n.Config, readFrom(n.Config, 0))
			t.Logf("nginx output:\n%s", logTail(n.outPath, 50))
			t.Logf("nginx error log:\n%s", logTail(n.ErrLog, 100))
		}
	})
	// A port picked as free can be taken before nginx binds it: try again.
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		n.Ports = n.Ports[:0]
		for range roots {
			n.Ports = append(n.Ports, pickPort(t))
		}
		if err = os.WriteFile(n.Config, []byte(n.config(roots, o)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err = n.start(10 * time.Second); err == nil {
			return n
		}
		t.Logf("nginx on ports %v: %v (retrying on other ports)", n.Ports, err)
	}
	t.Fatalf("cannot start nginx: %v\nerror log:\n%s", err, logTail(n.ErrLog, 50))
	return nil
}

// start runs nginx in the foreground and waits until every port accepts
// connections; on failure nginx has exited.
func (n *nginxServer) start(timeout time.Duration) error {
	out, err := os.OpenFile(n.outPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.Command(nginxBinary, "-p", n.Prefix+"/", "-c", n.Config, "-e", n.ErrLog,
		"-g", "daemon off; master_process on;")
	cmd.Stdout, cmd.Stderr = out, out
	// If the test process dies, nginx shuts down gracefully.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGQUIT}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	n.cmd, n.done = cmd, done
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-done:
			n.cmd, n.done = nil, nil
			return fmt.Errorf("nginx exited: %v\n%s", cmd.ProcessState, logTail(n.outPath, 20))
		default:
		}
		ready := true
		for _, p := range n.Ports {
			conn, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), time.Second)
			if err != nil {
				ready = false
				break
			}
			conn.Close()
		}
		if ready {
			return nil
		}
		if time.Now().After(deadline) {
			n.kill()
			return fmt.Errorf("nginx not listening on %v after %v", n.Ports, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop sends the master SIGQUIT (finish requests, then exit) and waits for
// it; after 5 s the master and its workers are SIGKILLed.
func (n *nginxServer) stop(t testing.TB) {
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-n.done:
	case <-time.After(5 * time.Second):
		t.Errorf("nginx (pid %d) did not exit within 5s of SIGQUIT; killing it", n.cmd.Process.Pid)
		n.kill()
	}
	n.cmd, n.done = nil, nil
}

// kill SIGKILLs the master's workers (its descendants, by PID) and the
// master, and waits for the master.
func (n *nginxServer) kill() {
	pid := n.cmd.Process.Pid
	for _, p := range stopProcessTree(pid) {
		syscall.Kill(p, syscall.SIGKILL)
	}
	n.cmd.Process.Kill()
	<-n.done
}

// webMakeTraversable lets other users (www-data) reach dir: every ancestor
// below the system temp directory gets o+x (t.TempDir makes them 0700).
func webMakeTraversable(t testing.TB, dir string) {
	t.Helper()
	tmp, err := filepath.EvalSymlinks(os.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for d := filepath.Dir(dir); strings.HasPrefix(d, tmp+"/"); d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, st.Mode().Perm()|0o011); err != nil {
			t.Fatal(err)
		}
	}
}

// webClient talks to nginx over 127.0.0.1 only.
var webClient = &http.Client{
	Timeout: 30 * time.Second,
	Transport: &http.Transport{
		Proxy:             nil,
		DisableKeepAlives: true,
	},
}

// webFetch GETs url and returns the body, failing the test unless the status
// is 200 and the whole body arrived.
func webFetch(t testing.TB, url string) []byte {
	t.Helper()
	resp, err := webClient.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, body)
	}
	if resp.ContentLength >= 0 && int64(len(body)) != resp.ContentLength {
		t.Fatalf("GET %s: got %d bytes, Content-Length %d", url, len(body), resp.ContentLength)
	}
	return body
}

func webSHA(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// webExpectServed fetches url `times` times in a row and checks every answer
// against want (compared by sha256, so 1 MiB bodies print short).
func webExpectServed(t testing.TB, url string, want []byte, times int) {
	t.Helper()
	for i := 0; i < times; i++ {
		got := webFetch(t, url)
		if !bytes.Equal(got, want) {
			t.Fatalf("GET %s (try %d of %d): got %d bytes sha256 %.16s…, want %d bytes sha256 %.16s…%s",
				url, i+1, times, len(got), webSHA(got), len(want), webSHA(want), webShortBodies(got, want))
		}
	}
}

func webShortBodies(got, want []byte) string {
	if len(got) > 200 || len(want) > 200 {
		return ""
	}
	return fmt.Sprintf("\n got: %q\nwant: %q", got, want)
}

func webRandomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// webWriteFile writes a file through the mount with the given mode (explicit
// chmod: the test process's umask must not decide what www-data can read).
func webWriteFile(t testing.TB, p string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// webReplaceAtomically writes data to a temp file beside p and renames it over
// p, the way deploy tools and editors do.
func webReplaceAtomically(t testing.TB, p string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(p), "."+filepath.Base(p)+".tmp")
	webWriteFile(t, tmp, data, 0o644)
	webRename(t, tmp, p)
}

// webRename renames, failing the test on error.
func webRename(t testing.TB, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}

// webSwitchSymlink points link at target like `ln -sfn target link` done
// atomically: a new symlink under a temp name, renamed over the old one.
func webSwitchSymlink(t testing.TB, target, link string) {
	t.Helper()
	tmp := link + ".new"
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	webRename(t, tmp, link)
}

// TestNginxServesMount runs Debian's nginx as www-data with sendfile on,
// serving the mount and each worker's root over 127.0.0.1. A deploy through
// the mount is served by the master's nginx at once (no stale page cache,
// also for a file overwritten in place) and by the workers once converged.
func TestNginxServesMount(t *testing.T) {
	needNginx(t)
	c := newCluster(t, clusterOptions{Workers: 2})
	m := c.Mount
	webMakeTraversable(t, m)
	webMakeTraversable(t, c.Store)
	for _, w := range c.Workers {
		webMakeTraversable(t, w.Root)
	}

	// Release 1, written through the mount before nginx starts.
	r1 := map[string][]byte{
		"index.html": []byte("<h1>release 1</h1>\n"),
		"big.bin":    webRandomBytes(t, 1<<20),
	}
	for _, d := range []string{"releases", "releases/r1"} {
		if err := os.Mkdir(filepath.Join(m, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range r1 {
		webWriteFile(t, filepath.Join(m, "releases/r1", name), data, 0o644)
	}
	webSwitchSymlink(t, "releases/r1", filepath.Join(m, "current"))
	home1 := []byte("<h1>home v1</h1>\n")
	webWriteFile(t, filepath.Join(m, "index.html"), home1, 0o644)
	// A 1 MiB file that is later changed in place (same size, no O_TRUNC,
	// no rename): the page cache the kernel keeps across opens must follow.
	patch := webRandomBytes(t, 1<<20)
	webWriteFile(t, filepath.Join(m, "patch.bin"), patch, 0o644)

	// Server 0 serves the mount, servers 1 and 2 the workers' roots.
	roots := []string{m}
	for _, w := range c.Workers {
		roots = append(roots, w.Root)
	}
	ng := startNginx(t, nginxOptions{AccessLog: true, Workers: 2}, roots...)

	// The master serves release 1 at once: the directory index, the
	// symlinked release and the 1 MiB file through sendfile.
	webExpectServed(t, ng.URL(0, "/"), home1, 3)
	webExpectServed(t, ng.URL(0, "/index.html"), home1, 3)
	webExpectServed(t, ng.URL(0, "/current/index.html"), r1["index.html"], 3)
	webExpectServed(t, ng.URL(0, "/current/big.bin"), r1["big.bin"], 3)
	webExpectServed(t, ng.URL(0, "/patch.bin"), patch, 3)

	c.waitConverged(t, converge)
	for i := range c.Workers {
		webExpectServed(t, ng.URL(1+i, "/"), home1, 1)
		webExpectServed(t, ng.URL(1+i, "/current/index.html"), r1["index.html"], 1)
		webExpectServed(t, ng.URL(1+i, "/current/big.bin"), r1["big.bin"], 1)
		webExpectServed(t, ng.URL(1+i, "/patch.bin"), patch, 1)
	}

	// Deploy release 2: new files, then the current symlink switched; the
	// home page replaced by temp + rename; patch.bin changed in place.
	r2 := map[string][]byte{
		"index.html": []byte("<h1>release 2, a longer page</h1>\n"),
		"big.bin":    webRandomBytes(t, 1<<20),
	}
	if err := os.Mkdir(filepath.Join(m, "releases/r2"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range r2 {
		webWriteFile(t, filepath.Join(m, "releases/r2", name), data, 0o644)
	}
	webSwitchSymlink(t, "releases/r2", filepath.Join(m, "current"))
	home2 := []byte("<h1>home v2</h1>\n") // same length as v1
	webReplaceAtomically(t, filepath.Join(m, "index.html"), home2)
	f, err := os.OpenFile(filepath.Join(m, "patch.bin"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 4096 * 7, 1<<20 - 100} {
		chunk := webRandomBytes(t, 100)
		copy(patch[off:], chunk)
		if _, err := f.WriteAt(chunk, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	// The master serves release 2 at once, every time.
	webExpectServed(t, ng.URL(0, "/"), home2, 5)
	webExpectServed(t, ng.URL(0, "/index.html"), home2, 5)
	webExpectServed(t, ng.URL(0, "/current/index.html"), r2["index.html"], 5)
	webExpectServed(t, ng.URL(0, "/current/big.bin"), r2["big.bin"], 5)
	webExpectServed(t, ng.URL(0, "/patch.bin"), patch, 5)
	webExpectServed(t, ng.URL(0, "/releases/r1/big.bin"), r1["big.bin"], 1)

	// A release is removed; the master answers 404 at once.
	if err := os.RemoveAll(filepath.Join(m, "releases/r1")); err != nil {
		t.Fatal(err)
	}
	if resp, err := webClient.Get(ng.URL(0, "/releases/r1/index.html")); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("GET /releases/r1/index.html after removal: %s, want 404", resp.Status)
		}
	}

	c.waitConverged(t, converge)
	for i := range c.Workers {
		webExpectServed(t, ng.URL(1+i, "/"), home2, 2)
		webExpectServed(t, ng.URL(1+i, "/current/index.html"), r2["index.html"], 2)
		webExpectServed(t, ng.URL(1+i, "/current/big.bin"), r2["big.bin"], 2)
		webExpectServed(t, ng.URL(1+i, "/patch.bin"), patch, 2)
	}

	// nginx itself saw no errors reading the mount (permission, EIO…).
	if log := readFrom(ng.ErrLog, 0); strings.Contains(log, "[error]") || strings.Contains(log, "[crit]") || strings.Contains(log, "[alert]") {
		t.Errorf("nginx error log has errors:\n%s", lastLines(log, 30))
	}
}
