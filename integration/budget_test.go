package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// The journal outgrows its disk budget while a worker is down: the mount
// keeps working, the worker is marked as needing reconciliation (status
// shows it), the journal stops holding records for it, and it is
// reconciled when it returns.
func TestJournalBudget(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 2, JournalMaxBytes: "64KiB"})
	writeFile(t, c.Mount+"/before.html", "before the outage\n")
	c.waitConverged(t, converge)
	c.verify(t)
	down := c.Workers[0]
	down.Stop(t)

	// Each file adds records of about 40 bytes (create, write, close):
	// 1,000 files are well over 64 KiB.
	for i := range 10 {
		mkdirAll(t, fmt.Sprintf("%s/d%d", c.Mount, i))
	}
	for i := range 1000 {
		writeFile(t, fmt.Sprintf("%s/d%d/f%04d.html", c.Mount, i%10, i), fmt.Sprintf("written during the outage %d\n", i))
	}
	waitFor(t, 30*time.Second, "the down worker to be marked for reconciliation", func() error {
		ws, ok := c.status(t).worker(down.Name)
		if !ok || !ws.InitialCopy {
			return fmt.Errorf("status of %s: %+v", down.Name, ws)
		}
		return nil
	})
	if log := readFile(t, c.LogPath); !strings.Contains(log, "journal over its disk budget") {
		t.Fatalf("no log line explains the reconciliation:\n%s", logTail(c.LogPath, 30))
	}
	// The journal no longer holds what the down worker lacks.
	var stats struct {
		FirstSeq uint64 `json:"first_seq"`
	}
	c.journalJSON(t, &stats, "stats")
	ws, _ := c.status(t).worker(down.Name)
	if stats.FirstSeq <= uint64(ws.Applied)+1 {
		t.Fatalf("journal still starts at #%d, holding the ops after %s's cursor #%d", stats.FirstSeq, down.Name, ws.Applied)
	}
	// The mount kept working all along, and goes on.
	writeFile(t, c.Mount+"/after.html", "after the budget was exceeded\n")
	down.Start(t)
	c.waitConverged(t, converge)
}
