package main

import (
	"bytes"
	"strings"
	"testing"
)

// sample is go test -bench output as the benchmarks print it (values from
// runs on the 2-CPU VM; some lines shortened to the metrics the table
// reads). BenchmarkChurn/idle-rss is left out: its row must say "not run".
// The delay15 single save's numbers come after a line of other output
// (the name printed alone, as when a benchmark writes to stderr while it
// runs). BenchmarkLocalCostTar/ext4 ran twice (-count 2).
const sample = `goos: linux
goarch: amd64
pkg: github.com/mirrorfs/mirrorfs/fs
cpu: AMD EPYC
BenchmarkLocalCostTar/ext4-2         	       1	9062933558 ns/op	         1.000 loopback-s	         4.000 mirrorfs-s	         0.5000 store-s	         1.20 mirrorfs-journal-ops/file
BenchmarkLocalCostTar/ext4-2         	       1	9062933558 ns/op	         1.000 loopback-s	         2.000 mirrorfs-s	         0.5000 store-s	         1.20 mirrorfs-journal-ops/file
BenchmarkLocalCostSeq/ext4-2         	       1	12062933558 ns/op	  300.0 write-mirrorfs-MB/s	  1000 write-store-MB/s	  1900 read-mirrorfs-MB/s	  2000 read-store-MB/s
BenchmarkLocalCostGit/ext4-2         	       1	5062933558 ns/op	         0.8801 initial-loopback-s	        11.35 initial-loopback/store	         1.499 initial-mirrorfs-s	         1.703 initial-mirrorfs/loopback	        19.32 initial-mirrorfs/store	         0.07756 initial-store-s	         0.5474 loopback-s	         3.624 loopback/store	      6461 mirrorfs-journal-ops	         1.708 mirrorfs-s	         3.120 mirrorfs/loopback	        11.31 mirrorfs/store	         0.1510 store-s	         0.3221 switch-loopback-s	         4.620 switch-loopback/store	         0.9095 switch-mirrorfs-s	         2.823 switch-mirrorfs/loopback	        13.04 switch-mirrorfs/store	         0.06973 switch-store-s
--- BENCH: BenchmarkLocalCostGit/ext4-2
    localcost_bench_test.go:636: git checkout, 1000 files in branch a (s; store / loopback / mirrorfs): initial 0.08 / 0.88 / 1.50
PASS
ok  	github.com/mirrorfs/mirrorfs/fs	9.464s
pkg: github.com/mirrorfs/mirrorfs/integration
BenchmarkVsLsyncd/single-save-N3-2         	       1	31234567890 ns/op	         8.100 mirrorfs-p50-ms	        12.40 mirrorfs-p99-ms	        12.40 mirrorfs-max-ms	        27.50 lsyncd-p50-ms	        40.10 lsyncd-p99-ms	        40.10 lsyncd-max-ms	         3.395 ratio-p50	         3.234 ratio-p99	         3.234 ratio-max	         8.300 mirrorfs-delay0-p50-ms	        20.00 mirrorfs-delay0-p99-ms	         3.313 ratio-delay0-p50	         2.005 ratio-delay0-p99
BenchmarkVsLsyncd/single-save-N10-2        	       1	61234567890 ns/op	        15.00 mirrorfs-p99-ms	        90.00 lsyncd-p99-ms
BenchmarkVsLsyncd/burst-1000-2             	       1	9234567890 ns/op	      3800 mirrorfs-ms	      2500 lsyncd-ms	         0.6579 ratio
BenchmarkVsLsyncd/burst-10000-2            	       1	99234567890 ns/op	     41000 mirrorfs-ms	     20500 lsyncd-ms	         0.5000 ratio
BenchmarkVsLsyncd/single-save-N3-lsyncd-delay15
2026/11/30 20:10:00 some stderr line of a child process
BenchmarkVsLsyncd/single-save-N3-lsyncd-delay15-2 	2026/11/30 20:10:01 another one
       1	91234567890 ns/op	         8.000 mirrorfs-p50-ms	        12.00 mirrorfs-max-ms	     15010 lsyncd-p50-ms	     15030 lsyncd-max-ms
BenchmarkVsLsyncd/burst-1000-lsyncd-delay15-2 	       1	29234567890 ns/op	      4000 mirrorfs-ms	     16000 lsyncd-ms	         4.000 ratio
BenchmarkChurn/churn-200-per-s-2           	       1	150234567890 ns/op	        20.00 mirrorfs-all-p99-ms	       100.0 lsyncd-all-p99-ms	        55.50 mirrorfs-peak-rss-MiB
BenchmarkNginxMountVsStore-2               	       1	30234567890 ns/op	     34621 store-small-req/s	      9259 mount-small-req/s	         0.2674 ratio-small	      1087 store-1MiB-req/s	       1050 mount-1MiB-req/s	         0.9660 ratio-1MiB
BenchmarkDeltaVsRsync/inplace-1KiB-of-256MiB-2 	       1	5234567890 ns/op	      2600 mirrorfs-wire-B	      1400 mirrorfs-ssh-sent-B	    227000 rsync-wire-B	         0.01145 ratio	       520.0 mirrorfs-ms	       650.0 rsync-ms
BenchmarkDeltaVsRsync/rsync-delta-256MiB-2 	       1	5234567890 ns/op	      1100 mirrorfs-ms	       950.0 rsync-ssh-ms	   330.0 rsync-local-ms	    167000 mirrorfs-wire-B	    210000 rsync-wire-B
PASS
`

func tableOf(t *testing.T, in string) map[string][]string {
	t.Helper()
	res, n, err := parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if n != 14 {
		t.Errorf("parsed %d result lines, want 14", n)
	}
	var out bytes.Buffer
	table(&out, res)
	// Each row by what + reference (git's rows share their what).
	got := map[string][]string{}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != len(rows)+2 {
		t.Fatalf("%d table lines, want %d:\n%s", len(lines), len(rows)+2, out.String())
	}
	for _, l := range lines[2:] {
		c := strings.Split(strings.Trim(l, "| "), " | ")
		if len(c) != 6 {
			t.Fatalf("row %q: %d cells, want 6", l, len(c))
		}
		got[c[0]+" / "+c[2]] = c
	}
	return got
}

func TestTable(t *testing.T) {
	got := tableOf(t, sample)
	for _, tc := range []struct {
		key  string   // what / reference cell
		want []string // mirrorfs, ratio, target, result
	}{
		{"single save, 3 workers, p50 / 27.5 ms (lsyncd delay 0)", []string{"8.10 ms", "3.40× (lsyncd/mirrorfs)", "≤ 10 ms", "met"}},
		{"single save, 3 workers, p99 / 40.1 ms (lsyncd delay 0)", []string{"12.4 ms", "3.23× (lsyncd/mirrorfs)", "≤ 50 ms", "met"}},
		{"single save, 3 workers, p50 vs lsyncd / 27.5 ms (lsyncd delay 0)", []string{"8.10 ms", "3.40× (lsyncd/mirrorfs)", "≥ 30× lsyncd", "NOT met"}},
		{"single save, 3 workers, p50 vs lsyncd at its default delay / 15010 ms (lsyncd delay 15 s)", []string{"8.00 ms", "1876.25× (lsyncd/mirrorfs)", "≥ 30× lsyncd", "met"}},
		{"single save, 3 workers, max vs lsyncd at its default delay / 15030 ms (lsyncd delay 15 s)", []string{"12.0 ms", "1252.50× (lsyncd/mirrorfs)", "≥ 30× lsyncd", "met"}},
		{"single save, 10 workers, p99 / 90.0 ms (lsyncd delay 0)", []string{"15.0 ms", "6.00× (lsyncd/mirrorfs)", "≤ 100 ms", "met"}},
		{"burst of 1,000 files, all on 3 workers / 2500 ms (lsyncd delay 0)", []string{"3800 ms", "0.66× (lsyncd/mirrorfs)", "≤ 500 ms", "NOT met"}},
		{"burst of 1,000 files vs lsyncd at its default delay / 16000 ms (lsyncd delay 15 s)", []string{"4000 ms", "4.00× (lsyncd/mirrorfs)", "≥ 7× lsyncd", "NOT met"}},
		{"burst of 10,000 files, all on 3 workers / 20500 ms (lsyncd delay 0)", []string{"41000 ms", "0.50× (lsyncd/mirrorfs)", "—", "no target"}},
		{"churn 200 saves/s, dead worker, p99 lag / 100 ms (lsyncd delay 0)", []string{"20.0 ms", "5.00× (lsyncd/mirrorfs)", "≤ 50 ms", "met"}},
		// -count 2: the medians, 3 s against 1 s.
		{"tar -x of 10,000 files (ext4) vs loopback / 1.00 s (loopback)", []string{"3.00 s", "3.00× (mirrorfs/loopback)", "≤ 1.15× loopback", "NOT met"}},
		{"tar -x of 10,000 files (ext4) vs store / 0.50 s (store)", []string{"3.00 s", "6.00× (mirrorfs/store)", "≤ 2.5× store", "NOT met"}},
		{"tar -x of 10,000 files (tmpfs) vs loopback / not run (loopback)", []string{"not run", "not run", "≤ 1.15× loopback", "not run"}},
		{"sequential write of 1 GiB / 1000 MB/s (store)", []string{"300 MB/s", "0.30× (mirrorfs/store)", "≥ 0.9× store", "NOT met"}},
		{"sequential read of 1 GiB / 2000 MB/s (store)", []string{"1900 MB/s", "0.95× (mirrorfs/store)", "≥ 0.95× store", "met"}},
		{"nginx, 2 KiB page / 34621 req/s (store)", []string{"9259 req/s", "0.27× (mirrorfs/store)", "≥ 0.9× store", "NOT met"}},
		{"nginx, 1 MiB file / 1087 req/s (store)", []string{"1050 req/s", "0.97× (mirrorfs/store)", "≥ 0.9× store", "met"}},
		// Missing from the sample.
		{"daemon RSS, idle / —", []string{"not run", "—", "≤ 64 MiB", "not run"}},
		{"daemon RSS, under churn (peak) / —", []string{"55.5 MiB", "—", "≤ 256 MiB", "met"}},
		{"delta: 1 KiB in place in 256 MiB, bytes / 227000 B (rsync)", []string{"2600 B", "0.011× (mirrorfs/rsync)", "≤ 16 KiB", "met"}},
		{"delta: 1 KiB in place in 256 MiB, time / 650 ms (rsync)", []string{"520 ms", "0.80× (mirrorfs/rsync)", "≤ 1 s", "met"}},
		{"delta: 1 KiB of 1 MiB saved by rename, bytes / not run (rsync)", []string{"not run", "not run", "≤ rsync", "not run"}},
		{"delta: 256 MiB saved by rename, time / 950 ms (rsync over ssh)", []string{"1100 ms", "1.16× (mirrorfs/rsync)", "≤ rsync", "NOT met"}},
		{"git checkout of 20,000 files, switch and back (ext4) / 0.55 s (loopback)", []string{"1.71 s", "3.12× (mirrorfs/loopback)", "—", "no target"}},
		{"git checkout of 20,000 files, switch and back (ext4) / 0.15 s (store)", []string{"1.71 s", "11.31× (mirrorfs/store)", "—", "no target"}},
		{"git checkout of 20,000 files, switch and back (tmpfs) / not run (store)", []string{"not run", "not run", "—", "not run"}},
	} {
		c, ok := got[tc.key]
		if !ok {
			t.Errorf("no row %q", tc.key)
			continue
		}
		if g := []string{c[1], c[3], c[4], c[5]}; strings.Join(g, " | ") != strings.Join(tc.want, " | ") {
			t.Errorf("row %q:\n got %q\nwant %q", tc.key, g, tc.want)
		}
	}
}

// The -GOMAXPROCS suffix is optional (GOMAXPROCS=1 prints none) and must
// not make burst-1000 match burst-10000 or the delay15 case.
func TestGetNames(t *testing.T) {
	res, _, err := parse(strings.NewReader(`BenchmarkVsLsyncd/burst-10000 1 5 ns/op 7 mirrorfs-ms
BenchmarkVsLsyncd/burst-1000-lsyncd-delay15-8 1 5 ns/op 9 mirrorfs-ms
`))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := res.get("BenchmarkVsLsyncd/burst-1000", "mirrorfs-ms"); ok {
		t.Errorf("burst-1000 found: %v", v)
	}
	if v, ok := res.get("BenchmarkVsLsyncd/burst-10000", "mirrorfs-ms"); !ok || v != 7 {
		t.Errorf("burst-10000: %v, %v; want 7", v, ok)
	}
	if v, ok := res.get("BenchmarkVsLsyncd/burst-1000-lsyncd-delay15", "mirrorfs-ms"); !ok || v != 9 {
		t.Errorf("burst-1000-lsyncd-delay15: %v, %v; want 9", v, ok)
	}
}
