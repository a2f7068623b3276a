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
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mirrorfs/mirrorfs/journal"
)

// Journal is what a shipper needs from the journal; *journal.Journal
// implements it.
type Journal interface {
	// Read returns up to limit ops with Seq >= from, ascending.
	Read(from uint64, limit int) ([]journal.Op, error)
	LastSeq() uint64
	FirstSeq() uint64
	// Wait returns when LastSeq() > after or ctx is done.
	Wait(ctx context.Context, after uint64) error
	Cursor(worker string) (journal.Cursor, bool, error)
	SetCursor(worker string, c journal.Cursor) error
}

// Defaults of Options.
const (
	DefaultDelay    = 10 * time.Millisecond
	DefaultMaxOps   = 10000
	DefaultHoldOpen = 30 * time.Second
	DefaultRetryMin = 500 * time.Millisecond
	DefaultRetryMax = time.Minute
)

// Tunables of the store/journal race handling (rule: a store file that is
// not the identity the journal names means an op is about to be journaled).
const (
	extendWait       = 50 * time.Millisecond // how long to wait for the op
	extendAttempts   = 3                     // re-plans before giving up for this batch
	unresolvedRetry  = time.Second           // retry period of unresolved identities
	unresolvedMaxAge = 30 * time.Second      // then their data is dropped (a warning)
)

// Options configure a Shipper.
type Options struct {
	Name    string // worker name: cursor key, log and error prefix
	Store   string // local path of the store directory
	Journal Journal
	// Dial connects to the worker. The shipper keeps one Transport open
	// and dials again after a failure.
	Dial    func(ctx context.Context) (Transport, error)
	Exclude []string // gitignore-style patterns (see Excluder)
	// Delay is the longest wait after a wake-up for a burst of ops to
	// accumulate; the wait ends earlier once the journal is quiet for
	// quietGap. 0 means DefaultDelay, a negative value no wait.
	Delay  time.Duration
	MaxOps int // ops per batch (DefaultMaxOps)
	// HoldOpen is how long a file still open for writing is held back.
	// 0 means DefaultHoldOpen, a negative value never holds one back.
	HoldOpen time.Duration
	RetryMin time.Duration // first backoff (DefaultRetryMin)
	RetryMax time.Duration // backoff cap (DefaultRetryMax)
	Logger   *slog.Logger  // nil discards
	// OpenForWrite reports whether the store file with inode ino has a
	// writer through the mount (nil: never). Paths that read whole files
	// from the store outside the journal's close-to-open rule (the full
	// copy, refreshes) skip such files: their content may be half
	// written. They are held like a file with unshipped writes and ship
	// when their Close arrives (or after HoldOpen).
	OpenForWrite func(ino uint64) bool
}

// Status is a shipper's state for `mirrorfs status`.
type Status struct {
	Name          string        `json:"name"`
	Connected     bool          `json:"connected"`
	LastError     string        `json:"last_error,omitempty"`
	LastErrorAt   time.Time     `json:"last_error_at,omitzero"`
	Applied       uint64        `json:"applied"`
	Pending       uint64        `json:"pending"`
	Lag           time.Duration `json:"lag"`
	BytesSent     uint64        `json:"bytes_sent"`
	BytesReceived uint64        `json:"bytes_received"`
	InitialCopy   bool          `json:"initial_copy"`
	// Progress of the running full copy (or of the last one): regular
	// files compared so far, and for a resync those compared by content
	// afterwards (see Resync).
	CopyChecked uint64 `json:"copy_checked"`
	CopyHashed  uint64 `json:"copy_hashed"`
	// What the last finished full copy sent: files and their data bytes,
	// and how long it took.
	CopyFiles uint64        `json:"copy_files"`
	CopyBytes uint64        `json:"copy_bytes"`
	CopyTook  time.Duration `json:"copy_took"`
	// Resync requests made (see Resync), and the last one a finished
	// full copy served, with when: a request numbered n is done once
	// ResyncDone >= n. Counted from the start of the process.
	ResyncRequested uint64    `json:"resync_requested"`
	ResyncDone      uint64    `json:"resync_done"`
	ResyncDoneAt    time.Time `json:"resync_done_at,omitzero"`
}

// ErrRetention: ops the worker still needs were trimmed from the journal;
// the worker gets a full copy.
var ErrRetention = errors.New("worker fell out of the journal's retention")

// Shipper replicates the journal to one worker.
type Shipper struct {
	opts     Options
	log      *slog.Logger
	excl     *Excluder
	store    *os.Root
	storeDev uint64 // the store's device (see journal.FileID)
	pl       planner
	// quietGap is the package's quietGap (tests change it).
	quietGap time.Duration
	lastOps  time.Time // when the last batch with ops was applied
	// findLinks returns the store names of inode ino (hard links made
	// before the batch). A walk for now; an index may replace it.
	findLinks func(ctx context.Context, ino uint64) ([]string, error)

	// State owned by Run's goroutine.
	t       Transport // the connection, wrapped in a dirTracker
	loaded  bool      // cursor loaded
	readPos uint64    // next Seq to read
	durable uint64    // durable cursor (Applied)
	carried map[uint64]*ident
	dead    map[uint64]int64 // Plan.Dead of the last batch
	lost    map[string]int64 // Plan.Lost of the last batch
	// suspectUntil is the highest Seq whose apply may have reached the
	// worker without being acknowledged: the last op of a batch whose
	// apply failed, the journal's end when a full copy finished, and
	// after a restart the journal's end at startup (the previous process
	// may have applied anything after the durable cursor). Ops after it
	// were never sent to this worker. See suspect.
	suspectUntil uint64
	// suspectTime: ops stamped up to then may describe store changes
	// that a full copy, a refresh or a hard-link walk already copied to
	// the worker (see storeAhead).
	suspectTime time.Time
	// touched are worker directories whose entries this shipper changed
	// since their attributes were last copied from the store (filled by
	// dirTracker, emptied at the end of each applied batch).
	touched map[string]bool
	// forceSend are store files (by identity) that the next comparison
	// sends whatever the quick check says: Plan.CompareFiles, until a
	// full copy is done.
	forceSend map[uint64]bool
	// sweep: remove leftover temp files from the directories batches
	// touch (see sweepTemps); set by every connect. swept are the
	// directories already swept on this connection.
	sweep    bool
	swept    map[string]bool
	chownOff bool // the worker refused a chown: stop trying
	attempt  int  // consecutive failures
	copying  bool // a full copy's walk is running (counts copyChecked)

	// Progress of the full copy, read by Status while Run counts.
	copyChecked, copyHashed atomic.Uint64

	mu          sync.Mutex
	connected   bool
	lastErr     string
	lastErrAt   time.Time
	applied     uint64 // durable cursor; during a full copy, the one before it
	initialCopy bool
	copyStart   time.Time // when the running full copy started
	sentBase    uint64
	recvBase    uint64
	stats       Stats
	// Totals of the last finished full copy.
	copyFiles, copyBytes uint64
	copyTook             time.Duration
	// Resync: requests made, the last one a finished copy served (and
	// when), and the cancel of the journal wait in progress, which a
	// request calls to wake the run loop.
	resyncReq, resyncDone uint64
	resyncChecksum        bool // a pending request asked for the content pass
	resyncDoneAt          time.Time
	wakeWait              context.CancelFunc
}

// NewShipper checks opts and opens the store.
func NewShipper(opts Options) (*Shipper, error) {
	if opts.Name == "" {
		return nil, errors.New("replicate: worker name is empty")
	}
	if opts.Journal == nil || opts.Dial == nil {
		return nil, fmt.Errorf("replicate %s: journal and dial are required", opts.Name)
	}
	if opts.Delay < 0 {
		opts.Delay = 0
	} else if opts.Delay == 0 {
		opts.Delay = DefaultDelay
	}
	if opts.MaxOps <= 0 {
		opts.MaxOps = DefaultMaxOps
	}
	if opts.HoldOpen < 0 {
		opts.HoldOpen = 0
	} else if opts.HoldOpen == 0 {
		opts.HoldOpen = DefaultHoldOpen
	}
	if opts.RetryMin <= 0 {
		opts.RetryMin = DefaultRetryMin
	}
	if opts.RetryMax < opts.RetryMin {
		opts.RetryMax = max(DefaultRetryMax, opts.RetryMin)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("worker", opts.Name)
	excl, err := NewExcluder(opts.Exclude)
	if err != nil {
		return nil, fmt.Errorf("replicate %s: %w", opts.Name, err)
	}
	store, err := os.OpenRoot(opts.Store)
	if err != nil {
		return nil, fmt.Errorf("replicate %s: store: %w", opts.Name, err)
	}
	rootFi, err := store.Stat(".")
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("replicate %s: store: %w", opts.Name, err)
	}
	s := &Shipper{opts: opts, log: log, excl: excl, store: store, storeDev: device(rootFi), touched: map[string]bool{}, quietGap: quietGap}
	s.pl = planner{excl: excl, holdOpen: opts.HoldOpen, isDir: s.storeIsDir, log: log}
	s.findLinks = s.walkLinks
	return s, nil
}

// Status reports the shipper's state; safe to call at any time.
func (s *Shipper) Status() Status {
	s.mu.Lock()
	st := Status{
		Name:          s.opts.Name,
		Connected:     s.connected,
		LastError:     s.lastErr,
		LastErrorAt:   s.lastErrAt,
		Applied:       s.applied,
		BytesSent:     s.sentBase,
		BytesReceived: s.recvBase,
		InitialCopy:   s.initialCopy,
		CopyChecked:   s.copyChecked.Load(),
		CopyHashed:    s.copyHashed.Load(),
		CopyFiles:     s.copyFiles,
		CopyBytes:     s.copyBytes,
		CopyTook:      s.copyTook,
		ResyncDone:    s.resyncDone,
		ResyncDoneAt:  s.resyncDoneAt,
	}
	st.ResyncRequested = s.resyncReq
	if s.stats != nil {
		st.BytesSent += s.stats.BytesSent()
		st.BytesReceived += s.stats.BytesReceived()
	}
	copyStart := s.copyStart
	s.mu.Unlock()
	// During a full copy Applied is still the cursor from before it (0
	// for a new worker): the worker lacks everything after it until the
	// copy is done, not just the ops made since the copy started.
	if last := s.opts.Journal.LastSeq(); last > st.Applied {
		st.Pending = last - st.Applied
		if ops, err := s.opts.Journal.Read(st.Applied+1, 1); err == nil && len(ops) > 0 {
			st.Lag = max(0, time.Since(time.Unix(0, ops[0].Time)))
		}
	}
	if st.InitialCopy {
		st.Lag = max(st.Lag, time.Since(copyStart))
	}
	return st
}

// Run replicates until ctx is done, retrying failures forever with capped
// exponential backoff. It returns nil when ctx is done. Run may be called
// once per Shipper.
func (s *Shipper) Run(ctx context.Context) error {
	defer s.store.Close()
	defer s.disconnect()
	// After a restart, anything after the durable cursor up to the
	// journal's end may already be on the worker (the previous process
	// may have applied it without saving the cursor): re-applied renames
	// are verified against the store. Ops journaled from now on reach
	// this worker only through this process, which tracks them itself.
	s.suspectUntil = s.opts.Journal.LastSeq()
	if c, ok, err := s.opts.Journal.Cursor(s.opts.Name); err == nil && ok {
		// Marked for a full copy (after a crash, say), the worker still
		// has at most this, as runOnce says once it connects: status and
		// journal stats agree on what an unreachable worker lacks.
		s.mu.Lock()
		s.applied = c.Applied
		s.mu.Unlock()
	}
	for {
		err := s.runOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		s.fail(err)
		d := s.backoff()
		s.attempt++
		s.log.Warn("replication failed; retrying", "err", err, "in", d)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
	}
}

func (s *Shipper) backoff() time.Duration {
	d := s.opts.RetryMin
	for i := 0; i < s.attempt && d < s.opts.RetryMax; i++ {
		d *= 2
	}
	d = min(d, s.opts.RetryMax)
	// ±20% jitter so workers that failed together do not retry together.
	return d - d/5 + time.Duration(rand.Int64N(int64(d/5)*2+1))
}

func (s *Shipper) fail(err error) {
	s.disconnect()
	s.mu.Lock()
	s.lastErr, s.lastErrAt = err.Error(), time.Now()
	s.mu.Unlock()
}

func (s *Shipper) disconnect() {
	if s.t == nil {
		return
	}
	_ = s.t.Close()
	s.mu.Lock()
	if s.stats != nil {
		s.sentBase += s.stats.BytesSent()
		s.recvBase += s.stats.BytesReceived()
	}
	s.stats, s.connected = nil, false
	s.mu.Unlock()
	s.t = nil
}

func (s *Shipper) connect(ctx context.Context) error {
	if s.t != nil {
		return nil
	}
	t, err := s.opts.Dial(ctx)
	if err != nil {
		return fmt.Errorf("%s: connect: %w", s.opts.Name, err)
	}
	s.t = &dirTracker{Transport: t, dirs: s.touched}
	// Whatever was interrupted before (a failure, or a crash of the
	// previous process) may have left temp files: see sweepTemps.
	s.sweep, s.swept = true, map[string]bool{}
	s.mu.Lock()
	s.connected = true
	s.stats, _ = t.(Stats)
	s.mu.Unlock()
	s.log.Info("connected")
	return nil
}

func (s *Shipper) setApplied(ctx context.Context, c journal.Cursor) error {
	if s.t != nil {
		if sy, ok := unwrap(s.t).(Syncer); ok {
			// What the worker applied must be on its disk before the
			// cursor passes it.
			if err := sy.Sync(ctx); err != nil {
				return fmt.Errorf("%s: sync: %w", s.opts.Name, err)
			}
		}
	}
	if err := s.opts.Journal.SetCursor(s.opts.Name, c); err != nil {
		return fmt.Errorf("%s: set cursor: %w", s.opts.Name, err)
	}
	s.durable = c.Applied
	if !c.FullSync {
		// A cursor marked for a full copy is where the journal resumes
		// after the copy, not what the worker has (see Status).
		s.mu.Lock()
		s.applied = c.Applied
		s.mu.Unlock()
	}
	return nil
}

// runOnce connects, syncs fully if needed and follows the journal until
// an error.
func (s *Shipper) runOnce(ctx context.Context) error {
	if err := s.connect(ctx); err != nil {
		return err
	}
	// The cursor is read again after every failure: the journal may have
	// marked the worker for a full copy meanwhile.
	j := s.opts.Journal
	c, ok, err := j.Cursor(s.opts.Name)
	if err != nil {
		return fmt.Errorf("%s: read cursor: %w", s.opts.Name, err)
	}
	first := j.FirstSeq()
	switch {
	case !ok:
		s.log.Info("new worker: full copy")
		c.FullSync = true
	case c.FullSync:
		s.log.Info("worker marked for a full copy")
	case first > 0 && c.Applied+1 < first:
		s.log.Warn("worker fell out of the journal's retention: full copy", "applied", c.Applied, "first", first)
		c.FullSync = true
	}
	switch {
	case c.FullSync:
		s.mu.Lock()
		s.applied = c.Applied // the worker has at most this until the copy is done
		s.mu.Unlock()
		if err := s.fullSync(ctx); err != nil {
			return err
		}
	case !s.loaded || c.Applied != s.durable:
		// Start from the durable cursor (after a restart); in-memory
		// progress since then (after a failure) is kept otherwise.
		s.readPos, s.durable, s.carried = c.Applied+1, c.Applied, map[uint64]*ident{}
		s.mu.Lock()
		s.applied = c.Applied
		s.mu.Unlock()
	}
	s.loaded = true
	for {
		// A resync asked for meanwhile: a full copy, as for a cursor
		// marked FullSync (it persists that mark first, so a failure or
		// a crash during it does it again).
		if s.resyncPending() {
			s.log.Info("resync requested: comparing the worker with the store")
			if err := s.fullSync(ctx); err != nil {
				return err
			}
			continue
		}
		if err := s.batch(ctx); err != nil {
			return err
		}
	}
}

// Resync asks for a full comparison of the worker with the store: at its
// next batch (at once if it is waiting for ops) the shipper does a full
// copy, as for a worker whose cursor is marked FullSync: it sends the
// files that differ by type, size or mtime, fixes attributes and removes
// what the store does not have (excluded paths aside). With checksum set,
// it then also compares the files left alone by content (SHA-256, hashed
// on the worker when the transport is a Hasher) and sends those that
// differ: drift behind mirrorfs's back may keep sizes and mtimes. That
// reads both trees (over SFTP, the worker's files cross the network), so
// it is asked for, not done by default.
//
// Progress shows in Status: InitialCopy during the copy, CopyChecked and
// CopyHashed as it goes, and the request (number ResyncRequested as seen
// right after this call) is done once ResyncDone reaches it. Safe to call
// at any time, from any goroutine; requests made during a copy are served
// by another one.
func (s *Shipper) Resync(checksum bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resyncReq++
	s.resyncChecksum = s.resyncChecksum || checksum
	if s.wakeWait != nil {
		s.wakeWait()
	}
}

// resyncPending reports whether a resync request is not served yet.
func (s *Shipper) resyncPending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resyncReq > s.resyncDone
}

// checksumPass is the part of a resync that the full copy does not do:
// regular files with the same size on both sides are compared by content
// and sent again where it differs. Returns the files sent and their bytes.
func (s *Shipper) checksumPass(ctx context.Context, sy *syncer) (files, bytes int64, err error) {
	h, ok := unwrap(s.t).(Hasher)
	if !ok {
		s.log.Warn("the transport cannot hash files: resync compared types, sizes and mtimes only")
		return 0, 0, nil
	}
	dirs := map[string]bool{}
	err = fs.WalkDir(s.store.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // vanished meanwhile
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() {
			if p != "." && s.excl.Excluded(p, true) {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || s.excl.Excluded(p, false) {
			return nil
		}
		s.copyHashed.Add(1)
		sfi, err := d.Info()
		if err != nil {
			return nil
		}
		wfi, err := s.wlstat(ctx, p)
		if err != nil {
			return err
		}
		if wfi == nil || !wfi.Mode.IsRegular() || wfi.Size != sfi.Size() || s.openForWrite(s.fileID(sfi)) {
			return nil // the copy saw to it, or the file ships after its writer closes it
		}
		ssum, err := s.storeHash(p)
		if err != nil {
			return nil // changed meanwhile: the journal ships it
		}
		wsum, err := h.Hash(ctx, p)
		if err != nil {
			return s.errf(p, fmt.Errorf("hash: %w", err))
		}
		if string(ssum) == string(wsum) {
			return nil
		}
		s.log.Info("resync: content differs; sending the file again", "path", p)
		if err := sy.syncPath(ctx, p); err != nil {
			return err
		}
		files++
		bytes += sfi.Size()
		dirs[parentDir(p)] = true
		return nil
	})
	if err != nil {
		return files, bytes, err
	}
	// Replacing a file changed its directory's mtime on the worker.
	for d := range dirs {
		if sfi, err := s.storeLstat(d); err == nil && sfi.IsDir() {
			if err := s.setAttrs(ctx, d, sfi, nil); err != nil {
				return files, bytes, err
			}
		}
	}
	return files, bytes, nil
}

// storeHash is the SHA-256 of the store's regular file p.
func (s *Shipper) storeHash(p string) ([]byte, error) {
	f, err := s.store.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", p)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// fullSync copies the store to the worker, then follows the journal from
// the seq the copy started at.
func (s *Shipper) fullSync(ctx context.Context) error {
	j := s.opts.Journal
	t0 := time.Now()
	s.mu.Lock()
	// Shown before start is read: the trim (cmd/mirrorfs) leaves out a
	// marked cursor whose worker it sees not copying, and must then have
	// read the journal's end before this copy's start.
	s.initialCopy, s.copyStart = true, t0
	// The resync requests made until now are served by this copy.
	resync, req, checksum := s.resyncReq > s.resyncDone, s.resyncReq, s.resyncChecksum
	s.mu.Unlock()
	start := j.LastSeq()
	// Persist first: a crash during the copy restarts the copy.
	if err := s.setApplied(ctx, journal.Cursor{Applied: start, FullSync: true}); err != nil {
		return err
	}
	s.copyChecked.Store(0)
	s.copyHashed.Store(0)
	sy := s.newSyncer(nil)
	s.copying = true
	err := sy.syncPath(ctx, "")
	s.copying = false
	if err == nil {
		// The copy is complete only if every file was sent (or held
		// for its Close): otherwise it is done again, still marked.
		err = sy.changedErr()
	}
	if err == nil && resync && checksum {
		var n, b int64
		n, b, err = s.checksumPass(ctx, sy)
		sy.files += n
		sy.bytes += b
	}
	// Ops made during the copy are re-applied over a tree that may
	// already show them: those journaled by now, and those whose store
	// change the copy saw but whose record was still on its way to the
	// journal (storeAhead).
	s.suspectUntil = max(s.suspectUntil, j.LastSeq())
	s.storeAhead()
	if err != nil {
		return err
	}
	if err := s.setApplied(ctx, journal.Cursor{Applied: start}); err != nil {
		return err
	}
	s.mu.Lock()
	s.initialCopy = false
	s.copyFiles, s.copyBytes, s.copyTook = uint64(sy.files), uint64(sy.bytes), time.Since(t0)
	if resync {
		s.resyncDone, s.resyncDoneAt = req, time.Now()
		if req == s.resyncReq {
			s.resyncChecksum = false // served; a later request sets it again
		}
	}
	s.mu.Unlock()
	// The copy sent the store as it is: no file it saw is dead, and an
	// inode number remembered dead before it may now be a file whose
	// create the copy took the place of, whose writes would be dropped.
	s.readPos, s.carried, s.dead = start+1, map[uint64]*ident{}, nil
	// Files skipped because a writer had them open are held like files
	// with unshipped writes: they ship when their Close arrives (or
	// after HoldOpen). The copy removed leftover temp files everywhere
	// and set the attributes of every directory it changed.
	sy.holdSkipped(s.carried)
	s.sweep = false
	clear(s.touched)
	s.forceSend = nil
	s.log.Info("full copy done", "seq", start, "files", sy.files, "bytes", sy.bytes, "held", len(sy.held), "took", time.Since(t0).Round(time.Millisecond))
	return nil
}

// nextDeadline is when carried identities need a look without new ops.
func (s *Shipper) nextDeadline(now time.Time) (time.Duration, bool) {
	var d time.Duration
	found := false
	for _, id := range s.carried {
		var until time.Duration
		if id.Unresolved {
			until = unresolvedRetry
		} else {
			until = s.opts.HoldOpen - id.heldFor(now)
		}
		if !found || until < d {
			d, found = until, true
		}
	}
	return max(d, time.Millisecond), found
}

// quietGap is how long the journal must stay quiet after a wake-up before
// a batch is read: a save through the mount (create, writes, close,
// rename) journals its ops well within it, so a lone save ships at once as
// one batch, while a burst keeps the batch growing until Delay.
const quietGap = 2 * time.Millisecond

// saveIdle is how long the journal must have been idle before a wake-up
// for a rename to end settle's wait at once (see settle).
const saveIdle = 10 * time.Millisecond

// settle waits, after a wake-up or a batch, until no op was journaled for
// quietGap or Delay has passed: batches coalesce under load, and an idle
// shipper ships at once instead of always waiting Delay.
//
// A rename can end the wait at once: it is the last op of a save-by-rename
// (editors, sed -i, deploy tools' symlink swaps), which quietGap would only
// delay. It does after an idle spell (saveIdle): a lone save. It does not
// for a stream of saves (rsync, a deploy) that wakes an idle shipper: that
// coalesces, as shipping each save alone cost three times the bytes of
// 1,000 re-saved files. And it does when the shipper was busy (busy: ops
// were pending after its batch): saves coming one after another (200 per
// second) never leave the journal quiet for quietGap, and waiting Delay
// for each batch doubled their lag to the workers, while files written
// without renames (a burst, an unpacked archive) still coalesce. The cost:
// a fast stream of saves keeps the shipper busy and goes in batches of a
// save or two, 1.4-1.5 times the bytes of 1,000 re-saved files (each batch
// sends its directory's attributes; BENCHMARKS.md, summary).
func (s *Shipper) settle(ctx context.Context, busy bool) error {
	j := s.opts.Journal
	deadline := time.Now().Add(s.opts.Delay)
	atRename := busy || time.Since(s.lastOps) >= saveIdle
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		last := j.LastSeq()
		if atRename && s.endsSave(last) {
			return nil
		}
		wctx, cancel := context.WithTimeout(ctx, min(s.quietGap, left))
		err := j.Wait(wctx, last)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			return nil // quiet for quietGap, or Delay is over
		case err != nil:
			return fmt.Errorf("%s: journal wait: %w", s.opts.Name, err)
		}
	}
}

// endsSave reports whether op seq, the journal's last, is a rename.
func (s *Shipper) endsSave(seq uint64) bool {
	if seq < s.readPos {
		return false
	}
	ops, err := s.opts.Journal.Read(seq, 1)
	return err == nil && len(ops) == 1 && ops[0].Seq == seq && ops[0].Kind == journal.KindRename
}

// batch waits for ops (or a carried deadline), plans and applies one batch.
func (s *Shipper) batch(ctx context.Context) error {
	j := s.opts.Journal
	busy := j.LastSeq() >= s.readPos
	if !busy {
		wctx, cancel := context.WithCancel(ctx)
		if d, ok := s.nextDeadline(time.Now()); ok {
			cancelBase := cancel
			var cancelTimeout context.CancelFunc
			wctx, cancelTimeout = context.WithTimeout(wctx, d)
			cancel = func() { cancelTimeout(); cancelBase() }
		}
		// Resync cancels the wait; a request made before this point
		// is seen here.
		s.mu.Lock()
		pending := s.resyncReq > s.resyncDone
		s.wakeWait = cancel
		s.mu.Unlock()
		var err error
		if !pending {
			err = j.Wait(wctx, s.readPos-1)
		}
		s.mu.Lock()
		s.wakeWait = nil
		s.mu.Unlock()
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if pending || errors.Is(err, context.Canceled) {
			return nil // woken for a resync: the run loop does it
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%s: journal wait: %w", s.opts.Name, err)
		}
	}
	// Ops pending already, right after a batch, settle too: a writer that
	// keeps the shipper busy (a burst) then gets batches of Delay's worth
	// of files, not of one round trip's worth. One small file per request
	// and per fsync on each worker was what slowed a burst of 1,000 files
	// most (BENCHMARKS.md, "A worker syncs a group of small files
	// together"). A full batch waiting (a backlog) ships at once.
	if last := j.LastSeq(); last >= s.readPos && last-s.readPos < uint64(s.opts.MaxOps) && s.opts.Delay > 0 {
		if err := s.settle(ctx, busy); err != nil {
			return err
		}
	}
	if first := j.FirstSeq(); first > 0 && s.readPos < first {
		return fmt.Errorf("%s: %w: next op %d, journal starts at %d", s.opts.Name, ErrRetention, s.readPos, first)
	}
	ops, err := j.Read(s.readPos, s.opts.MaxOps)
	if err != nil {
		return fmt.Errorf("%s: journal read: %w", s.opts.Name, err)
	}
	if len(ops) == 0 && j.LastSeq() >= s.readPos {
		return fmt.Errorf("%s: journal read from %d returned nothing though its last op is %d", s.opts.Name, s.readPos, j.LastSeq())
	}
	if len(ops) == 0 && !s.carriedDue(time.Now()) {
		return nil
	}
	plan, ops, err := s.planChecked(ctx, ops)
	if err != nil {
		return err
	}
	if err := s.apply(ctx, plan); err != nil {
		// Some of these ops may have reached the worker: when they are
		// applied again, they are suspect.
		s.suspectUntil = max(s.suspectUntil, plan.Last)
		return err
	}
	if len(ops) > 0 {
		s.readPos = ops[len(ops)-1].Seq + 1
		s.lastOps = time.Now()
	}
	if s.readPos > s.suspectUntil {
		// Everything that may have been interrupted was applied again
		// (and its directories swept) on this connection.
		s.sweep = false
	}
	s.carried, s.dead, s.lost = plan.Carry, plan.Dead, plan.Lost
	s.attempt = 0
	if c := plan.pinned(s.readPos - 1); c > s.durable || plan.Compare {
		// A comparison asked for is marked in the cursor first, so that
		// a stop before it is done does not lose it.
		if err := s.setApplied(ctx, journal.Cursor{Applied: max(c, s.durable), FullSync: plan.Compare}); err != nil {
			return err
		}
	}
	if plan.Compare {
		s.log.Info("a hard-linked file changed under names the journal does not know: comparing the worker with the store")
		if s.forceSend == nil {
			s.forceSend = map[uint64]bool{}
		}
		maps.Copy(s.forceSend, plan.CompareFiles)
		s.Resync(false)
	}
	s.mu.Lock()
	s.lastErr = ""
	s.mu.Unlock()
	return nil
}

// storeAheadSlack bounds the time between a change in the store and the
// timestamp (Op.Time) of its journal record: the FUSE layer stamps the op
// right after the change, in the same request, before the append (which
// may then wait for a group commit).
const storeAheadSlack = 250 * time.Millisecond

// storeAhead is called right after the worker was given store state that
// the journal may not show yet (a full copy, a refresh, a hard link found
// by a walk): a change the copy saw may have its record still on the way
// to the journal. Such records are stamped before now (plus the slack);
// they are applied as possible replays, verified against the store. Ops
// stamped later describe changes made after the copy read the store: they
// are not suspect (unless their Seq is, see suspectUntil).
func (s *Shipper) storeAhead() {
	if t := time.Now().Add(storeAheadSlack); t.After(s.suspectTime) {
		s.suspectTime = t
	}
}

// suspect reports whether the step may already show on the worker.
func (s *Shipper) suspect(st step) bool {
	return st.Seq <= s.suspectUntil || st.Time <= s.suspectTime.UnixNano()
}

// openForWrite reports whether a writer has the store file ino open.
func (s *Shipper) openForWrite(ino uint64) bool {
	if s.copying {
		// Progress: the full copy asks this of every regular file it
		// compares, and of nothing else.
		s.copyChecked.Add(1)
	}
	return s.opts.OpenForWrite != nil && ino != 0 && s.opts.OpenForWrite(ino)
}

func (s *Shipper) carriedDue(now time.Time) bool {
	for _, id := range s.carried {
		if id.Unresolved || id.heldFor(now) >= s.opts.HoldOpen {
			return true
		}
	}
	return false
}

// planChecked folds ops into a plan and checks that the data of every
// identity to ship is where the plan says. If not, a later op (already
// done in the store) is about to be journaled: it waits briefly, reads
// more ops and plans again. Identities still unresolved are carried.
func (s *Shipper) planChecked(ctx context.Context, ops []journal.Op) (*Plan, []journal.Op, error) {
	j := s.opts.Journal
	for attempt := 0; ; attempt++ {
		plan := s.pl.foldLost(s.carried, s.dead, s.lost, ops, time.Now())
		var bad []*ident
		for _, id := range plan.Ship {
			if _, ok := s.locate(id); !ok {
				bad = append(bad, id)
			}
		}
		retry := false
		for _, id := range bad {
			if !id.Unresolved {
				retry = true
			}
		}
		if len(bad) == 0 || !retry || attempt >= extendAttempts {
			for _, id := range bad {
				s.unresolved(plan, id, "its store file is not at its journaled names")
			}
			return plan, ops, nil
		}
		after := s.readPos - 1
		if len(ops) > 0 {
			after = ops[len(ops)-1].Seq
		}
		wctx, cancel := context.WithTimeout(ctx, extendWait)
		err := j.Wait(wctx, after)
		cancel()
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		if err == nil {
			more, err := j.Read(after+1, s.opts.MaxOps)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: journal read: %w", s.opts.Name, err)
			}
			ops = append(ops, more...)
		}
	}
}

// unresolved moves id from the plan's Ship to its Carry (or drops it when
// it stayed unresolved too long).
func (s *Shipper) unresolved(plan *Plan, id *ident, why string) {
	for i, x := range plan.Ship {
		if x == id {
			plan.Ship = append(plan.Ship[:i], plan.Ship[i+1:]...)
			break
		}
	}
	if id.UnresolvedSince == 0 {
		id.UnresolvedSince = max(monoNow(), 1)
	}
	if time.Duration(monoNow()-id.UnresolvedSince) > unresolvedMaxAge {
		s.log.Warn("dropping data of a file that stayed unresolved", "file", id.ID, "names", id.Names, "reason", why)
		return
	}
	if !id.Unresolved {
		s.log.Info("holding data of a file for a later batch", "file", id.ID, "names", id.Names, "reason", why)
	}
	id.Unresolved = true
	plan.Carry[id.ID] = id
}

// holdOpen moves id from the plan's ships to its carried identities as a
// file with an open writer: it ships when its Close is folded in (or once
// HoldOpen passed), and it keeps pinning the durable cursor meanwhile.
func (s *Shipper) holdOpen(plan *Plan, id *ident) {
	plan.Ship = slices.DeleteFunc(plan.Ship, func(x *ident) bool { return x == id })
	id.Open = true
	plan.Carry[id.ID] = id
	s.log.Debug("holding a file a writer opened again; it ships after its next close", "file", id.ID, "names", id.Names)
}

// locate finds a store name of id that holds the identity's inode.
func (s *Shipper) locate(id *ident) (string, bool) {
	for _, n := range id.Names {
		fi, err := s.store.Lstat(n)
		if err == nil && fi.Mode().IsRegular() && s.fileID(fi) == id.ID {
			return n, true
		}
	}
	return "", false
}

// fileID is the identity (journal.FileID) of the store file fi, as the
// mount journals it.
func (s *Shipper) fileID(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return journal.FileID(st.Dev, st.Ino, s.storeDev)
	}
	return 0
}

func device(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Dev
	}
	return 0
}

func nlink(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Nlink)
	}
	return 1
}

func (s *Shipper) storeIsDir(p string) bool {
	fi, err := s.store.Lstat(p)
	return err == nil && fi.IsDir()
}

// walkLinks finds every store name of inode ino by walking the store.
// Hard links are rare in web roots; an index may replace this.
func (s *Shipper) walkLinks(ctx context.Context, ino uint64) ([]string, error) {
	var out []string
	err := fs.WalkDir(s.store.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // vanished meanwhile
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if d.IsDir() {
			if p != "." && s.excl.Excluded(p, true) {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if fi, err := d.Info(); err == nil && s.fileID(fi) == ino && !s.excl.Excluded(p, false) {
			out = append(out, p)
		}
		return nil
	})
	return out, err
}
