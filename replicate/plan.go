package replicate

import (
	"github.com/mirrorfs/mirrorfs/delta"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/mirrorfs/mirrorfs/journal"
)

// Linux renameat2 flags carried in Op.Flags of a rename.
const (
	renameNoReplace = 1 << 0
	renameExchange  = 1 << 1
)

// stepKind is one namespace change applied in journal order.
type stepKind uint8

const (
	stepMkdir     stepKind = iota + 1
	stepRmdir              // Path
	stepUnlink             // Path
	stepRename             // Path -> NewPath
	stepExchange           // Path <-> NewPath
	stepSymlink            // Path -> Target
	stepLink               // NewPath = hard link to Path
	stepRemoveAll          // Path moved out of the mirrored tree (into an excluded path)
	stepSkip               // logged only: mknod of a FIFO/device, xattrs
)

var stepNames = [...]string{
	stepMkdir: "mkdir", stepRmdir: "rmdir", stepUnlink: "unlink", stepRename: "rename",
	stepExchange: "exchange", stepSymlink: "symlink", stepLink: "link",
	stepRemoveAll: "remove-all", stepSkip: "skip",
}

func (k stepKind) String() string { return stepNames[k] }

// step is a namespace change to apply to the worker.
type step struct {
	Kind    stepKind
	Seq     uint64
	Time    int64 // Op.Time
	Path    string
	NewPath string
	Target  string
	// SrcPending: Path is a file created in the plan (or held since an
	// earlier one) whose data has not been shipped: the worker may lack it.
	SrcPending bool
	// DstPending is SrcPending for NewPath (exchange).
	DstPending bool
	// SrcFree: the worker certainly has nothing at Path (a name a file
	// created in the plan got by create or link): a rename or unlink of it
	// needs no request, unless the step is being replayed.
	SrcFree bool
	Reason  string // stepSkip
	Notice  bool   // stepSkip: worth an info log (xattrs are only debug)
}

// ident is one file identity (store inode) with data to ship.
type ident struct {
	ID    uint64
	Names []string // current names in the store, in the order learned
	// Born: created since its data last shipped; the worker has no copy
	// and all its names are known to the plan.
	Born      bool
	Dirty     bool   // has data (create, write, truncate, fallocate, copy range)
	FirstSeq  uint64 // first data op since the last ship
	FirstTime int64  // Op.Time of that op
	Open      bool   // a data op without a later Close
	// seen is when a fold first read that op (the fold's now: in the
	// daemon, a reading of the monotonic clock) and ageSeen the op's age
	// then by the wall clock, never negative. heldFor measures a hold from
	// them.
	seen    time.Time
	ageSeen time.Duration
	// Ranged: Ranges (merged) hold every byte its data ops since the last
	// ship touched, and Cut (when Truncated) the smallest size a truncate
	// gave it meanwhile; the worker's copy is the version before them. Only
	// for a file written in place: not Born, nothing but writes, copy
	// ranges, fallocates and truncates, at most maxRanges ranges.
	Ranged    bool
	Ranges    []delta.Range
	Truncated bool
	Cut       int64
	// Unresolved: its data could not be read from the store at its names
	// (moved or removed by an op not yet journaled); retried later.
	Unresolved      bool
	UnresolvedSince int64 // monoNow; 0: resolved so far
	// Free are names at which the worker certainly has nothing: given by
	// a create or a link while Born (the name was free on the master, and
	// the worker follows the master's namespace in order).
	Free map[string]bool
}

// maxRanges bounds the ranges an identity tracks; past it the file is
// shipped by signature delta or whole.
const maxRanges = 1024

// noteData records the byte ranges of a data op (see Ranged).
func (id *ident) noteData(op journal.Op) {
	if !id.Ranged {
		return
	}
	switch op.Kind {
	case journal.KindWrite, journal.KindCopyRange, journal.KindFallocate:
		id.Ranges = append(id.Ranges, delta.Range{Off: op.Offset, Len: op.Length})
		if len(id.Ranges) > 2*maxRanges {
			id.Ranges = delta.MergeRanges(id.Ranges)
		}
		if len(id.Ranges) > maxRanges {
			id.Ranged, id.Ranges = false, nil
		}
	case journal.KindSetattr: // a truncate
		if !id.Truncated || op.Size < id.Cut {
			id.Truncated, id.Cut = true, op.Size
		}
	default:
		id.Ranged, id.Ranges = false, nil
	}
}

func (id *ident) clone() *ident {
	c := *id
	c.Ranges = slices.Clone(id.Ranges)
	c.Names = slices.Clone(id.Names)
	c.Free = maps.Clone(id.Free)
	return &c
}

func (id *ident) hasName(p string) bool { return slices.Contains(id.Names, p) }

// heldFor is how long id's first change since its last ship has waited at
// now, which decides whether an open file is still held (HoldOpen). The
// op's time is the wall clock's at the journal append, and persisted. A
// wall clock stepped back (a VM resumed, chrony stepping at boot) after
// the shipper read the op would otherwise hold the file for the length of
// the step on top of HoldOpen; after it was read, only the monotonic
// clock counts. A step between the append and the read moves the hold by
// at most HoldOpen.
func (id *ident) heldFor(now time.Time) time.Duration {
	if id.seen.IsZero() {
		return now.Sub(time.Unix(0, id.FirstTime))
	}
	return id.ageSeen + now.Sub(id.seen)
}

// Plan is a batch of journal ops folded into what the worker needs.
type Plan struct {
	First, Last uint64 // Seq range of the ops folded in (0, 0 for none)
	Steps       []step
	// Ship are identities whose data ships now, at their final names.
	Ship []*ident
	// Carry are identities whose data is held back (still open, or
	// unresolved): carried into the next plan; they pin the durable cursor.
	Carry map[uint64]*ident
	// Attrs are paths whose attributes are copied from the store, each
	// with the store inode whose attributes they are (0: any). A path the
	// store has since given to another inode is skipped: the op that did
	// so is journaled after this plan and brings that file's data and
	// attributes itself, whereas copying them now would put the new
	// version's mtime on the old version's content, which a later
	// comparison by size and mtime would then take for the new version.
	Attrs map[string]uint64
	// Dirs are directories whose content changed: their mtime and mode
	// are copied from the store.
	Dirs map[string]bool
	// Refresh are paths to converge from the store as a whole (moved in
	// from an excluded path).
	Refresh map[string]bool
	// Xattrs are paths whose extended attributes changed: the worker's
	// are made equal to the store's (transports that can).
	Xattrs map[string]bool
	// Dead are identities that lost their last name (Op.Time of the
	// unlink): later data ops on them (a file written while open after
	// its unlink) are ignored until a create reuses the inode number.
	Dead map[uint64]int64
	// Compare: a file changed under hard links the journal does not name
	// (see folder.survives); the worker is compared with the store once
	// this plan is applied.
	Compare bool
	// CompareFiles are the identities whose data changed under those
	// names: the comparison sends them whatever their size and mtime say
	// (a change in place keeps the size, and the mtime may be the same to
	// the second, or restored).
	CompareFiles map[uint64]bool
	// Lost are the paths of Attrs and Dirs whose attributes could not be
	// copied because the store no longer had them (filled by apply), with
	// the Unix nanoseconds they were first lost. The store moved ahead of
	// the journal: the rename or removal that explains it is folded into
	// the next plan, which takes them over (see planner.fold), so that
	// they follow the rename to the entry's new name.
	Lost map[string]int64
}

// lostMemory is how long a lost attribute path is carried from plan to
// plan waiting for the op that moved it.
const lostMemory = time.Minute

// deadMemory is how long Plan.Dead remembers an identity.
const deadMemory = 10 * time.Minute

// pinned returns the durable cursor the plan allows: everything before the
// first op of a carried identity, else Last.
func (p *Plan) pinned(last uint64) uint64 {
	c := last
	for _, id := range p.Carry {
		if id.FirstSeq > 0 && id.FirstSeq-1 < c {
			c = id.FirstSeq - 1
		}
	}
	return c
}

// planner folds ops into plans. It does no I/O except isDir.
type planner struct {
	excl     *Excluder
	holdOpen time.Duration
	// isDir tells whether a store path is a directory, for exclude
	// patterns that match directories only when an op does not say.
	isDir func(p string) bool
	log   *slog.Logger
}

// fold builds a plan from the identities carried over from the previous
// plan and the ops read since; now decides which open files are too old to
// hold. carried is not modified.
func (pl *planner) fold(carried map[uint64]*ident, dead map[uint64]int64, ops []journal.Op, now time.Time) *Plan {
	return pl.foldLost(carried, dead, nil, ops, now)
}

// foldLost is fold that also takes over the attribute paths a previous
// plan lost (Plan.Lost): they are copied again, at the names the ops move
// them to (or dropped with a removal). plan.Lost keeps their first-lost
// time for the next apply.
func (pl *planner) foldLost(carried map[uint64]*ident, dead map[uint64]int64, lost map[string]int64, ops []journal.Op, now time.Time) *Plan {
	f := folder{
		pl:        pl,
		names:     newNameIndex(),
		ids:       make(map[uint64]*ident, len(carried)),
		attrs:     newPathSet[uint64](),
		dirs:      newPathSet[bool](),
		refresh:   newPathSet[bool](),
		xattrs:    newPathSet[bool](),
		lostSince: newPathSet[int64](),
		dead:      map[uint64]int64{},
		foldNow:   now,
	}
	for k, t := range dead {
		if now.Sub(time.Unix(0, t)) < deadMemory {
			f.dead[k] = t
		}
	}
	// Lost paths are tracked in attrs under their own name: move and
	// dropName update them like any attribute; lostSince follows.
	for p, t := range lost {
		if now.Sub(time.Unix(0, t)) < lostMemory {
			f.attrs.put(p, 0)
			f.lostSince.put(p, t)
		}
	}
	for k, v := range carried {
		f.ids[k] = v.clone()
		f.names.add(f.ids[k])
	}
	plan := &Plan{}
	if len(ops) > 0 {
		plan.First, plan.Last = ops[0].Seq, ops[len(ops)-1].Seq
	}
	for _, op := range ops {
		n := len(f.steps)
		f.now = op.Time
		f.op(op)
		for i := n; i < len(f.steps); i++ {
			f.steps[i].Time = op.Time
		}
	}
	plan.Steps = f.steps
	plan.Carry = map[uint64]*ident{}
	shipped := map[string]bool{}
	for _, k := range slices.Sorted(maps.Keys(f.ids)) {
		id := f.ids[k]
		if !id.Dirty || len(id.Names) == 0 {
			continue
		}
		hold := id.Open && id.heldFor(now) < pl.holdOpen
		if hold {
			plan.Carry[k] = id
		} else {
			plan.Ship = append(plan.Ship, id)
		}
		for _, n := range id.Names {
			shipped[n] = true
		}
	}
	// Attributes of files whose data ships (or is held) come with the data.
	for p := range f.attrs.m {
		if shipped[p] {
			f.attrs.del(p)
		}
	}
	if f.compare {
		// The comparison copies every file's attributes, with its content
		// where that differs. Copied before it, a file's new mtime (a
		// chmod or utimes through its other name, before or after the
		// unlink) would go on the old content that the worker keeps at
		// the names the journal does not know, which the comparison (size
		// and mtime) would then take for up to date.
		f.attrs = newPathSet[uint64]()
	}
	plan.Attrs, plan.Dirs, plan.Refresh, plan.Dead = f.attrs.m, f.dirs.m, f.refresh.m, f.dead
	plan.Compare, plan.CompareFiles = f.compare, f.compareFiles
	plan.Xattrs = f.xattrs.m
	plan.Lost = map[string]int64{}
	for p, t := range f.lostSince.m {
		if f.attrs.has(p) {
			plan.Lost[p] = t
		}
	}
	return plan
}

type folder struct {
	pl      *planner
	ids     map[uint64]*ident
	steps   []step
	attrs   pathSet[uint64] // see Plan.Attrs
	dirs    pathSet[bool]
	refresh pathSet[bool]
	xattrs  pathSet[bool]
	dead    map[uint64]int64
	compare bool      // see Plan.Compare
	names   nameIndex // names of ids
	now     int64     // Op.Time of the op being folded
	foldNow time.Time // the fold's now (see ident.heldFor)
	// lostSince: attrs paths taken over from a previous plan's Lost, by
	// their current name, with the time they were first lost.
	lostSince pathSet[int64]
	// compareFiles: see Plan.CompareFiles.
	compareFiles map[uint64]bool
}

func (f *folder) excluded(p string, isDir bool) bool {
	return f.pl.excl.Excluded(p, isDir)
}

// excludedUnknown is excluded for a path whose type the op does not say.
func (f *folder) excludedUnknown(p string) bool {
	if f.pl.excl == nil || len(f.pl.excl.pats) == 0 {
		return false
	}
	if f.excluded(p, false) {
		return true
	}
	return f.pl.isDir != nil && f.pl.isDir(p) && f.excluded(p, true)
}

// validOrRoot is valid, the root ("") allowed: its mode, owner, times
// and xattrs change like any directory's.
func (f *folder) validOrRoot(op journal.Op, p string) bool {
	return p == "" || f.valid(op, p)
}

func (f *folder) valid(op journal.Op, paths ...string) bool {
	for _, p := range paths {
		if err := ValidPath(p); err != nil || p == "" {
			f.pl.log.Warn("skipping journal op with an invalid path", "op", op.String(), "path", p)
			return false
		}
	}
	return true
}

func (f *folder) changedDir(p string) { f.dirs.put(parentDir(p), true) }

// dropName removes the name p (and names under it) from every identity;
// an identity left without names is forgotten: its data is not shipped.
func (f *folder) dropName(p string) {
	for _, id := range f.names.holders(p, f.ids) {
		f.names.remove(id)
		id.Names = slices.DeleteFunc(id.Names, func(n string) bool { return under(n, p) })
		for n := range id.Free {
			if under(n, p) {
				delete(id.Free, n)
			}
		}
		if len(id.Names) == 0 {
			delete(f.ids, id.ID)
			f.dead[id.ID] = f.now
			continue
		}
		f.names.add(id)
	}
	f.attrs.dropUnder(p)
	f.refresh.dropUnder(p)
	f.xattrs.dropUnder(p)
}

// dropLink drops the name p of a file that an unlink removed or a rename
// replaced; otherLinks: the file had other hard links, under which it
// lives on (see survives).
func (f *folder) dropLink(p string, otherLinks bool) {
	id := f.byName(p)
	attrsPending := f.attrs.has(p)
	f.dropName(p)
	if !otherLinks {
		return
	}
	if attrsPending {
		// A chmod, chown or utimes through p not copied yet: it went to
		// the file's other names, which the journal does not know.
		f.compare = true
	}
	if id != nil && len(id.Names) == 0 {
		f.survives(id)
	}
}

// survives handles id, which lost its last name this plan knows to an
// unlink or a rename over it, but lives on under hard links the journal
// does not name. It is not dead: a later write through another name ships
// to that name. Its changes not shipped yet have nowhere to go but those
// unknown names: the worker is compared with the store after this plan
// (Plan.Compare).
func (f *folder) survives(id *ident) {
	delete(f.dead, id.ID)
	if id.Dirty {
		f.compare = true
		if f.compareFiles == nil {
			f.compareFiles = map[uint64]bool{}
		}
		f.compareFiles[id.ID] = true
	}
}

// revive forgets that file died: it came back into the mirrored tree from
// an excluded name (moved out and back, or created there under a reused
// inode number), and the worker gets it whole (Plan.Refresh). Writes
// through the name it has now must ship, not be taken for writes to an
// unlinked file.
func (f *folder) revive(file uint64) { delete(f.dead, file) }

// dropDirs forgets directory mtimes to fix under p (p itself included).
func (f *folder) dropDirs(p string) { f.dirs.dropUnder(p) }

// move renames every tracked name under from to be under to.
func (f *folder) move(from, to string) {
	for _, id := range f.names.holders(from, f.ids) {
		f.names.remove(id)
		for i, n := range id.Names {
			if under(n, from) {
				id.Names[i] = reparent(n, from, to)
			}
		}
		// A name renamed itself may land on something the worker has;
		// names moved with their directory stay free.
		free := map[string]bool{}
		for n := range id.Free {
			if n != from && under(n, from) {
				free[reparent(n, from, to)] = true
			} else if !under(n, from) {
				free[n] = true
			}
		}
		id.Free = free
		f.names.add(id)
	}
	// An entry keeps its identity when it moves (names under a moved
	// directory too: the identity is the file's, not the directory's).
	f.attrs.move(from, to)
	f.dirs.move(from, to)
	f.refresh.move(from, to)
	f.xattrs.move(from, to)
	f.lostSince.move(from, to)
}

// exchange swaps the names under a and b.
func (f *folder) exchange(a, b string) {
	swap := func(n string) string {
		switch {
		case under(n, a):
			return reparent(n, a, b)
		case under(n, b):
			return reparent(n, b, a)
		}
		return n
	}
	seen := map[*ident]bool{}
	for _, id := range append(f.names.holders(a, f.ids), f.names.holders(b, f.ids)...) {
		if seen[id] {
			continue
		}
		seen[id] = true
		f.names.remove(id)
		for i, n := range id.Names {
			id.Names[i] = swap(n)
		}
		for n := range id.Free {
			if under(n, a) || under(n, b) {
				delete(id.Free, n)
			}
		}
		f.names.add(id)
	}
	f.attrs.remap(swap)
	f.dirs.remap(swap)
	f.refresh.remap(swap)
	f.xattrs.remap(swap)
}

// pending reports whether p is a name of a file created in the plan whose
// data has not shipped (the worker may not have p).
func (f *folder) pending(p string) bool {
	for id := range f.names.at[p] {
		if id.Born && id.hasName(p) {
			return true
		}
	}
	return false
}

// free reports whether the worker certainly has nothing at p.
func (f *folder) free(p string) bool {
	for id := range f.names.at[p] {
		if id.Free[p] {
			return true
		}
	}
	return false
}

// byName finds the tracked identity with name p.
func (f *folder) byName(p string) *ident {
	for id := range f.names.at[p] {
		if id.hasName(p) {
			return id
		}
	}
	return nil
}

// ownAhead returns the identity the plan knows at p when it is file, the
// file a rename or link op moves or links to p: the plan can know a file
// under a name the ops folded so far have not given it yet, when a
// refresh that skipped it while it was open found it there
// (syncer.holdSkipped). Such a name is the file's own, not one it
// replaces; taken for what p held, the file was declared dead and its
// later writes were dropped.
func (f *folder) ownAhead(p string, file uint64) *ident {
	if id := f.byName(p); id != nil && file != 0 && id.ID == file {
		return id
	}
	return nil
}

// dirty marks the data of op.File changed.
func (f *folder) dirty(op journal.Op, opens bool) {
	if op.File == 0 {
		f.pl.log.Warn("skipping data op without a file identity", "op", op.String())
		return
	}
	id := f.ids[op.File]
	if id == nil {
		if _, dead := f.dead[op.File]; dead {
			return // written after its last name went: nothing to ship
		}
		if !f.valid(op, op.Path) || f.excluded(op.Path, false) {
			return
		}
		// A file the worker has (in the version before this op): its
		// changes can go as byte ranges.
		id = &ident{ID: op.File, Names: []string{op.Path}, Ranged: true}
		f.ids[op.File] = id
		f.names.add(id)
	}
	id.noteData(op)
	if !id.Dirty {
		id.Dirty = true
		id.FirstSeq, id.FirstTime = op.Seq, op.Time
		id.seen, id.ageSeen = f.foldNow, max(0, f.foldNow.Sub(time.Unix(0, op.Time)))
	} else if id.FirstSeq == 0 {
		// Held since a copy skipped it (see syncer.holdSkipped): from now
		// on the journal has data of it, which pins the cursor.
		id.FirstSeq = op.Seq
	}
	if opens {
		id.Open = true
	}
}

func (f *folder) op(op journal.Op) {
	switch op.Kind {
	case journal.KindCreate:
		if !f.valid(op, op.Path) || f.excluded(op.Path, false) {
			return
		}
		f.dropName(op.Path)
		if old := f.ids[op.File]; old != nil { // an inode number reused after its file died
			f.names.remove(old)
			delete(f.ids, op.File)
		}
		delete(f.dead, op.File)
		f.ids[op.File] = &ident{ID: op.File, Names: []string{op.Path}, Born: true, Free: map[string]bool{op.Path: true}}
		f.names.add(f.ids[op.File])
		f.dirty(op, true)
		f.changedDir(op.Path)

	case journal.KindWrite, journal.KindCopyRange, journal.KindFallocate:
		f.dirty(op, true)

	case journal.KindSetattr:
		if op.Mask&journal.AttrSize != 0 {
			// A truncate is data, held until a Close like a write: an
			// open(O_TRUNC) arrives as a separate setattr before the
			// writes, and shipping the empty file would show a content
			// the file never had after a close.
			f.dirty(op, true)
		}
		if op.Mask&^journal.AttrSize != 0 {
			if id := f.ids[op.File]; id != nil && op.File != 0 {
				for _, n := range id.Names {
					f.attrs.put(n, op.File)
				}
			} else if f.validOrRoot(op, op.Path) && !f.excludedUnknown(op.Path) {
				f.attrs.put(op.Path, op.File)
			}
		}

	case journal.KindClose:
		if op.File == 0 {
			for _, id := range f.ids {
				id.Open = false
			}
		} else if id := f.ids[op.File]; id != nil {
			id.Open = false
		} else if op.Path != "" {
			// A Close without data ops in the plan: its writes were
			// journaled before a full copy started (the copy skipped the
			// file, open for writing then), or shipped once HoldOpen
			// passed. fs journals a Close only when the file changed
			// since its last Close, so shipping it costs nothing extra.
			f.dirty(op, false)
		}

	case journal.KindMkdir:
		if !f.valid(op, op.Path) || f.excluded(op.Path, true) {
			return
		}
		f.dropName(op.Path)
		f.steps = append(f.steps, step{Kind: stepMkdir, Seq: op.Seq, Path: op.Path})
		f.attrs.put(op.Path, 0)
		f.changedDir(op.Path)

	case journal.KindMknod:
		if !f.valid(op, op.Path) || f.excluded(op.Path, false) {
			return
		}
		f.dropName(op.Path)
		f.steps = append(f.steps, step{Kind: stepSkip, Seq: op.Seq, Path: op.Path, Notice: true,
			Reason: "FIFOs, sockets and device nodes are not replicated (a web root has no use for them)"})

	case journal.KindSymlink:
		if !f.valid(op, op.Path) || f.excluded(op.Path, false) {
			return
		}
		f.dropName(op.Path)
		f.steps = append(f.steps, step{Kind: stepSymlink, Seq: op.Seq, Path: op.Path, Target: op.Target})
		f.changedDir(op.Path)

	case journal.KindUnlink:
		if !f.valid(op, op.Path) || f.excluded(op.Path, false) {
			return
		}
		f.steps = append(f.steps, step{Kind: stepUnlink, Seq: op.Seq, Path: op.Path,
			SrcPending: f.pending(op.Path), SrcFree: f.free(op.Path)})
		f.dropLink(op.Path, op.Flags&journal.UnlinkOtherLinks != 0)
		f.changedDir(op.Path)

	case journal.KindRmdir:
		if !f.valid(op, op.Path) || f.excluded(op.Path, true) {
			return
		}
		f.steps = append(f.steps, step{Kind: stepRmdir, Seq: op.Seq, Path: op.Path})
		f.dropName(op.Path)
		f.dropDirs(op.Path)
		f.changedDir(op.Path)

	case journal.KindLink:
		if !f.valid(op, op.Path, op.NewPath) || f.excluded(op.NewPath, false) {
			return
		}
		// The new name held nothing, unless the plan knows the linked
		// file itself there (ownAhead).
		if f.ownAhead(op.NewPath, op.File) == nil {
			f.dropName(op.NewPath)
		}
		f.changedDir(op.NewPath)
		if f.excluded(op.Path, false) {
			f.refresh.put(op.NewPath, true)
			f.revive(op.File)
			return
		}
		id := f.byName(op.Path)
		if id == nil && op.File != 0 {
			id = f.ids[op.File]
		}
		st := step{Kind: stepLink, Seq: op.Seq, Path: op.Path, NewPath: op.NewPath}
		if id != nil {
			st.SrcPending = id.Born
			f.names.remove(id)
			// Both names are the file's now; a held file may lack the
			// one it was linked from.
			if !id.hasName(op.Path) && id.hasName(op.NewPath) {
				id.Names = append(id.Names, op.Path)
			}
			if !id.hasName(op.NewPath) {
				id.Names = append(id.Names, op.NewPath)
			}
			if id.Born {
				if id.Free == nil {
					id.Free = map[string]bool{}
				}
				id.Free[op.NewPath] = true
			}
			f.names.add(id)
		}
		f.steps = append(f.steps, st)

	case journal.KindRename:
		f.rename(op)

	case journal.KindSetxattr, journal.KindRemovexattr:
		if !f.validOrRoot(op, op.Path) || f.excludedUnknown(op.Path) {
			return
		}
		// Made equal to the store's after the batch (not over SFTP v3,
		// which has no xattr requests: see apply).
		f.xattrs.put(op.Path, true)
		if op.XattrName == accessACL {
			// The file system turned the ACL into a mode change that no
			// setattr was journaled for (cp -a, setfacl): the mode is
			// copied like any attribute, over every transport.
			f.attrs.put(op.Path, op.File)
		}

	default:
		f.pl.log.Warn("skipping journal op of unknown kind", "op", op.String())
	}
}

func (f *folder) rename(op journal.Op) {
	if !f.valid(op, op.Path, op.NewPath) || op.Path == op.NewPath {
		return
	}
	exchange := op.Flags&renameExchange != 0
	// The moved entry is at NewPath in the store now: its type decides
	// directory-only patterns for both names.
	isDir := f.pl.isDir != nil && f.pl.isDir(op.NewPath)
	f.changedDir(op.Path)
	f.changedDir(op.NewPath)
	if exchange {
		if f.exchangeExcluded(op, isDir) {
			return
		}
		f.steps = append(f.steps, step{Kind: stepExchange, Seq: op.Seq, Path: op.Path, NewPath: op.NewPath,
			SrcPending: f.pending(op.Path), DstPending: f.pending(op.NewPath)})
		f.exchange(op.Path, op.NewPath)
		// Each name now holds the other's entry; identities unknown here.
		f.attrs.put(op.Path, 0)
		f.attrs.put(op.NewPath, 0)
		return
	}
	srcEx, dstEx := f.excluded(op.Path, isDir), f.excluded(op.NewPath, isDir)
	switch {
	case srcEx && dstEx:
		return
	case srcEx:
		// NewPath gets content from an excluded path: new to the worker.
		f.dropLink(op.NewPath, op.Flags&journal.RenameReplacedOtherLinks != 0)
		f.dropDirs(op.NewPath)
		f.refresh.put(op.NewPath, true)
		f.revive(op.File)
		return
	case dstEx:
		// Content leaves the mirrored tree: delete it on the worker.
		f.steps = append(f.steps, step{Kind: stepRemoveAll, Seq: op.Seq, Path: op.Path})
		f.dropName(op.Path)
		f.dropDirs(op.Path)
		return
	}
	f.steps = append(f.steps, step{Kind: stepRename, Seq: op.Seq, Path: op.Path, NewPath: op.NewPath,
		SrcPending: f.pending(op.Path), SrcFree: f.free(op.Path)})
	// What NewPath held (a file, or an empty directory) is replaced,
	// unless the plan knows the moved file itself there (ownAhead). Two
	// hard links of one file, which rename leaves both, are not that.
	if own := f.ownAhead(op.NewPath, op.File); own == nil || own.hasName(op.Path) {
		f.dropLink(op.NewPath, op.Flags&journal.RenameReplacedOtherLinks != 0)
	}
	f.dropDirs(op.NewPath)
	f.move(op.Path, op.NewPath)
	// The attributes of the moved entry are copied from the store at its
	// new name. A setattr of the old name folded into an earlier plan
	// found nothing to copy when the store had already renamed the entry
	// (copyAllAttrs skips a path the store lacks), as with rsync's
	// write-temp, chmod, utimes, rename: nothing else would fix the
	// worker's mode and mtime. (Dropped in fold when the data ships.)
	f.attrs.put(op.NewPath, op.File)
}

// exchangeExcluded handles an exchange that an exclude pattern touches and
// reports whether there was one. Each name is judged by the type of the
// entry it held (what the worker may have there) and of the one it holds
// now (firstIsDir: the entry now at NewPath, which was at Path): with a
// directory-only pattern, a directory exchanged with a file is excluded
// under its name before, not after. A name whose new entry is mirrored
// converges from the store; one whose new entry is excluded loses what
// the worker had there (that entry is at the other name now).
func (f *folder) exchangeExcluded(op journal.Op, firstIsDir bool) bool {
	secondIsDir := f.pl.isDir != nil && f.pl.isDir(op.Path)
	names := []struct {
		p             string
		before, after bool
	}{
		{op.Path, f.excluded(op.Path, firstIsDir), f.excluded(op.Path, secondIsDir)},
		{op.NewPath, f.excluded(op.NewPath, secondIsDir), f.excluded(op.NewPath, firstIsDir)},
	}
	if !names[0].before && !names[0].after && !names[1].before && !names[1].after {
		return false
	}
	for _, n := range names {
		switch {
		case n.before && n.after:
		case n.after:
			f.steps = append(f.steps, step{Kind: stepRemoveAll, Seq: op.Seq, Path: n.p})
			f.dropName(n.p)
			f.dropDirs(n.p)
		default:
			f.dropName(n.p)
			f.dropDirs(n.p)
			f.refresh.put(n.p, true)
		}
	}
	return true
}

// accessACL is the xattr that holds a POSIX access ACL; setting or
// removing it also sets the permission bits of the mode.
const accessACL = "system.posix_acl_access"

// sortedKeys returns the keys of a set in order (parents before children).
func sortedKeys[V any](m map[string]V) []string {
	ks := slices.Collect(maps.Keys(m))
	sort.Strings(ks)
	return ks
}
