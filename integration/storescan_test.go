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

// In place (no store:), the daemon reaches the web root through
// /proc/self/fd/N, a symlink: the scan at start must walk the directory it
// names. A clean restart with nothing changed compares nothing; a file
// edited in the bare mount point while the daemon was stopped is found and
// replicated.
func TestInPlaceStoreChangedWhileStopped(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 1, InPlace: true, Prefill: func(dir string) {
		if err := os.Mkdir(dir+"/sub", 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, dir+"/sub/page.html", "prefilled\n")
	}})
	writeFile(t, c.Mount+"/index.html", "through the mount\n")
	c.waitConverged(t, converge)
	const notice = "the store changed while mirrorfs was stopped"
	marked := []string{notice, "worker marked for a full copy", "full copy done"}

	c.Stop(t)
	from := fileSize(c.LogPath)
	c.Start(t)
	writeFile(t, c.Mount+"/after-restart.html", "still replicated\n")
	c.waitConverged(t, converge)
	for _, m := range marked {
		if strings.Contains(readFrom(c.LogPath, from), m) {
			t.Fatalf("a clean in-place restart with nothing changed logged %q:\n%s", m, readFrom(c.LogPath, from))
		}
	}

	c.Stop(t)
	// The mount point is the bare directory now: edit a file in it
	// directly, one level down, so that only the walk's descent finds it
	// (no directory's entries change).
	writeFile(t, c.Mount+"/sub/page.html", "edited while mirrorfs was stopped\n")
	from = fileSize(c.LogPath)
	c.Start(t)
	c.waitConverged(t, converge)
	c.verify(t)
	log := readFrom(c.LogPath, from)
	if !strings.Contains(log, notice) || !strings.Contains(log, "first_change=sub/page.html") {
		t.Fatalf("the daemon did not notice sub/page.html, edited while it was stopped:\n%s", log)
	}
}

// A worker left out of the configuration for one run (maintenance) while
// that run's start found store changes made behind the journal's back is
// compared with the store when it is put back: its cursor, still inside
// the journal, does not know those changes.
func TestWorkerPutBackAfterStoreChangedWhileStopped(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 2})
	writeFile(t, c.Mount+"/index.html", "version 1\n")
	c.waitConverged(t, converge)
	c.Stop(t)
	writeFile(t, c.Store+"/index.html", "version 2, edited in the store directly\n")

	all := c.Workers
	c.Workers = all[:1]
	c.writeConfig(t)
	c.Start(t)
	c.waitConverged(t, converge)
	if !strings.Contains(readFile(t, c.LogPath), "the store changed while mirrorfs was stopped") {
		t.Fatalf("the start did not notice the store change:\n%s", logTail(c.LogPath, 30))
	}
	c.Stop(t)

	c.Workers = all
	c.writeConfig(t)
	c.Start(t)
	c.waitConverged(t, converge)
}
