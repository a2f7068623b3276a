package integration

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchmarkChurn measures steady churn and the daemon's memory. Run it with
//
//	go test -run '^$' -bench BenchmarkChurn -benchtime 1x -v ./integration/
//
// Cases (sub-benchmarks; each starts a cluster of its own):
//
//	idle-rss         the daemon's VmRSS (and VmHWM) with 3 workers connected
//	                 and converged, 500 pages in the store, after 5 s idle.
//	churn-200-per-s  for 60 s, one save every 5 ms (a ticker; a tick missed
//	                 while a save is still running is dropped, not made up):
//	                 a page of 1–4 KiB written to the temp file .x.swp
//	                 (excluded) and renamed over one of 500 pages, the pages
//	                 in turn. mirrorfs has 4 workers in its config: 3 live
//	                 and w4, whose sshd is stopped (w.Stop) after the
//	                 initial sync (then one warm-up save, after which the
//	                 daemon reports w4 disconnected) and stays down, so the
//	                 daemon keeps its changes and retries it meanwhile. Every 10th save is
//	                 a sample: a poller, woken by inotify when a page is
//	                 renamed into place on a worker (polling every 1 ms until
//	                 2026-12-07), reads the page on each
//	                 live worker until the worker has that save or a later
//	                 one of the same page (later saves of a page come 2.5 s
//	                 apart); lag runs from the rename returning to then.
//	                 Reported per live worker: p50/p99/max lag (nearest
//	                 rank). The daemon's CPU seconds (utime+stime) over the
//	                 60 s of churn and until the samples are all seen, its
//	                 peak RSS (VmRSS sampled every 100 ms; VmHWM, the
//	                 lifetime peak, too). The write side's own cost: time
//	                 per save (open+write+close of the temp file, rename).
//	                 Then the same churn under lsyncd (startLsyncd of
//	                 lsyncd_bench_test.go: default.rsyncssh, delay 0, ssh
//	                 ControlMaster, one sync{} per live worker, on a plain
//	                 directory; mirrorfs idle meanwhile): lag per worker,
//	                 lsyncd's CPU seconds including the rsync and ssh
//	                 children it has waited for (cutime+cstime) plus the
//	                 ssh control masters (they detach from lsyncd), and on
//	                 both sides the workers' CPU (each sshd listener and
//	                 everything below it: the agent, or rsync --server).
func BenchmarkChurn(b *testing.B) {
	b.Run("idle-rss", churnBenchIdleRSS)
	b.Run("churn-200-per-s", func(b *testing.B) {
		for _, tool := range []string{"lsyncd", "rsync", "ssh"} {
			if _, err := exec.LookPath(tool); err != nil {
				requireReal(b, tool+" in PATH (Debian: apt-get install lsyncd rsync openssh-client; make bench installs them)")
			}
		}
		churnBench(b, 200, 60*time.Second)
	})
}

const (
	churnPages       = 500
	churnSampleEvery = 10
	churnDrain       = 60 * time.Second // after the churn, for the last samples
	churnTemp        = ".x.swp"
	churnHeader      = "<!-- churn save " // then 8 digits
)

func churnPageName(p int) string { return fmt.Sprintf("p%03d.html", p) }

// churnContent is save seq's page: 1–4 KiB, its size changing from one
// save of a page to the next (rsync's quick check compares size and mtime).
func churnContent(seq int) []byte {
	size := 1024 + (seq*613)%3072
	c := bytes.Repeat([]byte{'a' + byte(seq%26)}, size)
	copy(c, fmt.Sprintf("%s%08d page %03d -->\n", churnHeader, seq, seq%churnPages))
	c[len(c)-1] = '\n'
	return c
}

// churnPrefill writes the 500 pages (not churn saves: their header says so).
func churnPrefill(b testing.TB, dir string) {
	for p := 0; p < churnPages; p++ {
		c := bytes.Repeat([]byte{'z'}, 1024+(p*613)%3072)
		copy(c, fmt.Sprintf("<!-- initial page %03d -->\n", p))
		deltaBenchWrite(b, filepath.Join(dir, churnPageName(p)), c)
	}
}

// churnSeq reads the save number in the header of a worker's page (-1 if
// it has none: the initial page, or a partial file).
func churnSeq(p string, buf []byte) int {
	f, err := os.Open(p)
	if err != nil {
		return -1
	}
	n, _ := f.ReadAt(buf, 0)
	f.Close()
	h := buf[:n]
	if !bytes.HasPrefix(h, []byte(churnHeader)) || len(h) < len(churnHeader)+8 {
		return -1
	}
	seq, err := strconv.Atoi(string(h[len(churnHeader) : len(churnHeader)+8]))
	if err != nil {
		return -1
	}
	return seq
}

// churnResult is one churn run's measurements.
type churnResult struct {
	saves      int
	elapsed    time.Duration   // from the first tick to the last save returning
	saveTimes  []time.Duration // each save's own time through the file system
	lag        [][]time.Duration
	superseded []int // per worker: samples first seen as a later save
	unseen     []int // per worker: samples not seen by the end of the drain
	drained    time.Duration
	cpu        time.Duration // the syncing process(es), over the churn
	cpuDrained time.Duration // the same, until every sample was seen
	workerCPU  time.Duration // the workers' sshd trees, until drained
	peakRSS    int64         // KiB, sampled
	hwm        int64         // KiB, VmHWM at the end
}

// churnProbe measures CPU time of what syncs: procs returns the total.
type churnProbe struct {
	cpu func() (time.Duration, error)
	rss int // pid whose VmRSS is sampled
}

// churnRun saves into dir at rate saves per second for d and watches for
// every 10th save on each of roots (rootsWatch). probe's CPU is read at the start, at the end
// of the churn and once every sample is seen; its RSS every 100 ms.
func churnRun(b *testing.B, dir string, roots []string, rate int, d time.Duration, probe churnProbe, workerCPU func() time.Duration) churnResult {
	b.Helper()
	type sample struct {
		worker, seq int
		path        string
		want        []byte
		t0          time.Time
	}
	r := churnResult{
		lag:        make([][]time.Duration, len(roots)),
		superseded: make([]int, len(roots)),
		unseen:     make([]int, len(roots)),
	}
	var (
		mu      sync.Mutex
		pending []sample
		done    = make(chan struct{}) // writer finished
		stopRSS = make(chan struct{})
		rssDone = make(chan struct{})
	)
	// On b.Fatal too: the poller and the sampler end.
	var finishWriter, finishRSS sync.Once
	defer finishWriter.Do(func() { close(done) })
	defer finishRSS.Do(func() { close(stopRSS) })

	// RSS sampler.
	go func() {
		defer close(rssDone)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if kb, err := procStatusKB(probe.rss, "VmRSS"); err == nil && kb > r.peakRSS {
				r.peakRSS = kb
			}
			select {
			case <-stopRSS:
				return
			case <-t.C:
			}
		}
	}()

	// Poller, woken by each page renamed into place on a worker: until
	// the writer is done and nothing is pending, or the drain deadline.
	maxSaves := int(d.Seconds()*float64(rate)) + 1
	watch := newRootsWatch(b, roots)
	defer watch.close()
	pollDone := make(chan struct{})
	go func() {
		defer close(pollDone)
		buf := make([]byte, len(churnHeader)+8)
		var deadline time.Time
		for {
			mu.Lock()
			work := slices.Clone(pending)
			mu.Unlock()
			var seen []int
			for i, s := range work {
				now := time.Now()
				seq := churnSeq(s.path, buf)
				if seq < s.seq {
					continue
				}
				if seq == s.seq {
					got, err := os.ReadFile(s.path)
					if err != nil || !bytes.Equal(got, s.want) {
						continue // being written, or renamed over since
					}
				} else {
					r.superseded[s.worker]++
				}
				r.lag[s.worker] = append(r.lag[s.worker], now.Sub(s.t0))
				seen = append(seen, i)
			}
			mu.Lock()
			if len(seen) > 0 {
				// pending only grew at its end meanwhile.
				keep := pending[:0]
				for i, s := range pending {
					if i < len(work) && slices.Contains(seen, i) {
						continue
					}
					keep = append(keep, s)
				}
				pending = keep
			}
			left := len(pending)
			mu.Unlock()
			select {
			case <-done:
				if deadline.IsZero() {
					deadline = time.Now().Add(churnDrain)
				}
				if left == 0 {
					return
				}
				if time.Now().After(deadline) {
					mu.Lock()
					for _, s := range pending {
						r.unseen[s.worker]++
					}
					mu.Unlock()
					return
				}
			default:
			}
			watch.wait()
		}
	}()

	cpu0, err := probe.cpu()
	if err != nil {
		b.Fatal(err)
	}
	wcpu0 := workerCPU()
	tmp := filepath.Join(dir, churnTemp)
	tick := time.NewTicker(time.Second / time.Duration(rate))
	start := time.Now()
	end := start.Add(d)
	for seq := 0; seq < maxSaves; seq++ {
		now := <-tick.C
		if now.After(end) {
			break
		}
		content := churnContent(seq)
		page := filepath.Join(dir, churnPageName(seq%churnPages))
		t0 := time.Now()
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.Write(content); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		if err := os.Rename(tmp, page); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		r.saveTimes = append(r.saveTimes, t1.Sub(t0))
		r.saves++
		if seq%churnSampleEvery == 0 {
			mu.Lock()
			for w, root := range roots {
				pending = append(pending, sample{worker: w, seq: seq, path: filepath.Join(root, churnPageName(seq%churnPages)), want: content, t0: t1})
			}
			mu.Unlock()
		}
	}
	tick.Stop()
	r.elapsed = time.Since(start)
	if r.cpu, err = probe.cpu(); err != nil {
		b.Fatal(err)
	}
	r.cpu -= cpu0
	finishWriter.Do(func() { close(done) })
	<-pollDone
	r.drained = time.Since(start)
	if r.cpuDrained, err = probe.cpu(); err != nil {
		b.Fatal(err)
	}
	r.cpuDrained -= cpu0
	r.workerCPU = workerCPU() - wcpu0
	finishRSS.Do(func() { close(stopRSS) })
	<-rssDone
	r.hwm, _ = procStatusKB(probe.rss, "VmHWM")
	return r
}

// procStatusKB reads a "kB" line of /proc/PID/status (VmRSS, VmHWM).
func procStatusKB(pid int, key string) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, key+":"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, key)
}

// procTreeCPU is a process's utime+stime plus cutime+cstime (its children
// that exited and were waited for, theirs included), in clock ticks of
// 10 ms (USER_HZ = 100).
func procTreeCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 15 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	var sum int64
	for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: field %d: %v", pid, i+3, err)
		}
		sum += n
	}
	return time.Duration(sum) * 10 * time.Millisecond, nil
}

// churnWorkersCPU sums procTreeCPU over each running worker's sshd
// listener and every live process below it (connections, the agent,
// rsync --server): the CPU the workers spent.
func churnWorkersCPU(workers []*sshWorker) time.Duration {
	var total time.Duration
	for _, w := range workers {
		w.mu.Lock()
		var pid int
		if w.cmd != nil {
			pid = w.cmd.Process.Pid
		}
		w.mu.Unlock()
		if pid == 0 {
			continue
		}
		for _, p := range append([]int{pid}, descendants(pid)...) {
			if c, err := procTreeCPU(p); err == nil {
				total += c
			}
		}
	}
	return total
}

// churnCmdlinePIDs lists the live processes whose command line contains s.
func churnCmdlinePIDs(s string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cl, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(cl, []byte(s)) {
			out = append(out, pid)
		}
	}
	return out
}

// churnWaitLive waits until each of workers equals the store.
func churnWaitLive(b *testing.B, c *cluster, workers []*sshWorker) {
	b.Helper()
	waitFor(b, converge, "the live workers to converge", func() error {
		if ps, dead := c.exitedUnexpectedly(); dead {
			b.Fatalf("mirrorfs exited (%v)\nlog:\n%s", ps, logTail(c.LogPath, 60))
		}
		for _, w := range workers {
			if d := c.compare(c.Store, w.Root); len(d) > 0 {
				return fmt.Errorf("%s: %d differences, first %v", w.Name, len(d), d[:min(len(d), 3)])
			}
		}
		return nil
	})
}

func churnDaemonPID(c *cluster) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.daemon.Process.Pid
}

func churnDirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func churnMiB(kb int64) float64 { return float64(kb) / 1024 }

func churnBenchIdleRSS(b *testing.B) {
	lsyncdBenchLoad(b)
	c := benchCluster(b, clusterOptions{
		Workers: 3,
		Exclude: lsyncdBenchExclude,
		Prefill: func(store string) { churnPrefill(b, store) },
	})
	deltaBenchIdle(b, c, converge)
	pid := churnDaemonPID(c)
	rss0, _ := procStatusKB(pid, "VmRSS")
	time.Sleep(5 * time.Second)
	rss, err := procStatusKB(pid, "VmRSS")
	if err != nil {
		b.Fatal(err)
	}
	hwm, _ := procStatusKB(pid, "VmHWM")
	b.ReportMetric(churnMiB(rss), "idle-rss-MiB")
	b.ReportMetric(churnMiB(hwm), "hwm-MiB")
	b.Logf("daemon (pid %d), 3 workers connected and converged, %d pages: VmRSS %.1f MiB when converged, %.1f MiB after 5 s idle; VmHWM %.1f MiB (since start, initial sync included)",
		pid, churnPages, churnMiB(rss0), churnMiB(rss), churnMiB(hwm))
	b.Logf("target: idle RSS ≤ 64 MiB: %s (%.1f MiB)", lsyncdBenchMet(churnMiB(rss) <= 64), churnMiB(rss))
}

func churnBench(b *testing.B, rate int, d time.Duration) {
	lsyncdBenchLoad(b)
	defer lsyncdBenchLoad(b)
	c := benchCluster(b, clusterOptions{
		Workers: 4,
		Exclude: lsyncdBenchExclude,
		Prefill: func(store string) { churnPrefill(b, store) },
	})
	deltaBenchIdle(b, c, converge)
	live, dead := c.Workers[:3], c.Workers[3]
	dead.Stop(b)
	// The daemon notices when it next ships to w4: one change first.
	deltaBenchWrite(b, filepath.Join(c.Mount, "warm.html"), []byte("<h1>warm-up</h1>\n"))
	churnWaitLive(b, c, live)
	waitFor(b, 30*time.Second, dead.Name+" seen down", func() error {
		ws, ok := c.status(b).worker(dead.Name)
		if !ok || ws.Connected {
			return fmt.Errorf("%s: %+v", dead.Name, ws)
		}
		return nil
	})
	pid := churnDaemonPID(c)
	rssBefore, _ := procStatusKB(pid, "VmRSS")
	var roots []string
	for _, w := range live {
		roots = append(roots, w.Root)
	}

	m := churnRun(b, c.Mount, roots, rate, d, churnProbe{
		cpu: func() (time.Duration, error) { return procCPU(pid) },
		rss: pid,
	}, func() time.Duration { return churnWorkersCPU(live) })
	churnWaitLive(b, c, live)
	st := c.status(b)
	ws4, _ := st.worker(dead.Name)
	journal := churnDirBytes(c.Journal)
	logSize := fileSize(c.LogPath)
	rssAfter, _ := procStatusKB(pid, "VmRSS")

	// lsyncd, mirrorfs idle (its dead worker still in its config).
	l := startLsyncd(b, live, func(src string) { churnPrefill(b, src) })
	lpid := l.cmd.Process.Pid
	lsyncdCPU := func() (time.Duration, error) {
		total, err := procTreeCPU(lpid)
		if err != nil {
			return 0, err
		}
		// Live children are not in cutime yet; the ssh control masters
		// run detached (reparented away from lsyncd), found by the
		// control socket directory in their command line (as are rsync
		// and its ssh mux clients). Each process counted once.
		seen := map[int]bool{lpid: true}
		for _, p := range append(descendants(lpid), churnCmdlinePIDs(l.ctl)...) {
			if seen[p] {
				continue
			}
			seen[p] = true
			if cpu, err := procTreeCPU(p); err == nil {
				total += cpu
			}
		}
		return total, nil
	}
	masters := churnCmdlinePIDs(l.ctl)
	ls := churnRun(b, l.Source, l.Targets, rate, d, churnProbe{cpu: lsyncdCPU, rss: lpid},
		func() time.Duration { return churnWorkersCPU(live) })
	for _, t := range l.Targets {
		waitFor(b, converge, "lsyncd target "+t+" to equal the source", func() error {
			l.checkAlive(b)
			if diff := compareTrees(l.Source, t, excludeMatcher(lsyncdBenchExclude)); len(diff) > 0 {
				return fmt.Errorf("%d differences, first %v", len(diff), diff[:min(len(diff), 3)])
			}
			return nil
		})
	}
	l.checkAlive(b)
	b.Log(l.summary())
	b.Logf("lsyncd CPU: lsyncd (pid %d) with the children it waited for, plus %d ssh control master process(es) found by their control path %v",
		lpid, len(masters), masters)

	report := func(name string, r churnResult, workers []*sshWorker) []lsyncdBenchStat {
		var stats []lsyncdBenchStat
		var all []time.Duration
		for i, w := range workers {
			if len(r.lag[i]) == 0 {
				b.Fatalf("%s: no sample of %s seen (%d unseen)", name, w.Name, r.unseen[i])
			}
			s := lsyncdBenchStats(r.lag[i])
			stats = append(stats, s)
			all = append(all, r.lag[i]...)
			b.ReportMetric(s.p50, name+"-"+w.Name+"-p50-ms")
			b.ReportMetric(s.p99, name+"-"+w.Name+"-p99-ms")
			b.ReportMetric(s.max, name+"-"+w.Name+"-max-ms")
		}
		a := lsyncdBenchStats(all)
		b.ReportMetric(a.p99, name+"-all-p99-ms")
		sv := lsyncdBenchStats(r.saveTimes)
		b.ReportMetric(float64(r.saves)/r.elapsed.Seconds(), name+"-saves/s")
		b.ReportMetric(sv.mean, name+"-save-mean-ms")
		b.ReportMetric(sv.p99, name+"-save-p99-ms")
		b.ReportMetric(r.cpu.Seconds(), name+"-cpu-s")
		b.ReportMetric(r.workerCPU.Seconds(), name+"-workers-cpu-s")
		return append(stats, a)
	}
	mStats := report("mirrorfs", m, live)
	lStats := report("lsyncd", ls, live)
	b.ReportMetric(churnMiB(m.peakRSS), "mirrorfs-peak-rss-MiB")
	b.ReportMetric(churnMiB(m.hwm), "mirrorfs-hwm-MiB")

	var t strings.Builder
	fmt.Fprintf(&t, "churn: one save every %v for %v by rename over %d pages; lag of every %dth save per live worker (ms; from the rename returning):\n",
		time.Second/time.Duration(rate), d, churnPages, churnSampleEvery)
	fmt.Fprintf(&t, "  %-16s %8s %8s %8s %8s %8s %9s %7s\n", "", "min", "p50", "mean", "p99", "max", "samples", "unseen")
	for _, side := range []struct {
		name  string
		r     churnResult
		stats []lsyncdBenchStat
	}{{"mirrorfs", m, mStats}, {"lsyncd", ls, lStats}} {
		for i, s := range side.stats {
			label, n, unseen := side.name+" all", 0, 0
			if i < len(live) {
				label, n, unseen = side.name+" "+live[i].Name, len(side.r.lag[i]), side.r.unseen[i]
			} else {
				for w := range live {
					n, unseen = n+len(side.r.lag[w]), unseen+side.r.unseen[w]
				}
			}
			fmt.Fprintf(&t, "  %-16s %8.1f %8.1f %8.1f %8.1f %8.1f %9d %7d\n", label, s.min, s.p50, s.mean, s.p99, s.max, n, unseen)
		}
	}
	b.Log(t.String())
	for _, side := range []struct {
		name string
		r    churnResult
	}{{"mirrorfs", m}, {"lsyncd", ls}} {
		r := side.r
		sv := lsyncdBenchStats(r.saveTimes)
		sup := 0
		for _, n := range r.superseded {
			sup += n
		}
		b.Logf("%s: %d saves in %v (%.1f/s); each save (open, write, close, rename) p50 %.2f ms, mean %.2f, p99 %.2f, max %.1f; "+
			"CPU %.2f s during the churn, %.2f s until every sample was seen (%v after the start); workers' CPU (sshd trees) %.2f s; "+
			"%d samples first seen as a later save of their page",
			side.name, r.saves, r.elapsed.Round(time.Millisecond), float64(r.saves)/r.elapsed.Seconds(),
			sv.p50, sv.mean, sv.p99, sv.max, r.cpu.Seconds(), r.cpuDrained.Seconds(), r.drained.Round(time.Millisecond),
			r.workerCPU.Seconds(), sup)
	}
	b.Logf("mirrorfs daemon memory: VmRSS %.1f MiB before the churn (w4 already down), peak %.1f MiB sampled during it, %.1f MiB after; VmHWM %.1f MiB; "+
		"dead worker %s: pending %d, last error %q; journal directory %.1f MiB; daemon log (debug level) %.1f MiB",
		churnMiB(rssBefore), churnMiB(m.peakRSS), churnMiB(rssAfter), churnMiB(m.hwm),
		dead.Name, ws4.Pending, ws4.LastError, float64(journal)/(1<<20), float64(logSize)/(1<<20))
	b.Logf("lsyncd memory: VmRSS peak %.1f MiB sampled (lsyncd alone), VmHWM %.1f MiB", churnMiB(ls.peakRSS), churnMiB(ls.hwm))
	a := mStats[len(mStats)-1]
	b.Logf("targets: p99 lag ≤ 50 ms at %d saves/s with a dead worker: %s (%.1f ms over all live workers; lsyncd %.1f); RSS under churn ≤ 256 MiB: %s (peak %.1f MiB sampled, VmHWM %.1f)",
		rate, lsyncdBenchMet(a.p99 <= 50), a.p99, lStats[len(lStats)-1].p99,
		lsyncdBenchMet(churnMiB(m.peakRSS) <= 256), churnMiB(m.peakRSS), churnMiB(m.hwm))
}
