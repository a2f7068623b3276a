package integration

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkBurstWriting writes the burst-1000 files of BenchmarkVsLsyncd
// through the mount with no worker, with 3 workers that ship nothing
// while it writes (batch.delay 5 s), and with 3 workers at the default
// delay, and reports how long the writing took in each case: what the
// mount costs alone, and what replicating beside it on the same machine
// adds. The workers' catching up afterwards is not timed.
//
//	go test -run '^$' -bench BurstWriting -benchtime 1x ./integration/
func BenchmarkBurstWriting(b *testing.B) {
	for _, c := range []struct {
		name    string
		workers int
		delay   string
	}{{"no-worker", 0, ""}, {"3-workers-delay-5s", 3, "5s"}, {"3-workers", 3, ""}} {
		b.Run(c.name, func(b *testing.B) {
			cl := benchCluster(b, clusterOptions{
				Workers:    c.workers,
				BatchDelay: c.delay,
				Exclude:    lsyncdBenchExclude,
				Prefill:    func(store string) { mkdirAll(b, filepath.Join(store, "burst")) },
			})
			cl.waitConverged(b, converge)
			dir := filepath.Join(cl.Mount, "burst")
			start := time.Now()
			for i := range benchScaled(b, 1000) {
				content := bytes.Repeat([]byte{'a' + byte(i%26)}, 1<<10)
				copy(content, fmt.Sprintf("<!-- burst file %d -->\n", i))
				writeFile(b, filepath.Join(dir, fmt.Sprintf("f%04d.html", i)), string(content))
			}
			b.ReportMetric(float64(time.Since(start).Microseconds())/1000, "writing-ms")
			// Not timed: the workers catch up before the cluster goes.
			cl.waitConverged(b, converge)
		})
	}
}
