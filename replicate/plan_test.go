package replicate

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mirrorfs/mirrorfs/journal"
)

// Op builders for tables. Seq and Time are filled in by foldOps.
func create(id uint64, p string) journal.Op {
	return journal.Op{Kind: journal.KindCreate, File: id, Path: p, Mode: 0o100644}
}
func write(id uint64, p string) journal.Op {
	return journal.Op{Kind: journal.KindWrite, File: id, Path: p, Length: 1}
}
func closeOp(id uint64) journal.Op { return journal.Op{Kind: journal.KindClose, File: id} }

// closeAt is a Close as the FUSE layer journals it, with the file's path.
func closeAt(id uint64, p string) journal.Op {
	return journal.Op{Kind: journal.KindClose, File: id, Path: p}
}
func truncate(id uint64, p string) journal.Op {
	return journal.Op{Kind: journal.KindSetattr, File: id, Path: p, Mask: journal.AttrSize}
}
func chmodOp(id uint64, p string) journal.Op {
	return journal.Op{Kind: journal.KindSetattr, File: id, Path: p, Mask: journal.AttrMode, Mode: 0o600}
}
func rename(a, b string) journal.Op { return journal.Op{Kind: journal.KindRename, Path: a, NewPath: b} }
func exchange(a, b string) journal.Op {
	return journal.Op{Kind: journal.KindRename, Path: a, NewPath: b, Flags: renameExchange}
}
func unlink(p string) journal.Op { return journal.Op{Kind: journal.KindUnlink, Path: p} }
func mkdir(p string) journal.Op  { return journal.Op{Kind: journal.KindMkdir, Path: p, Mode: 0o40755} }
func rmdir(p string) journal.Op  { return journal.Op{Kind: journal.KindRmdir, Path: p} }
func link(id uint64, a, b string) journal.Op {
	return journal.Op{Kind: journal.KindLink, File: id, Path: a, NewPath: b}
}
func symlink(p, target string) journal.Op {
	return journal.Op{Kind: journal.KindSymlink, Path: p, Target: target}
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func tlog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

var planNow = time.Unix(1_700_000_000, 0)

func testPlanner(t *testing.T, exclude ...string) *planner {
	e, err := NewExcluder(exclude)
	if err != nil {
		t.Fatal(err)
	}
	return &planner{excl: e, holdOpen: time.Minute, log: tlog(t)}
}

// foldOps numbers ops from 1 (times one second apart ending at planNow)
// and folds them.
func foldOps(pl *planner, carried map[uint64]*ident, start uint64, ops ...journal.Op) *Plan {
	for i := range ops {
		ops[i].Seq = start + uint64(i)
		if ops[i].Time == 0 {
			ops[i].Time = planNow.Add(-time.Duration(len(ops)-i) * time.Second).UnixNano()
		}
	}
	return pl.fold(carried, nil, ops, planNow)
}

func describeSteps(p *Plan) []string {
	var out []string
	for _, s := range p.Steps {
		d := s.Kind.String() + " " + s.Path
		if s.NewPath != "" {
			d += " " + s.NewPath
		}
		if s.Target != "" {
			d += " -> " + s.Target
		}
		if s.SrcPending {
			d += " P"
		}
		if s.SrcFree {
			d += "F"
		}
		out = append(out, d)
	}
	return out
}

func describeIdents(ids []*ident) []string {
	var out []string
	for _, id := range ids {
		out = append(out, fmt.Sprintf("%d=%s", id.ID, strings.Join(id.Names, ",")))
	}
	slices.Sort(out)
	return out
}

func carried(p *Plan) []*ident {
	var out []*ident
	for _, id := range p.Carry {
		out = append(out, id)
	}
	return out
}

func TestPlan(t *testing.T) {
	tests := []struct {
		name    string
		exclude []string
		ops     []journal.Op
		steps   []string
		ship    []string
		carry   []string
		attrs   []string
		dirs    []string
		refresh []string
	}{
		{
			name: "worked example: write, rename away, create at the old name",
			ops: []journal.Op{write(1, "a"), rename("a", "b"), create(2, "a"), write(2, "a"),
				closeOp(1), closeOp(2)},
			steps: []string{"rename a b"},
			ship:  []string{"1=b", "2=a"},
			dirs:  []string{""},
		},
		{
			name:  "created then deleted ships nothing",
			ops:   []journal.Op{create(1, "t"), write(1, "t"), closeOp(1), unlink("t")},
			steps: []string{"unlink t PF"},
			dirs:  []string{""},
		},
		{
			name:  "created then deleted while open ships nothing and holds nothing",
			ops:   []journal.Op{create(1, "t"), write(1, "t"), unlink("t")},
			steps: []string{"unlink t PF"},
			dirs:  []string{""},
		},
		{
			name:  "editor save: temp file renamed over the target",
			ops:   []journal.Op{create(7, ".x.swp"), write(7, ".x.swp"), closeOp(7), rename(".x.swp", "x")},
			steps: []string{"rename .x.swp x PF"},
			ship:  []string{"7=x"},
			dirs:  []string{""},
		},
		{
			name:  "rename chain",
			ops:   []journal.Op{create(1, "a"), write(1, "a"), closeOp(1), rename("a", "b"), rename("b", "c")},
			steps: []string{"rename a b PF", "rename b c P"},
			ship:  []string{"1=c"},
			dirs:  []string{""},
		},
		{
			name:  "dirty file follows its directory's rename",
			ops:   []journal.Op{write(1, "d/x"), closeOp(1), rename("d", "e")},
			steps: []string{"rename d e"},
			ship:  []string{"1=e/x"},
			dirs:  []string{""},
			attrs: []string{"e"},
		},
		{
			name:  "dirty file deep in a renamed directory; a sibling name is not a child",
			ops:   []journal.Op{write(1, "d/s/x"), write(2, "dd/x"), closeOp(0), rename("d", "e/f")},
			steps: []string{"rename d e/f"},
			ship:  []string{"1=e/f/s/x", "2=dd/x"},
			dirs:  []string{"", "e"},
			attrs: []string{"e/f"},
		},
		{
			name:  "exchange swaps identities",
			ops:   []journal.Op{write(1, "a"), write(2, "b/x"), exchange("a", "b"), closeOp(1), closeOp(2)},
			steps: []string{"exchange a b"},
			ship:  []string{"1=b", "2=a/x"},
			dirs:  []string{""},
			attrs: []string{"a"},
		},
		{
			name:  "written file replaced by a rename over it",
			ops:   []journal.Op{write(1, "a"), closeOp(1), create(2, "t"), write(2, "t"), closeOp(2), rename("t", "a")},
			steps: []string{"rename t a PF"},
			ship:  []string{"2=a"},
			dirs:  []string{""},
		},
		{
			name:  "open file is held",
			ops:   []journal.Op{write(1, "log"), create(2, "new"), write(2, "new"), mkdir("d")},
			steps: []string{"mkdir d"},
			carry: []string{"1=log", "2=new"},
			attrs: []string{"d"},
			dirs:  []string{""},
		},
		{
			name:  "truncate holds like a write",
			ops:   []journal.Op{truncate(1, "a")},
			carry: []string{"1=a"},
		},
		{
			name:  "mount restart closes every writer",
			ops:   []journal.Op{write(1, "a"), write(2, "b"), closeOp(0), write(3, "c")},
			ship:  []string{"1=a", "2=b"},
			carry: []string{"3=c"},
		},
		{
			name:  "hard link to a new file is made after its data",
			ops:   []journal.Op{create(1, "a"), write(1, "a"), link(1, "a", "d/c"), closeOp(1)},
			steps: []string{"link a d/c P"},
			ship:  []string{"1=a,d/c"},
			dirs:  []string{"", "d"},
		},
		{
			name:  "hard link, then the first name removed",
			ops:   []journal.Op{create(1, "a"), link(1, "a", "c"), unlink("a"), write(1, "c"), closeOp(1)},
			steps: []string{"link a c P", "unlink a PF"},
			ship:  []string{"1=c"},
			dirs:  []string{""},
		},
		{
			name:  "link of an old file is a plain step",
			ops:   []journal.Op{link(5, "a", "b")},
			steps: []string{"link a b"},
			dirs:  []string{""},
		},
		{
			name:  "files made and removed inside a directory made and removed",
			ops:   []journal.Op{mkdir("d"), create(1, "d/x"), closeOp(1), unlink("d/x"), rmdir("d")},
			steps: []string{"mkdir d", "unlink d/x PF", "rmdir d"},
			dirs:  []string{""},
		},
		{
			name:  "attributes follow renames and die with unlinks",
			ops:   []journal.Op{chmodOp(5, "p"), rename("p", "q"), chmodOp(6, "r"), unlink("r")},
			steps: []string{"rename p q", "unlink r"},
			attrs: []string{"q"},
			dirs:  []string{""},
		},
		{
			name: "attributes of a file whose data ships come with the data",
			ops:  []journal.Op{write(1, "a"), chmodOp(1, "a"), closeOp(1)},
			ship: []string{"1=a"},
		},
		{
			name:  "written while open after its unlink",
			ops:   []journal.Op{write(1, "a"), unlink("a"), write(1, "a"), write(1, ".go-fuse.1/deleted"), closeOp(1)},
			steps: []string{"unlink a"},
			dirs:  []string{""},
		},
		{
			name:  "reused inode number",
			ops:   []journal.Op{write(1, "a"), closeOp(1), unlink("a"), create(1, "b"), closeOp(1)},
			steps: []string{"unlink a"},
			ship:  []string{"1=b"},
			dirs:  []string{""},
		},
		{
			name:    "rename into an excluded path deletes on the worker",
			exclude: []string{"*.tmp"},
			ops:     []journal.Op{write(1, "a"), closeOp(1), rename("a", "a.tmp")},
			steps:   []string{"remove-all a"},
			dirs:    []string{""},
		},
		{
			name:    "rename out of an excluded path is new content",
			exclude: []string{"*.tmp"},
			ops:     []journal.Op{create(1, "a.tmp"), write(1, "a.tmp"), closeOp(1), rename("a.tmp", "a")},
			refresh: []string{"a"},
			dirs:    []string{""},
		},
		{
			name:    "excluded paths are ignored",
			exclude: []string{"/cache/", ".git"},
			ops: []journal.Op{mkdir("cache"), create(1, "cache/x"), write(1, "cache/x"), closeOp(1),
				mkdir("d/.git"), create(2, "d/.git/HEAD"), unlink("cache/x"), rmdir("cache")},
		},
		{
			name: "a Close without data ops ships the file (written before a full copy)",
			ops:  []journal.Op{closeAt(1, "d/upload")},
			ship: []string{"1=d/upload"},
		},
		{
			name:  "a Close ships the file at its name after later renames",
			ops:   []journal.Op{closeAt(1, "a"), rename("a", "b")},
			steps: []string{"rename a b"},
			ship:  []string{"1=b"},
			dirs:  []string{""},
		},
		{
			name:  "a Close after the file's last name went ships nothing",
			ops:   []journal.Op{write(1, "a"), unlink("a"), closeAt(1, "a")},
			steps: []string{"unlink a"},
			dirs:  []string{""},
		},
		{
			name:    "a Close of an excluded file ships nothing",
			exclude: []string{"*.tmp"},
			ops:     []journal.Op{closeAt(1, "x.tmp")},
		},
		{
			name:  "symlink and mknod",
			ops:   []journal.Op{symlink("l", "target"), {Kind: journal.KindMknod, Path: "fifo", Mode: 0o10644}},
			steps: []string{"symlink l -> target", "skip fifo"},
			dirs:  []string{""},
		},
		{
			name:  "invalid paths are skipped",
			ops:   []journal.Op{mkdir("../x"), create(1, "/etc/passwd"), rename("a", "b/../../c"), closeOp(1)},
			steps: nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := foldOps(testPlanner(t, tc.exclude...), nil, 1, tc.ops...)
			check := func(what string, got, want []string) {
				t.Helper()
				if !slices.Equal(got, want) {
					t.Errorf("%s = %q, want %q", what, got, want)
				}
			}
			check("steps", describeSteps(p), tc.steps)
			check("ship", describeIdents(p.Ship), tc.ship)
			check("carry", describeIdents(carried(p)), tc.carry)
			check("attrs", sortedKeys(p.Attrs), tc.attrs)
			check("dirs", sortedKeys(p.Dirs), tc.dirs)
			check("refresh", sortedKeys(p.Refresh), tc.refresh)
		})
	}
}

func TestPlanHeldAcrossBatches(t *testing.T) {
	pl := testPlanner(t)
	p1 := foldOps(pl, nil, 10, create(1, "a"), write(1, "a"), mkdir("d"))
	if got := describeIdents(carried(p1)); !slices.Equal(got, []string{"1=a"}) {
		t.Fatalf("carry = %v", got)
	}
	if c := p1.pinned(p1.Last); c != 9 {
		t.Errorf("durable cursor = %d, want 9 (just before the create)", c)
	}
	// The held file is renamed (the worker does not have it) and linked.
	p2 := foldOps(pl, p1.Carry, 13, rename("a", "d/b"), link(1, "d/b", "c"), write(1, "d/b"))
	if got := describeSteps(p2); !slices.Equal(got, []string{"rename a d/b PF", "link d/b c P"}) {
		t.Errorf("steps = %v", got)
	}
	if c := p2.pinned(p2.Last); c != 9 {
		t.Errorf("durable cursor = %d, want 9", c)
	}
	if p1.Carry[1].Names[0] != "a" {
		t.Error("fold modified the carried identities")
	}
	p3 := foldOps(pl, p2.Carry, 16, closeOp(1))
	if got := describeIdents(p3.Ship); !slices.Equal(got, []string{"1=d/b,c"}) {
		t.Errorf("ship = %v", got)
	}
	if len(p3.Carry) != 0 || p3.pinned(p3.Last) != 16 {
		t.Errorf("carry %v, cursor %d", p3.Carry, p3.pinned(p3.Last))
	}
}

func TestPlanHoldOpenAge(t *testing.T) {
	pl := testPlanner(t)
	old := write(1, "log")
	old.Time = planNow.Add(-2 * time.Minute).UnixNano()
	p := foldOps(pl, nil, 1, old, write(1, "log"), write(2, "young"))
	if got := describeIdents(p.Ship); !slices.Equal(got, []string{"1=log"}) {
		t.Errorf("ship = %v", got)
	}
	if got := describeIdents(carried(p)); !slices.Equal(got, []string{"2=young"}) {
		t.Errorf("carry = %v", got)
	}
	// With nothing new, a carried file ships once it is old enough.
	p2 := pl.fold(p.Carry, nil, nil, planNow.Add(2*time.Minute))
	if got := describeIdents(p2.Ship); !slices.Equal(got, []string{"2=young"}) {
		t.Errorf("later ship = %v", got)
	}
}

// An open file is held HoldOpen from when the shipper read its first
// change, also when the wall clock stood later at the append than at the
// read (a clock stepped back in between): the op's wall-clock age then
// counts as nothing, and the time since the read goes by the monotonic
// clock. Measured on the wall clock alone, this file was held an hour more.
func TestPlanHoldAfterClockStepBack(t *testing.T) {
	pl := testPlanner(t)
	pl.holdOpen = time.Minute
	read := time.Now() // carries a monotonic reading, as in the daemon
	op := write(1, "log")
	op.Seq, op.Time = 1, read.Add(time.Hour).UnixNano()
	p := pl.fold(nil, nil, []journal.Op{op}, read)
	if got := describeIdents(carried(p)); !slices.Equal(got, []string{"1=log"}) {
		t.Fatalf("carry = %v, want the open file held", got)
	}
	later := read.Add(time.Minute + time.Second)
	if got := p.Carry[1].heldFor(later); got < time.Minute {
		t.Errorf("held for %v at 61 s after the read, want at least HoldOpen (1m0s)", got)
	}
	p2 := pl.fold(p.Carry, nil, nil, later)
	if got := describeIdents(p2.Ship); !slices.Equal(got, []string{"1=log"}) {
		t.Errorf("61 s after the read: ship = %v, carry = %v; want the file shipped", got, describeIdents(carried(p2)))
	}
}

// A file that a refresh skipped while it was open is held under the name
// the store gave it then (syncer.holdSkipped), ahead of the ops not folded
// yet: here the renames that brought it there, then its truncate. Folding
// them must not take the file for its own victim when it is renamed onto
// that name: it was declared dead, and its next write (a pwrite in place)
// was dropped as a write to an unlinked file; the worker kept the file
// empty for good (TestRandomOperations, seed 49).
func TestPlanHeldFileRenamedOntoItsOwnName(t *testing.T) {
	pl := testPlanner(t)
	carry := map[uint64]*ident{7: {ID: 7, Names: []string{"a/x.css"}, Dirty: true, Open: true, FirstTime: planNow.UnixNano()}}
	moved := func(from, to string) journal.Op {
		op := rename(from, to)
		op.File = 7
		return op
	}
	p1 := foldOps(pl, carry, 20, moved("a/y.js", "a/c/x.css"), moved("a/c/x.css", "a/x.css"), truncate(7, "a/x.css"), closeAt(7, "a/x.css"))
	if _, dead := p1.Dead[7]; dead {
		t.Errorf("file 7 taken for dead after it was renamed onto the name it was held under")
	}
	if got := describeIdents(p1.Ship); !slices.Equal(got, []string{"7=a/x.css"}) {
		t.Errorf("ship = %v, carry = %v; want 7 shipped to a/x.css", got, describeIdents(carried(p1)))
	}
	ops := []journal.Op{write(7, "a/x.css"), closeAt(7, "a/x.css")}
	for i := range ops {
		ops[i].Seq, ops[i].Time = uint64(30+i), planNow.UnixNano()
	}
	p2 := pl.fold(p1.Carry, p1.Dead, ops, planNow)
	if got := describeIdents(p2.Ship); !slices.Equal(got, []string{"7=a/x.css"}) {
		t.Errorf("after a later write: ship = %v; want 7 shipped to a/x.css", got)
	}
}

// The same with a hard link: the held file is known under the name a link
// gave it, and the link op is folded later. The name was taken for one
// that held another file: the held file was declared dead, its write
// through the other name dropped, and the worker kept old content under
// the linked name (TestRandomOperations, seeds 1-83).
func TestPlanHeldFileLinkedOntoItsOwnName(t *testing.T) {
	pl := testPlanner(t)
	carry := map[uint64]*ident{7: {ID: 7, Names: []string{"b/index.html"}, Dirty: true, Open: true, FirstTime: planNow.UnixNano()}}
	p := foldOps(pl, carry, 20, link(7, "a/c", "b/index.html"), write(7, "a/c"), closeAt(7, "a/c"))
	if _, dead := p.Dead[7]; dead {
		t.Errorf("file 7 taken for dead after the link that gave it the name it was held under")
	}
	if got := describeIdents(p.Ship); !slices.Equal(got, []string{"7=b/index.html,a/c"}) {
		t.Errorf("ship = %v, carry = %v; want 7 shipped to both its names", got, describeIdents(carried(p)))
	}
}

// A file a full copy skipped while open is carried without pinning the
// cursor; a data op journaled for it later pins it.
func TestPlanHeldBySkippedCopy(t *testing.T) {
	pl := testPlanner(t)
	carry := map[uint64]*ident{7: {ID: 7, Names: []string{"up"}, Dirty: true, Open: true, FirstTime: planNow.UnixNano()}}
	p1 := foldOps(pl, carry, 20, mkdir("d"))
	if got := describeIdents(carried(p1)); !slices.Equal(got, []string{"7=up"}) {
		t.Fatalf("carry = %v", got)
	}
	if c := p1.pinned(p1.Last); c != 20 {
		t.Errorf("durable cursor = %d, want 20 (not pinned)", c)
	}
	p2 := foldOps(pl, p1.Carry, 21, write(7, "up"), mkdir("e"))
	if c := p2.pinned(p2.Last); c != 20 {
		t.Errorf("durable cursor = %d, want 20 (before the write)", c)
	}
	p3 := foldOps(pl, p2.Carry, 23, closeAt(7, "up"))
	if got := describeIdents(p3.Ship); !slices.Equal(got, []string{"7=up"}) {
		t.Errorf("ship = %v", got)
	}
}

// A file that comes back into the mirrored tree from an excluded name is
// alive: writes through its new name in a later batch ship. It was taken
// for dead (writes dropped for 10 minutes) when it had left the tree for
// the excluded name in the same batch, or when a file that died earlier
// had the same inode number, reused by the create under the excluded name.
func TestPlanFileBackFromExcludedNameIsAlive(t *testing.T) {
	renameFile := func(id uint64, a, b string) journal.Op {
		op := rename(a, b)
		op.File = id
		return op
	}
	for _, tc := range []struct {
		name string
		ops  []journal.Op
		at   string
	}{
		{"moved out and back", []journal.Op{write(7, "a"), closeAt(7, "a"), renameFile(7, "a", "a.tmp"), renameFile(7, "a.tmp", "a")}, "a"},
		{"moved out and linked back", []journal.Op{write(7, "a"), closeAt(7, "a"), renameFile(7, "a", "a.tmp"), link(7, "a.tmp", "a")}, "a"},
		{"renamed in under a reused inode number", []journal.Op{write(7, "old"), closeAt(7, "old"), unlink("old"),
			create(7, "page.tmp"), closeAt(7, "page.tmp"), renameFile(7, "page.tmp", "page")}, "page"},
		{"linked in under a reused inode number", []journal.Op{write(7, "old"), closeAt(7, "old"), unlink("old"),
			create(7, "page.tmp"), closeAt(7, "page.tmp"), link(7, "page.tmp", "page")}, "page"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pl := testPlanner(t, "*.tmp")
			first := foldOps(pl, nil, 1, tc.ops...)
			if !first.Refresh[tc.at] {
				t.Fatalf("first batch: %s not refreshed from the store (Refresh %v)", tc.at, first.Refresh)
			}
			later := []journal.Op{write(7, tc.at), closeAt(7, tc.at)}
			for i := range later {
				later[i].Seq, later[i].Time = uint64(100+i), planNow.UnixNano()
			}
			second := pl.fold(first.Carry, first.Dead, later, planNow)
			if got, want := describeIdents(second.Ship), []string{"7=" + tc.at}; !slices.Equal(got, want) {
				t.Fatalf("a later write through %s: ships %v, want %v (Dead %v)", tc.at, got, want, second.Dead)
			}
		})
	}
}
