package replicate

import (
	"context"
	"io/fs"
	"testing"
	"time"
)

// ShipperScenario runs a shipper from a fresh store to the worker directory
// worker through dial, makes changes of every kind and checks the worker
// converges. The external tests run it over SFTP.
func ShipperScenario(t *testing.T, worker string, dial func(ctx context.Context) (Transport, error)) {
	f := newFsim(t)
	f.mkdir("pre")
	f.writeFile("pre/old", "old")
	s := startedShipper(t, f, worker, func(o *Options) { o.Dial = dial; o.HoldOpen = time.Minute }, nil)
	compareTrees(t, f.store, worker, nil)

	f.mkdir("d")
	f.writeFile("d/x", "x")
	f.writeFile("d/big", string(make([]byte, 300<<10)))
	f.symlink("x", "d/l")
	f.link("d/x", "x2")
	f.chmod("d/x", 0o600|fs.ModeSetgid)
	f.rename("d", "e")
	f.writeFile("e/x", "x rewritten")
	id := f.writeOpen("open", "held")
	f.rename("pre/old", "pre/new")
	f.exchange("e/l", "x2")
	f.unlink("e/big")
	waitFor(t, "pre/new", 10*time.Second, func() bool {
		_, ok := readWorker(t, worker, "pre/new")
		return ok
	})
	if _, ok := readWorker(t, worker, "open"); ok {
		t.Error("a file open for writing was shipped")
	}
	f.closeFile(id)
	waitSynced(t, s, f.j)
	compareTrees(t, f.store, worker, nil)
	if st := s.Status(); st.BytesSent == 0 || st.BytesReceived == 0 {
		t.Logf("status: %+v", st)
	}
}

// SetBeforeStatVFS makes the SFTP transport tr run f before it asks the
// worker why a request failed.
func SetBeforeStatVFS(tr Transport, f func()) { tr.(*SFTP).beforeStatVFS = f }
