package main

import (
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
