// Command benchtable reads the output of `go test -bench` (the mirrorfs
// benchmarks of integration/ and fs/) and prints one markdown table that
// puts each target of issue 6 ("Faster than lsyncd + rsync, measured side
// by side") beside what was measured: mirrorfs's value, the reference's
// (lsyncd, rsync, the store directly or a bare FUSE loopback), their ratio,
// the target and whether it is met. `make bench` pipes into it:
//
//	go test -run '^$' -bench . -benchtime 1x ./... | go run ./integration/benchtable
//	go run ./integration/benchtable bin/bench.out
//
// A metric that is missing (its benchmark did not run, failed or was
// filtered out by -bench) shows as "not run". When a benchmark ran several
// times (-count), the median of its values is used.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// results holds every metric of every benchmark line: name as printed
// (with go test's -GOMAXPROCS suffix), then unit, then the values.
type results map[string]map[string][]float64

var (
	// A result line: name, iterations, then value-unit pairs.
	resultLine = regexp.MustCompile(`^(Benchmark\S+)\s+(\d+)\s+(.*\bns/op\b.*)$`)
	// The numbers of a result whose name was printed on a line of its
	// own (other output came between the name and the numbers).
	numbersLine = regexp.MustCompile(`^\s*(\d+)\s+(\S+ ns/op\b.*)$`)
	nameLine    = regexp.MustCompile(`^(Benchmark\S+)(\s|$)`)
)

// parse reads go test -bench output and returns its results and the
// number of result lines.
func parse(r io.Reader) (results, int, error) {
	res := results{}
	n := 0
	pending := "" // a benchmark name seen alone on its line
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), " \t\r")
		var name, rest string
		if m := resultLine.FindStringSubmatch(line); m != nil {
			name, rest = m[1], m[3]
		} else if m := numbersLine.FindStringSubmatch(line); m != nil && pending != "" {
			name, rest = pending, m[2]
		} else {
			if m := nameLine.FindStringSubmatch(line); m != nil {
				pending = m[1]
			}
			continue
		}
		pending = ""
		f := strings.Fields(rest)
		metrics := res[name]
		if metrics == nil {
			metrics = map[string][]float64{}
			res[name] = metrics
		}
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			metrics[f[i+1]] = append(metrics[f[i+1]], v)
		}
		n++
	}
	return res, n, sc.Err()
}

// get returns the median of a metric of bench (named without go test's
// -GOMAXPROCS suffix).
func (res results) get(bench, unit string) (float64, bool) {
	var vals []float64
	for name, metrics := range res {
		if name == bench || (strings.HasPrefix(name, bench+"-") && isDigits(name[len(bench)+1:])) {
			vals = append(vals, metrics[unit]...)
		}
	}
	if len(vals) == 0 {
		return 0, false
	}
	slices.Sort(vals)
	if len(vals)%2 == 1 {
		return vals[len(vals)/2], true
	}
	return (vals[len(vals)/2-1] + vals[len(vals)/2]) / 2, true
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// What a target bounds.
const (
	none  = iota
	value // mirrorfs's value
	ratio // the ratio
)

// A row is one line of the table: mirrorfs's metric and a reference's in
// one benchmark, their ratio, and the target.
type row struct {
	what    string
	bench   string // benchmark name without the -GOMAXPROCS suffix
	mirror  string // unit of mirrorfs's metric
	ref     string // unit of the reference's metric; "" when there is none
	refName string
	unit    string // shown after both values
	inverse bool   // ratio is reference / mirrorfs (a "× better" factor); else mirrorfs / reference
	on      int    // what the target bounds: none, value or ratio
	atMost  bool   // the target is ≤ limit; else ≥ limit
	limit   float64
	target  string // as printed
}

const (
	lsyncd   = "BenchmarkVsLsyncd/"
	churn    = "BenchmarkChurn/"
	tarB     = "BenchmarkLocalCostTar/"
	gitB     = "BenchmarkLocalCostGit/"
	deltaB   = "BenchmarkDeltaVsRsync/"
	single3  = lsyncd + "single-save-N3"
	single15 = lsyncd + "single-save-N3-lsyncd-delay15"
)

// rows are the targets of issue 6, and the measurements without a target
// it asks to show.
var rows = []row{
	{what: "single save, 3 workers, p50", bench: single3, mirror: "mirrorfs-p50-ms", ref: "lsyncd-p50-ms", refName: "lsyncd delay 0", unit: "ms", inverse: true, on: value, atMost: true, limit: 10, target: "≤ 10 ms"},
	{what: "single save, 3 workers, p99", bench: single3, mirror: "mirrorfs-p99-ms", ref: "lsyncd-p99-ms", refName: "lsyncd delay 0", unit: "ms", inverse: true, on: value, atMost: true, limit: 50, target: "≤ 50 ms"},
	{what: "single save, 3 workers, p50 vs lsyncd", bench: single3, mirror: "mirrorfs-p50-ms", ref: "lsyncd-p50-ms", refName: "lsyncd delay 0", unit: "ms", inverse: true, on: ratio, limit: 30, target: "≥ 30× lsyncd"},
	{what: "single save, 3 workers, p99 vs lsyncd", bench: single3, mirror: "mirrorfs-p99-ms", ref: "lsyncd-p99-ms", refName: "lsyncd delay 0", unit: "ms", inverse: true, on: ratio, limit: 30, target: "≥ 30× lsyncd"},
	{what: "single save, 3 workers, p50 vs lsyncd at its default delay", bench: single15, mirror: "mirrorfs-p50-ms", ref: "lsyncd-p50-ms", refName: "lsyncd delay 15 s", unit: "ms", inverse: true, on: ratio, limit: 30, target: "≥ 30× lsyncd"},
	{what: "single save, 3 workers, max vs lsyncd at its default delay", bench: single15, mirror: "mirrorfs-max-ms", ref: "lsyncd-max-ms", refName: "lsyncd delay 15 s", unit: "ms", inverse: true, on: ratio, limit: 30, target: "≥ 30× lsyncd"},
	{what: "single save, 10 workers, p99", bench: lsyncd + "single-save-N10", mirror: "mirrorfs-p99-ms", ref: "lsyncd-p99-ms", refName: "lsyncd delay 0", unit: "ms", inverse: true, on: value, atMost: true, limit: 100, target: "≤ 100 ms"},
	{what: "burst of 1,000 files, all on 3 workers", bench: lsyncd + "burst-1000", mirror: "mirrorfs-ms", ref: "lsyncd-ms", refName: "lsyncd delay 0", unit: "ms", inverse: true, on: value, atMost: true, limit: 500, target: "≤ 500 ms"},
	{what: "burst of 1,000 files vs lsyncd", bench: lsyncd + "burst-1000", mirror: "mirrorfs-ms", ref: "lsyncd-ms", refName: "lsyncd delay 0", unit: "ms", inverse: true, on: ratio, limit: 7, target: "≥ 7× lsyncd"},
	{what: "burst of 1,000 files vs lsyncd at its default delay", bench: lsyncd + "burst-1000-lsyncd-delay15", mirror: "mirrorfs-ms", ref: "lsyncd-ms", refName: "lsyncd delay 15 s", unit: "ms", inverse: true, on: ratio, limit: 7, target: "≥ 7× lsyncd"},
	{what: "burst of 10,000 files, all on 3 workers", bench: lsyncd + "burst-10000", mirror: "mirrorfs-ms", ref: "lsyncd-ms", refName: "lsyncd delay 0", unit: "ms", inverse: true},
	{what: "churn 200 saves/s, dead worker, p99 lag", bench: churn + "churn-200-per-s", mirror: "mirrorfs-all-p99-ms", ref: "lsyncd-all-p99-ms", refName: "lsyncd delay 0", unit: "ms", inverse: true, on: value, atMost: true, limit: 50, target: "≤ 50 ms"},
	{what: "tar -x of 10,000 files (ext4) vs loopback", bench: tarB + "ext4", mirror: "mirrorfs-s", ref: "loopback-s", refName: "loopback", unit: "s", on: ratio, atMost: true, limit: 1.15, target: "≤ 1.15× loopback"},
	{what: "tar -x of 10,000 files (ext4) vs store", bench: tarB + "ext4", mirror: "mirrorfs-s", ref: "store-s", refName: "store", unit: "s", on: ratio, atMost: true, limit: 2.5, target: "≤ 2.5× store"},
	{what: "tar -x of 10,000 files (tmpfs) vs loopback", bench: tarB + "tmpfs", mirror: "mirrorfs-s", ref: "loopback-s", refName: "loopback", unit: "s", on: ratio, atMost: true, limit: 1.15, target: "≤ 1.15× loopback"},
	{what: "tar -x of 10,000 files (tmpfs) vs store", bench: tarB + "tmpfs", mirror: "mirrorfs-s", ref: "store-s", refName: "store", unit: "s", on: ratio, atMost: true, limit: 2.5, target: "≤ 2.5× store"},
	{what: "sequential write of 1 GiB", bench: "BenchmarkLocalCostSeq/ext4", mirror: "write-mirrorfs-MB/s", ref: "write-store-MB/s", refName: "store", unit: "MB/s", on: ratio, limit: 0.9, target: "≥ 0.9× store"},
	{what: "sequential read of 1 GiB", bench: "BenchmarkLocalCostSeq/ext4", mirror: "read-mirrorfs-MB/s", ref: "read-store-MB/s", refName: "store", unit: "MB/s", on: ratio, limit: 0.95, target: "≥ 0.95× store"},
	{what: "nginx, 2 KiB page", bench: "BenchmarkNginxMountVsStore", mirror: "mount-small-req/s", ref: "store-small-req/s", refName: "store", unit: "req/s", on: ratio, limit: 0.9, target: "≥ 0.9× store"},
	{what: "nginx, 1 MiB file", bench: "BenchmarkNginxMountVsStore", mirror: "mount-1MiB-req/s", ref: "store-1MiB-req/s", refName: "store", unit: "req/s", on: ratio, limit: 0.9, target: "≥ 0.9× store"},
	{what: "daemon RSS, idle", bench: churn + "idle-rss", mirror: "idle-rss-MiB", unit: "MiB", on: value, atMost: true, limit: 64, target: "≤ 64 MiB"},
	{what: "daemon RSS, under churn (peak)", bench: churn + "churn-200-per-s", mirror: "mirrorfs-peak-rss-MiB", unit: "MiB", on: value, atMost: true, limit: 256, target: "≤ 256 MiB"},
	{what: "delta: 1 KiB in place in 256 MiB, bytes", bench: deltaB + "inplace-1KiB-of-256MiB", mirror: "mirrorfs-wire-B", ref: "rsync-wire-B", refName: "rsync", unit: "B", on: value, atMost: true, limit: 16 << 10, target: "≤ 16 KiB"},
	{what: "delta: 1 KiB in place in 256 MiB, time", bench: deltaB + "inplace-1KiB-of-256MiB", mirror: "mirrorfs-ms", ref: "rsync-ms", refName: "rsync", unit: "ms", on: value, atMost: true, limit: 1000, target: "≤ 1 s"},
	{what: "delta: 1 KiB of 1 MiB saved by rename, bytes", bench: deltaB + "rename-1KiB-of-1MiB", mirror: "mirrorfs-wire-B", ref: "rsync-wire-B", refName: "rsync", unit: "B", on: ratio, atMost: true, limit: 1, target: "≤ rsync"},
	{what: "delta: 1 KiB of 1 MiB saved by rename, time", bench: deltaB + "rename-1KiB-of-1MiB", mirror: "mirrorfs-ms", ref: "rsync-ms", refName: "rsync", unit: "ms"},
	{what: "delta: 1,000 unchanged files rewritten, bytes", bench: deltaB + "unchanged-1000-inplace", mirror: "mirrorfs-wire-B", ref: "rsync-wire-B", refName: "rsync", unit: "B"},
	{what: "delta: 1,000 unchanged files rewritten, time", bench: deltaB + "unchanged-1000-inplace", mirror: "mirrorfs-ms", ref: "rsync-ms", refName: "rsync", unit: "ms"},
	{what: "delta: 1,000 unchanged files re-saved by rename, bytes", bench: deltaB + "unchanged-1000-rename", mirror: "mirrorfs-wire-B", ref: "rsync-wire-B", refName: "rsync", unit: "B"},
	{what: "delta: 1,000 unchanged files re-saved by rename, time", bench: deltaB + "unchanged-1000-rename", mirror: "mirrorfs-ms", ref: "rsync-ms", refName: "rsync", unit: "ms"},
	{what: "delta: 256 MiB saved by rename, bytes", bench: deltaB + "rsync-delta-256MiB", mirror: "mirrorfs-wire-B", ref: "rsync-wire-B", refName: "rsync", unit: "B"},
	{what: "delta: 256 MiB saved by rename, time", bench: deltaB + "rsync-delta-256MiB", mirror: "mirrorfs-ms", ref: "rsync-ssh-ms", refName: "rsync over ssh", unit: "ms", on: ratio, atMost: true, limit: 1, target: "≤ rsync"},
	{what: "git checkout of 20,000 files, switch and back (ext4)", bench: gitB + "ext4", mirror: "mirrorfs-s", ref: "loopback-s", refName: "loopback", unit: "s"},
	{what: "git checkout of 20,000 files, switch and back (ext4)", bench: gitB + "ext4", mirror: "mirrorfs-s", ref: "store-s", refName: "store", unit: "s"},
	{what: "git checkout of 20,000 files, switch and back (tmpfs)", bench: gitB + "tmpfs", mirror: "mirrorfs-s", ref: "loopback-s", refName: "loopback", unit: "s"},
	{what: "git checkout of 20,000 files, switch and back (tmpfs)", bench: gitB + "tmpfs", mirror: "mirrorfs-s", ref: "store-s", refName: "store", unit: "s"},
}

const notRun = "not run"

// cells returns the row's printed cells: what, mirrorfs, reference, ratio,
// target, result.
func (r row) cells(res results) []string {
	m, mOK := res.get(r.bench, r.mirror)
	ref, refOK := 0.0, false
	refCell := "—"
	if r.ref != "" {
		ref, refOK = res.get(r.bench, r.ref)
		refCell = notRun + " (" + r.refName + ")"
		if refOK {
			refCell = num(ref) + " " + r.unit + " (" + r.refName + ")"
		}
	}
	mCell := notRun
	if mOK {
		mCell = num(m) + " " + r.unit
	}
	ratioCell, q, qOK := "—", 0.0, false
	if r.ref != "" {
		ratioCell = notRun
		if mOK && refOK && m != 0 && ref != 0 {
			q, qOK = m/ref, true
			short := strings.Fields(r.refName)[0] // "lsyncd delay 0": "lsyncd"
			label := "mirrorfs/" + short
			if r.inverse {
				q, label = ref/m, short+"/mirrorfs"
			}
			ratioCell = ratioNum(q) + "× (" + label + ")"
		}
	}
	target, result := "—", "no target"
	if r.on != none {
		target = r.target
		x, ok := m, mOK
		if r.on == ratio {
			x, ok = q, qOK
		}
		switch {
		case !ok:
			result = notRun
		case r.atMost && x <= r.limit, !r.atMost && x >= r.limit:
			result = "met"
		default:
			result = "NOT met"
		}
	} else if !mOK {
		result = notRun
	}
	return []string{r.what, mCell, refCell, ratioCell, target, result}
}

// num prints a value with three significant digits or so.
func num(v float64) string {
	switch a := max(v, -v); {
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

// ratioNum prints a ratio with two decimals, or two significant digits
// below 0.1.
func ratioNum(q float64) string {
	if q < 0.1 {
		return strconv.FormatFloat(q, 'g', 2, 64)
	}
	return strconv.FormatFloat(q, 'f', 2, 64)
}

// table writes the markdown table of res.
func table(w io.Writer, res results) {
	fmt.Fprintln(w, "| what | mirrorfs | reference | ratio | target | result |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- |")
	for _, r := range rows {
		c := r.cells(res)
		for i := range c {
			c[i] = strings.ReplaceAll(c[i], "|", `\|`)
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(c, " | "))
	}
}

func main() {
	in := io.Reader(os.Stdin)
	if len(os.Args) > 2 {
		fmt.Fprintln(os.Stderr, "usage: benchtable [go-test-bench-output-file] (default: stdin)")
		os.Exit(2)
	}
	if len(os.Args) == 2 {
		f, err := os.Open(os.Args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchtable:", err)
			os.Exit(1)
		}
		defer f.Close()
		in = f
	}
	res, n, err := parse(in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	fmt.Printf("Issue 6 targets: %d benchmark result lines read. Ratio lsyncd/mirrorfs: how many times faster\n"+
		"mirrorfs was; mirrorfs/…: mirrorfs's value as a multiple of the reference's (time, bytes, or req/s and MB/s).\n\n", n)
	table(os.Stdout, res)
	if n == 0 {
		fmt.Fprintln(os.Stderr, "benchtable: no benchmark results in the input")
		os.Exit(1)
	}
}
