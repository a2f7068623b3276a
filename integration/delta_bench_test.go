package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BenchmarkDeltaVsRsync puts mirrorfs's replication of small changes side
// by side with rsync over the same ssh, to the same worker sshd, through the
// same veth link (the worker runs in a network namespace of its own:
// clusterOptions.NetNS). Run it with
//
//	go test -run '^$' -bench BenchmarkDeltaVsRsync -benchtime 1x ./integration/
//
// Cases (sub-benchmarks, in this order; they share one cluster):
//
//	inplace-1KiB-of-256MiB   1 KiB overwritten in place in the middle of a
//	                         256 MiB file through the mount (target ≤ 16 KiB
//	                         on the wire), and the time until the worker has it
//	rename-1KiB-of-1MiB      a 1 MiB file saved by rename (temp file *.swp in
//	                         the same directory, excluded as in a real config,
//	                         renamed over) with 1 KiB changed
//	unchanged-1000-inplace   1,000 files of 8 KiB rewritten in place with the
//	                         same content (new mtime)
//	unchanged-1000-rename    the same files re-saved by rename, same content
//	rsync-delta-256MiB       the 256 MiB file saved by rename with another
//	                         1 KiB changed (mirrorfs: signature and delta, as
//	                         rsync): the time of mirrorfs, of rsync over ssh,
//	                         and of a local rsync --no-whole-file (rsync's
//	                         delta speed without the network)
//
// Bytes on the wire are counted the same way for both tools: tx + rx bytes
// of the veth's end in the test's namespace, from just before the change to
// just after the transfer (so IP and TCP headers, SSH framing and, for
// rsync, its ssh connection set-up are included). mirrorfs's own counter
// (status bytes_sent: what its SSH connection wrote, one direction) is
// reported too. mirrorfs is idle (converged, nothing pending) while rsync
// runs, and nothing runs rsync while mirrorfs ships.
//
// rsync goes from a local copy of the source (same old version, same change
// applied) to a directory of its own on the worker host holding the old
// version, with `rsync -a` (over ssh rsync sends deltas by default).
func BenchmarkDeltaVsRsync(b *testing.B) {
	needTool(b, "rsync", "cp")
	const (
		bigSize   = 256 << 20
		midSize   = 1 << 20
		manyFiles = 1000
		manySize  = 8 << 10
		change    = 1 << 10
	)
	rng := rand.New(rand.NewPCG(42, 4242))
	big := pseudoRandom(1, bigSize)
	mid := pseudoRandom(2, midSize)
	many := make([][]byte, manyFiles)
	for i := range many {
		many[i] = pseudoRandom(uint64(100+i), manySize)
	}
	manyName := func(i int) string { return fmt.Sprintf("many/f%04d.html", i) }

	setupStart := time.Now()
	c := newCluster(b, clusterOptions{
		Workers: 1,
		NetNS:   true,
		Exclude: []string{"*.swp"},
		Prefill: func(store string) {
			deltaBenchWrite(b, filepath.Join(store, "big.bin"), big)
			deltaBenchWrite(b, filepath.Join(store, "mid.bin"), mid)
			mkdirAll(b, filepath.Join(store, "many"))
			for i, data := range many {
				deltaBenchWrite(b, filepath.Join(store, manyName(i)), data)
			}
		},
	})
	w := c.Workers[0]
	if w.NetNS == nil {
		b.Fatal("worker has no network namespace")
	}
	link := w.NetNS.HostIf
	// The initial copy ships everything whole.
	deltaBenchIdle(b, c, 2*time.Minute)

	// rsync's side: a local source and a destination on the worker host, both
	// holding exactly what the store and the worker hold now.
	src := filepath.Join(b.TempDir(), "src")
	dst := filepath.Join(b.TempDir(), "dst") // "on the worker": same machine, reached over the veth
	mustRun(b, "cp", "-a", c.Store+"/.", src)
	mustRun(b, "cp", "-a", w.Root+"/.", dst)
	rsyncSSH := deltaBenchRsyncSSH(b, w)
	remote := func(p string) string { return "root@" + w.host() + ":" + p }
	// A first run over ssh checks the command and settles any difference
	// left by cp (it should find none to send).
	deltaBenchRsync(b, "-a", "-e", rsyncSSH, src+"/", remote(dst+"/"))
	// The set-up wrote about 1 GiB; its writeback would slow whichever
	// tool fsyncs (mirrorfs does, rsync does not) during the first cases.
	syscall.Sync()
	b.Logf("setup (data, cluster, initial copy, rsync copies): %v", time.Since(setupStart).Round(time.Millisecond))

	sshSent := func() uint64 {
		ws, ok := c.status(b).worker(w.Name)
		if !ok {
			b.Fatalf("no status for worker %s", w.Name)
		}
		return ws.BytesSent
	}

	// rsyncMeasured runs rsync with mirrorfs idle and returns the bytes on
	// the link and its run time. mirrorfs's counter must not move meanwhile.
	rsyncMeasured := func(b *testing.B, args ...string) (wire uint64, elapsed time.Duration) {
		b.Helper()
		deltaBenchIdle(b, c, converge)
		sent0 := sshSent()
		l0 := deltaBenchLinkBytes(b, link)
		start := time.Now()
		deltaBenchRsync(b, args...)
		elapsed = time.Since(start)
		l1 := deltaBenchLinkBytes(b, link)
		if sent1 := sshSent(); sent1 != sent0 {
			b.Logf("warning: mirrorfs sent %d bytes while rsync ran; the rsync count includes them", sent1-sent0)
		}
		return l1 - l0, elapsed
	}
	// mirrorfsMeasured applies change (through the mount), waits with
	// arrived until the worker has the new version, then until the daemon
	// is idle, and returns the bytes on the link, mirrorfs's own count and
	// the time from change returning to arrived returning.
	mirrorfsMeasured := func(b *testing.B, change func(), arrived func() time.Time) (wire, sent uint64, elapsed time.Duration) {
		b.Helper()
		deltaBenchIdle(b, c, converge)
		sent0 := sshSent()
		logOff := fileSize(c.LogPath)
		l0 := deltaBenchLinkBytes(b, link)
		change()
		start := time.Now()
		at := arrived()
		elapsed = at.Sub(start)
		deltaBenchIdle(b, c, converge)
		time.Sleep(200 * time.Millisecond) // let the last acknowledgements cross
		l1 := deltaBenchLinkBytes(b, link)
		b.Logf("how mirrorfs shipped it (daemon log): %s", deltaBenchShipped(c.LogPath, logOff))
		return l1 - l0, sshSent() - sent0, elapsed
	}
	report := func(b *testing.B, mWire, mSent, rWire uint64, mTime, rTime time.Duration) {
		b.ReportMetric(float64(mWire), "mirrorfs-wire-B")
		b.ReportMetric(float64(mSent), "mirrorfs-ssh-sent-B")
		b.ReportMetric(float64(rWire), "rsync-wire-B")
		if rWire > 0 {
			b.ReportMetric(float64(mWire)/float64(rWire), "ratio")
		}
		b.ReportMetric(float64(mTime.Microseconds())/1000, "mirrorfs-ms")
		b.ReportMetric(float64(rTime.Microseconds())/1000, "rsync-ms")
		b.Logf("mirrorfs: %d B on the link (%d B sent by its ssh), %v; rsync: %d B on the link, %v",
			mWire, mSent, mTime.Round(time.Millisecond), rWire, rTime.Round(time.Millisecond))
	}

	// inPlaceChange overwrites change bytes at off of the 256 MiB file,
	// through the mount for mirrorfs and in src for rsync, and returns the
	// mirrorfs and rsync measurements.
	type bigResult struct {
		mWire, mSent, rWire uint64
		mTime, rTime        time.Duration
	}
	// bigChange writes the change in place, or saves the whole new version
	// by rename (temp file in the same directory, renamed over) when
	// byRename: mirrorfs then sends an rsync-style delta, not ranges.
	bigChange := func(b *testing.B, off int64, byRename bool) bigResult {
		b.Helper()
		patch := make([]byte, change)
		for i := range patch {
			patch[i] = byte(rng.Uint32())
		}
		copy(big[off:], patch)
		want := sha256.Sum256(big)
		apply := func(dir string) {
			p := filepath.Join(dir, "big.bin")
			if !byRename {
				deltaBenchWriteAt(b, p, patch, off)
				return
			}
			deltaBenchWrite(b, p+".swp", big)
			if err := os.Rename(p+".swp", p); err != nil {
				b.Fatal(err)
			}
		}
		var r bigResult
		r.mWire, r.mSent, r.mTime = mirrorfsMeasured(b,
			func() { apply(c.Mount) },
			func() time.Time {
				return deltaBenchWaitNew(b, filepath.Join(w.Root, "big.bin"), off, patch, want, time.Minute)
			})
		apply(src)
		r.rWire, r.rTime = rsyncMeasured(b, "-a", "-e", rsyncSSH, filepath.Join(src, "big.bin"), remote(filepath.Join(dst, "big.bin")))
		deltaBenchCheck(b, filepath.Join(dst, "big.bin"), want)
		deltaBenchCheck(b, filepath.Join(c.Store, "big.bin"), want)
		return r
	}

	b.Run("inplace-1KiB-of-256MiB", func(b *testing.B) {
		r := bigChange(b, bigSize/2-change/2, false)
		report(b, r.mWire, r.mSent, r.rWire, r.mTime, r.rTime)
		if r.mWire > 16<<10 {
			b.Logf("target ≤ 16 KiB on the wire: NOT met (%d B)", r.mWire)
		} else {
			b.Logf("target ≤ 16 KiB on the wire: met (%d B)", r.mWire)
		}
	})

	b.Run("rename-1KiB-of-1MiB", func(b *testing.B) {
		off := midSize/2 - change/2
		for i := off; i < off+change; i++ {
			mid[i] = byte(rng.Uint32())
		}
		want := sha256.Sum256(mid)
		saveByRename := func(dir string) {
			tmp := filepath.Join(dir, ".mid.bin.swp")
			deltaBenchWrite(b, tmp, mid)
			if err := os.Rename(tmp, filepath.Join(dir, "mid.bin")); err != nil {
				b.Fatal(err)
			}
		}
		mWire, mSent, mTime := mirrorfsMeasured(b,
			func() { saveByRename(c.Mount) },
			func() time.Time {
				return deltaBenchWaitNew(b, filepath.Join(w.Root, "mid.bin"), int64(off), mid[off:off+change], want, time.Minute)
			})
		saveByRename(src)
		rWire, rTime := rsyncMeasured(b, "-a", "-e", rsyncSSH, filepath.Join(src, "mid.bin"), remote(filepath.Join(dst, "mid.bin")))
		deltaBenchCheck(b, filepath.Join(dst, "mid.bin"), want)
		report(b, mWire, mSent, rWire, mTime, rTime)
	})

	// Re-saving unchanged files: the content stays, the mtime moves. The
	// worker has the new version when the many/ trees compare equal
	// (mtimes to the nanosecond, as the agent transport keeps them).
	resave := func(b *testing.B, byRename bool) {
		write := func(root string) {
			for i, data := range many {
				p := filepath.Join(root, manyName(i))
				if byRename {
					tmp := p + ".swp"
					deltaBenchWrite(b, tmp, data)
					if err := os.Rename(tmp, p); err != nil {
						b.Fatal(err)
					}
				} else {
					deltaBenchWrite(b, p, data)
				}
			}
		}
		mWire, mSent, mTime := mirrorfsMeasured(b,
			func() { write(c.Mount) },
			func() time.Time {
				deadline := time.Now().Add(time.Minute)
				for {
					d := compareTreesWith(filepath.Join(c.Store, "many"), filepath.Join(w.Root, "many"), c.excluded, true)
					if len(d) == 0 {
						return time.Now()
					}
					if time.Now().After(deadline) {
						b.Fatalf("worker's many/ differs from the store's after 1m: %d differences, first: %s", len(d), d[0])
					}
					time.Sleep(10 * time.Millisecond)
				}
			})
		write(src)
		rWire, rTime := rsyncMeasured(b, "-a", "-e", rsyncSSH, filepath.Join(src, "many")+"/", remote(filepath.Join(dst, "many")+"/"))
		if d := compareTreesWith(filepath.Join(src, "many"), filepath.Join(dst, "many"), nil, true); len(d) > 0 {
			b.Fatalf("rsync destination differs from its source: %d differences, first: %s", len(d), d[0])
		}
		report(b, mWire, mSent, rWire, mTime, rTime)
	}
	b.Run("unchanged-1000-inplace", func(b *testing.B) { resave(b, false) })
	b.Run("unchanged-1000-rename", func(b *testing.B) { resave(b, true) })

	b.Run("rsync-delta-256MiB", func(b *testing.B) {
		// A local copy of the old version for a local rsync --no-whole-file:
		// rsync's delta algorithm without ssh or the network.
		local := filepath.Join(b.TempDir(), "big.bin")
		mustRun(b, "cp", "-p", filepath.Join(dst, "big.bin"), local)
		r := bigChange(b, bigSize/3, true)
		deltaBenchIdle(b, c, converge)
		start := time.Now()
		deltaBenchRsync(b, "-a", "--no-whole-file", filepath.Join(src, "big.bin"), local)
		localTime := time.Since(start)
		deltaBenchCheck(b, local, sha256.Sum256(big))
		// rsync's fixed cost over ssh: the same command with nothing to send
		// (ssh connection, remote rsync start, file list, quick check).
		noopWire, noopTime := rsyncMeasured(b, "-a", "-e", rsyncSSH, filepath.Join(src, "big.bin"), remote(filepath.Join(dst, "big.bin")))
		b.ReportMetric(float64(noopTime.Microseconds())/1000, "rsync-ssh-noop-ms")
		b.ReportMetric(float64(noopWire), "rsync-noop-wire-B")
		b.ReportMetric(float64(r.mTime.Microseconds())/1000, "mirrorfs-ms")
		b.ReportMetric(float64(r.rTime.Microseconds())/1000, "rsync-ssh-ms")
		b.ReportMetric(float64(localTime.Microseconds())/1000, "rsync-local-ms")
		b.ReportMetric(float64(r.mWire), "mirrorfs-wire-B")
		b.ReportMetric(float64(r.rWire), "rsync-wire-B")
		b.Logf("mirrorfs %v (%d B on the link), rsync over ssh %v (%d B), local rsync --no-whole-file %v, rsync over ssh with nothing to send %v (%d B)",
			r.mTime.Round(time.Millisecond), r.mWire, r.rTime.Round(time.Millisecond), r.rWire, localTime.Round(time.Millisecond),
			noopTime.Round(time.Millisecond), noopWire)
	})
}

// pseudoRandom returns n pseudo-random bytes from a seeded generator
// (incompressible, and the same on every run).
func pseudoRandom(seed uint64, n int) []byte {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	buf := make([]byte, n)
	rand.NewChaCha8(key).Read(buf)
	return buf
}

// deltaBenchWrite writes a whole file (mode 0644, explicitly: not the umask's).
func deltaBenchWrite(b testing.TB, p string, data []byte) {
	b.Helper()
	if err := os.WriteFile(p, data, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		b.Fatal(err)
	}
}

// deltaBenchWriteAt overwrites data at off in an existing file, in place.
func deltaBenchWriteAt(b testing.TB, p string, data []byte, off int64) {
	b.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := f.WriteAt(data, off); err != nil {
		f.Close()
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}

// deltaBenchCheck fails unless the file's SHA-256 is want.
func deltaBenchCheck(b testing.TB, p string, want [32]byte) {
	b.Helper()
	got, err := deltaBenchSum(p)
	if err != nil {
		b.Fatal(err)
	}
	if got != want {
		b.Fatalf("%s: sha256 %x, want %x", p, got[:8], want[:8])
	}
}

func deltaBenchSum(p string) ([32]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return [32]byte{}, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return [32]byte{}, err
	}
	var s [32]byte
	h.Sum(s[:0])
	return s, nil
}

// deltaBenchWaitNew polls p until it is the new version and returns when that
// was first seen. A cheap probe (the changed bytes at off) runs every 2 ms;
// when it matches, the whole file's SHA-256 must be want, else polling goes
// on (then the time is that of the matching hash).
func deltaBenchWaitNew(b testing.TB, p string, off int64, changed []byte, want [32]byte, timeout time.Duration) time.Time {
	b.Helper()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, len(changed))
	for {
		if f, err := os.Open(p); err == nil {
			n, _ := f.ReadAt(buf, off)
			f.Close()
			if n == len(buf) && bytes.Equal(buf, changed) {
				seen := time.Now()
				if sum, err := deltaBenchSum(p); err == nil && sum == want {
					return seen
				}
			}
		}
		if time.Now().After(deadline) {
			sum, err := deltaBenchSum(p)
			b.Fatalf("%s: not the new version after %v (sha256 %x, %v; want %x)", p, timeout, sum[:8], err, want[:8])
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// deltaBenchIdle waits until the worker equals the store and the daemon
// has nothing pending for any worker.
func deltaBenchIdle(b testing.TB, c *cluster, timeout time.Duration) {
	b.Helper()
	c.waitConverged(b, timeout)
	waitFor(b, timeout, "nothing pending", func() error {
		for _, ws := range c.status(b).Workers {
			if ws.Pending != 0 || ws.InitialCopy || !ws.Connected {
				return fmt.Errorf("worker %s: pending %d, initial copy %v, connected %v, last error %q",
					ws.Name, ws.Pending, ws.InitialCopy, ws.Connected, ws.LastError)
			}
		}
		return nil
	})
}

// deltaBenchLinkBytes is tx + rx bytes of a network interface of the test's namespace.
func deltaBenchLinkBytes(b testing.TB, ifname string) uint64 {
	b.Helper()
	var total uint64
	for _, dir := range []string{"tx_bytes", "rx_bytes"} {
		p := filepath.Join("/sys/class/net", ifname, "statistics", dir)
		data, err := os.ReadFile(p)
		if err != nil {
			b.Fatal(err)
		}
		n, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
		if err != nil {
			b.Fatalf("%s: %v", p, err)
		}
		total += n
	}
	return total
}

// deltaBenchRsyncSSH is rsync's -e: the harness's ssh client options for w
// (client key, w's known_hosts, strict host key checking) without the
// destination, which rsync adds.
func deltaBenchRsyncSSH(b testing.TB, w *sshWorker) string {
	b.Helper()
	args := w.sshArgs(b, w.KnownHosts)
	args = args[:len(args)-1] // "root@host"
	for _, a := range args {
		if strings.ContainsAny(a, " \t'\"\\") {
			b.Fatalf("ssh argument %q would need quoting in rsync -e", a)
		}
	}
	return "ssh " + strings.Join(args, " ")
}

// deltaBenchRsync runs rsync (2 minutes at most), failing the benchmark with its
// output if it fails.
func deltaBenchRsync(b testing.TB, args ...string) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rsync", args...).CombinedOutput()
	if err != nil {
		b.Fatalf("rsync %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// deltaBenchShipped summarizes the daemon's debug lines about file data
// written since offset: how many files went as a delta (with the first
// such line) and how many were sent whole after a failed delta.
func deltaBenchShipped(p string, offset int64) string {
	counts := map[string]int{}
	kinds := []string{"shipped as ranges", "ranges not used", "shipped as delta", "delta not used"}
	var first string
	for _, line := range strings.Split(readFrom(p, offset), "\n") {
		for _, k := range kinds {
			if strings.Contains(line, k) {
				counts[k]++
				if first == "" {
					first = strings.TrimSpace(line)
				}
			}
		}
	}
	var parts []string
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%d %q", counts[k], k))
	}
	s := strings.Join(parts, ", ")
	if first != "" {
		s += "; first: " + first
	}
	return s
}
