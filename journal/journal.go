package journal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
)

var (
	// ErrLocked means another process (the daemon, usually) holds the
	// journal directory. Badger allows one process per directory; while the
	// daemon runs, inspect the journal through its control socket instead.
	ErrLocked = errors.New("journal is in use by another process")
	// ErrForeign means the directory exists, is not empty, and is not a
	// mirrorfs journal. Open refuses it without writing anything to it.
	ErrForeign = errors.New("directory is not empty and is not a mirrorfs journal")
	// ErrCorrupt means the directory holds a mirrorfs journal that fails
	// its checks (a checksum, a record cut short after a clean stop, data
	// where the journal never writes any). Open refuses it before Badger
	// could "repair" it by cutting off what follows the damage, and leaves
	// every file as it was.
	ErrCorrupt = errors.New("journal is damaged")
	// ErrClosed is returned by every method called after Close.
	ErrClosed = errors.New("journal is closed")
	// ErrReadOnly is returned by Append, SetCursor and Trim on a journal
	// opened with Options.ReadOnly.
	ErrReadOnly = errors.New("journal is open read-only")
)

// Options configure Open.
type Options struct {
	// Logger receives the journal's own messages and Badger's warnings and
	// errors. nil discards them.
	Logger *slog.Logger
	// ReadOnly opens the journal without changing anything in its
	// directory, for inspecting it while no daemon runs, e.g. after a crash.
	// Append, SetCursor and Trim then return ErrReadOnly.
	ReadOnly bool
}

// Key layout. Ops sort by seq because the seq is big-endian; cursors and meta
// keys live under their own prefixes so that no scan of one touches another.
const (
	prefixOp     = 'o' // 'o' + big-endian uint64 seq -> Encode(op)
	prefixCursor = 'c' // 'c' + worker name -> encodeCursor
	prefixMeta   = 'm'
)

var (
	// keyFormat holds formatMagic + big-endian uint32 format version.
	keyFormat = []byte{prefixMeta, 'f', 'o', 'r', 'm', 'a', 't'}
	// keyFloor holds the big-endian uint64 trim floor: ops below it are gone
	// for every reader, whatever Badger does with the deletes (deleted keys
	// have reappeared after compaction in some Badger versions).
	keyFloor = []byte{prefixMeta, 'f', 'l', 'o', 'o', 'r'}
)

const (
	formatMagic   = "mirrorfs-journal"
	formatVersion = 1
	// maxWorkerName bounds cursor keys; worker names come from the config.
	maxWorkerName = 255
	// maxGroup caps one group commit. A group of this many typical ops fits
	// one Badger transaction; a larger one would be split anyway.
	maxGroup = 4096
)

func opKey(seq uint64) []byte {
	k := make([]byte, 9)
	k[0] = prefixOp
	binary.BigEndian.PutUint64(k[1:], seq)
	return k
}

func parseOpKey(k []byte) (uint64, bool) {
	if len(k) != 9 || k[0] != prefixOp {
		return 0, false
	}
	return binary.BigEndian.Uint64(k[1:]), true
}

func cursorKey(worker string) []byte {
	return append([]byte{prefixCursor}, worker...)
}

// Journal is an open journal. All methods are safe for concurrent use.
type Journal struct {
	dir      string // as the caller named it; every error names it
	dbDir    string // where Badger runs: dir, or a private copy (see openReadOnly)
	snapshot bool   // dbDir is a temporary copy to remove on Close
	db       *badger.DB
	log      *slog.Logger
	readOnly bool
	lock     *dirLock // on dir, held until Close

	last    atomic.Uint64 // highest durable seq: what readers see
	written atomic.Uint64 // highest committed seq; above last while a sync is pending
	floor   atomic.Uint64 // lowest seq readers may see; ops below were trimmed
	// recordBytes is the size (key and value) of the ops stored: what
	// trimming gives back, unlike the disk blocks, which Badger frees
	// only when it compacts its tables (see RecordBytes).
	recordBytes atomic.Int64

	// mu is held shared by every call that uses db and exclusively by Close
	// while it marks the journal closed, so Close never pulls Badger from
	// under a running call.
	mu       sync.RWMutex
	closed   bool
	isClosed atomic.Bool // closed, readable by Wait without mu

	notifyMu sync.Mutex
	notify   chan struct{} // closed and replaced after each commit and on Close

	// The commit queue (see submit). appending counts the appends
	// between their check of closed and their result, for Close.
	queueMu   sync.Mutex
	queue     []*appendReq
	leading   bool         // a goroutine is committing; the queue waits for it
	group     []*appendReq // the leader's buffer, reused
	appending sync.WaitGroup
	syncWake  chan struct{} // asks syncLoop for a sync (capacity 1)
	synced    chan struct{} // closed when syncLoop has exited
	pubMu     sync.Mutex    // orders publishing of synced seqs (syncTo)
	lastSync  atomic.Int64  // when the last sync for appends ended (monoNow)
	// unsyncedMeta: a cursor was written and not yet synced (SetCursor).
	unsyncedMeta atomic.Bool
	failure      atomic.Pointer[error]
	wal          *walSyncer
	mark         *durableMark // writers: the last synced op, see durableName

	trimMu sync.Mutex

	recovered bool // the previous writer died without Close

	// Counters for tests and benchmarks.
	commits atomic.Uint64
	appends atomic.Uint64
	splits  atomic.Uint64 // groups that needed more than one transaction
	syncs   atomic.Uint64 // syncs of the write-ahead log for appends
}

// Recovered reports whether the process that used the journal before this
// Open died without closing it (kill -9, power loss). Everything it
// acknowledged is still here, but a change it made to the store just
// before dying may have no record. Opened read-only, the journal is left
// as found: the daemon's next start recovers it (and so compares every
// worker with the store).
func (j *Journal) Recovered() bool { return j.recovered }

// Open opens the journal in dir, creating dir and an empty journal if dir is
// missing or empty. It refuses (ErrForeign) a directory holding anything else
// and a journal written by a newer format version, and fails fast with
// ErrLocked when another process holds the journal.
func Open(dir string, opts Options) (*Journal, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("journal", dir)
	if opts.ReadOnly {
		return openReadOnly(dir, log)
	}

	state, err := inspectDir(dir, true)
	if err != nil {
		return nil, err
	}
	lock, err := lockDir(dir, true)
	if err != nil {
		return nil, err
	}
	unclean, err := uncleanShutdown(dir)
	if err != nil {
		_ = lock.release()
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	if state == dirJournal {
		err := verifyBeforeOpen(dir, unclean, log)
		if err == nil && unclean {
			err = checkRecovery(dir, log)
		}
		if err != nil {
			_ = lock.release()
			return nil, err
		}
	}
	if err := lock.writePid(dir); err != nil {
		_ = lock.release()
		return nil, err
	}
	db, err := badger.Open(badgerOptions(dir, false, log))
	if err != nil {
		_ = lock.release()
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	j := newJournal(dir, dir, db, log)
	j.lock = lock
	j.recovered = unclean
	if j.mark, err = openDurableMark(dir); err != nil {
		_ = j.closeDB()
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	if err := j.load(true); err != nil {
		_ = j.closeDB()
		return nil, err
	}
	j.written.Store(j.last.Load())
	j.syncWake = make(chan struct{}, 1)
	j.synced = make(chan struct{})
	go j.syncLoop()
	log.Debug("journal opened", "last_seq", j.last.Load(), "first_seq", j.FirstSeq())
	return j, nil
}

// openReadOnly opens dir without modifying it. Badger's read-only mode
// refuses a journal whose process died (kill -9, power loss): its
// write-ahead log must first be cut at the last complete transaction, and
// read-only mode may not do that. Such a journal is copied to a private
// temporary directory, recovered there and read from the copy, which Close
// removes. The original stays byte for byte as it was, and the daemon's next
// start recovers it as usual.
func openReadOnly(dir string, log *slog.Logger) (*Journal, error) {
	state, err := inspectDir(dir, false)
	if err != nil {
		return nil, err
	}
	if state != dirJournal {
		return nil, fmt.Errorf("open journal %s read-only: no journal there: %w", dir, os.ErrNotExist)
	}
	// Shared, like Badger's own read-only lock: readers may share the
	// journal, and a daemon cannot start on it while they read.
	lock, err := lockDir(dir, false)
	if err != nil {
		return nil, err
	}
	dbDir, snapshot := dir, false
	unclean, err := uncleanShutdown(dir)
	if err == nil {
		// A reader is refused a damaged journal as a writer is: better
		// than pending lists that silently miss what a damaged block held.
		err = verifyBeforeOpen(dir, unclean, log)
	}
	var db *badger.DB
	if err == nil && !unclean {
		db, err = badger.Open(badgerOptions(dir, true, log))
		// Badger flattens its errors into strings, hence no errors.Is.
		if err != nil && strings.Contains(err.Error(), badger.ErrTruncateNeeded.Error()) {
			unclean, err = true, nil
		}
	}
	if err == nil && unclean {
		log.Info("journal was not closed cleanly; reading a private recovered copy")
		if dbDir, err = copyJournal(dir); err == nil {
			snapshot = true
			if db, err = badger.Open(badgerOptions(dbDir, false, log)); err != nil {
				_ = os.RemoveAll(dbDir)
			}
		}
	}
	if err != nil {
		_ = lock.release()
		return nil, fmt.Errorf("open journal %s read-only: %w", dir, err)
	}
	j := newJournal(dir, dbDir, db, log)
	j.readOnly, j.snapshot, j.lock, j.recovered = true, snapshot, lock, unclean
	err = j.load(false)
	if err == nil && snapshot {
		// The copy is recovered: it must keep every acknowledged op.
		err = checkDurable(dir, j.LastSeq(), log)
	}
	if err != nil {
		_ = j.closeDB()
		return nil, err
	}
	return j, nil
}

func newJournal(dir, dbDir string, db *badger.DB, log *slog.Logger) *Journal {
	return &Journal{
		dir:    dir,
		dbDir:  dbDir,
		db:     db,
		wal:    newWALSyncer(dbDir),
		log:    log,
		notify: make(chan struct{}),
	}
}

// load checks the format marker (writing it into a new journal when
// writable) and recovers LastSeq and the trim floor.
func (j *Journal) load(writable bool) error {
	var hasMarker, empty bool
	var first uint64
	err := j.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(keyFormat)
		switch {
		case errors.Is(err, badger.ErrKeyNotFound):
			it := txn.NewIterator(badger.IteratorOptions{})
			it.Rewind()
			empty = !it.Valid()
			it.Close()
		case err != nil:
			return err
		default:
			hasMarker = true
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			if err := checkFormat(v); err != nil {
				return err
			}
		}

		item, err = txn.Get(keyFloor)
		switch {
		case errors.Is(err, badger.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			if len(v) != 8 {
				return fmt.Errorf("%w: bad trim floor %x", errRecord, v)
			}
			j.floor.Store(binary.BigEndian.Uint64(v))
		}

		// Seqs are assigned in commit order without gaps, so the last key
		// is LastSeq. A journal trimmed empty keeps it in the floor.
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixOp}, Reverse: true})
		defer it.Close()
		it.Seek(opKey(math.MaxUint64))
		if it.Valid() {
			seq, ok := parseOpKey(it.Item().Key())
			if !ok {
				return fmt.Errorf("%w: bad op key %x", errRecord, it.Item().Key())
			}
			j.last.Store(seq)
		}
		if f := j.floor.Load(); f > 0 && f-1 > j.last.Load() {
			j.last.Store(f - 1)
		}
		fwd := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixOp}}) // keys and sizes only
		defer fwd.Close()
		fwd.Seek(opKey(max(j.floor.Load(), 1)))
		if fwd.Valid() {
			first, _ = parseOpKey(fwd.Item().Key())
		}
		// Only ops from the floor up count: any below it (a Trim cut
		// off by a crash wrote the floor, not every delete) are
		// invisible for good.
		var size int64
		for ; fwd.Valid(); fwd.Next() {
			size += recordSize(fwd.Item())
		}
		j.recordBytes.Store(size)
		return nil
	})
	if err != nil {
		return j.wrap("open", err)
	}
	if !hasMarker && !empty {
		return fmt.Errorf("open journal %s: %w (Badger database without a mirrorfs format marker)", j.dir, ErrForeign)
	}
	// Ops are contiguous above the floor; should any be missing at the
	// bottom, readers must not be told they are still there.
	if first > j.floor.Load() {
		j.floor.Store(first)
	}
	if !hasMarker && writable {
		v := binary.BigEndian.AppendUint32([]byte(formatMagic), formatVersion)
		if err := j.update(func(txn *badger.Txn) error { return txn.Set(keyFormat, v) }); err != nil {
			return j.wrap("open: write format marker", err)
		}
	}
	return nil
}

func checkFormat(v []byte) error {
	if len(v) != len(formatMagic)+4 || string(v[:len(formatMagic)]) != formatMagic {
		return fmt.Errorf("%w (bad format marker %q)", ErrForeign, v)
	}
	switch ver := binary.BigEndian.Uint32(v[len(formatMagic):]); {
	case ver == 0:
		return fmt.Errorf("%w (format version 0)", ErrForeign)
	case ver > formatVersion:
		return fmt.Errorf("journal format version %d is newer than this mirrorfs supports (%d); upgrade mirrorfs", ver, formatVersion)
	}
	return nil
}

// update runs fn in a transaction and makes it durable before returning.
func (j *Journal) update(fn func(*badger.Txn) error) error {
	if err := j.db.Update(fn); err != nil {
		return err
	}
	return j.wal.sync()
}

func (j *Journal) wrap(op string, err error) error {
	return fmt.Errorf("journal %s: %s: %w", j.dir, op, err)
}

// use takes the shared side of mu for a call that uses db.
func (j *Journal) use(op string) (release func(), err error) {
	j.mu.RLock()
	if j.closed {
		j.mu.RUnlock()
		return nil, j.wrap(op, ErrClosed)
	}
	return j.mu.RUnlock, nil
}

// Append journals op and returns the Seq it was given once the op is durable
// on disk. It sets op.Time to now when it is zero; op.Seq is ignored.
// Concurrent appends share one transaction and one sync (see submit).
//
// ctx is checked once, before the op is queued. Once queued, Append waits
// for the outcome, so that its answer is always true: an op that is in the
// journal is never reported as failed because the caller gave up early.
func (j *Journal) Append(ctx context.Context, op Op) (uint64, error) {
	return j.append(ctx, op, true)
}

// AppendUnsynced journals op like Append but returns once the op is written
// to the journal's write-ahead log, without waiting for that log to be
// synced: the op survives a crash of the daemon (the log's pages belong to
// the kernel), and reaches the disk with the sync that follows at once in
// the background, or with the next Append. A power loss can lose it. Readers
// see it only once it is on disk, in order with every other op.
//
// It is for an op whose loss in a power cut the caller has covered with an
// earlier durable one (see the fs package: later changes to a file whose
// first change since its last close was appended with Append).
func (j *Journal) AppendUnsynced(ctx context.Context, op Op) (uint64, error) {
	return j.append(ctx, op, false)
}

// Sync returns once every op appended so far is durable, as if the last of
// them had been appended with Append: for an fsync through the mount that
// has nothing of its own to journal.
func (j *Journal) Sync() error {
	if j.readOnly {
		return j.wrap("sync", ErrReadOnly)
	}
	release, err := j.use("sync")
	if err != nil {
		return err
	}
	defer release()
	if errp := j.failure.Load(); errp != nil {
		return *errp
	}
	if w := j.written.Load(); w > j.last.Load() {
		return j.syncTo(w)
	}
	return nil
}

func (j *Journal) append(ctx context.Context, op Op, sync bool) (uint64, error) {
	if j.readOnly {
		return 0, j.wrap("append", ErrReadOnly)
	}
	if !op.Kind.Valid() {
		return 0, j.wrap("append", fmt.Errorf("invalid op kind %v", op.Kind))
	}
	if op.Time == 0 {
		op.Time = time.Now().UnixNano()
	}
	body := appendBody(make([]byte, 0, bodySizeHint(op)), op)
	if n := maxHeader + len(body); n > maxRecordSize {
		return 0, j.wrap("append", fmt.Errorf("%v op of about %d bytes exceeds the %d-byte record limit", op.Kind, n, maxRecordSize))
	}
	if err := ctx.Err(); err != nil {
		return 0, j.wrap("append", err)
	}

	r := reqPool.Get().(*appendReq)
	r.kind, r.time, r.body, r.sync = op.Kind, op.Time, body, sync
	j.mu.RLock()
	if j.closed {
		j.mu.RUnlock()
		reqPool.Put(r)
		return 0, j.wrap("append", ErrClosed)
	}
	j.appending.Add(1)
	j.mu.RUnlock()

	err := j.submit(r)
	j.appending.Done()
	seq := r.seq
	*r = appendReq{done: r.done}
	reqPool.Put(r)
	if err != nil {
		return 0, j.wrap("append", err)
	}
	return seq, nil
}

// Read returns up to limit ops with Seq >= from, in seq order. Ops below the
// trim floor are never returned, even if Badger resurrects a deleted key:
// compare from with FirstSeq to know whether a cursor fell out of retention.
// Only acknowledged ops are returned.
func (j *Journal) Read(from uint64, limit int) ([]Op, error) {
	if limit <= 0 {
		return nil, j.wrap("read", fmt.Errorf("limit %d must be positive", limit))
	}
	release, err := j.use("read")
	if err != nil {
		return nil, err
	}
	defer release()

	last := j.last.Load()
	from = max(from, j.floor.Load(), 1)
	if from > last {
		return nil, nil
	}
	ops := make([]Op, 0, min(uint64(limit), last-from+1, 1024))
	err = j.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixOp}})
		defer it.Close()
		for it.Seek(opKey(from)); it.Valid() && len(ops) < limit; it.Next() {
			item := it.Item()
			seq, ok := parseOpKey(item.Key())
			if !ok {
				return fmt.Errorf("%w: bad op key %x", errRecord, item.Key())
			}
			if seq > last {
				break
			}
			var op Op
			if err := item.Value(func(v []byte) (err error) {
				op, err = Decode(v)
				return err
			}); err != nil {
				return fmt.Errorf("op %d: %w", seq, err)
			}
			if op.Seq != seq {
				return fmt.Errorf("%w: op stored under seq %d says seq %d", errRecord, seq, op.Seq)
			}
			ops = append(ops, op)
		}
		return nil
	})
	if err != nil {
		return nil, j.wrap("read", err)
	}
	return ops, nil
}

// LastSeq returns the highest acknowledged Seq, 0 if nothing was ever
// appended. It never decreases, not even across Trim or a restart.
func (j *Journal) LastSeq() uint64 { return j.last.Load() }

// FirstSeq returns the lowest Seq still stored, 0 if nothing was ever
// appended. When every op was trimmed it returns LastSeq()+1, the next seq to
// come: a cursor can follow the journal exactly when
// cursor.Applied+1 >= FirstSeq().
func (j *Journal) FirstSeq() uint64 {
	last := j.last.Load()
	if last == 0 {
		return 0
	}
	return min(max(j.floor.Load(), 1), last+1)
}

// Wait blocks until LastSeq() > after, ctx is done (returning ctx.Err()) or
// the journal is closed (ErrClosed).
func (j *Journal) Wait(ctx context.Context, after uint64) error {
	for {
		if j.last.Load() > after {
			return nil
		}
		j.notifyMu.Lock()
		ch := j.notify
		j.notifyMu.Unlock()
		// The committer stores LastSeq before it closes ch: checking again
		// after taking ch cannot miss a commit.
		if j.last.Load() > after {
			return nil
		}
		if j.isClosed.Load() {
			return j.wrap("wait", ErrClosed)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (j *Journal) broadcast() {
	j.notifyMu.Lock()
	close(j.notify)
	j.notify = make(chan struct{})
	j.notifyMu.Unlock()
}

func checkWorker(worker string) error {
	if worker == "" || len(worker) > maxWorkerName {
		return fmt.Errorf("worker name %q: must be 1 to %d bytes", worker, maxWorkerName)
	}
	return nil
}

// Cursor returns worker's cursor; ok is false if it never had one.
func (j *Journal) Cursor(worker string) (c Cursor, ok bool, err error) {
	if err := checkWorker(worker); err != nil {
		return Cursor{}, false, j.wrap("cursor", err)
	}
	release, err := j.use("cursor")
	if err != nil {
		return Cursor{}, false, err
	}
	defer release()
	err = j.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(cursorKey(worker))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		ok = true
		return item.Value(func(v []byte) (err error) {
			c, err = decodeCursor(v)
			return err
		})
	})
	if err != nil {
		return Cursor{}, false, j.wrap("cursor "+worker, err)
	}
	return c, ok, nil
}

// SetCursor stores worker's cursor. When it returns, the cursor survives a
// crash of the daemon (it is in the write-ahead log's pages); the background
// sync puts it on disk right after, so a shipper that advances its cursor
// after every batch does not pay a disk flush for each. A power cut can set
// a cursor back to an earlier batch: the daemon then sees an unclean stop
// and compares every worker with the store anyway. A cursor beyond LastSeq
// is refused: it would make the worker skip ops appended later.
func (j *Journal) SetCursor(worker string, c Cursor) error {
	if err := checkWorker(worker); err != nil {
		return j.wrap("set cursor", err)
	}
	if j.readOnly {
		return j.wrap("set cursor "+worker, ErrReadOnly)
	}
	release, err := j.use("set cursor " + worker)
	if err != nil {
		return err
	}
	defer release()
	if last := j.last.Load(); c.Applied > last {
		return j.wrap("set cursor "+worker, fmt.Errorf("applied %d is beyond the last seq %d", c.Applied, last))
	}
	err = j.db.Update(func(txn *badger.Txn) error {
		return txn.Set(cursorKey(worker), encodeCursor(c))
	})
	if err != nil {
		return j.wrap("set cursor "+worker, err)
	}
	j.unsyncedMeta.Store(true)
	j.wakeSyncer()
	return nil
}

// Cursors returns every worker's cursor.
func (j *Journal) Cursors() (map[string]Cursor, error) {
	release, err := j.use("cursors")
	if err != nil {
		return nil, err
	}
	defer release()
	cs := map[string]Cursor{}
	err = j.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixCursor}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			worker := string(item.Key()[1:])
			if err := item.Value(func(v []byte) error {
				c, err := decodeCursor(v)
				cs[worker] = c
				return err
			}); err != nil {
				return fmt.Errorf("cursor %s: %w", worker, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, j.wrap("cursors", err)
	}
	return cs, nil
}

// Trim deletes the ops with Seq < below and returns how many it deleted.
// below is capped at LastSeq()+1; everything >= below stays. The new floor
// is written (synced) before the deletes, so readers stop seeing the trimmed
// ops at once and for good, even if Badger were to resurrect deleted keys.
func (j *Journal) Trim(below uint64) (int, error) {
	if j.readOnly {
		return 0, j.wrap("trim", ErrReadOnly)
	}
	release, err := j.use("trim")
	if err != nil {
		return 0, err
	}
	defer release()
	j.trimMu.Lock()
	defer j.trimMu.Unlock()

	below = min(below, j.last.Load()+1)
	old := j.floor.Load()
	if below <= old {
		return 0, nil
	}
	floor := binary.BigEndian.AppendUint64(nil, below)
	if err := j.update(func(txn *badger.Txn) error { return txn.Set(keyFloor, floor) }); err != nil {
		return 0, j.wrap("trim", err)
	}
	j.floor.Store(below)

	// Ops in [old, below) are all that readers could see; anything lower
	// was deleted by an earlier Trim and is invisible whatever happens to it.
	wb := j.db.NewWriteBatch()
	defer wb.Cancel()
	n, freed := 0, int64(0)
	err = j.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixOp}})
		defer it.Close()
		for it.Seek(opKey(old)); it.Valid(); it.Next() {
			k := it.Item().KeyCopy(nil)
			if seq, ok := parseOpKey(k); !ok || seq >= below {
				break
			}
			if err := wb.Delete(k); err != nil {
				return err
			}
			n++
			freed += recordSize(it.Item())
		}
		return nil
	})
	if err == nil {
		err = wb.Flush()
	}
	if err != nil {
		return 0, j.wrap("trim", err)
	}
	j.recordBytes.Add(-freed)
	j.log.Debug("journal trimmed", "below", below, "deleted", n)
	return n, nil
}

// recordSize is what an op's record counts in RecordBytes.
func recordSize(item *badger.Item) int64 {
	return int64(item.KeySize()) + item.ValueSize()
}

// RecordBytes returns the size of the ops the journal stores (keys and
// values): what a disk budget can act on. Trimming lowers it at once,
// while the disk blocks (Size) of trimmed ops are freed only when Badger
// compacts its tables, which can take long: 1.7 million ops (67.5 MB of
// disk) trimmed at once left 82.4 MB on disk, and 66.7–69.1 MB in the
// minute after (BENCHMARKS.md).
func (j *Journal) RecordBytes() int64 { return j.recordBytes.Load() }

// Size returns the bytes the journal occupies on disk (blocks allocated to
// its LSM tree, write-ahead and value logs), which is what a disk budget
// must count.
func (j *Journal) Size() (int64, error) {
	release, err := j.use("size")
	if err != nil {
		return 0, err
	}
	defer release()
	n, err := diskUsage(j.dir)
	if err != nil {
		return 0, j.wrap("size", err)
	}
	return n, nil
}

// Close waits for in-flight appends to be committed and answered, then
// closes the journal. Calls after Close return ErrClosed; Close itself may be
// called again and returns nil.
func (j *Journal) Close() error {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil
	}
	j.closed = true
	j.isClosed.Store(true)
	j.mu.Unlock()

	// No append starts now: each checks closed under mu shared.
	j.appending.Wait()
	if j.syncWake != nil {
		close(j.syncWake) // syncLoop still takes a wake sent before: the last groups get synced
		<-j.synced
	}
	j.broadcast() // wake Wait callers so they see the journal closed
	if err := j.closeDB(); err != nil {
		return j.wrap("close", err)
	}
	return nil
}

func (j *Journal) closeDB() error {
	j.wal.close()
	err := j.db.Close()
	if j.mark != nil {
		err = errors.Join(err, j.mark.close())
	}
	if j.snapshot {
		err = errors.Join(err, os.RemoveAll(j.dbDir))
	}
	if j.lock != nil {
		err = errors.Join(err, j.lock.release())
	}
	return err
}
