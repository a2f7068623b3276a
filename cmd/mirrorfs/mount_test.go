package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// batch.delay: 0 and batch.hold_open: 0 mean "at once" and "never", as
// config/doc.go says, not replicate's defaults.
func TestZeroIsNone(t *testing.T) {
	if got := zeroIsNone(0); got >= 0 {
		t.Errorf("zeroIsNone(0) = %v, want a negative duration (no wait, never hold)", got)
	}
	if got := zeroIsNone(10 * time.Millisecond); got != 10*time.Millisecond {
		t.Errorf("zeroIsNone(10ms) = %v, want 10ms", got)
	}
}

// --cpu-profile writes a profile that go tool pprof reads (gzip-compressed
// protobuf), and a path that cannot be written is an error naming the flag.
func TestStartCPUProfile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "daemon.pprof")
	stop, err := startCPUProfile(p)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(50 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ {
	}
	stop()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) < 2 || data[0] != 0x1f || data[1] != 0x8b {
		t.Fatalf("profile %s: %d bytes, not gzip-compressed (%q…)", p, len(data), data[:min(len(data), 8)])
	}
	bad := filepath.Join(t.TempDir(), "no", "such", "dir", "daemon.pprof")
	if _, err := startCPUProfile(bad); err == nil || !strings.Contains(err.Error(), "--cpu-profile") {
		t.Fatalf("startCPUProfile(%s): %v, want an error naming --cpu-profile", bad, err)
	}
}
