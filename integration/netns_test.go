package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Workers as real hosts: each in a network namespace of its own, joined to
// the test's namespace by a veth pair on a private /30 that exists only for
// the test. The daemon reaches the worker through the veth, so the tests can
// cut that link or slow it down (tc) without touching anything else.
//
//	test's namespace                         namespace mfs-<i>
//	mfsh<i> 10.201.N.B+1/30  <== veth ==>    mfsn<i> 10.201.N.B+2/30, lo up
//	                                         sshd -D listening on :2222
//
// <i> is a subnet index (0…16383): N = i/64, B = (i%64)*4. A process holds
// index i through an abstract unix socket "@mirrorfs-test-netns-<i>" (freed
// by the kernel if the process dies), so parallel test packages never pick
// the same one; an index whose /30 overlaps any address or route the
// machine already has is skipped.

// netnsSSHPort is where a namespaced worker's sshd listens (the namespace
// is private, so any port is free).
const netnsSSHPort = 2222

const netnsSubnets = 1 << 14 // /30s in 10.201.0.0/16

// netNS is one worker's namespace and veth link.
type netNS struct {
	Name     string // network namespace, mfs-<i>
	HostIf   string // veth end in the test's namespace
	PeerIf   string // veth end inside the namespace
	HostAddr string // address of HostIf
	Addr     string // address of PeerIf: what the worker is reached at

	lock net.Listener // holds the subnet index for this process

	mu       sync.Mutex
	cut      bool
	shaped   bool // a qdisc on HostIf
	dropping bool // random-drop rules inside the namespace
}

var netnsSeq atomic.Int64

// needNetNS skips (or fails in CI) unless network namespaces can be made.
func needNetNS(t testing.TB) {
	t.Helper()
	needRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		requireReal(t, "ip in PATH (Debian: apt-get install iproute2)")
	}
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		requireReal(t, fmt.Sprintf("ip netns: %v: %s", err, strings.TrimSpace(string(out))))
	}
}

// startNetNSWorker starts a worker's sshd inside a new network namespace
// (newNetNS); it listens on the namespace's address, port netnsSSHPort.
func startNetNSWorker(t testing.TB, name string) *sshWorker {
	t.Helper()
	needSSHD(t)
	ns := newNetNS(t)
	return startSSHDIn(t, name, ns)
}

// newNetNS creates a namespace with a veth link to the test's namespace and
// removes all of it (link, qdisc, namespace, any process left inside it)
// when the test ends, whether it passed or not.
func newNetNS(t testing.TB) *netNS {
	t.Helper()
	needNetNS(t)
	idx, lock := allocSubnet(t)
	n := &netNS{
		Name:   fmt.Sprintf("mfs-%d", idx),
		HostIf: fmt.Sprintf("mfsh%d", idx),
		PeerIf: fmt.Sprintf("mfsn%d", idx),
		lock:   lock,
	}
	base := net.IPv4(10, 201, byte(idx/64), byte(idx%64*4)).To4()
	n.HostAddr = net.IPv4(base[0], base[1], base[2], base[3]+1).String()
	n.Addr = net.IPv4(base[0], base[1], base[2], base[3]+2).String()

	// A crash of an earlier run that held the same index left these: no live
	// process holds the index now (we do), so they are nobody's.
	n.removeLeftovers()
	t.Cleanup(func() { n.destroy(t) })

	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		requireReal(t, fmt.Sprintf("ip netns add %s: %v: %s", n.Name, err, strings.TrimSpace(string(out))))
	}
	mustRun(t, "ip", "link", "add", n.HostIf, "type", "veth", "peer", "name", n.PeerIf)
	mustRun(t, "ip", "link", "set", n.PeerIf, "netns", n.Name)
	mustRun(t, "ip", "addr", "add", n.HostAddr+"/30", "dev", n.HostIf)
	mustRun(t, "ip", "link", "set", n.HostIf, "up")
	mustRun(t, "ip", "-n", n.Name, "addr", "add", n.Addr+"/30", "dev", n.PeerIf)
	mustRun(t, "ip", "-n", n.Name, "link", "set", n.PeerIf, "up")
	mustRun(t, "ip", "-n", n.Name, "link", "set", "lo", "up")
	return n
}

// allocSubnet picks a subnet index no other process holds and whose /30 is
// unused on this machine, starting at a point derived from the PID.
func allocSubnet(t testing.TB) (int, net.Listener) {
	t.Helper()
	start := (os.Getpid()*97 + int(netnsSeq.Add(1))) % netnsSubnets
	for k := range netnsSubnets {
		i := (start + k) % netnsSubnets
		l, err := net.Listen("unix", "@mirrorfs-test-netns-"+strconv.Itoa(i))
		if err != nil {
			continue // held by another test process (or by us)
		}
		_, subnet, _ := net.ParseCIDR(fmt.Sprintf("10.201.%d.%d/30", i/64, i%64*4))
		inUse, err := subnetInUse(subnet)
		if err != nil {
			l.Close()
			requireReal(t, "ip -4 addr / ip -4 route: "+err.Error())
		}
		if inUse {
			l.Close()
			continue
		}
		return i, l
	}
	t.Fatal("no free /30 in 10.201.0.0/16 for a test network namespace")
	return 0, nil
}

// subnetInUse reports whether any IPv4 address or route of the test's
// namespace overlaps subnet.
func subnetInUse(subnet *net.IPNet) (bool, error) {
	var text strings.Builder
	for _, args := range [][]string{{"-4", "-o", "addr", "show"}, {"-4", "route", "show", "table", "all"}} {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return false, fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		text.Write(out)
		text.WriteByte('\n')
	}
	for _, tok := range strings.Fields(text.String()) {
		if !strings.Contains(tok, "/") {
			tok += "/32"
		}
		_, p, err := net.ParseCIDR(tok)
		if err != nil || p.IP.To4() == nil {
			continue
		}
		if ones, _ := p.Mask.Size(); ones == 0 {
			continue // a default route covers everything but is no conflict
		}
		if p.Contains(subnet.IP) || subnet.Contains(p.IP) {
			return true, nil
		}
	}
	return false, nil
}

// removeLeftovers deletes a namespace and veth of this name left by a
// crashed earlier run. Processes still inside it are not touched (they are
// not this run's); they keep the namespace alive, but without its name and
// link it is out of the way.
func (n *netNS) removeLeftovers() {
	if nsExists(n.Name) {
		exec.Command("ip", "netns", "del", n.Name).Run()
	}
	if linkExists(n.HostIf) {
		exec.Command("ip", "link", "del", n.HostIf).Run()
	}
}

func nsExists(name string) bool {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			return true
		}
	}
	return false
}

func linkExists(name string) bool {
	return exec.Command("ip", "link", "show", "dev", name).Run() == nil
}

// killInside SIGKILLs the processes still inside the namespace. They can
// only be the namespace's sshd and what it forked (connections orphaned when
// the listener was stopped), all started by this test: nothing else enters
// a namespace made for it.
func (n *netNS) killInside() []int {
	out, err := exec.Command("ip", "netns", "pids", n.Name).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			syscall.Kill(pid, syscall.SIGKILL)
			pids = append(pids, pid)
		}
	}
	return pids
}

// destroy is the cleanup: it runs after the worker's sshd was stopped (its
// cleanup was registered later). Deleting the host end of the veth deletes
// both ends and any qdisc on it.
func (n *netNS) destroy(t testing.TB) {
	if pids := n.killInside(); len(pids) > 0 {
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			left := 0
			for _, p := range pids {
				if _, state, ok := procStat(p); ok && state != 'Z' && state != 'X' {
					left++
				}
			}
			if left == 0 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if linkExists(n.HostIf) {
		if out, err := exec.Command("ip", "link", "del", n.HostIf).CombinedOutput(); err != nil {
			t.Errorf("cleanup: ip link del %s: %v: %s", n.HostIf, err, out)
		}
	}
	if nsExists(n.Name) {
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("cleanup: ip netns del %s: %v: %s", n.Name, err, out)
		}
	}
	if n.lock != nil {
		n.lock.Close()
	}
}

// Cut takes the link down: from then on every packet between the test's
// namespace and the worker is dropped, without any error or reset reaching
// either side, as when a cable or a switch port dies.
//
// It is the namespace's end that goes down. The host end stays up (it loses
// its carrier), so the route to the worker stays in place and packets are
// dropped at the veth; were the host end taken down instead, the kernel
// would remove that route and send the worker's packets along the default
// route, out of the machine.
func (n *netNS) Cut(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	mustRun(t, "ip", "-n", n.Name, "link", "set", n.PeerIf, "down")
	n.cut = true
}

// Restore brings a cut link back up.
func (n *netNS) Restore(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	mustRun(t, "ip", "-n", n.Name, "link", "set", n.PeerIf, "up")
	n.cut = false
}

// shaping is what Shape does to the traffic towards the worker.
type shaping struct {
	Delay time.Duration // added to every packet (netem only); at most 1 s
	Loss  float64       // percent of packets dropped; at most 50
	Rate  string        // bandwidth cap in tc's syntax, e.g. "40mbit"
}

// Shape sets the qdisc of the host end of the veth (traffic from the
// daemon to the worker): netem when Delay or Loss is set (with Rate too),
// else a tbf rate limit. Shape again replaces it; Unshape removes it.
//
// A kernel without sch_netem still gets Loss: a random-drop rule
// (iptables' statistic match) inside the worker's namespace, on packets in
// both directions, with Rate as a tbf cap. Delay has no such substitute: a
// test asking for it there skips (fails in CI); check netemSupported first.
func (n *netNS) Shape(t testing.TB, s shaping) {
	t.Helper()
	if s.Delay < 0 || s.Delay > time.Second || s.Loss < 0 || s.Loss > 50 {
		t.Fatalf("Shape: %+v out of bounds (delay ≤ 1s, loss ≤ 50%%)", s)
	}
	if _, err := exec.LookPath("tc"); err != nil {
		requireReal(t, "tc in PATH (Debian: apt-get install iproute2)")
	}
	n.Unshape(t)
	if s.Delay == 0 && s.Loss == 0 && s.Rate == "" {
		return
	}
	netem := n.netemSupported()
	if !netem && s.Delay > 0 {
		requireReal(t, fmt.Sprintf("sch_netem in the kernel, to delay packets by %v", s.Delay))
	}
	args := []string{"qdisc", "replace", "dev", n.HostIf, "root"}
	switch {
	case netem && (s.Delay > 0 || s.Loss > 0):
		args = append(args, "netem", "delay", fmt.Sprintf("%dus", s.Delay.Microseconds()),
			"loss", strconv.FormatFloat(s.Loss, 'f', -1, 64)+"%", "limit", "10000")
		if s.Rate != "" {
			args = append(args, "rate", s.Rate)
		}
	case s.Rate != "":
		args = append(args, "tbf", "rate", s.Rate, "burst", "64kb", "latency", "500ms")
	default:
		args = nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if args != nil {
		if out, err := exec.Command("tc", args...).CombinedOutput(); err != nil {
			t.Fatalf("tc %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		n.shaped = true
	}
	if !netem && s.Loss > 0 {
		if _, err := exec.LookPath(iptables); err != nil {
			requireReal(t, iptables+" in PATH, to drop packets without netem (Debian: apt-get install iptables)")
		}
		p := strconv.FormatFloat(s.Loss/100, 'f', -1, 64)
		for _, rule := range [][]string{
			{"INPUT", "-i", n.PeerIf},
			{"OUTPUT", "-o", n.PeerIf},
		} {
			cmd := append([]string{"netns", "exec", n.Name, iptables, "-w", "-A"}, rule...)
			cmd = append(cmd, "-m", "statistic", "--mode", "random", "--probability", p, "-j", "DROP")
			if out, err := exec.Command("ip", cmd...).CombinedOutput(); err != nil {
				t.Fatalf("ip %s: %v\n%s", strings.Join(cmd, " "), err, out)
			}
		}
		n.dropping = true
	}
}

// iptables is the legacy (x_tables) front end: the kernels these tests run
// on have x_tables built in but not always nf_tables.
const iptables = "iptables-legacy"

// Dropped is how many packets the random-drop rules of Shape have dropped
// (0 where netem does the dropping: its count is not kept here).
func (n *netNS) Dropped(t testing.TB) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", n.Name, iptables, "-w", "-L", "-n", "-v", "-x").CombinedOutput()
	if err != nil {
		t.Fatalf("%s -L in %s: %v\n%s", iptables, n.Name, err, out)
	}
	total := 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[2] == "DROP" {
			if v, err := strconv.Atoi(f[0]); err == nil {
				total += v
			}
		}
	}
	return total
}

// Unshape removes what Shape set.
func (n *netNS) Unshape(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.shaped {
		mustRun(t, "tc", "qdisc", "del", "dev", n.HostIf, "root")
		n.shaped = false
	}
	if n.dropping {
		mustRun(t, "ip", "netns", "exec", n.Name, iptables, "-w", "-F")
		n.dropping = false
	}
}

// netemSupported reports whether the kernel has sch_netem, by setting and
// removing a netem qdisc on n's host end.
func (n *netNS) netemSupported() bool {
	if err := exec.Command("tc", "qdisc", "add", "dev", n.HostIf, "root", "netem", "delay", "1ms").Run(); err != nil {
		return false
	}
	exec.Command("tc", "qdisc", "del", "dev", n.HostIf, "root").Run()
	return true
}
