package replicate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrorfs/mirrorfs/delta"
)

// errSourceChanged: a store file changed while it was being sent.
var errSourceChanged = errors.New("store file changed while it was being sent")

// syncer converges worker paths with the store: the full copy ("" is the
// whole tree) and the fallback for paths whose state on the worker is
// unknown ("refresh"). Regular files identical by type, size and mtime (in
// seconds: SFTP v3 carries no more) are not sent again.
type syncer struct {
	s     *Shipper
	skip  map[string]bool   // names left alone: their data ships separately or is held
	links map[uint64]string // inode -> worker path already written (hard-link groups)
	// held are regular files skipped because a writer has them open
	// (inode -> a store name): see holdSkipped.
	held map[uint64]string
	// changed are regular files that kept changing while they were sent
	// (inode -> a store name): the worker may lack them (see sendSettled).
	changed map[uint64]string
	files   int64
	bytes   int64
}

// sendAttempts is how many times a copy or a refresh sends a store file
// that changes while it is being sent.
const sendAttempts = 3

func (s *Shipper) newSyncer(skip map[string]bool) *syncer {
	return &syncer{s: s, skip: skip, links: map[uint64]string{}, held: map[uint64]string{}, changed: map[uint64]string{}}
}

// sendSettled sends the store file p (inode ino) like sendFile, again
// while it changes during the send (up to sendAttempts times).
//
// A file that changed during its send cannot be left to the journal: the
// change may be one that ships no data — a chmod, chown or utimes, a hard
// link made or removed (they all change the ctime) — so the worker would
// keep lacking the file, or keep an older version of it. Its content is
// usually settled by the next attempt.
func (s *Shipper) sendSettled(ctx context.Context, p string, ino uint64) (int64, error) {
	for i := 1; ; i++ {
		n, err := s.sendFile(ctx, p, ino, nil)
		if !errors.Is(err, errSourceChanged) || i >= sendAttempts || ctx.Err() != nil {
			return n, err
		}
		s.log.Debug("sending again a file that changed while it was sent", "path", p)
	}
}

// changedErr reports the files that kept changing while the copy sent
// them (nil if none): the copy is not complete.
func (sy *syncer) changedErr() error {
	if len(sy.changed) == 0 {
		return nil
	}
	names := slices.Sorted(maps.Values(sy.changed))
	return fmt.Errorf("%s: %d file(s) kept changing while they were sent, e.g. %s: %w", sy.s.opts.Name, len(names), names[0], errSourceChanged)
}

// openForWrite reports whether the store file ino, at p, is open for
// writing, and then notes it as held: its content may be half written, and
// the journal will tell when it is not (a Close) — unlike the journal's
// data ops, a copy reads files outside the close-to-open rule.
func (sy *syncer) openForWrite(p string, ino uint64) bool {
	if !sy.s.openForWrite(ino) {
		return false
	}
	if _, ok := sy.held[ino]; !ok {
		sy.held[ino] = p
	}
	sy.s.log.Debug("not copying a file open for writing; it ships after its writer closes it", "path", p)
	return true
}

// holdSkipped adds the files skipped because they were open for writing
// to carry, as identities with unshipped data and an open writer: they
// ship when a Close of the file is folded in (or once HoldOpen passed).
// They do not pin the durable cursor (their writes, if any, were
// journaled before the copy's start); data ops journaled for them later
// do. Identities carry already has are left as they are.
func (sy *syncer) holdSkipped(carry map[uint64]*ident) {
	now := time.Now()
	for ino, p := range sy.held {
		if _, ok := carry[ino]; ok {
			continue
		}
		carry[ino] = &ident{ID: ino, Names: []string{p}, Dirty: true, Open: true, FirstTime: now.UnixNano(), seen: now}
	}
}

func (s *Shipper) errf(p string, err error) error {
	return fmt.Errorf("%s: %s: %w", s.opts.Name, p, err)
}

// storeLstat is Lstat in the store, "" being its root.
func (s *Shipper) storeLstat(p string) (fs.FileInfo, error) {
	return s.store.Lstat(rootName(p))
}

// storeEntry is storeLstat for a path an op named, which the store may
// since have put below a symlink: os.Root follows a symlink in a parent
// (one that stays inside the root), so once current became a symlink to
// releases/2, storeLstat("current/x") describes releases/2/x. Such a path
// is no entry of the store's tree; it is missing (fs.ErrNotExist), as on
// the worker (see wlstat). Converging it from releases/2/x wrote it on the
// worker, replacing the worker's symlink current by a directory. Each
// parent is looked at from the root down, so the first symlink is seen
// itself, not followed.
func (s *Shipper) storeEntry(p string) (fs.FileInfo, error) {
	for i := 0; i < len(p); i++ {
		if p[i] != '/' {
			continue
		}
		fi, err := s.store.Lstat(p[:i])
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			return nil, &fs.PathError{Op: "lstat", Path: p, Err: fs.ErrNotExist}
		}
	}
	return s.storeLstat(p)
}

// wlstat is the worker's Lstat; missing is (nil, nil).
//
// A path below a symlink on the worker is missing too: Lstat refuses it
// with ErrSymlink (a parent that is a symlink; the final component is
// never followed), and it names no entry of the worker's tree, which ends
// at the symlink — as a path below a regular file does (ENOENT). The
// symlink is the worker's entry, and its own path's ops handle it. Without
// this, an op re-applied after a deploy's `rm -rf current; ln -s
// releases/2 current` reached the worker (unlink current/index.html)
// failed on every retry, and that worker got no update any more. Nothing
// is followed: every request under the symlink is still refused.
func (s *Shipper) wlstat(ctx context.Context, p string) (*FileInfo, error) {
	fi, err := s.t.Lstat(ctx, p)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrSymlink) {
		return nil, nil
	}
	if err != nil {
		return nil, s.errf(p, err)
	}
	return &fi, nil
}

// syncPath makes the worker's p (and everything under it) equal to the
// store's, leaving excluded and skipped paths alone.
func (sy *syncer) syncPath(ctx context.Context, p string) error {
	s := sy.s
	if sy.skip[p] {
		return nil
	}
	sfi, err := s.storeEntry(p)
	if errors.Is(err, fs.ErrNotExist) && p != "" {
		wfi, err := s.wlstat(ctx, p)
		if err != nil || wfi == nil || s.excl.Excluded(p, wfi.IsDir()) {
			return err
		}
		return s.removeAll(ctx, p)
	}
	if err != nil {
		return s.errf(p, fmt.Errorf("store: %w", err))
	}
	if s.excl.Excluded(p, sfi.IsDir()) {
		return nil
	}
	if sfi.Mode().IsRegular() {
		ino := s.fileID(sfi)
		if sy.openForWrite(p, ino) {
			return nil
		}
		// A file refreshed by itself is always sent: the worker's copy
		// may be another file of the same size and mtime. It is sent
		// without a look at the worker first, which would cost a round
		// trip per path component on every save: when a parent is
		// missing or a directory is in the way, the send fails and
		// sendFile mends that and sends again.
		var err error
		for i := 1; ; i++ {
			err = s.shipFile(ctx, p, ino, []string{p}, false, nil)
			if !errors.Is(err, errSourceChanged) || i >= sendAttempts || ctx.Err() != nil {
				break
			}
		}
		if errors.Is(err, errNotIdentity) || errors.Is(err, errSourceChanged) {
			s.log.Debug("not refreshing a file that changes", "path", p, "err", err)
			return nil
		}
		return err
	}
	if err := s.ensureParents(ctx, p); err != nil {
		return err
	}
	wfi, err := s.wlstat(ctx, p)
	if err != nil {
		return err
	}
	return sy.syncEntry(ctx, p, sfi, wfi)
}

// syncEntry makes the worker's p equal to the store entry sfi; wfi is the
// worker's entry (nil when missing).
func (sy *syncer) syncEntry(ctx context.Context, p string, sfi fs.FileInfo, wfi *FileInfo) error {
	s := sy.s
	if err := ctx.Err(); err != nil {
		return err
	}
	switch mode := sfi.Mode(); {
	case mode.IsDir():
		if wfi != nil && !wfi.IsDir() {
			if err := s.removeAll(ctx, p); err != nil {
				return err
			}
			wfi = nil
		}
		if wfi == nil {
			if err := s.t.Mkdir(ctx, p, 0o700); err != nil {
				return s.errf(p, err)
			}
		}
		if err := sy.syncDir(ctx, p); err != nil {
			return err
		}
		// Look again: changing the children changed the directory's mtime.
		return s.setAttrs(ctx, p, sfi, nil)

	case mode.IsRegular():
		ino := s.fileID(sfi)
		if sy.openForWrite(p, ino) {
			return nil // what the worker has at p stays until the file ships
		}
		if first, ok := sy.links[ino]; ok && nlink(sfi) > 1 {
			return s.relink(ctx, first, p)
		}
		// The quick check, as rsync's: same size and mtime is the same
		// file. At the grain the transport keeps: a file saved twice
		// within one second, same size, differs only in nanoseconds, and
		// setAttrs below would then give the old content the new mtime,
		// hiding it from every later comparison.
		_, nanos := s.linkAttrs()
		// A worker file linked to other names where the store's has none
		// is sent anew (a temp file renamed over it splits it off): kept,
		// a mode or owner set on one name would change the others.
		joined := wfi != nil && wfi.Nlink > 1 && nlink(sfi) < 2
		if wfi != nil && wfi.Mode.IsRegular() && !joined && !s.forceSend[ino] && wfi.Size == sfi.Size() && sameMtime(sfi.ModTime(), wfi.Mtime, nanos) {
			sy.links[ino] = p
			return s.setAttrs(ctx, p, sfi, wfi)
		}
		if wfi != nil && wfi.IsDir() {
			if err := s.removeAll(ctx, p); err != nil {
				return err
			}
		}
		n, err := s.sendSettled(ctx, p, ino)
		if errors.Is(err, errNotIdentity) {
			// Renamed or removed since it was listed: the op that did
			// it follows in the journal.
			s.log.Debug("skipping a file replaced during the copy", "path", p)
			return nil
		}
		if errors.Is(err, errSourceChanged) {
			// Still changing: the worker may lack it, and the journal
			// need not ship it (see sendSettled). The copy goes on,
			// then fails and is done again.
			s.log.Debug("a file keeps changing during the copy", "path", p)
			sy.changed[ino] = p
			return nil
		}
		if err != nil {
			return err
		}
		sy.links[ino] = p
		sy.files++
		sy.bytes += n
		return nil

	case mode&fs.ModeSymlink != 0:
		target, err := s.store.Readlink(p)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.EINVAL) {
			// The store moved ahead since the entry was listed: the
			// symlink was removed, or replaced by another kind of
			// file. The op that did it follows in the journal.
			return nil
		}
		if err != nil {
			return s.errf(p, fmt.Errorf("store: %w", err))
		}
		if wfi != nil && wfi.Mode&fs.ModeSymlink != 0 {
			if cur, err := s.t.Readlink(ctx, p); err == nil && cur == target {
				// The same link: its owner and mtime may still differ
				// (transports that set them; setAttrs says which).
				return s.setAttrs(ctx, p, sfi, wfi)
			}
		}
		return s.putSymlink(ctx, p, target)

	default:
		s.log.Debug("not replicating a special file", "path", p, "mode", mode.String())
		return nil
	}
}

// syncDir converges the children of the directory p.
func (sy *syncer) syncDir(ctx context.Context, p string) error {
	s := sy.s
	sents, err := s.storeReadDir(p)
	if err != nil {
		return s.errf(p, fmt.Errorf("store: %w", err))
	}
	wlist, err := s.t.ReadDir(ctx, p)
	if err != nil {
		return s.errf(p, err)
	}
	wents := make(map[string]*FileInfo, len(wlist))
	for i := range wlist {
		wents[wlist[i].Name] = &wlist[i]
	}
	seen := make(map[string]bool, len(sents))
	for _, sfi := range sents {
		name := sfi.Name()
		seen[name] = true
		child := joinPath(p, name)
		if sy.skip[child] || s.excl.Excluded(child, sfi.IsDir()) {
			continue
		}
		if err := sy.syncEntry(ctx, child, sfi, wents[name]); err != nil {
			return err
		}
	}
	for _, name := range slices.Sorted(mapKeys(wents)) {
		if seen[name] {
			continue
		}
		child := joinPath(p, name)
		w := wents[name]
		if !strings.HasPrefix(name, TempPrefix) && (sy.skip[child] || s.excl.Excluded(child, w.IsDir())) {
			continue
		}
		if err := s.removeAll(ctx, child); err != nil {
			return err
		}
	}
	return nil
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// storeReadDir lists a store directory with lstat information, sorted.
func (s *Shipper) storeReadDir(p string) ([]fs.FileInfo, error) {
	return ReadRootDir(s.store, p)
}

// ReadRootDir lists directory p ("" for the root) below root with lstat
// information, sorted by name; entries removed meanwhile are left out.
func ReadRootDir(root *os.Root, p string) ([]fs.FileInfo, error) {
	d, err := root.Open(rootName(p))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	ents, err := d.ReadDir(-1)
	if err != nil {
		return nil, err
	}
	out := make([]fs.FileInfo, 0, len(ents))
	for _, e := range ents {
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, fi)
	}
	slices.SortFunc(out, func(a, b fs.FileInfo) int { return strings.Compare(a.Name(), b.Name()) })
	return out, nil
}

// removeAll removes p on the worker, recursively; missing is fine.
func (s *Shipper) removeAll(ctx context.Context, p string) error {
	if p == "" {
		return fmt.Errorf("%s: refusing to remove the worker root", s.opts.Name)
	}
	wfi, err := s.wlstat(ctx, p)
	if err != nil || wfi == nil {
		return err
	}
	if !wfi.IsDir() {
		if err := s.t.Remove(ctx, p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return s.errf(p, err)
		}
		return nil
	}
	ents, err := s.t.ReadDir(ctx, p)
	if err != nil {
		return s.errf(p, err)
	}
	for _, e := range ents {
		if err := s.removeAll(ctx, joinPath(p, e.Name)); err != nil {
			return err
		}
	}
	if err := s.t.Rmdir(ctx, p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return s.errf(p, err)
	}
	return nil
}

// ensureParents creates missing ancestors of p on the worker (drift), with
// the store's attributes, and replaces non-directories in the way.
func (s *Shipper) ensureParents(ctx context.Context, p string) error {
	for i := 0; i < len(p); i++ {
		if p[i] != '/' {
			continue
		}
		d := p[:i]
		wfi, err := s.wlstat(ctx, d)
		if err != nil {
			return err
		}
		if wfi != nil && wfi.IsDir() {
			continue
		}
		if wfi != nil {
			if err := s.removeAll(ctx, d); err != nil {
				return err
			}
		}
		s.log.Info("creating a directory missing on the worker", "path", d)
		if err := s.t.Mkdir(ctx, d, 0o700); err != nil {
			return s.errf(d, err)
		}
		if sfi, err := s.storeLstat(d); err == nil && sfi.IsDir() {
			if err := s.setAttrs(ctx, d, sfi, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// setAttrs copies mode, owner and mtime of the store entry sfi to the
// worker's p where they differ; wfi is the worker's entry if known.
// Symlinks are left alone: SFTP's setstat follows them.
func (s *Shipper) setAttrs(ctx context.Context, p string, sfi fs.FileInfo, wfi *FileInfo) error {
	la, linkAttrs := s.linkAttrs()
	if sfi.Mode()&fs.ModeSymlink != 0 && !linkAttrs {
		return nil // SFTP's setstat would follow the link
	}
	if wfi == nil {
		var err error
		if wfi, err = s.wlstat(ctx, p); err != nil || wfi == nil {
			return err
		}
	}
	if sfi.Mode()&fs.ModeSymlink != 0 {
		if wfi.Mode&fs.ModeSymlink == 0 {
			return nil
		}
		return s.setLinkAttrs(ctx, la, p, sfi, wfi)
	}
	if wfi.Mode&fs.ModeSymlink != 0 || wfi.IsDir() != sfi.IsDir() {
		return nil
	}
	// The owner goes first: a chown clears a file's setuid and setgid
	// bits, which the chmod after it sets again.
	chowned := false
	if st, ok := sfi.Sys().(*syscall.Stat_t); ok && !s.chownOff && (st.Uid != wfi.UID || st.Gid != wfi.GID) {
		if err := s.t.Chown(ctx, p, int(st.Uid), int(st.Gid)); err != nil {
			if !errors.Is(err, fs.ErrPermission) {
				return s.errf(p, fmt.Errorf("chown: %w", err))
			}
			s.ownerRefused(p, err)
		} else {
			chowned = true
		}
	}
	if perm := permBits(sfi.Mode()); chowned || permBits(wfi.Mode) != perm {
		if err := s.t.Chmod(ctx, p, perm); err != nil {
			return s.errf(p, fmt.Errorf("chmod: %w", err))
		}
	}
	if mt := sfi.ModTime(); !sameMtime(mt, wfi.Mtime, linkAttrs) {
		if err := s.t.Chtimes(ctx, p, atime(sfi), mt); err != nil {
			return s.errf(p, fmt.Errorf("chtimes: %w", err))
		}
	}
	return s.syncXattrsAt(ctx, p, false)
}

// sameMtime compares mtimes at the grain the transport keeps: SFTP v3
// carries whole seconds, a transport with LinkAttrs nanoseconds.
func sameMtime(store, worker time.Time, nanos bool) bool {
	if nanos {
		return store.Equal(worker)
	}
	return store.Unix() == worker.Unix()
}

// setLinkAttrs gives the worker's symlink p the owner and mtime of the
// store's (a symlink's mode means nothing on Linux).
func (s *Shipper) setLinkAttrs(ctx context.Context, la LinkAttrs, p string, sfi fs.FileInfo, wfi *FileInfo) error {
	if st, ok := sfi.Sys().(*syscall.Stat_t); ok && !s.chownOff && (st.Uid != wfi.UID || st.Gid != wfi.GID) {
		if err := la.Lchown(ctx, p, int(st.Uid), int(st.Gid)); err != nil {
			if !errors.Is(err, fs.ErrPermission) {
				return s.errf(p, fmt.Errorf("lchown: %w", err))
			}
			s.ownerRefused(p, err)
		}
	}
	if mt := sfi.ModTime(); !mt.Equal(wfi.Mtime) {
		if err := la.Lchtimes(ctx, p, atime(sfi), mt); err != nil {
			return s.errf(p, fmt.Errorf("lchtimes: %w", err))
		}
	}
	return nil
}

func (s *Shipper) ownerRefused(p string, err error) {
	if !s.chownOff {
		s.log.Warn("the worker refused to set a file owner; owners will not be replicated", "path", p, "err", err)
	}
	s.chownOff = true
}

func permBits(m fs.FileMode) fs.FileMode {
	return m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

func atime(fi fs.FileInfo) time.Time {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return time.Unix(st.Atim.Sec, st.Atim.Nsec)
	}
	return fi.ModTime()
}

// errNotIdentity: the store file at a path is not the expected inode.
var errNotIdentity = errors.New("store file is not the expected file")

// sendFile sends the store file p to the worker's p atomically with its
// attributes. If ino is not 0 the store file must be that inode. The
// transport gets a SparseReader: holes of the store file are not sent, and
// the bytes returned count data only. changes, if not nil, is the
// identity whose data ops the journal told: a file written in place goes
// as its changed byte ranges where the transport can (RangeWriter).
func (s *Shipper) sendFile(ctx context.Context, p string, ino uint64, changes *ident) (int64, error) {
	f, err := s.store.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ELOOP) {
			return 0, errNotIdentity
		}
		return 0, s.errf(p, fmt.Errorf("store: %w", err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, s.errf(p, fmt.Errorf("store: %w", err))
	}
	if !fi.Mode().IsRegular() || (ino != 0 && s.fileID(fi) != ino) {
		return 0, errNotIdentity
	}
	a := s.fileAttrs(fi)
	// A replaced file goes as an rsync-style delta against the worker's
	// copy when the transport can (DeltaWriter) and the store file is
	// large and not sparse (a delta would fill its holes). Any failure but
	// a cancellation or a changing source falls back to the whole file
	// below, from the start of the store file.
	const deltaMinSize = 64 << 10
	dense := isDense(f, fi)
	if n, done, err := s.sendRanges(ctx, p, f, fi, a, changes, dense); done {
		return n, err
	}
	if dw, ok := unwrap(s.t).(DeltaWriter); ok && fi.Size() >= deltaMinSize && dense {
		if d, ok := s.t.(*dirTracker); ok {
			d.changes(p) // as its WriteFileAtomic notes
		}
		literal, derr := dw.WriteFileDelta(ctx, p, &storeReader{f: f, before: fi}, a)
		if errors.Is(derr, ErrOwner) {
			s.ownerRefused(p, derr)
			derr = nil
		}
		switch {
		case derr == nil:
			s.log.Debug("shipped as delta", "path", p, "bytes", fi.Size(), "literal", literal)
			return fi.Size(), s.syncXattrs(ctx, p, f, false)
		case errors.Is(derr, errSourceChanged):
			return 0, derr
		case ctx.Err() != nil:
			return 0, s.errf(p, fmt.Errorf("write: %w", derr))
		}
		s.log.Debug("delta not used, sending whole", "path", p, "err", derr)
		if _, serr := f.Seek(0, io.SeekStart); serr != nil {
			return 0, s.errf(p, fmt.Errorf("store: %w", serr))
		}
	}
	vr := &storeReader{f: f, before: fi}
	if sw, ok := unwrap(s.t).(SmallWriter); ok && fi.Size() <= SmallMax && dense && nlink(fi) == 1 {
		err = s.writeSmall(ctx, sw, p, vr, a)
	} else {
		err = s.t.WriteFileAtomic(ctx, p, vr, a)
	}
	if errors.Is(err, ErrOwner) {
		s.ownerRefused(p, err)
		err = nil
	}
	if err != nil && !errors.Is(err, errSourceChanged) && ctx.Err() == nil {
		// Drift: a missing parent or one that is not a directory (the
		// send does not look first), or a directory where the file goes.
		if perr := s.ensureParents(ctx, p); perr != nil {
			return 0, perr
		}
		if wfi, lerr := s.wlstat(ctx, p); lerr == nil && (wfi == nil || wfi.IsDir()) {
			if wfi != nil {
				if rerr := s.removeAll(ctx, p); rerr != nil {
					return 0, rerr
				}
			}
			if _, serr := f.Seek(0, io.SeekStart); serr == nil {
				vr = &storeReader{f: f, before: fi}
				err = s.t.WriteFileAtomic(ctx, p, vr, a)
				if errors.Is(err, ErrOwner) {
					s.ownerRefused(p, err)
					err = nil
				}
			}
		}
	}
	if err != nil {
		if errors.Is(err, errSourceChanged) {
			return 0, err
		}
		return 0, s.errf(p, fmt.Errorf("write: %w", err))
	}
	return vr.n, s.syncXattrs(ctx, p, f, false)
}

// writeSmall sends the small store file read by vr in one request
// (SmallWriter): the worker keeps its copy if it has this content already.
func (s *Shipper) writeSmall(ctx context.Context, sw SmallWriter, p string, vr *storeReader, a Attrs) error {
	data, err := io.ReadAll(vr) // errSourceChanged when it changed meanwhile
	if err != nil {
		if errors.Is(err, errSourceChanged) {
			return err
		}
		return s.errf(p, fmt.Errorf("store: %w", err))
	}
	res, err := s.writeSmallFiles(ctx, sw, []SmallFile{{Path: p, Data: data, Attrs: a}})
	if err != nil {
		return err
	}
	return res[0].Err
}

// writeSmallFiles writes files by sw, noting their directories as changed
// as the dirTracker's WriteFileAtomic does (sw is the transport under it).
func (s *Shipper) writeSmallFiles(ctx context.Context, sw SmallWriter, files []SmallFile) ([]SmallResult, error) {
	if d, ok := s.t.(*dirTracker); ok {
		for _, f := range files {
			d.changes(f.Path)
		}
	}
	return sw.WriteSmallFiles(ctx, files)
}

// isDense reports whether the store file f (stat fi) has no holes. Its
// allocated blocks tell most sparse files, but not one with space
// preallocated past its end (fallocate KEEP_SIZE), which SEEK_HOLE does.
// f is left at its start.
func isDense(f *os.File, fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Blocks*512 < fi.Size() {
		return false
	}
	if fi.Size() == 0 {
		return true
	}
	hole, err := f.Seek(0, unix.SEEK_HOLE)
	if _, serr := f.Seek(0, io.SeekStart); serr != nil {
		return false
	}
	return err != nil || hole >= fi.Size() // no SEEK_HOLE: no holes known
}

// sendRanges sends the store file f (p, stat fi) as the byte ranges that
// changes says were written, when the transport can (RangeWriter), the
// file has no holes (the old version's copy would fill them) and the
// ranges are less than half of it. done reports whether the file was sent
// or must not be sent now (errSourceChanged, a cancellation); otherwise f
// is back at its start for the next way of sending it.
func (s *Shipper) sendRanges(ctx context.Context, p string, f *os.File, fi fs.FileInfo, a Attrs, changes *ident, dense bool) (n int64, done bool, err error) {
	rw, ok := unwrap(s.t).(RangeWriter)
	if !ok || changes == nil || !changes.Ranged || !dense {
		return 0, false, nil
	}
	wfi, err := s.wlstat(ctx, p)
	if err != nil || wfi == nil || !wfi.Mode.IsRegular() {
		return 0, false, nil // let the other ways find out
	}
	keep := min(fi.Size(), wfi.Size)
	if changes.Truncated {
		keep = min(keep, changes.Cut)
	}
	ranges := delta.MergeRanges(slices.Clone(changes.Ranges))
	literal := fi.Size() - keep
	for _, r := range ranges {
		literal += max(0, min(r.End(), keep)-r.Off)
	}
	if literal*2 > fi.Size() {
		return 0, false, nil // mostly new: a signature may still find old blocks
	}
	if d, ok := s.t.(*dirTracker); ok {
		d.changes(p) // as its WriteFileAtomic notes
	}
	sent, rerr := rw.WriteFileRanges(ctx, p, wfi.Size, keep, ranges, &storeReader{f: f, before: fi}, a)
	if errors.Is(rerr, ErrOwner) {
		s.ownerRefused(p, rerr)
		rerr = nil
	}
	switch {
	case rerr == nil:
		s.log.Debug("shipped as ranges", "path", p, "bytes", fi.Size(), "ranges", len(ranges), "literal", sent)
		return fi.Size(), true, s.syncXattrs(ctx, p, f, false)
	case errors.Is(rerr, errSourceChanged):
		return 0, true, rerr
	case ctx.Err() != nil:
		return 0, true, s.errf(p, fmt.Errorf("write: %w", rerr))
	}
	s.log.Debug("ranges not used, trying a delta", "path", p, "err", rerr)
	if _, serr := f.Seek(0, io.SeekStart); serr != nil {
		return 0, true, s.errf(p, fmt.Errorf("store: %w", serr))
	}
	return 0, false, nil
}

// sameVersion compares size, mtime and ctime of two stats of one file.
func sameVersion(a, b fs.FileInfo) bool {
	if a.Size() != b.Size() || !a.ModTime().Equal(b.ModTime()) {
		return false
	}
	sa, ok1 := a.Sys().(*syscall.Stat_t)
	sb, ok2 := b.Sys().(*syscall.Stat_t)
	return !ok1 || !ok2 || sa.Ctim == sb.Ctim
}

// putSymlink creates or replaces the symlink p atomically.
func (s *Shipper) putSymlink(ctx context.Context, p, target string) error {
	tmp := joinPath(parentDir(p), TempName())
	if err := s.t.Symlink(ctx, target, tmp); err != nil {
		if perr := s.ensureParents(ctx, p); perr != nil {
			return perr
		}
		if err := s.t.Symlink(ctx, target, tmp); err != nil {
			return s.errf(p, fmt.Errorf("symlink: %w", err))
		}
	}
	if err := s.replaceWith(ctx, tmp, p); err != nil {
		return err
	}
	if _, ok := s.linkAttrs(); ok {
		if sfi, err := s.storeLstat(p); err == nil && sfi.Mode()&fs.ModeSymlink != 0 {
			return s.setAttrs(ctx, p, sfi, nil)
		}
	}
	return nil
}

// relink makes p a hard link to the worker's existing file, atomically.
func (s *Shipper) relink(ctx context.Context, existing, p string) error {
	tmp := joinPath(parentDir(p), TempName())
	err := s.t.Link(ctx, existing, tmp)
	if err != nil && !errors.Is(err, fs.ErrPermission) {
		// Drift: p's directory is missing on the worker, or not a
		// directory. Mend it and link again, as the other writes do;
		// returning the error failed the batch on every retry, and the
		// worker got no update any more. (A refused link, a worker
		// without hard links, is the caller's: it sends a copy.)
		if perr := s.ensureParents(ctx, p); perr != nil {
			return perr
		}
		err = s.t.Link(ctx, existing, tmp)
	}
	if err != nil {
		return s.errf(p, fmt.Errorf("link to %s: %w", existing, err))
	}
	return s.replaceWith(ctx, tmp, p)
}

// replaceWith renames tmp over p, removing a directory in the way (drift).
func (s *Shipper) replaceWith(ctx context.Context, tmp, p string) error {
	err := s.t.Rename(ctx, tmp, p)
	if err == nil {
		// Renaming a hard link over another link of the same file does
		// nothing and succeeds: remove the temp name if it is still there.
		if rerr := s.t.Remove(ctx, tmp); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			return s.errf(tmp, rerr)
		}
		return nil
	}
	if err != nil {
		if wfi, lerr := s.wlstat(ctx, p); lerr == nil && wfi != nil && wfi.IsDir() {
			if err = s.removeAll(ctx, p); err == nil {
				err = s.t.Rename(ctx, tmp, p)
			}
		}
	}
	if err != nil {
		_ = s.t.Remove(ctx, tmp)
		return s.errf(p, fmt.Errorf("rename into place: %w", err))
	}
	return nil
}
