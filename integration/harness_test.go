package integration

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Environment:
//
//	CI=true                 a missing real part fails the test instead of skipping it
//	MIRRORFS_TEST_BINARY    use this mirrorfs binary instead of building ./cmd/mirrorfs
//	MIRRORFS_TEST_SSHD      use this sshd instead of /usr/sbin/sshd
//	MIRRORFS_TEST_CPU_PROFILE
//	                        a directory: every daemon writes a CPU profile
//	                        there (mount --cpu-profile), named after the test

func TestMain(m *testing.M) {
	becomeSubreaper()
	code := m.Run()
	reapZombies()
	removeSharedDir()
	os.Exit(code)
}

// inCI reports whether the CI variable is set to a true value.
func inCI() bool {
	ok, _ := strconv.ParseBool(os.Getenv("CI"))
	return ok
}

// requireReal is called when a real part a test needs is missing: the test
// is skipped on a developer machine and fails in CI, where integration tests
// must never pass by skipping.
func requireReal(t testing.TB, what string) {
	t.Helper()
	if inCI() {
		t.Fatalf("missing real part: %s (CI=true: integration tests may not skip)", what)
	}
	t.Skipf("skipping: missing real part: %s (with CI=true this fails)", what)
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		requireReal(t, "root privileges (run the integration tests as root)")
	}
}

// needFUSE checks for root, a usable /dev/fuse and fusermount3.
func needFUSE(t testing.TB) {
	t.Helper()
	needRoot(t)
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		requireReal(t, "/dev/fuse: "+err.Error())
	}
	f.Close()
	if _, err := exec.LookPath("fusermount3"); err != nil {
		requireReal(t, "fusermount3 in PATH (Debian: apt-get install fuse3)")
	}
}

// A directory shared by the whole test process (built binary, client key),
// removed by TestMain.
var (
	sharedOnce sync.Once
	sharedPath string
	sharedErr  error
)

func sharedDir() (string, error) {
	sharedOnce.Do(func() {
		sharedPath, sharedErr = os.MkdirTemp("", "mirrorfs-integration-")
	})
	return sharedPath, sharedErr
}

func removeSharedDir() {
	if sharedPath != "" {
		os.RemoveAll(sharedPath)
	}
}

// The mirrorfs binary, built once per test process.
var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
)

// mirrorfsBinary returns the path of the mirrorfs binary under test: built
// from this module's ./cmd/mirrorfs (with -race when the tests are), or
// MIRRORFS_TEST_BINARY.
func mirrorfsBinary(t testing.TB) string {
	t.Helper()
	binaryOnce.Do(func() {
		if p := os.Getenv("MIRRORFS_TEST_BINARY"); p != "" {
			binaryPath, binaryErr = filepath.Abs(p)
			return
		}
		binaryPath, binaryErr = buildMirrorfs()
	})
	if binaryErr != nil {
		t.Fatalf("mirrorfs binary: %v", binaryErr)
	}
	return binaryPath
}

func buildMirrorfs() (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		if root := os.Getenv("GOROOT"); root != "" {
			goTool = filepath.Join(root, "bin", "go")
		} else {
			return "", fmt.Errorf("go tool not found in PATH: %w", err)
		}
	}
	root := ".."
	if out, err := exec.Command(goTool, "env", "GOMOD").Output(); err == nil {
		if mod := strings.TrimSpace(string(out)); mod != "" && mod != os.DevNull {
			root = filepath.Dir(mod)
		}
	}
	dir, err := sharedDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "mirrorfs")
	args := []string{"build", "-o", bin}
	if raceEnabled() {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/mirrorfs")
	cmd := exec.Command(goTool, args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s (in %s): %v\n%s", strings.Join(args, " "), root, err, out)
	}
	return bin, nil
}

// raceEnabled reports whether this test binary was built with -race.
func raceEnabled() bool {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range info.Settings {
		if s.Key == "-race" && s.Value == "true" {
			return true
		}
	}
	return false
}

// clusterOptions shape a cluster; the zero value is a mount with no workers.
type clusterOptions struct {
	Workers int  // number of sshd workers, named w1, w2, …
	InPlace bool // mount over a pre-filled directory (the config has no store:)
	// Prefill fills the store (for InPlace: the directory that will be
	// mounted over) before the daemon starts.
	Prefill func(store string)
	// PrefillWorker fills a worker's root before the daemon starts.
	PrefillWorker func(w *sshWorker)
	Exclude       []string // the config's exclude: list; waitConverged skips these too
	BatchDelay    string   // batch.delay; default "10ms"
	// JournalMaxBytes is journal.max_bytes ("" for no budget).
	JournalMaxBytes string
	// Transport is every worker's transport: "" (the default, agent) or
	// "sftp". With the agent, workers must also match the store's
	// nanosecond mtimes and user.* xattrs (compareTreesWith precise).
	// "sftp-only" leaves the config's default (agent) but compares as for
	// SFTP: for workers whose accounts cannot run the agent.
	Transport string
	// NetNS runs each worker's sshd in a network namespace of its own,
	// reached over a veth link that tests can cut or slow down
	// (netns_test.go). Such tests fail in CI when `ip netns` is unavailable.
	NetNS bool
	// ExtraYAML is appended verbatim to the config file, for keys the
	// harness does not write. It must not repeat a key the harness writes.
	ExtraYAML string
	// LogLevel is the daemon's log.level; default "debug", whose lines
	// tell a failed test's story.
	LogLevel string
}

// cluster is a running mirrorfs daemon with its mount, store, journal and
// workers, all under one test's temp directories.
type cluster struct {
	Dir     string // everything of this cluster but the workers
	Mount   string // the FUSE mount point: write here
	Store   string // the truth to compare workers with: the store, or with InPlace the mount itself (the real directory is hidden under it)
	Journal string
	Control string // control socket
	Config  string // the YAML config file
	// KnownHosts lists every worker; Identity is the client private key.
	KnownHosts string
	Identity   string
	LogPath    string // daemon stdout and stderr, all runs appended
	Bin        string
	Workers    []*sshWorker

	opts     clusterOptions
	excluded func(rel string) bool

	mu     sync.Mutex
	daemon *exec.Cmd
	done   chan struct{} // closed once daemon has exited and been waited for
	runs   int
}

// newCluster starts opts.Workers sshd workers and a `mirrorfs mount` daemon
// replicating to them, and returns once the mount is live. Everything is
// torn down when the test ends: the daemon gets SIGTERM (SIGKILL after 10 s),
// a mount left behind is lazily unmounted, then the workers stop.
func newCluster(t testing.TB, opts clusterOptions) *cluster {
	t.Helper()
	needFUSE(t)
	needSSHD(t)
	if opts.BatchDelay == "" {
		opts.BatchDelay = "10ms"
	}
	c := &cluster{opts: opts, Bin: mirrorfsBinary(t), excluded: excludeMatcher(opts.Exclude)}

	// Resolve symlinks so that the mount point is spelled as in mountinfo.
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c.Dir = dir
	c.Mount = filepath.Join(dir, "mnt")
	c.Store = filepath.Join(dir, "store")
	if opts.InPlace {
		c.Store = c.Mount
	}
	c.Journal = filepath.Join(dir, "journal")
	c.Control = controlSocketPath(t, dir)
	c.Config = filepath.Join(dir, "mirrorfs.yaml")
	c.KnownHosts = filepath.Join(dir, "known_hosts")
	c.LogPath = filepath.Join(dir, "mirrorfs.log")
	for _, d := range []string{c.Mount, c.Store} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if opts.Prefill != nil {
		opts.Prefill(c.Store)
	}

	for i := 1; i <= opts.Workers; i++ {
		var w *sshWorker
		if opts.NetNS {
			w = startNetNSWorker(t, fmt.Sprintf("w%d", i))
		} else {
			w = startSSHD(t, fmt.Sprintf("w%d", i))
		}
		if opts.PrefillWorker != nil {
			opts.PrefillWorker(w)
		}
		c.Workers = append(c.Workers, w)
	}
	writeKnownHosts(t, c.KnownHosts, c.Workers...)
	c.Identity, _ = clientKey(t)
	c.writeConfig(t)

	// Cleanups run last-registered first: stop the daemon and unmount, then
	// dump its log, then (registered earlier) stop workers, remove dirs.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("mirrorfs config %s:\n%s", c.Config, readFrom(c.Config, 0))
			t.Logf("mirrorfs daemon log (%s):\n%s", c.LogPath, logTail(c.LogPath, 500))
		}
	})
	t.Cleanup(func() { c.shutdown(t) })

	c.Start(t)
	return c
}

// controlSocketPath is dir/ctl.sock, or a shorter path when that is too long
// for a unix socket address (108 bytes on Linux).
func controlSocketPath(t testing.TB, dir string) string {
	p := filepath.Join(dir, "ctl.sock")
	if len(p) < 100 {
		return p
	}
	short, err := os.MkdirTemp("", "mfs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(short) })
	return filepath.Join(short, "ctl.sock")
}

// yamlString quotes s as a YAML double-quoted scalar (JSON's string syntax
// is a subset of it).
func yamlString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func (c *cluster) configYAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# mirrorfs config written by the integration harness\n")
	fmt.Fprintf(&b, "mount: %s\n", yamlString(c.Mount))
	if !c.opts.InPlace {
		fmt.Fprintf(&b, "store: %s\n", yamlString(c.Store))
	}
	if c.opts.JournalMaxBytes != "" {
		fmt.Fprintf(&b, "journal: {dir: %s, max_bytes: %s}\n", yamlString(c.Journal), yamlString(c.opts.JournalMaxBytes))
	} else {
		fmt.Fprintf(&b, "journal: %s\n", yamlString(c.Journal))
	}
	fmt.Fprintf(&b, "control: %s\n", yamlString(c.Control))
	var ex []string
	for _, p := range c.opts.Exclude {
		ex = append(ex, yamlString(p))
	}
	fmt.Fprintf(&b, "exclude: [%s]\n", strings.Join(ex, ", "))
	fmt.Fprintf(&b, "batch: {delay: %s, max_ops: 50000, hold_open: 60s}\n", yamlString(c.opts.BatchDelay))
	fmt.Fprintf(&b, "retry: {min: 50ms, max: 1s}\n")
	fmt.Fprintf(&b, "log: {level: %s}\n", yamlString(cmp.Or(c.opts.LogLevel, "debug")))
	fmt.Fprintf(&b, "ssh: {user: root, identity: [%s], known_hosts: %s, connect_timeout: 5s}\n",
		yamlString(c.Identity), yamlString(c.KnownHosts))
	if len(c.Workers) == 0 {
		fmt.Fprintf(&b, "workers: []\n")
	} else {
		fmt.Fprintf(&b, "workers:\n")
		for _, w := range c.Workers {
			transport := ""
			if c.opts.Transport != "" && c.opts.Transport != "sftp-only" {
				transport = ", transport: " + yamlString(c.opts.Transport)
			}
			fmt.Fprintf(&b, "  - {name: %s, host: %s, port: %d, root: %s%s}\n",
				yamlString(w.Name), w.host(), w.Port, yamlString(w.Root), transport)
		}
	}
	if c.opts.ExtraYAML != "" {
		b.WriteString(strings.TrimSuffix(c.opts.ExtraYAML, "\n") + "\n")
	}
	return b.String()
}

func (c *cluster) writeConfig(t testing.TB) {
	t.Helper()
	if err := os.WriteFile(c.Config, []byte(c.configYAML()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// daemonEnv is the test's environment without MIRRORFS_* variables, which
// would override the config file.
func daemonEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MIRRORFS_") {
			env = append(env, kv)
		}
	}
	return env
}

// Start starts `mirrorfs mount --config FILE` and waits until it is ready:
// the mount point is a FUSE mount in /proc/self/mountinfo, the control
// socket accepts connections, and a stat of the mount root is answered.
func (c *cluster) Start(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.daemon != nil {
		t.Fatal("cluster.Start: daemon already running")
	}
	if isMounted(c.Mount) {
		t.Fatalf("cluster.Start: %s is already a FUSE mount", c.Mount)
	}
	c.runs++
	logf, err := os.OpenFile(c.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== harness: start #%d of mirrorfs mount at %s ===\n", c.runs, time.Now().Format(time.RFC3339Nano))

	args := []string{"mount", "--config", c.Config}
	if dir := os.Getenv("MIRRORFS_TEST_CPU_PROFILE"); dir != "" {
		name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
		args = append(args, "--cpu-profile", filepath.Join(dir, fmt.Sprintf("%s-%d.pprof", name, c.runs)))
	}
	cmd := exec.Command(c.Bin, args...)
	cmd.Env = daemonEnv()
	cmd.Stdout = logf
	cmd.Stderr = logf
	// If the test process dies, the daemon gets SIGTERM and unmounts itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start mirrorfs: %v", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	c.daemon, c.done = cmd, done

	const timeout = 30 * time.Second
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-done:
			c.daemon, c.done = nil, nil
			t.Fatalf("mirrorfs mount exited before the mount was ready: %v\nlog:\n%s", cmd.ProcessState, logTail(c.LogPath, 60))
		default:
		}
		mounted := isMounted(c.Mount)
		ctlErr := dialControl(c.Control)
		if mounted && ctlErr == nil {
			if err := statWithin(c.Mount, 10*time.Second); err != nil {
				t.Fatalf("mirrorfs mount: stat of mount root: %v\nlog:\n%s", err, logTail(c.LogPath, 60))
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("mirrorfs mount not ready after %v (mounted=%v, control socket %s: %v)\nlog:\n%s",
				timeout, mounted, c.Control, ctlErr, logTail(c.LogPath, 60))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func dialControl(sock string) error {
	conn, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return err
	}
	return conn.Close()
}

// statWithin stats p, giving up after timeout (a hung FUSE daemon would
// block the stat forever).
func statWithin(p string, timeout time.Duration) error {
	errc := make(chan error, 1)
	go func() {
		_, err := os.Stat(p)
		errc <- err
	}()
	select {
	case err := <-errc:
		return err
	case <-time.After(timeout):
		return fmt.Errorf("stat %s: no answer within %v", p, timeout)
	}
}

// running reports whether the daemon was started and has not exited.
func (c *cluster) running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.daemon == nil {
		return false
	}
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// exitedUnexpectedly returns the daemon's exit state if it exited without
// Stop or Kill.
func (c *cluster) exitedUnexpectedly() (*os.ProcessState, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.daemon == nil {
		return nil, false
	}
	select {
	case <-c.done:
		return c.daemon.ProcessState, true
	default:
		return nil, false
	}
}

// Stop sends SIGTERM and asserts a clean shutdown: exit status 0 within 20 s
// and the mount gone.
func (c *cluster) Stop(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.daemon == nil {
		t.Fatal("cluster.Stop: daemon not running")
	}
	c.daemon.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		c.daemon.Process.Kill()
		<-c.done
		t.Errorf("mirrorfs did not exit within 20s of SIGTERM; killed")
	}
	if code := c.daemon.ProcessState.ExitCode(); code != 0 {
		t.Errorf("mirrorfs exited with %v after SIGTERM, want exit status 0\nlog:\n%s", c.daemon.ProcessState, logTail(c.LogPath, 60))
	}
	c.daemon, c.done = nil, nil
	if isMounted(c.Mount) {
		t.Errorf("mirrorfs exited after SIGTERM but left %s mounted", c.Mount)
		unmount(t, c.Mount)
	}
}

// Kill SIGKILLs the daemon, like a crash, and then clears the dead mount
// (fusermount3 -u -z) so that Start can mount again.
func (c *cluster) Kill(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.daemon == nil {
		t.Fatal("cluster.Kill: daemon not running")
	}
	c.daemon.Process.Kill()
	<-c.done
	c.daemon, c.done = nil, nil
	if isMounted(c.Mount) {
		unmount(t, c.Mount)
	}
}

// shutdown is the cleanup: SIGTERM, SIGKILL after 10 s, unmount if needed.
func (c *cluster) shutdown(t testing.TB) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.daemon != nil {
		c.daemon.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			c.daemon.Process.Kill()
			<-c.done
			t.Errorf("cleanup: mirrorfs did not exit within 10s of SIGTERM; killed")
		}
		c.daemon, c.done = nil, nil
	}
	if isMounted(c.Mount) {
		unmount(t, c.Mount)
	}
}

// unmount lazily unmounts a FUSE mount point.
func unmount(t testing.TB, mnt string) {
	t.Helper()
	out, err := exec.Command("fusermount3", "-u", "-z", mnt).CombinedOutput()
	if err != nil && isMounted(mnt) {
		// fusermount3 can refuse what root can still do.
		if err2 := syscall.Unmount(mnt, syscall.MNT_DETACH); err2 != nil {
			t.Errorf("unmount %s: fusermount3: %v: %s; umount2: %v", mnt, err, out, err2)
		}
	}
}

// statusJSON is the output of `mirrorfs status --json`.
type statusJSON struct {
	Workers []workerStatus `json:"workers"`
}

type workerStatus struct {
	Name        string  `json:"name"`
	Connected   bool    `json:"connected"`
	LastError   string  `json:"last_error"`
	Pending     int64   `json:"pending"`
	LagSeconds  float64 `json:"lag_seconds"`
	Applied     int64   `json:"applied"`
	InitialCopy bool    `json:"initial_copy"`
	BytesSent   uint64  `json:"bytes_sent"`
}

// worker returns the status of the named worker.
func (s statusJSON) worker(name string) (workerStatus, bool) {
	for _, w := range s.Workers {
		if w.Name == name {
			return w, true
		}
	}
	return workerStatus{}, false
}

// cli runs `mirrorfs SUBCOMMAND --config FILE ARGS...` (30 s at most) and
// returns its stdout; stderr is returned in err's message when it fails.
func (c *cluster) cli(subcommand string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	argv := append([]string{subcommand, "--config", c.Config}, args...)
	cmd := exec.CommandContext(ctx, c.Bin, argv...)
	cmd.Env = daemonEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("mirrorfs %s: %v\nstderr:\n%s", strings.Join(argv, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// mustCLI is cli that fails the test on error.
func (c *cluster) mustCLI(t testing.TB, subcommand string, args ...string) string {
	t.Helper()
	out, err := c.cli(subcommand, args...)
	if err != nil {
		t.Fatalf("%v\nstdout:\n%s", err, out)
	}
	return out
}

// status runs `mirrorfs status --config FILE --json` and decodes it.
func (c *cluster) status(t testing.TB) statusJSON {
	t.Helper()
	out := c.mustCLI(t, "status", "--json")
	var s statusJSON
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("mirrorfs status --json: %v\noutput:\n%s", err, out)
	}
	return s
}

// worker returns the named worker.
func (c *cluster) worker(t testing.TB, name string) *sshWorker {
	t.Helper()
	for _, w := range c.Workers {
		if w.Name == name {
			return w
		}
	}
	t.Fatalf("no worker %q", name)
	return nil
}

// diffs compares every worker with the store once; workers that match are
// left out.
func (c *cluster) diffs() map[string][]string {
	out := map[string][]string{}
	for _, w := range c.Workers {
		if d := c.compare(c.Store, w.Root); len(d) > 0 {
			out[w.Name] = d
		}
	}
	return out
}

// compare is compareTrees at the precision the workers' transport keeps.
func (c *cluster) compare(store, worker string) []string {
	return compareTreesWith(store, worker, c.excluded, c.opts.Transport == "")
}

// waitConverged polls (every 50 ms) until every worker root equals the store,
// excluded paths aside. On timeout, or if the daemon dies meanwhile, it
// fails listing what still differs, the daemon's status and its log tail.
func (c *cluster) waitConverged(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		d := c.diffs()
		if len(d) == 0 {
			return
		}
		if ps, dead := c.exitedUnexpectedly(); dead {
			t.Fatalf("mirrorfs exited (%v) while waiting for convergence\n%s\ndaemon log tail:\n%s",
				ps, formatDiffs(c, d), logTail(c.LogPath, 60))
		}
		if time.Now().After(deadline) {
			st := "(daemon not running)"
			if c.running() {
				if out, err := c.cli("status", "--json"); err != nil {
					st = err.Error()
				} else {
					st = out
				}
			}
			t.Fatalf("workers not converged after %v\n%s\nmirrorfs status --json:\n%s\ndaemon log tail:\n%s",
				timeout, formatDiffs(c, d), st, logTail(c.LogPath, 60))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// assertConverged checks once, without waiting, that every worker equals
// the store.
func (c *cluster) assertConverged(t testing.TB) {
	t.Helper()
	if d := c.diffs(); len(d) > 0 {
		t.Fatalf("workers differ from the store:\n%s", formatDiffs(c, d))
	}
}

func formatDiffs(c *cluster, d map[string][]string) string {
	const maxLines = 30
	var b strings.Builder
	for _, w := range c.Workers {
		lines, ok := d[w.Name]
		if !ok {
			continue
		}
		fmt.Fprintf(&b, "worker %s (%s): %d difference(s) from %s:\n", w.Name, w.Root, len(lines), c.Store)
		for i, l := range lines {
			if i == maxLines {
				fmt.Fprintf(&b, "  … and %d more\n", len(lines)-maxLines)
				break
			}
			fmt.Fprintf(&b, "  %s\n", l)
		}
	}
	return b.String()
}

// Mounts.

type mountEntry struct {
	MountPoint, FSType, Source string
}

// parseMountinfo parses /proc/PID/mountinfo (see proc(5)).
func parseMountinfo(data string) []mountEntry {
	var out []mountEntry
	for _, line := range strings.Split(data, "\n") {
		f := strings.Fields(line)
		if len(f) < 10 {
			continue
		}
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+2 >= len(f) {
			continue
		}
		out = append(out, mountEntry{
			MountPoint: unescapeMountinfo(f[4]),
			FSType:     f[sep+1],
			Source:     unescapeMountinfo(f[sep+2]),
		})
	}
	return out
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space…).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// isMounted reports whether mnt is a FUSE mount point (fstype "fuse" or
// "fuse.SUBTYPE") in this process's mount namespace.
func isMounted(mnt string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, m := range parseMountinfo(string(b)) {
		if m.MountPoint == mnt && (m.FSType == "fuse" || strings.HasPrefix(m.FSType, "fuse.")) {
			return true
		}
	}
	return false
}

// Logs.

// readFrom returns the content of a file from offset on ("" on error).
func readFrom(p string, offset int64) string {
	b, err := os.ReadFile(p)
	if err != nil || offset >= int64(len(b)) {
		return ""
	}
	return string(b[offset:])
}

// lastLines returns the last n lines of s, saying how many were left out.
func lastLines(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "(empty)"
	}
	lines := strings.Split(s, "\n")
	if len(lines) <= n {
		return s
	}
	return fmt.Sprintf("(%d earlier lines omitted)\n%s", len(lines)-n, strings.Join(lines[len(lines)-n:], "\n"))
}

// logTail returns the last n lines of a log file.
func logTail(p string, n int) string {
	if _, err := os.Stat(p); err != nil {
		return "(" + err.Error() + ")"
	}
	return lastLines(readFrom(p, 0), n)
}

// Small helpers.

func writeFile(t testing.TB, p, content string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func appendFile(t testing.TB, p, content string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mkdirAll(t testing.TB, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

// mustRun runs a command and returns its combined output, failing the test
// (with that output) if it fails.
func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// waitFor polls cond every 20 ms until it returns nil, failing the test with
// cond's last error after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: still not true after %v: %v", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// verify runs the operator's own check, `mirrorfs verify --checksum`
// (content hashes included), on the named workers or on all of them, and
// fails the test unless it reports them in sync. Failure scenarios end with
// it besides the harness's own tree comparison: the two are independent.
func (c *cluster) verify(t testing.TB, workers ...string) {
	t.Helper()
	runs := [][]string{{"--checksum"}}
	if len(workers) > 0 {
		runs = nil
		for _, w := range workers {
			runs = append(runs, []string{"--checksum", "--worker", w})
		}
	}
	for _, args := range runs {
		if out, err := c.cli("verify", args...); err != nil {
			t.Errorf("mirrorfs verify %s on converged workers: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
