package replicate

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"
)

// apply applies a plan to the worker: namespace steps in journal order,
// then paths to converge from the store, then file data at the final
// names, then attributes and directory mtimes. Every part is idempotent.
// Identities whose data turns out not to be readable are moved from
// plan.Ship to plan.Carry, and so are files a refresh skipped because a
// writer has them open.
func (s *Shipper) apply(ctx context.Context, plan *Plan) error {
	refresh := map[string]bool{}
	for p := range plan.Refresh {
		refresh[p] = true
	}
	for _, st := range plan.Steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		suspect := s.suspect(st)
		s.log.Debug("apply", "op", st.Seq, "step", st.Kind.String(), "path", st.Path, "new", st.NewPath, "suspect", suspect)
		if err := s.applyStep(ctx, st, suspect, refresh); err != nil {
			return err
		}
	}
	// Names whose data ships below, or is held back, are not refreshed.
	skip := map[string]bool{}
	for _, id := range plan.Ship {
		for _, n := range id.Names {
			skip[n] = true
		}
	}
	for _, id := range plan.Carry {
		for _, n := range id.Names {
			skip[n] = true
		}
	}
	if len(refresh) > 0 {
		s.log.Debug("refresh", "paths", sortedKeys(refresh))
		sy := s.newSyncer(skip)
		err := s.refreshPaths(ctx, sy, sortedKeys(refresh))
		s.storeAhead() // after reading the store, also when it failed
		if err != nil {
			return err
		}
		for _, id := range plan.Ship {
			delete(sy.held, id.ID) // ships below anyway
		}
		sy.holdSkipped(plan.Carry)
	}
	kept, err := s.keepUnchanged(ctx, plan)
	if err != nil {
		return err
	}
	sent, err := s.sendSmallFiles(ctx, plan, kept)
	if err != nil {
		return err
	}
	for _, id := range slices.Clone(plan.Ship) {
		if len(id.Names) == 1 && (kept[id.Names[0]] || sent[id.Names[0]]) {
			continue
		}
		if err := s.shipIdent(ctx, plan, id); err != nil {
			return err
		}
	}
	// The directories the batch changed: those the plan names, and every
	// directory a request of this shipper changed (a file written through
	// a temp name, a hard link made again in another directory, a removal
	// during a refresh, a temp file swept...).
	dirs := maps.Clone(plan.Dirs)
	for _, id := range plan.Ship {
		for _, n := range id.Names {
			dirs[parentDir(n)] = true
		}
	}
	for p := range refresh {
		dirs[parentDir(p)] = true
	}
	maps.Copy(dirs, s.touched)
	if s.sweep {
		if err := s.sweepTemps(ctx, dirs); err != nil {
			return err
		}
		maps.Copy(dirs, s.touched)
	}
	lost := map[string]int64{}
	// The attributes the plan names, then the mode and mtime of every
	// changed directory, last, when nothing changes their entries any
	// more. (A directory whose attributes were just copied as a plan
	// attribute is done.)
	var targets []attrTarget
	for _, p := range sortedKeys(plan.Attrs) {
		targets = append(targets, attrTarget{path: p, ino: plan.Attrs[p]})
	}
	for _, p := range sortedKeys(dirs) {
		if _, ok := plan.Attrs[p]; !ok {
			targets = append(targets, attrTarget{path: p, dirOnly: true})
		}
	}
	if err := s.copyAllAttrs(ctx, targets, lost); err != nil {
		return err
	}
	if _, ok := s.xattrs(); ok {
		for _, p := range sortedKeys(plan.Xattrs) {
			if err := s.syncXattrsAt(ctx, p, true); err != nil {
				return err
			}
		}
	} else if len(plan.Xattrs) > 0 {
		s.log.Debug("not replicated", "xattrs of", sortedKeys(plan.Xattrs), "reason", "extended attributes need the agent transport; SFTP v3 has no xattr requests")
	}
	// Keep the first-lost time of paths lost again.
	for p := range lost {
		if t, ok := plan.Lost[p]; ok {
			lost[p] = t
		}
	}
	plan.Lost = lost
	clear(s.touched)
	return nil
}

func (s *Shipper) refreshPaths(ctx context.Context, sy *syncer, paths []string) error {
	kept, err := s.keepRefreshed(ctx, sy, paths)
	if err != nil {
		return err
	}
	for _, p := range paths {
		if kept[p] {
			continue
		}
		if err := sy.syncPath(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// sweepTemps removes leftover temp files (TempPrefix) from the worker
// directories dirs, each listed at most once per connection.
//
// Why this finds every leftover: a temp file is left behind only when the
// request that would rename or remove it never completed, that is when
// the connection failed or this process died in the middle of applying a
// batch. That batch was not acknowledged, so the durable cursor (and, after
// a failure without a restart, the in-memory read position) is before its
// ops, also when held files pin the cursor further back; its ops are
// therefore applied again by the batches that follow the next connect,
// and the temp file lies in a directory those ops change: the directory of
// a file they ship (or of one of its hard links, made again), of a name
// they create, rename or remove, or a directory a refresh converges, which
// the plan or the dirTracker names. Sweeping stops after the batch that
// re-applied everything up to suspectUntil (normally the first one), so
// the cost is one ReadDir per changed directory after a connect. A full
// copy removes leftovers in every directory it converges (syncDir).
func (s *Shipper) sweepTemps(ctx context.Context, dirs map[string]bool) error {
	for _, d := range sortedKeys(dirs) {
		if s.swept[d] {
			continue
		}
		if s.excl.Excluded(d, true) {
			continue // not ours
		}
		ents, err := s.t.ReadDir(ctx, d)
		if err != nil {
			wfi, lerr := s.wlstat(ctx, d)
			if lerr != nil {
				return lerr
			}
			if wfi == nil || !wfi.IsDir() {
				continue // gone, or not a directory: nothing to sweep
			}
			return s.errf(d, fmt.Errorf("listing for leftover temp files: %w", err))
		}
		s.swept[d] = true
		for _, e := range ents {
			if !strings.HasPrefix(e.Name, TempPrefix) {
				continue
			}
			p := joinPath(d, e.Name)
			if fi, err := s.storeLstat(p); err == nil && fi != nil {
				continue // the store has this name itself
			}
			s.log.Info("removing a temp file left by an interrupted transfer", "path", p)
			if err := s.removeAll(ctx, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// dirTracker is the shipper's view of its Transport: it notes in dirs the
// worker directories whose entries each request may change, so that their
// mode and mtime are copied from the store at the end of the batch.
type dirTracker struct {
	Transport
	dirs map[string]bool
}

func (d *dirTracker) changes(p string) { d.dirs[parentDir(p)] = true }

// linkAttrs is the transport's LinkAttrs capability, if it has one (seen
// through the dirTracker: setting attributes changes no directory).
func (s *Shipper) linkAttrs() (LinkAttrs, bool) {
	la, ok := unwrap(s.t).(LinkAttrs)
	return la, ok
}

// xattrs is the transport's Xattrs capability, if it has one.
func (s *Shipper) xattrs() (Xattrs, bool) {
	x, ok := unwrap(s.t).(Xattrs)
	return x, ok
}

func unwrap(t Transport) Transport {
	if d, ok := t.(*dirTracker); ok {
		return d.Transport
	}
	return t
}

func (d *dirTracker) Mkdir(ctx context.Context, p string, perm fs.FileMode) error {
	d.changes(p)
	d.dirs[p] = true // its mtime and mode too
	return d.Transport.Mkdir(ctx, p, perm)
}

func (d *dirTracker) Remove(ctx context.Context, p string) error {
	d.changes(p)
	return d.Transport.Remove(ctx, p)
}

func (d *dirTracker) Rmdir(ctx context.Context, p string) error {
	d.changes(p)
	return d.Transport.Rmdir(ctx, p)
}

func (d *dirTracker) Rename(ctx context.Context, from, to string) error {
	d.changes(from)
	d.changes(to)
	return d.Transport.Rename(ctx, from, to)
}

func (d *dirTracker) Symlink(ctx context.Context, target, p string) error {
	d.changes(p)
	return d.Transport.Symlink(ctx, target, p)
}

func (d *dirTracker) Link(ctx context.Context, existing, p string) error {
	d.changes(p)
	return d.Transport.Link(ctx, existing, p)
}

func (d *dirTracker) WriteFileAtomic(ctx context.Context, p string, r io.Reader, a Attrs) error {
	d.changes(p)
	return d.Transport.WriteFileAtomic(ctx, p, r, a)
}

// attrTarget is a path whose attributes copyAllAttrs copies: if ino is not
// 0 and the store's entry is no directory, only from that inode; if
// dirOnly, only from a directory.
type attrTarget struct {
	path    string
	ino     uint64
	dirOnly bool
}

// attrSource is the store entry whose attributes t gets; ok is false when
// there is none to copy. An excluded path is skipped, and so is a path the
// store no longer has: it is added to lost (with the time now), to be
// copied again by the next plan at the name the op that moved it gives
// (see Plan.Lost). With t.ino set, a path the store has meanwhile given to
// another file (not a directory) is skipped too, see Plan.Attrs.
func (s *Shipper) attrSource(t attrTarget, lost map[string]int64, now int64) (fs.FileInfo, bool) {
	// storeEntry: a path below a symlink in the store names no entry
	// (os.Root would follow the link to another directory's attributes).
	sfi, err := s.storeEntry(t.path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && lost != nil {
			lost[t.path] = now
		}
		return nil, false
	}
	if (t.dirOnly && !sfi.IsDir()) || s.excl.Excluded(t.path, sfi.IsDir()) {
		return nil, false
	}
	if t.ino != 0 && !sfi.IsDir() && s.fileID(sfi) != t.ino {
		s.log.Debug("not copying attributes: the store holds another file there now", "path", t.path, "inode", s.fileID(sfi), "want", t.ino)
		return nil, false
	}
	return sfi, true
}

// copyAllAttrs copies the store's attributes of targets to the worker
// (setAttrs), in one round trip where the transport can (AttrSetter): the
// end of every batch. Symlinks go one by one.
func (s *Shipper) copyAllAttrs(ctx context.Context, targets []attrTarget, lost map[string]int64) error {
	now := time.Now().UnixNano()
	as, ok := unwrap(s.t).(AttrSetter)
	if !ok {
		for _, t := range targets {
			if sfi, ok := s.attrSource(t, lost, now); ok {
				if err := s.setAttrs(ctx, t.path, sfi, nil); err != nil {
					return err
				}
			}
		}
		return nil
	}
	var items []AttrItem
	for _, t := range targets {
		sfi, ok := s.attrSource(t, lost, now)
		switch {
		case !ok:
		case sfi.Mode()&fs.ModeSymlink != 0:
			if err := s.setAttrs(ctx, t.path, sfi, nil); err != nil {
				return err
			}
		default:
			items = append(items, AttrItem{Path: t.path, Dir: sfi.IsDir(), Attrs: s.fileAttrs(sfi)})
		}
	}
	if len(items) == 0 {
		return nil
	}
	res, err := as.SetAttrs(ctx, items)
	if err != nil {
		return s.errf(items[0].Path, fmt.Errorf("setting the attributes of %d entries: %w", len(items), err))
	}
	for i, r := range res {
		p := items[i].Path
		if errors.Is(r.Err, ErrOwner) {
			s.ownerRefused(p, r.Err)
		} else if r.Err != nil {
			return s.errf(p, fmt.Errorf("set attributes: %w", r.Err))
		}
		if r.Found {
			if err := s.syncXattrsAt(ctx, p, false); err != nil {
				return err
			}
		}
	}
	return nil
}

// applyStep applies one namespace step. When the step cannot be applied
// as is, the worker's state decides: already done is fine; a path whose
// state is unknown is added to refresh (converged from the store after the
// steps). suspect marks a step that may already have been applied (replay
// after a restart, a failure or a full copy): renames and links are then
// followed by a refresh of both paths, because the worker's source may be
// a newer file that took the old name.
func (s *Shipper) applyStep(ctx context.Context, st step, suspect bool, refresh map[string]bool) error {
	t := s.t
	switch st.Kind {
	case stepSkip:
		lvl := slog.LevelDebug
		if st.Notice {
			lvl = slog.LevelInfo
		}
		s.log.Log(ctx, lvl, "not replicated", "op", st.Seq, "path", st.Path, "reason", st.Reason)
		return nil

	case stepMkdir:
		err := t.Mkdir(ctx, st.Path, 0o700)
		if err == nil {
			return nil
		}
		wfi, lerr := s.wlstat(ctx, st.Path)
		switch {
		case lerr != nil:
			return lerr
		case wfi != nil && wfi.IsDir():
			return nil // re-applied
		default:
			refresh[st.Path] = true
			return nil
		}

	case stepRmdir, stepUnlink, stepRemoveAll:
		if st.SrcFree && !suspect {
			return nil // a name the worker never got: nothing to remove
		}
		var err error
		switch st.Kind {
		case stepRmdir:
			err = t.Rmdir(ctx, st.Path)
		case stepUnlink:
			err = t.Remove(ctx, st.Path)
		default:
			return s.removeAll(ctx, st.Path)
		}
		if err == nil {
			return nil
		}
		wfi, lerr := s.wlstat(ctx, st.Path)
		if lerr != nil || wfi == nil {
			return lerr // missing: re-applied, or never shipped
		}
		s.log.Info("worker has content the store did not: removing it", "op", st.Kind.String(), "path", st.Path)
		return s.removeAll(ctx, st.Path)

	case stepSymlink:
		return s.putSymlink(ctx, st.Path, st.Target)

	case stepRename:
		return s.applyRename(ctx, st, suspect, refresh)

	case stepExchange:
		return s.applyExchange(ctx, st, suspect, refresh)

	case stepLink:
		tmp := joinPath(parentDir(st.NewPath), TempName())
		if err := t.Link(ctx, st.Path, tmp); err != nil {
			src, lerr := s.wlstat(ctx, st.Path)
			if lerr != nil {
				return lerr
			}
			if src == nil && st.SrcPending {
				return nil // the source's data ships later and is linked then
			}
			if src == nil {
				dst, lerr := s.wlstat(ctx, st.NewPath)
				if lerr != nil {
					return lerr
				}
				if dst == nil {
					refresh[st.NewPath] = true
				}
				return nil
			}
			refresh[st.NewPath] = true
			return nil
		}
		if err := s.replaceWith(ctx, tmp, st.NewPath); err != nil {
			return err
		}
		if suspect {
			refresh[st.NewPath] = true
		}
		return nil
	}
	return fmt.Errorf("%s: unknown plan step %d", s.opts.Name, st.Kind)
}

func (s *Shipper) applyRename(ctx context.Context, st step, suspect bool, refresh map[string]bool) error {
	if st.SrcFree && !suspect {
		// A name the worker never got: the file's data ships at its final
		// name, replacing the destination atomically then.
		return nil
	}
	err := s.t.Rename(ctx, st.Path, st.NewPath)
	if err == nil {
		if suspect {
			refresh[st.Path] = true
			refresh[st.NewPath] = true
		}
		return nil
	}
	src, lerr := s.wlstat(ctx, st.Path)
	if lerr != nil {
		return lerr
	}
	if src == nil {
		if st.SrcPending {
			return nil // created in this plan: its data ships at the new name
		}
		dst, lerr := s.wlstat(ctx, st.NewPath)
		if lerr != nil {
			return lerr
		}
		if dst != nil && suspect {
			// Most likely applied before: the worker's destination is the
			// store's when a cheap look says so; else converge it.
			same, err := s.looksLikeStore(ctx, st.NewPath, dst)
			if err != nil {
				return err
			}
			if !same {
				refresh[st.NewPath] = true
			}
			return nil // re-applied
		}
		// The worker lacks the source: a destination it has is its old
		// one (it lost the source behind mirrorfs's back). Converge the
		// destination from the store either way.
		refresh[st.NewPath] = true
		return nil
	}
	// The source is there: the destination is in the way (a non-empty
	// directory, or another type). The store is the truth.
	s.log.Info("rename blocked on the worker; converging both paths from the store", "from", st.Path, "to", st.NewPath, "err", err)
	refresh[st.Path] = true
	refresh[st.NewPath] = true
	return nil
}

// looksLikeStore is a cheap check that the worker's entry wfi at p is the
// store's: a regular file of the same size and mtime (at the grain the
// transport keeps: seconds over SFTP v3, nanoseconds over the agent, as
// the comparison's quick check), or a symlink with the same target. Directories are
// never taken as equal: a refresh compares their entries, and neither are
// files with hard links, whose group a size and an mtime cannot vouch for
// (a refresh links them again).
func (s *Shipper) looksLikeStore(ctx context.Context, p string, wfi *FileInfo) (bool, error) {
	sfi, err := s.storeLstat(p)
	if err != nil {
		return false, nil
	}
	switch {
	case sfi.Mode().IsRegular() && wfi.Mode.IsRegular():
		_, nanos := s.linkAttrs()
		return nlink(sfi) < 2 && sfi.Size() == wfi.Size && sameMtime(sfi.ModTime(), wfi.Mtime, nanos), nil
	case sfi.Mode()&fs.ModeSymlink != 0 && wfi.Mode&fs.ModeSymlink != 0:
		target, err := s.store.Readlink(p)
		if err != nil {
			return false, nil
		}
		cur, err := s.t.Readlink(ctx, p)
		return err == nil && cur == target, nil
	}
	return false, nil
}

// applyExchange swaps two paths. No transport has an atomic exchange (SFTP
// v3 has none, nor has the agent's protocol): it is three renames through
// a temp name, tolerant of a missing side.
func (s *Shipper) applyExchange(ctx context.Context, st step, suspect bool, refresh map[string]bool) error {
	a, b := st.Path, st.NewPath
	wa, err := s.wlstat(ctx, a)
	if err != nil {
		return err
	}
	wb, err := s.wlstat(ctx, b)
	if err != nil {
		return err
	}
	if wa == nil && !st.SrcPending || wb == nil && !st.DstPending || suspect {
		refresh[a], refresh[b] = true, true
	}
	tmp := joinPath(parentDir(a), TempName())
	if wa != nil {
		if err := s.t.Rename(ctx, a, tmp); err != nil {
			return s.errf(a, fmt.Errorf("exchange: %w", err))
		}
	}
	if wb != nil {
		err := s.t.Rename(ctx, b, a)
		if wa == nil && (errors.Is(err, ErrSymlink) || errors.Is(err, fs.ErrNotExist)) {
			// a has no place in the worker's tree (a replay after the
			// tree moved on): it is below a directory the worker no
			// longer has, or one that became a symlink (a deploy's
			// `ln -s`). Both names converge from the store instead of
			// failing every retry the same way.
			refresh[a], refresh[b] = true, true
			return nil
		}
		if err != nil {
			return s.errf(b, fmt.Errorf("exchange: %w", err))
		}
	}
	if wa != nil {
		// Should b's directory be gone (a replay), the batch fails once:
		// the retry finds a gone and converges both names.
		if err := s.t.Rename(ctx, tmp, b); err != nil {
			return s.errf(b, fmt.Errorf("exchange: %w", err))
		}
	}
	return nil
}

// loneKeepMax bounds the size of a lone file that askKeep sends to a
// SmallWriter instead of asking about it: one page, whose bytes cost less
// than a round trip on a LAN. Larger files are asked about first, so that a
// deploy rewriting unchanged files (one at a time, each batch alone) sends
// hashes, not content (TestUnchangedResaveSendsAlmostNothing: 8 KiB pages).
const loneKeepMax = 4 << 10

// keepMaxSize bounds the files keepUnchanged checks: larger ones go by
// ranges or signature delta, which find unchanged content themselves.
const keepMaxSize = 64 << 10

// keepUnchanged finds, among the small files the plan ships whose worker
// copy may exist (not a name the worker certainly lacks), those whose
// content the worker has already (a rewrite or a save-by-rename with the
// same bytes): the transport (Keeper) checks their SHA-256s in one round
// trip and gives them their new attributes. It returns the names kept,
// whose identities need no data. Files with user.* xattrs in the store, hard links
// and files open for writing go the usual way.
func (s *Shipper) keepUnchanged(ctx context.Context, plan *Plan) (map[string]bool, error) {
	k, ok := unwrap(s.t).(Keeper)
	if !ok {
		return nil, nil
	}
	var cands []keepCand
	for _, id := range plan.Ship {
		if len(id.Names) != 1 || id.Free[id.Names[0]] || s.openForWrite(id.ID) {
			continue
		}
		cands = append(cands, keepCand{path: id.Names[0], ino: id.ID, size: -1})
	}
	return s.keepFiles(ctx, k, cands)
}

// keepCand is a store file Keeper may keep: its path, inode and size (-1
// when not looked at yet).
type keepCand struct {
	path string
	ino  uint64
	size int64
}

// keepFiles hashes the store files cands and asks the worker which of them
// it has already (askKeep). A lone small file is not even read: it goes
// whole in one request anyway (see loneWhole).
func (s *Shipper) keepFiles(ctx context.Context, k Keeper, cands []keepCand) (map[string]bool, error) {
	if len(cands) == 1 {
		c := cands[0]
		if c.size < 0 {
			if fi, err := s.storeLstat(c.path); err == nil {
				c.size = fi.Size()
			}
		}
		if c.size >= 0 && s.loneWhole(c.size) {
			return nil, nil
		}
	}
	var items []KeepItem
	for _, c := range cands {
		if it, ok := s.keepItem(c.path, c.ino); ok {
			items = append(items, it)
		}
	}
	return s.askKeep(ctx, k, items)
}

// loneWhole reports whether a file of size bytes, alone in its batch (an
// editor's save), goes in one request that the worker skips if it has the
// content (SmallWriter), rather than being offered first (Keeper): asking
// first would cost a round trip more when it has not, as it mostly has not.
func (s *Shipper) loneWhole(size int64) bool {
	_, ok := unwrap(s.t).(SmallWriter)
	return ok && size <= loneKeepMax
}

// askKeep asks the worker which of items it has already (Keeper) and
// returns their paths.
func (s *Shipper) askKeep(ctx context.Context, k Keeper, items []KeepItem) (map[string]bool, error) {
	if len(items) == 0 {
		return nil, nil
	}
	if len(items) == 1 && s.loneWhole(items[0].Size) {
		return nil, nil // one left of several candidates
	}
	same, err := k.KeepIfSame(ctx, items)
	if err != nil {
		return nil, s.errf(items[0].Path, fmt.Errorf("comparing %d file(s) with the worker's: %w", len(items), err))
	}
	kept := map[string]bool{}
	for i, ok := range same {
		if ok {
			kept[items[i].Path] = true
		}
	}
	s.log.Debug("kept unchanged", "files", len(kept), "of", len(items))
	return kept, nil
}

// keepRefreshed is keepUnchanged for paths to refresh (a file moved in
// from an excluded name, as a save-by-rename through an excluded temp file
// is): small regular files whose content the worker has need no data. It
// returns the paths kept.
func (s *Shipper) keepRefreshed(ctx context.Context, sy *syncer, paths []string) (map[string]bool, error) {
	k, ok := unwrap(s.t).(Keeper)
	if !ok {
		return nil, nil
	}
	var cands []keepCand
	for _, p := range paths {
		if sy.skip[p] || p == "" {
			continue
		}
		sfi, err := s.storeLstat(p)
		if err != nil || !sfi.Mode().IsRegular() || sfi.Size() > keepMaxSize || s.excl.Excluded(p, false) || s.openForWrite(s.fileID(sfi)) {
			continue
		}
		cands = append(cands, keepCand{path: p, ino: s.fileID(sfi), size: sfi.Size()})
	}
	return s.keepFiles(ctx, k, cands)
}

// keepItem describes the store file p (inode ino) for Keeper, reading it
// for its hash; ok is false for anything keepUnchanged leaves alone.
func (s *Shipper) keepItem(p string, ino uint64) (KeepItem, bool) {
	f, fi, ok := s.openLoneFile(p, ino, keepMaxSize)
	if !ok {
		return KeepItem{}, false
	}
	defer f.Close()
	h := sha256.New()
	if n, err := io.Copy(h, f); err != nil || n != fi.Size() {
		return KeepItem{}, false
	}
	if after, err := f.Stat(); err != nil || !sameVersion(fi, after) {
		return KeepItem{}, false // changing: its next op ships it
	}
	return KeepItem{Path: p, Size: fi.Size(), Hash: h.Sum(nil), Attrs: s.fileAttrs(fi)}, true
}

// sendSmallFiles sends, in one batch of requests (SmallWriter), the small
// files of the plan that need nothing but their content and attributes: one
// name in the store and on the worker's side, not open for writing, no
// holes, no xattrs. A deploy of many pages then costs one round trip, not
// one per page. It returns the names sent. The others, and those whose
// request failed (a worker that drifted: a missing parent, a directory in
// the way), go the usual way, file by file, which mends the worker.
func (s *Shipper) sendSmallFiles(ctx context.Context, plan *Plan, kept map[string]bool) (map[string]bool, error) {
	sw, ok := unwrap(s.t).(SmallWriter)
	if !ok {
		return nil, nil
	}
	var ids []*ident
	for _, id := range plan.Ship {
		if len(id.Names) == 1 && !kept[id.Names[0]] && !s.openForWrite(id.ID) && !s.excl.Excluded(id.Names[0], false) {
			ids = append(ids, id)
		}
	}
	if len(ids) < 2 {
		return nil, nil // one file goes the usual way, in one request too
	}
	sent := map[string]bool{}
	var files []SmallFile
	size := 0
	flush := func() error {
		if len(files) == 0 {
			return nil
		}
		res, err := s.writeSmallFiles(ctx, sw, files)
		if err != nil {
			return s.errf(files[0].Path, fmt.Errorf("writing %d small files: %w", len(files), err))
		}
		for i, r := range res {
			p := files[i].Path
			switch {
			case r.Err == nil:
			case errors.Is(r.Err, ErrOwner):
				s.ownerRefused(p, r.Err)
			default:
				s.log.Debug("small file not sent with the others, sending it alone", "path", p, "err", r.Err)
				continue
			}
			sent[p] = true
			s.log.Debug("shipped", "path", p, "bytes", len(files[i].Data), "kept", r.Kept)
		}
		files, size = files[:0], 0
		return nil
	}
	for _, id := range ids {
		f, ok := s.smallFile(id.Names[0], id.ID)
		if !ok {
			continue
		}
		files = append(files, f)
		size += len(f.Data)
		// Bounded memory: a batch of 50,000 pages is read and sent
		// a few MiB at a time.
		if size >= smallChunk {
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return sent, nil
}

// smallChunk is how much small files' content sendSmallFiles reads before
// it sends it.
const smallChunk = 4 << 20

// openLoneFile opens the store file p for keepItem and smallFile: a
// regular file that is inode ino, of at most max bytes, with one name and no
// xattrs; ok is false for anything else, which goes the usual way.
func (s *Shipper) openLoneFile(p string, ino uint64, max int64) (*os.File, fs.FileInfo, bool) {
	f, err := s.store.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, nil, false
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || s.fileID(fi) != ino || fi.Size() > max || nlink(fi) != 1 {
		f.Close()
		return nil, nil, false
	}
	if x, err := storeXattrs(f); err != nil || len(x) > 0 {
		f.Close()
		return nil, nil, false
	}
	return f, fi, true
}

// fileAttrs are the attributes the worker's copy of the store file fi gets.
func (s *Shipper) fileAttrs(fi fs.FileInfo) Attrs {
	a := Attrs{Perm: permBits(fi.Mode()), UID: -1, GID: -1, Mtime: fi.ModTime(), Atime: atime(fi)}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && !s.chownOff {
		a.UID, a.GID = int(st.Uid), int(st.Gid)
	}
	return a
}

// smallFile reads the store file p, which must be inode ino, for
// sendSmallFiles; ok is false for anything it leaves to shipIdent.
func (s *Shipper) smallFile(p string, ino uint64) (SmallFile, bool) {
	f, fi, ok := s.openLoneFile(p, ino, SmallMax)
	if !ok {
		return SmallFile{}, false
	}
	defer f.Close()
	if !isDense(f, fi) {
		return SmallFile{}, false // holes: the usual way keeps them
	}
	data, err := io.ReadAll(&storeReader{f: f, before: fi})
	if err != nil {
		return SmallFile{}, false // changing: its next op ships it
	}
	return SmallFile{Path: p, Data: data, Attrs: s.fileAttrs(fi)}, true
}

// shipIdent sends the data of one identity to its primary name, then makes
// its other names hard links to it again.
func (s *Shipper) shipIdent(ctx context.Context, plan *Plan, id *ident) error {
	primary, ok := s.locate(id)
	if !ok {
		s.unresolved(plan, id, "its store file moved before it could be sent")
		return nil
	}
	if s.openForWrite(id.ID) && id.heldFor(time.Now()) < s.opts.HoldOpen {
		// A writer opened the file again since the Close this plan saw
		// (a rewrite with O_TRUNC, say): the store holds a version in the
		// making. Its next Close ships it.
		s.holdOpen(plan, id)
		return nil
	}
	err := s.shipFile(ctx, primary, id.ID, id.Names, id.Born, id)
	if errors.Is(err, errNotIdentity) || errors.Is(err, errSourceChanged) {
		s.unresolved(plan, id, err.Error())
		return nil
	}
	return err
}

// shipFile sends the store file at primary, which must be inode ino, and
// makes its other names hard links to it. names are the names the journal
// told; unless complete, names of older links are looked up in the store.
// changes is the identity the journal told of, if any (see sendFile).
func (s *Shipper) shipFile(ctx context.Context, primary string, ino uint64, names []string, complete bool, changes *ident) error {
	// Linked before the send: should the store replace the primary
	// during it, the file's other names are still to be found below.
	bfi, err := s.storeLstat(primary)
	linkedBefore := err == nil && s.fileID(bfi) == ino && nlink(bfi) >= 2
	n, err := s.sendFile(ctx, primary, ino, changes)
	if err != nil {
		return err
	}
	s.log.Debug("shipped", "path", primary, "bytes", n)
	// Every name the journal told that still holds the file in the store
	// becomes a link to the new copy, whatever the primary's link count
	// is by now: git links tmp_obj_X to its object name and unlinks
	// tmp_obj_X right away, and if that unlink lands between the send
	// and this lstat, the object name must still be linked before the
	// unlink reaches the worker.
	sfi, err := s.storeLstat(primary)
	replaced := err != nil || s.fileID(sfi) != ino
	search := !complete && (replaced && linkedBefore || !replaced && nlink(sfi) >= 2 && uint64(len(names)) < nlink(sfi))
	if replaced && len(names) < 2 && !search {
		return nil
	}
	names = slices.Clone(names)
	told := len(names) // the rest are found in the store
	if search {
		more, err := s.findLinks(ctx, ino)
		if err != nil {
			return s.errf(primary, fmt.Errorf("finding hard links: %w", err))
		}
		for _, m := range more {
			if !slices.Contains(names, m) {
				names = append(names, m)
				// The store may show a link whose op is not journaled yet.
				s.storeAhead()
			}
		}
	}
	for i, other := range names {
		if other == primary || s.excl.Excluded(other, false) {
			continue
		}
		ofi, err := s.storeLstat(other)
		moved := err != nil || !ofi.Mode().IsRegular() || s.fileID(ofi) != ino
		if moved && i >= told {
			continue // found in the store, and gone again
		}
		// A name the journal gave the file is linked even when the store
		// has moved or removed it since: the op that did so follows, and
		// expects the worker to have the name as the journal left it
		// (cp -a links a temp name, then renames it over the old link).
		err = s.relink(ctx, primary, other)
		switch {
		case err == nil:
		case moved:
			s.log.Debug("name moved in the store, not linked", "path", other, "err", err)
		case !errors.Is(err, fs.ErrPermission):
			return err
		default:
			// Without hard links on the worker, send a copy.
			if _, err := s.sendFile(ctx, other, ino, nil); err != nil && !errors.Is(err, errNotIdentity) && !errors.Is(err, errSourceChanged) {
				return err
			}
		}
	}
	return nil
}
