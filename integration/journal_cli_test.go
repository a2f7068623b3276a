package integration

import (
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The JSON of `mirrorfs journal stats|ls|show --json`, as far as these
// tests read it (the field names are the tools' contract).
type journalStatsJSON struct {
	FirstSeq  uint64 `json:"first_seq"`
	LastSeq   uint64 `json:"last_seq"`
	Stored    uint64 `json:"stored"`
	SizeBytes int64  `json:"size_bytes"`
	Workers   []struct {
		Name             string            `json:"name"`
		HasCursor        bool              `json:"has_cursor"`
		Applied          uint64            `json:"applied"`
		NeedsFullCopy    bool              `json:"needs_full_copy"`
		Pending          uint64            `json:"pending"`
		OldestSeq        uint64            `json:"oldest_seq"`
		OldestAgeSeconds float64           `json:"oldest_age_seconds"`
		DataBytes        int64             `json:"data_bytes"`
		DataFiles        uint64            `json:"data_files"`
		ByKind           map[string]uint64 `json:"by_kind"`
	} `json:"workers"`
}

type journalEntryJSON struct {
	Seq        uint64   `json:"seq"`
	AgeSeconds float64  `json:"age_seconds"`
	Kind       string   `json:"kind"`
	File       uint64   `json:"file"`
	Path       string   `json:"path"`
	NewPath    string   `json:"new_path"`
	Length     int64    `json:"length"`
	DataBytes  int64    `json:"data_bytes"`
	Lacking    []string `json:"lacking"`
}

type journalListJSON struct {
	From     uint64             `json:"from"`
	LastSeq  uint64             `json:"last_seq"`
	Entries  []journalEntryJSON `json:"entries"`
	More     uint64             `json:"more"`
	NextFrom uint64             `json:"next_from"`
}

type journalShowJSON struct {
	LastSeq uint64           `json:"last_seq"`
	Op      journalEntryJSON `json:"op"`
	Workers []struct {
		Name    string `json:"name"`
		Applied uint64 `json:"applied"`
		Lacks   bool   `json:"lacks"`
	} `json:"workers"`
}

// journalJSON runs `mirrorfs journal SUB --json ARGS...` and decodes it.
func (c *cluster) journalJSON(t *testing.T, out any, sub string, args ...string) {
	t.Helper()
	s := c.mustCLI(t, "journal", append([]string{sub, "--json"}, args...)...)
	if err := json.Unmarshal([]byte(s), out); err != nil {
		t.Fatalf("mirrorfs journal %s --json %v: %v\noutput:\n%s", sub, args, err, s)
	}
}

// pendingOf returns the named worker's stats row.
func pendingOf(t *testing.T, st journalStatsJSON, name string) (pending uint64, applied uint64) {
	t.Helper()
	for _, w := range st.Workers {
		if w.Name == name {
			return w.Pending, w.Applied
		}
	}
	t.Fatalf("journal stats has no worker %s: %+v", name, st)
	return 0, 0
}

// TestJournalCLI: with one worker's sshd down, files written through the
// mount show up in `mirrorfs journal stats|ls|show` as pending for that
// worker only, first through the running daemon, then, with the daemon
// stopped, from the journal opened read-only, identically and without
// changing a byte of the journal directory.
func TestJournalCLI(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 2})
	down, up := c.Workers[0], c.Workers[1]
	writeFile(t, c.Mount+"/before.html", "before")
	c.waitConverged(t, converge)
	// Converged trees come before the cursors that record them.
	waitFor(t, converge, "every worker's cursor to reach the journal's end", func() error {
		var st journalStatsJSON
		c.journalJSON(t, &st, "stats")
		for _, w := range st.Workers {
			if w.Pending != 0 || !w.HasCursor || w.NeedsFullCopy {
				return fmt.Errorf("%+v", w)
			}
		}
		return nil
	})

	down.Stop(t)
	files := map[string]int{"site/a.html": 100, "site/b.css": 2000, "site/c.js": 30000}
	mkdirAll(t, c.Mount+"/site")
	var dataBytes int64
	for _, name := range slices.Sorted(maps.Keys(files)) {
		writeFile(t, filepath.Join(c.Mount, name), strings.Repeat("x", files[name]))
		dataBytes += int64(files[name])
	}
	var live journalStatsJSON
	waitFor(t, converge, up.Name+" to have everything", func() error {
		if d := c.compare(c.Store, up.Root); len(d) > 0 {
			return fmt.Errorf("%s differs: %v", up.Name, d[:min(len(d), 3)])
		}
		live = journalStatsJSON{}
		c.journalJSON(t, &live, "stats")
		if p, _ := pendingOf(t, live, up.Name); p != 0 {
			return fmt.Errorf("%s still has %d pending", up.Name, p)
		}
		return nil
	})

	// stats, through the daemon (it holds the journal: nothing else could
	// have answered).
	var wd = live.Workers[0]
	if wd.Name != down.Name {
		t.Fatalf("stats lists %s first, want %s (config order)", wd.Name, down.Name)
	}
	// mkdir site + create, write, close per file, at least.
	if wd.Pending < 10 || wd.Pending != live.LastSeq-wd.Applied || wd.OldestSeq != wd.Applied+1 || wd.NeedsFullCopy ||
		wd.DataBytes < dataBytes || wd.DataFiles != 3 || wd.ByKind["create"] != 3 || wd.ByKind["mkdir"] != 1 || wd.ByKind["write"] < 3 {
		t.Fatalf("stats of the stopped worker: %+v (last seq %d), want the 3 files (%d bytes) pending", wd, live.LastSeq, dataBytes)
	}
	if live.SizeBytes <= 0 || live.FirstSeq == 0 || live.FirstSeq > wd.OldestSeq {
		t.Fatalf("stats journal fields: %+v", live)
	}
	table := c.mustCLI(t, "journal", "stats")
	t.Logf("mirrorfs journal stats (daemon running):\n%s", table)
	if !strings.Contains(table, "from the running daemon") || !strings.Contains(table, down.Name) {
		t.Fatalf("stats table:\n%s", table)
	}

	// ls: by default, the ops any worker lacks: here, those down lacks.
	var ls journalListJSON
	c.journalJSON(t, &ls, "ls")
	paths := map[string]bool{}
	for _, e := range ls.Entries {
		if !slices.Equal(e.Lacking, []string{down.Name}) || e.Seq <= wd.Applied {
			t.Fatalf("ls entry %+v: want only %s lacking it, after its cursor %d", e, down.Name, wd.Applied)
		}
		paths[e.Path] = true
	}
	if want := map[string]bool{"site": true, "site/a.html": true, "site/b.css": true, "site/c.js": true}; !maps.Equal(paths, want) ||
		uint64(len(ls.Entries)) != wd.Pending || ls.More != 0 || ls.Entries[0].Seq != wd.OldestSeq {
		t.Fatalf("ls: %d entries, paths %v, more %d; want %d entries on %v", len(ls.Entries), paths, ls.More, wd.Pending, want)
	}
	var lsDown, lsUp, lsB, lsLimit journalListJSON
	c.journalJSON(t, &lsDown, "ls", "--worker", down.Name)
	c.journalJSON(t, &lsUp, "ls", "--worker", up.Name)
	if !slices.Equal(entrySeqsJSON(lsDown.Entries), entrySeqsJSON(ls.Entries)) || len(lsUp.Entries) != 0 {
		t.Fatalf("ls --worker %s: %v; --worker %s: %v; want all of %v and none", down.Name, entrySeqsJSON(lsDown.Entries), up.Name, entrySeqsJSON(lsUp.Entries), entrySeqsJSON(ls.Entries))
	}
	c.journalJSON(t, &lsB, "ls", "--worker", down.Name, "--path", c.Mount+"/site/b*")
	if len(lsB.Entries) < 3 {
		t.Fatalf("ls --path site/b*: %+v, want create, write, close of site/b.css", lsB.Entries)
	}
	for _, e := range lsB.Entries {
		if e.Path != "site/b.css" {
			t.Fatalf("ls --path site/b* listed %q", e.Path)
		}
	}
	c.journalJSON(t, &lsLimit, "ls", "--limit", "2")
	if len(lsLimit.Entries) != 2 || lsLimit.More != wd.Pending-2 || lsLimit.NextFrom != ls.Entries[2].Seq {
		t.Fatalf("ls --limit 2: %d entries, more %d, next %d; want 2, %d, %d", len(lsLimit.Entries), lsLimit.More, lsLimit.NextFrom, wd.Pending-2, ls.Entries[2].Seq)
	}
	table = c.mustCLI(t, "journal", "ls", "--limit", "6")
	t.Logf("mirrorfs journal ls --limit 6 (daemon running):\n%s", table)
	if !strings.Contains(table, "site/a.html") || !strings.Contains(table, "more matching op") {
		t.Fatalf("ls table:\n%s", table)
	}

	// show: a write of site/c.js, lacked by down only.
	var write journalEntryJSON
	for _, e := range ls.Entries {
		if e.Path == "site/c.js" && e.Kind == "write" {
			write = e
			break
		}
	}
	var show journalShowJSON
	c.journalJSON(t, &show, "show", strconv.FormatUint(write.Seq, 10))
	if show.Op.Seq != write.Seq || show.Op.Path != "site/c.js" || show.Op.Kind != "write" || show.Op.Length <= 0 || show.Op.File == 0 ||
		len(show.Workers) != 2 || !show.Workers[0].Lacks || show.Workers[1].Lacks {
		t.Fatalf("show %d: %+v", write.Seq, show)
	}
	t.Logf("mirrorfs journal show %d (daemon running):\n%s", write.Seq, c.mustCLI(t, "journal", "show", strconv.FormatUint(write.Seq, 10)))
	beyond := strconv.FormatUint(live.LastSeq+1000, 10)
	if out, err := c.cli("journal", "show", beyond); err == nil || !strings.Contains(err.Error(), "#"+beyond) || !strings.Contains(err.Error(), "valid range") {
		t.Fatalf("show %s beyond the journal: %v\n%s; want an error naming the seq and the valid range", beyond, err, out)
	}

	badWorker := func(phase string) {
		t.Helper()
		out, err := c.cli("journal", "ls", "--worker", "nope")
		if err == nil || !strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), down.Name+", "+up.Name) {
			t.Fatalf("%s: ls --worker nope: %v\n%s; want an error naming it and the known workers", phase, err, out)
		}
	}
	badWorker("daemon running")

	// The daemon stops: the same answers, read from the journal itself,
	// which stays exactly as the daemon left it.
	c.Stop(t)
	before := treeFingerprint(t, c.Journal, true)
	var off journalStatsJSON
	c.journalJSON(t, &off, "stats")
	// The daemon may have trimmed the ops every worker has (below the
	// stopped worker's cursor) after the live stats: only those may be gone.
	if off.LastSeq != live.LastSeq || off.FirstSeq < live.FirstSeq || off.FirstSeq > wd.OldestSeq ||
		off.Stored > live.Stored || off.Stored < live.LastSeq-wd.OldestSeq+1 || len(off.Workers) != 2 {
		t.Fatalf("offline stats %+v, live %+v: want the same last op, and every op from #%d on", off, live, wd.OldestSeq)
	}
	for i, w := range off.Workers {
		lw := live.Workers[i]
		if w.Name != lw.Name || w.Pending != lw.Pending || w.Applied != lw.Applied || w.OldestSeq != lw.OldestSeq ||
			w.DataBytes != lw.DataBytes || w.DataFiles != lw.DataFiles || !maps.Equal(w.ByKind, lw.ByKind) {
			t.Fatalf("offline stats of %s: %+v, live %+v", w.Name, w, lw)
		}
	}
	var offLs, offLsUp journalListJSON
	c.journalJSON(t, &offLs, "ls")
	c.journalJSON(t, &offLsUp, "ls", "--worker", up.Name)
	if !slices.Equal(entrySeqsJSON(offLs.Entries), entrySeqsJSON(ls.Entries)) || len(offLsUp.Entries) != 0 {
		t.Fatalf("offline ls: %v (%s: %v), live %v", entrySeqsJSON(offLs.Entries), up.Name, entrySeqsJSON(offLsUp.Entries), entrySeqsJSON(ls.Entries))
	}
	for i, e := range offLs.Entries {
		if le := ls.Entries[i]; e.Path != le.Path || e.Kind != le.Kind || e.DataBytes != le.DataBytes || !slices.Equal(e.Lacking, le.Lacking) {
			t.Fatalf("offline ls entry %+v, live %+v", e, le)
		}
	}
	var offShow journalShowJSON
	c.journalJSON(t, &offShow, "show", strconv.FormatUint(write.Seq, 10))
	if o, l := offShow.Op, show.Op; o.Seq != l.Seq || o.Path != l.Path || o.Kind != l.Kind || o.File != l.File || o.Length != l.Length ||
		!slices.Equal(o.Lacking, l.Lacking) || len(offShow.Workers) != 2 || !offShow.Workers[0].Lacks || offShow.Workers[1].Lacks {
		t.Fatalf("offline show: %+v, live %+v", offShow, show)
	}
	table = c.mustCLI(t, "journal", "stats")
	t.Logf("mirrorfs journal stats (no daemon):\n%s", table)
	if !strings.Contains(table, "no daemon running") {
		t.Fatalf("offline stats table does not say where it read:\n%s", table)
	}
	table = c.mustCLI(t, "journal", "ls", "--path", "site/c.js")
	t.Logf("mirrorfs journal ls --path site/c.js (no daemon):\n%s", table)
	if out, err := c.cli("journal", "show", beyond); err == nil || !strings.Contains(err.Error(), "#"+beyond) || !strings.Contains(err.Error(), "valid range") {
		t.Fatalf("offline show %s: %v\n%s", beyond, err, out)
	}
	badWorker("no daemon")
	if after := treeFingerprint(t, c.Journal, true); !maps.Equal(before, after) {
		var diff []string
		for p := range maps.Keys(before) {
			if before[p] != after[p] {
				diff = append(diff, fmt.Sprintf("%s: %q -> %q", p, before[p], after[p]))
			}
		}
		for p := range maps.Keys(after) {
			if _, ok := before[p]; !ok {
				diff = append(diff, fmt.Sprintf("%s: new: %q", p, after[p]))
			}
		}
		t.Fatalf("the journal tools changed the journal directory:\n%s", strings.Join(diff, "\n"))
	}
}

func entrySeqsJSON(es []journalEntryJSON) []uint64 {
	out := []uint64{}
	for _, e := range es {
		out = append(out, e.Seq)
	}
	return out
}

// TestJournalCLIHelp: the journal tools teach their columns and show
// examples, and refuse bad input before touching anything.
func TestJournalCLIHelp(t *testing.T) {
	needRoot(t)
	bin := mirrorfsBinary(t)
	for _, args := range [][]string{{"journal", "--help"}, {"journal", "stats", "--help"}, {"journal", "ls", "--help"}, {"journal", "show", "--help"}} {
		out, _, code := runMirrorfs(t, bin, args...)
		if code != 0 || !strings.Contains(out, "Usage:") || !strings.Contains(out, "Examples:") {
			t.Fatalf("%v: exit %d\n%s", args, code, out)
		}
	}
	out, _, _ := runMirrorfs(t, bin, "journal", "ls", "--help")
	for _, col := range []string{"SEQ", "AGE", "KIND", "SIZE", "LACKING", "PATH", "--limit", "--worker", "--path"} {
		if !strings.Contains(out, col) {
			t.Errorf("journal ls --help does not explain %s", col)
		}
	}
	cfg := filepath.Join(t.TempDir(), "missing.yaml")
	if _, stderr, code := runMirrorfs(t, bin, "journal", "show", "abc", "--config", cfg); code != 2 || !strings.Contains(stderr, "abc") {
		t.Fatalf("show abc: exit %d, %s", code, stderr)
	}
	if _, stderr, code := runMirrorfs(t, bin, "journal", "ls", "--limit", "0", "--config", cfg); code != 2 || !strings.Contains(stderr, "--limit") {
		t.Fatalf("ls --limit 0: exit %d, %s", code, stderr)
	}
}
