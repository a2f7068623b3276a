package integration

import (
	"os"
	"strings"
	"testing"
)

// Files changed in the store directly while mirrorfs was stopped have no
// journal record: the next start notices them (store scan) and every
// worker is compared with the store. A restart without such changes
// compares nothing.
func TestStoreChangedWhileStopped(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 2})
	writeFile(t, c.Mount+"/index.html", "through the mount\n")
	writeFile(t, c.Mount+"/old.html", "to be removed behind mirrorfs's back\n")
	c.waitConverged(t, converge)
	const notice = "the store changed while mirrorfs was stopped"

	c.Stop(t)
	c.Start(t)
	writeFile(t, c.Mount+"/after-restart.html", "still replicated\n")
	c.waitConverged(t, converge)
	if strings.Contains(readFile(t, c.LogPath), notice) {
		t.Fatalf("a restart without store changes compared the workers with the store:\n%s", logTail(c.LogPath, 30))
	}

	c.Stop(t)
	// Behind mirrorfs's back: edit, add, remove in the store itself.
	writeFile(t, c.Store+"/index.html", "edited in the store directly\n")
	writeFile(t, c.Store+"/direct.html", "added in the store directly\n")
	if err := os.Remove(c.Store + "/old.html"); err != nil {
		t.Fatal(err)
	}
	c.Start(t)
	c.waitConverged(t, converge)
	c.verify(t)
	if !strings.Contains(readFile(t, c.LogPath), notice) {
		t.Fatalf("the daemon did not say why it compares the workers:\n%s", logTail(c.LogPath, 30))
	}
}
