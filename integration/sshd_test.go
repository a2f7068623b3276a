package integration

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// sshdPath is Debian's OpenSSH server. MIRRORFS_TEST_SSHD overrides it.
const sshdPath = "/usr/sbin/sshd"

func sshdBinary() string {
	if p := os.Getenv("MIRRORFS_TEST_SSHD"); p != "" {
		return p
	}
	return sshdPath
}

// sftpSubsystem is what a stock Debian worker runs for SFTP: the separate
// sftp-server binary, started through root's login shell. internal-sftp is
// the fallback when the binary is missing.
func sftpSubsystem() string {
	const server = "/usr/lib/openssh/sftp-server"
	if _, err := os.Stat(server); err == nil {
		return server
	}
	return "internal-sftp"
}

// needSSHD skips (or fails in CI) unless a real sshd can be run as root.
func needSSHD(t testing.TB) {
	t.Helper()
	needRoot(t)
	if _, err := os.Stat(sshdBinary()); err != nil {
		requireReal(t, "OpenSSH server "+sshdBinary()+" (Debian: apt-get install openssh-server)")
	}
	for _, tool := range []string{"ssh-keygen", "ssh"} {
		if _, err := exec.LookPath(tool); err != nil {
			requireReal(t, tool+" in PATH (Debian: openssh-client)")
		}
	}
	// OpenSSH's privilege separation needs its unprivileged user.
	if _, err := user.Lookup("sshd"); err != nil {
		requireReal(t, `the "sshd" privilege separation user`)
	}
}

// sshWorker is one worker host: a real OpenSSH sshd listening on 127.0.0.1 (or
// on Host, inside its own network namespace: netns_test.go),
// serving a root directory that stands for the worker's web root.
type sshWorker struct {
	Name           string
	Host           string // address sshd listens on and clients dial; "" means 127.0.0.1
	NetNS          *netNS // network namespace sshd runs in (netns_test.go); nil: the test's own
	Root           string // the worker's web root (a t.TempDir)
	Port           int
	Dir            string // config, host key, authorized_keys, known_hosts, log
	ConfigPath     string
	HostKey        string // private host key file
	AuthorizedKeys string // rewrite it to change which client keys are accepted; sshd rereads it per login
	KnownHosts     string // a known_hosts file for this worker alone
	LogPath        string
	Home           string // HOME of the sessions (root's real home is not used)

	hostPub string // "ssh-ed25519 AAAA…", no comment

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed when cmd has been waited for
	frozen bool
}

// startSSHD starts a worker's sshd and stops it when the test ends. The
// worker accepts the test process's client key (clientKey) for root.
func startSSHD(t testing.TB, name string) *sshWorker {
	t.Helper()
	return startSSHDIn(t, name, nil)
}

// startSSHDIn is startSSHD; with ns non-nil, sshd runs inside that network
// namespace and listens on its inside address (startNetNSWorker).
func startSSHDIn(t testing.TB, name string, ns *netNS) *sshWorker {
	t.Helper()
	needSSHD(t)
	ensurePrivsepDir(t)

	w := &sshWorker{Name: name, Host: "127.0.0.1", Dir: t.TempDir(), Root: t.TempDir()}
	if ns != nil {
		w.Host, w.NetNS = ns.Addr, ns
	}
	// t.TempDir is 0700; a web root is 0755, and the store is made 0755 too so
	// the two roots agree before the first sync.
	if err := os.Chmod(w.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	w.ConfigPath = filepath.Join(w.Dir, "sshd_config")
	w.HostKey = filepath.Join(w.Dir, "ssh_host_ed25519_key")
	w.AuthorizedKeys = filepath.Join(w.Dir, "authorized_keys")
	w.KnownHosts = filepath.Join(w.Dir, "known_hosts")
	w.LogPath = filepath.Join(w.Dir, "sshd.log")
	w.Home = filepath.Join(w.Dir, "home")
	if err := os.Mkdir(w.Home, 0o700); err != nil {
		t.Fatal(err)
	}

	w.generateHostKey(t)
	_, pub := clientKey(t)
	if err := os.WriteFile(w.AuthorizedKeys, []byte(pub+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() {
		w.Stop(t)
		if t.Failed() {
			t.Logf("sshd log of worker %s (%s):\n%s", w.Name, w.LogPath, logTail(w.LogPath, 300))
		}
	})

	// A port picked as free can be taken before sshd binds it: try again on
	// another one.
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if ns != nil {
			w.Port = netnsSSHPort // the namespace is ours alone
		} else {
			w.Port = pickPort(t)
		}
		w.writeConfig(t)
		if err = w.start(10 * time.Second); err == nil {
			w.writeKnownHosts(t)
			return w
		}
		t.Logf("sshd %s on port %d: %v (retrying on another port)", name, w.Port, err)
	}
	t.Fatalf("cannot start sshd for worker %s: %v\nlog:\n%s", name, err, logTail(w.LogPath, 50))
	return nil
}

// ensurePrivsepDir creates /run/sshd, which sshd refuses to start without.
func ensurePrivsepDir(t testing.TB) {
	t.Helper()
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		requireReal(t, "privilege separation directory /run/sshd: "+err.Error())
	}
}

func (w *sshWorker) generateHostKey(t testing.TB) {
	t.Helper()
	os.Remove(w.HostKey)
	os.Remove(w.HostKey + ".pub")
	mustRun(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mirrorfs-test-"+w.Name, "-f", w.HostKey)
	pub, err := os.ReadFile(w.HostKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	w.hostPub = keyWithoutComment(string(pub))
}

// keyWithoutComment returns "type base64" of an OpenSSH public key line.
func keyWithoutComment(line string) string {
	f := strings.Fields(line)
	if len(f) < 2 {
		return strings.TrimSpace(line)
	}
	return f[0] + " " + f[1]
}

// KnownHostsLine is this worker's line for a known_hosts file.
func (w *sshWorker) KnownHostsLine() string {
	return fmt.Sprintf("[%s]:%d %s", w.host(), w.Port, w.hostPub)
}

// host is the worker's address: Host, or 127.0.0.1 when unset.
func (w *sshWorker) host() string {
	if w.Host == "" {
		return "127.0.0.1"
	}
	return w.Host
}

// Addr is host:port of the worker's sshd.
func (w *sshWorker) Addr() string {
	return net.JoinHostPort(w.host(), strconv.Itoa(w.Port))
}

func (w *sshWorker) writeKnownHosts(t testing.TB) {
	t.Helper()
	writeKnownHosts(t, w.KnownHosts, w)
}

// writeKnownHosts writes a known_hosts file listing the given workers.
func writeKnownHosts(t testing.TB, path string, workers ...*sshWorker) {
	t.Helper()
	var b strings.Builder
	for _, w := range workers {
		b.WriteString(w.KnownHostsLine() + "\n")
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (w *sshWorker) writeConfig(t testing.TB) {
	t.Helper()
	cfg := fmt.Sprintf(`# sshd for mirrorfs integration test worker %s
Port %d
ListenAddress %s
AddressFamily inet
HostKey %s
AuthorizedKeysFile %s
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
UseDNS no
PidFile none
LogLevel VERBOSE
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowAgentForwarding no
AllowTcpForwarding no
PermitTTY no
# Tests open many connections and sessions at once: do not let sshd drop
# them at random as it does past its small defaults.
MaxStartups 200:30:400
MaxSessions 100
# Sessions run through root's login shell (sftp-server too), and bash run by
# sshd sources ~/.bashrc: give them a home of their own so the test
# machine's dotfiles can neither slow them down nor corrupt the SFTP stream.
SetEnv HOME=%s
Subsystem sftp %s
`, w.Name, w.Port, w.host(), w.HostKey, w.AuthorizedKeys, w.Home, sftpSubsystem())
	if err := os.WriteFile(w.ConfigPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// start runs sshd in the foreground (-D), logging to stderr (-e) which goes
// to the worker's log, in its own process group, and waits until it serves.
func (w *sshWorker) start(timeout time.Duration) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cmd != nil {
		return fmt.Errorf("sshd %s already running", w.Name)
	}
	logf, err := os.OpenFile(w.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== harness: starting sshd on port %d at %s ===\n", w.Port, time.Now().Format(time.RFC3339Nano))
	offset, _ := logf.Seek(0, 2)

	cmd := exec.Command(sshdBinary(), "-D", "-e", "-f", w.ConfigPath)
	if w.NetNS != nil {
		// ip netns exec execs sshd itself: cmd's PID is still sshd's.
		cmd = exec.Command("ip", "netns", "exec", w.NetNS.Name, sshdBinary(), "-D", "-e", "-f", w.ConfigPath)
	}
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", sshdBinary(), err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	w.cmd, w.done, w.frozen = cmd, done, false

	// Ready means: this sshd said it listens on our port (so a banner comes
	// from it and not from some other process that took the port) and a
	// connection gets the SSH banner.
	listening := fmt.Sprintf("Server listening on %s port %d", w.host(), w.Port)
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-done:
			w.cmd, w.done = nil, nil
			return fmt.Errorf("sshd exited during startup (%v): %s", cmd.ProcessState, lastLines(readFrom(w.LogPath, offset), 10))
		default:
		}
		if strings.Contains(readFrom(w.LogPath, offset), listening) && sshBanner(w.Addr(), time.Second) == nil {
			return nil
		}
		if time.Now().After(deadline) {
			killProcessTree(cmd.Process.Pid)
			cmd.Process.Kill()
			<-done
			w.cmd, w.done = nil, nil
			return fmt.Errorf("sshd not serving after %v", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Start starts the worker's sshd again after Stop, on the same port with the
// same host key. The port may be briefly taken by someone else; it retries.
func (w *sshWorker) Start(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := w.start(10 * time.Second)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("restart sshd %s on port %d: %v\nlog:\n%s", w.Name, w.Port, err, logTail(w.LogPath, 50))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Stop takes the worker down hard, like a host that goes away: the listener
// and every connection it forked (each of which runs in its own session, so
// not in the listener's process group) are killed; clients see their
// connections drop and new connections refused. Stop on a stopped worker does
// nothing.
func (w *sshWorker) Stop(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cmd == nil {
		return
	}
	killProcessTree(w.cmd.Process.Pid)
	select {
	case <-w.done:
	case <-time.After(10 * time.Second):
		w.cmd.Process.Kill()
		<-w.done
		t.Errorf("sshd %s did not exit on SIGTERM within 10s; killed", w.Name)
	}
	w.cmd, w.done, w.frozen = nil, nil, false
}

// Freeze stops (SIGSTOP) the sshd and every connection process: the worker
// hangs without closing anything, like a host that stops answering. New
// connections complete the TCP handshake but never see a banner.
func (w *sshWorker) Freeze(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cmd == nil {
		t.Fatalf("Freeze: sshd %s is not running", w.Name)
	}
	stopProcessTree(w.cmd.Process.Pid)
	w.frozen = true
}

// Thaw resumes a frozen worker.
func (w *sshWorker) Thaw(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cmd == nil || !w.frozen {
		return
	}
	pid := w.cmd.Process.Pid
	syscall.Kill(pid, syscall.SIGCONT)
	for _, p := range descendants(pid) {
		syscall.Kill(p, syscall.SIGCONT)
	}
	w.frozen = false
}

// Running reports whether the sshd process is up.
func (w *sshWorker) Running() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cmd != nil
}

// RotateHostKey gives the worker a new host key (restarting sshd if it runs)
// without updating any known_hosts file but the worker's own KnownHosts:
// clients holding the old line must refuse to connect.
func (w *sshWorker) RotateHostKey(t testing.TB) {
	t.Helper()
	wasRunning := w.Running()
	w.Stop(t)
	w.generateHostKey(t)
	w.writeKnownHosts(t)
	if wasRunning {
		w.Start(t)
	}
}

// sshArgs are the ssh client arguments to log in to the worker as root with
// the test client key, verifying its host key against known_hosts.
func (w *sshWorker) sshArgs(t testing.TB, knownHosts string) []string {
	key, _ := clientKey(t)
	return []string{
		"-F", "/dev/null",
		"-i", key,
		"-o", "IdentitiesOnly=yes",
		"-o", "BatchMode=yes",
		"-o", "UserKnownHostsFile=" + knownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "ConnectTimeout=5",
		"-o", "LogLevel=ERROR",
		"-p", strconv.Itoa(w.Port),
		"root@" + w.host(),
	}
}

// sshBanner connects to addr and reads the SSH identification line.
func sshBanner(addr string, timeout time.Duration) error {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read banner from %s: %w", addr, err)
	}
	if !strings.HasPrefix(line, "SSH-2.0-") {
		return fmt.Errorf("%s: not an SSH server: %q", addr, line)
	}
	return nil
}

// pickPort returns a port that was free a moment ago. It is chosen below the
// kernel's ephemeral range, so outgoing connections (the daemon's, to other
// workers) cannot be sitting on it when a stopped worker restarts.
func pickPort(t testing.TB) int {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 12000 {
				low = n
			}
		}
	}
	for range 100 {
		port := 10000 + rand.IntN(low-10000)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		l.Close()
		return port
	}
	t.Fatal("no free TCP port found on 127.0.0.1")
	return 0
}

// Client key: one per test process, authorized on every worker.
var (
	clientKeyOnce sync.Once
	clientKeyPath string
	clientKeyPub  string
	clientKeyErr  error
)

// clientKey returns the path of the test process's ed25519 client private key
// (no passphrase) and its public key line.
func clientKey(t testing.TB) (path, pub string) {
	t.Helper()
	clientKeyOnce.Do(func() {
		dir, err := sharedDir()
		if err != nil {
			clientKeyErr = err
			return
		}
		p := filepath.Join(dir, "id_ed25519")
		out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mirrorfs-test-client", "-f", p).CombinedOutput()
		if err != nil {
			clientKeyErr = fmt.Errorf("ssh-keygen: %v: %s", err, out)
			return
		}
		b, err := os.ReadFile(p + ".pub")
		if err != nil {
			clientKeyErr = err
			return
		}
		clientKeyPath, clientKeyPub = p, keyWithoutComment(string(b))
	})
	if clientKeyErr != nil {
		t.Fatalf("client key: %v", clientKeyErr)
	}
	return clientKeyPath, clientKeyPub
}

// Process trees. sshd forks one process per connection, and that child calls
// setsid(), so connections are not in the listener's process group; they are
// found through /proc instead.

// descendants lists every live process below pid.
func descendants(pid int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, state, ok := procStat(p)
		if !ok || state == 'Z' || state == 'X' {
			continue
		}
		children[ppid] = append(children[ppid], p)
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// procStat reads the parent pid and state letter of a process.
func procStat(pid int) (ppid int, state byte, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may contain anything
	if i < 0 || i+2 >= len(s) {
		return 0, 0, false
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 2 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(f[1])
	if err != nil {
		return 0, 0, false
	}
	return ppid, f[0][0], true
}

// stopProcessTree SIGSTOPs pid and all its descendants, and returns the
// descendants. A stopped process cannot fork, so once every process found is
// seen stopped, a last scan that finds nothing new means the tree is complete.
func stopProcessTree(pid int) []int {
	syscall.Kill(pid, syscall.SIGSTOP)
	waitStopped(pid)
	seen := map[int]bool{}
	var all []int
	for {
		var fresh []int
		for _, p := range descendants(pid) {
			if !seen[p] {
				seen[p] = true
				fresh = append(fresh, p)
			}
		}
		if len(fresh) == 0 {
			return all
		}
		for _, p := range fresh {
			syscall.Kill(p, syscall.SIGSTOP)
		}
		for _, p := range fresh {
			waitStopped(p)
		}
		all = append(all, fresh...)
	}
}

// waitStopped waits (briefly) until a process is stopped or gone.
func waitStopped(pid int) {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		_, state, ok := procStat(pid)
		if !ok || state == 'T' || state == 't' || state == 'Z' || state == 'X' {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// killProcessTree SIGKILLs every descendant of the sshd listener pid (its
// connections), then sends the listener SIGTERM, its normal shutdown.
func killProcessTree(pid int) {
	for _, p := range stopProcessTree(pid) {
		syscall.Kill(p, syscall.SIGKILL)
	}
	syscall.Kill(pid, syscall.SIGTERM)
	syscall.Kill(pid, syscall.SIGCONT)
}

// prSetChildSubreaper is PR_SET_CHILD_SUBREAPER from <linux/prctl.h>.
const prSetChildSubreaper = 36

// becomeSubreaper makes processes orphaned below the test process (sshd
// leaves some: a pre-auth child outliving its monitor, connections killed by
// Stop) children of the test process rather than of init, which in a
// container may never reap them. reapZombies collects them at the end.
func becomeSubreaper() {
	syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
}

// reapZombies collects every exited child. Call it only when nothing else
// waits for a child (after all tests): it would steal exit statuses.
func reapZombies() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

// isConnRefused reports whether err is a refused TCP connection.
func isConnRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED)
}
