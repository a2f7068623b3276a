package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// wrkArgs is the load of one measurement: 2 threads, 32 connections, 5 s.
var wrkArgs = []string{"-t2", "-c32", "-d5s"}

func needWrk(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("wrk")
	if err != nil {
		requireReal(t, "wrk in PATH (Debian: apt-get install wrk)")
	}
	return p
}

var wrkRate = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)\s*$`)

// runWrk loads url with wrk and returns its Requests/sec. Socket errors or
// non-2xx answers fail the benchmark: a fast error is not a fast page.
func runWrk(b *testing.B, wrk, url string, args ...string) float64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	argv := append(append([]string{}, args...), url)
	out, err := exec.CommandContext(ctx, wrk, argv...).CombinedOutput()
	if err != nil {
		b.Fatalf("wrk %s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	if bytes.Contains(out, []byte("Socket errors")) || bytes.Contains(out, []byte("Non-2xx")) {
		b.Fatalf("wrk %s reported errors:\n%s", strings.Join(argv, " "), out)
	}
	m := wrkRate.FindSubmatch(out)
	if m == nil {
		b.Fatalf("wrk %s: no Requests/sec in its output:\n%s", strings.Join(argv, " "), out)
	}
	rate, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil || rate <= 0 {
		b.Fatalf("wrk %s: bad Requests/sec %q", strings.Join(argv, " "), m[1])
	}
	return rate
}

// procCPU returns the user+system CPU time a process has used so far.
func procCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses: state is
	// field 3, utime field 14, stime field 15 (proc(5)), in clock ticks
	// (USER_HZ, 100 on Linux).
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// BenchmarkNginxMountVsStore compares the requests per second nginx serves
// from the mount with those it serves from the store directly: one nginx
// (sendfile on, access log off, worker_processes = number of CPUs) with two
// server blocks, port A with root = the mount, port B with root = the store,
// loaded by `wrk -t2 -c32 -d5s` for a 2 KiB page and a 1 MiB file. Each
// iteration runs wrk once per case (store and mount alternate); run it with
//
//	go test -run '^$' -bench BenchmarkNginx -benchtime 1x ./integration/
//
// For experiments, MIRRORFS_BENCH_NGINX_WORKERS sets worker_processes and
// MIRRORFS_BENCH_NGINX_HTTP adds directives to the http block (for example
// "open_file_cache max=1000;") and MIRRORFS_BENCH_WRK replaces wrk's
// options (for example "-t1 -c1 -d5s"); the headline numbers in
// BENCHMARKS.md use none of them.
//
// Metrics: req/s per case, ratio mount/store per file size (target ≥ 0.9),
// and the mirrorfs daemon's CPU time per request while the mount is loaded.
func BenchmarkNginxMountVsStore(b *testing.B) {
	wrk := needWrk(b)
	needNginx(b)
	c := newCluster(b, clusterOptions{Workers: 0})
	webMakeTraversable(b, c.Mount)
	webMakeTraversable(b, c.Store)

	files := map[string][]byte{
		"small.html": webRandomBytes(b, 2<<10),
		"big.bin":    webRandomBytes(b, 1<<20),
	}
	for name, data := range files {
		webWriteFile(b, filepath.Join(c.Mount, name), data, 0o644)
	}
	o := nginxOptions{Workers: runtime.NumCPU(), HTTPExtra: os.Getenv("MIRRORFS_BENCH_NGINX_HTTP")}
	if v := os.Getenv("MIRRORFS_BENCH_NGINX_WORKERS"); v != "" {
		w, err := strconv.Atoi(v)
		if err != nil || w < 1 || w > 64 {
			b.Fatalf("MIRRORFS_BENCH_NGINX_WORKERS=%q: want a number of worker processes from 1 to 64", v)
		}
		o.Workers = w
	}
	load := wrkArgs
	if v := os.Getenv("MIRRORFS_BENCH_WRK"); v != "" {
		load = strings.Fields(v)
	}
	ng := startNginx(b, o, c.Mount, c.Store)
	const mountSrv, storeSrv = 0, 1
	for name, data := range files {
		webExpectServed(b, ng.URL(mountSrv, "/"+name), data, 1)
		webExpectServed(b, ng.URL(storeSrv, "/"+name), data, 1)
	}

	c.mu.Lock()
	daemonPID := c.daemon.Process.Pid
	c.mu.Unlock()

	type result struct{ store, mount, daemonCPUPerReq float64 }
	cases := []struct{ label, path string }{{"small", "/small.html"}, {"1MiB", "/big.bin"}}
	results := make([]result, len(cases))

	// Warm up: page cache, nginx workers, the mount's inode and dentry caches.
	for _, cs := range cases {
		for _, srv := range []int{storeSrv, mountSrv} {
			runWrk(b, wrk, ng.URL(srv, cs.path), "-t2", "-c32", "-d1s")
		}
	}

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k, cs := range cases {
			results[k].store += runWrk(b, wrk, ng.URL(storeSrv, cs.path), load...)
			cpu0, err := procCPU(daemonPID)
			if err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			rate := runWrk(b, wrk, ng.URL(mountSrv, cs.path), load...)
			elapsed := time.Since(start)
			cpu1, err := procCPU(daemonPID)
			if err != nil {
				b.Fatal(err)
			}
			results[k].mount += rate
			// Requests served ≈ rate × wrk's run time (elapsed includes
			// wrk's start-up, a few ms).
			results[k].daemonCPUPerReq += float64((cpu1 - cpu0).Microseconds()) / (rate * elapsed.Seconds())
		}
	}
	b.StopTimer()

	n := float64(b.N)
	for k, cs := range cases {
		r := results[k]
		b.ReportMetric(r.store/n, "store-"+cs.label+"-req/s")
		b.ReportMetric(r.mount/n, "mount-"+cs.label+"-req/s")
		b.ReportMetric(r.mount/r.store, "ratio-"+cs.label)
		b.ReportMetric(r.daemonCPUPerReq/n, "daemon-µs-cpu/req-"+cs.label)
	}
}
