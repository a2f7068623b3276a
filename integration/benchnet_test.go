package integration

import (
	"cmp"
	"os"
	"testing"
	"time"
)

// benchCluster starts the cluster of a side-by-side benchmark (lsyncd, churn)
// where the environment puts it:
//
//   - by default, every worker's sshd listens on a loopback port;
//   - BENCH_NETNS=1 runs each worker's sshd in a network namespace of its
//     own, a host reached over a veth link, as the network fault tests do;
//   - BENCH_NETEM_DELAY (a Go duration such as 1ms, with BENCH_NETNS=1) adds
//     that delay to every packet from the master to each worker with netem.
//     A kernel without sch_netem fails the benchmark: no latency is faked.
//
// lsyncd, started on c.Workers, goes over the same links as mirrorfs.
//
// The daemon logs at its default level, info, as it is deployed: at debug
// it writes several lines per batch, a cost no production setup pays.
// MIRRORFS_BENCH_LOG_LEVEL=debug brings those lines back to tell a run's
// story.
func benchCluster(b *testing.B, opts clusterOptions) *cluster {
	b.Helper()
	opts.NetNS = os.Getenv("BENCH_NETNS") == "1"
	opts.LogLevel = cmp.Or(os.Getenv("MIRRORFS_BENCH_LOG_LEVEL"), "info")
	var delay time.Duration
	if v := os.Getenv("BENCH_NETEM_DELAY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > time.Second {
			b.Fatalf("BENCH_NETEM_DELAY=%q: want a duration between 1us and 1s, e.g. 1ms", v)
		}
		if !opts.NetNS {
			b.Fatalf("BENCH_NETEM_DELAY=%s needs BENCH_NETNS=1: loopback workers have no link to delay", v)
		}
		delay = d
	}
	c := newCluster(b, opts)
	if delay > 0 {
		for _, w := range c.Workers {
			if !w.NetNS.netemSupported() {
				b.Fatalf("BENCH_NETEM_DELAY=%v: this kernel has no sch_netem (modprobe sch_netem, or unset it)", delay)
			}
			w.NetNS.Shape(b, shaping{Delay: delay})
		}
	}
	where := "loopback ports"
	if opts.NetNS {
		where = "network namespaces (BENCH_NETNS=1), netem delay " + delay.String()
	}
	b.Logf("workers: %d sshd on %s", len(c.Workers), where)
	return c
}
