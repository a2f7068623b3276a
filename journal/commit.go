package journal

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// appendReq is one Append waiting in the commit queue.
type appendReq struct {
	kind Kind
	time int64
	body []byte // appendBody of the op; the leader adds the header
	sync bool   // answer after the sync (Append), not after the commit (AppendUnsynced)
	seq  uint64 // set by the leader
	size int64  // of its record, key and value; set by the leader
	// done receives the append's result, or errLead when the request is
	// to commit the queue itself. It holds at most one of them at a time.
	done chan error
}

var reqPool = sync.Pool{New: func() any { return &appendReq{done: make(chan error, 1)} }}

// errLead, sent to a queued request, hands it the commit: see submit.
var errLead = errors.New("journal: lead the next group commit")

// submit queues r and returns its result. Appends commit on their own
// goroutines: the first to find no commit under way leads, that is, takes
// every request queued so far (its own included), writes them in one Badger
// transaction, syncs Badger's write-ahead log once (walSyncer) and answers
// them all. Requests that arrive meanwhile queue up; the leader then hands
// the next commit to the oldest of them, whose group shares one sync. An
// append alone thus pays for its own sync and waits for nothing else, and
// hands nothing to another goroutine: a FUSE request that appends wakes no
// other thread on its way (a dedicated committer goroutine cost two
// wake-ups per append, about an eighth of a tar -x through the mount).
//
// A group of AppendUnsynced requests only is answered once committed, and
// syncLoop syncs it in the background. The leader assigns seqs itself, in
// commit order: Badger's Sequence leases ranges, leaves gaps after a crash
// and does not order concurrent Next calls by commit.
func (j *Journal) submit(r *appendReq) error {
	j.queueMu.Lock()
	j.queue = append(j.queue, r)
	lead := !j.leading
	j.leading = true
	j.queueMu.Unlock()
	if lead {
		j.lead()
	}
	for {
		err := <-r.done
		if err != errLead {
			return err
		}
		j.lead() // commits r among others; its result follows on done
	}
}

// lead commits one group: the oldest requests queued, up to maxGroup. Then
// it hands the lead to the oldest request still queued, or ends it.
func (j *Journal) lead() {
	j.queueMu.Lock()
	n := min(len(j.queue), maxGroup)
	group := append(j.group[:0], j.queue[:n]...)
	rest := copy(j.queue, j.queue[n:])
	clear(j.queue[rest:])
	j.queue = j.queue[:rest]
	j.queueMu.Unlock()

	j.commitGroup(group)
	clear(group)
	j.group = group[:0]

	j.queueMu.Lock()
	var next *appendReq
	if len(j.queue) > 0 {
		next = j.queue[0]
	} else {
		j.leading = false
	}
	j.queueMu.Unlock()
	if next != nil {
		next.done <- errLead
	}
}

func (j *Journal) commitGroup(group []*appendReq) {
	if errp := j.failure.Load(); errp != nil {
		answer(group, *errp)
		return
	}
	seq := j.written.Load()
	txn := j.db.NewTransaction(true)
	start := 0 // group[start:] is not yet committed
	for i, r := range group {
		seq++
		r.seq = seq
		v := appendHeader(make([]byte, 0, maxHeader+len(r.body)), r.kind, seq, r.time)
		e := badger.NewEntry(opKey(seq), append(v, r.body...))
		r.size = int64(len(e.Key) + len(e.Value))
		err := txn.SetEntry(e)
		if errors.Is(err, badger.ErrTxnTooBig) {
			// Rare: the group outgrew one transaction. Commit what fits
			// (one more sync) and go on in a new one.
			if err := j.commitTxn(txn, group[start:i]); err != nil {
				answer(group[i:], err)
				return
			}
			j.splits.Add(1)
			start = i
			txn = j.db.NewTransaction(true)
			err = txn.SetEntry(e)
		}
		if err != nil {
			// Nothing of group[start:] was written: refuse it, but the
			// journal itself is fine.
			txn.Discard()
			answer(group[start:], err)
			return
		}
	}
	_ = j.commitTxn(txn, group[start:])
}

// commitTxn commits txn holding part's ops and answers part: after a sync
// when one of them asked for it, else at once, leaving the sync to syncLoop.
func (j *Journal) commitTxn(txn *badger.Txn, part []*appendReq) error {
	if err := txn.Commit(); err != nil {
		err = j.fail(err)
		answer(part, err)
		return err
	}
	last := part[len(part)-1].seq
	j.written.Store(last)
	var size int64
	for _, r := range part {
		size += r.size
	}
	j.recordBytes.Add(size)
	j.commits.Add(1)
	j.appends.Add(uint64(len(part)))
	if !slices.ContainsFunc(part, func(r *appendReq) bool { return r.sync }) {
		// The ops are in the write-ahead log's pages, which outlive the
		// daemon; syncLoop gets them to the disk and shows them to readers.
		answer(part, nil)
		j.wakeSyncer()
		return nil
	}
	err := j.syncTo(last)
	answer(part, err)
	return err
}

// syncTo makes every op committed up to seq durable, then publishes them:
// records them in DURABLE and lets readers see them. Readers (shippers,
// cursors) never see an op that is not yet on disk, so no cursor can ever
// point past what a power loss leaves of the journal.
func (j *Journal) syncTo(seq uint64) error {
	if err := j.wal.sync(); err != nil {
		return j.fail(err)
	}
	j.syncs.Add(1)
	j.lastSync.Store(monoNow())
	j.pubMu.Lock()
	defer j.pubMu.Unlock()
	if seq <= j.last.Load() {
		return nil // a concurrent sync covered it and published more
	}
	if j.mark != nil {
		if err := j.mark.set(seq); err != nil {
			// Only the check after a crash loses its reference point.
			j.log.Warn("cannot record the last durable op", "file", durableName, "err", err)
		}
	}
	j.last.Store(seq)
	j.broadcast()
	return nil
}

// syncGap is the least time syncLoop leaves between two syncs. A sync costs
// the disk a cache flush; one per commit made a tar -x through the mount
// flush about once per 0.2 ms. After a quiet spell the sync follows the
// commit at once; under load the unsynced commits of up to syncGap share
// one. An op waiting there is invisible to shippers, so this adds at most
// syncGap to a change's replication lag, and nothing when a durable Append
// follows it.
const syncGap = 2 * time.Millisecond

// syncLoop syncs what AppendUnsynced groups committed, beside the committer
// instead of in front of the next append; each sync covers every group
// committed before it.
func (j *Journal) syncLoop() {
	defer close(j.synced)
	for range j.syncWake {
		// At most syncGap, whatever lastSync says: a wait measured
		// on the wall clock lasted as long as the clock was stepped
		// back, with every op behind it invisible to the shippers.
		if wait := syncGap - time.Duration(monoNow()-j.lastSync.Load()); wait > 0 {
			time.Sleep(min(wait, syncGap))
		}
		j.syncPending()
	}
}

// started is this process's start, with a monotonic clock reading.
var started = time.Now()

// monoNow is the time since started in nanoseconds, on the monotonic
// clock, which no step of the wall clock moves.
func monoNow() int64 { return int64(time.Since(started)) }

// syncPending syncs and publishes every committed op not yet durable, and
// syncs a cursor written since the last sync.
func (j *Journal) syncPending() {
	cursor := j.unsyncedMeta.Swap(false)
	if w := j.written.Load(); (w > j.last.Load() || cursor) && j.failure.Load() == nil {
		_ = j.syncTo(w) // a failure is logged, and later appends refuse
	}
}

// wakeSyncer asks syncLoop for a sync; a request already pending covers it.
func (j *Journal) wakeSyncer() {
	select {
	case j.syncWake <- struct{}{}:
	default:
	}
}

// fail makes the journal refuse every later append. After a failed commit
// nobody knows what reached the disk (a failed fsync cannot be retried
// safely), and seqs of a half-applied transaction must not be handed out
// again. A restart recovers from what is on disk.
func (j *Journal) fail(err error) error {
	err = fmt.Errorf("commit failed, journal refuses appends until reopened: %w", err)
	if j.failure.CompareAndSwap(nil, &err) {
		j.log.Error("journal commit failed", "err", err)
	}
	return *j.failure.Load()
}

func answer(reqs []*appendReq, err error) {
	for _, r := range reqs {
		r.done <- err
	}
}

// walSyncer makes what Badger committed durable, in place of Badger's
// SyncWrites. With SyncWrites, Badger msyncs the memtable's write-ahead log
// after each transaction (db.writeToLSM -> memTable.SyncWAL), but also the
// value log (a deferred curlf.Sync in valueLog.write, whose error it only
// logs), although no journal record ever goes there; on ext4, syncing even
// an unchanged file costs a device cache flush, so every commit paid two
// flushes, one of them useless.
//
// Badger writes a transaction into the current memtable's log, NNNNN.mem,
// through a shared mapping (logFile.writeEntry on a z.MmapFile): once Commit
// returns, the entries are in the page cache, and fdatasync on any
// descriptor of the file writes them to disk, as Badger's own
// msync(MS_SYNC) would. A log stops receiving writes once a newer one exists
// (memtable rotation); it is synced once more, then left to Badger, which
// flushes it into a synced table before deleting it. The directory is synced
// when a new log appears: ristretto's z.OpenMmapFileUsing skips its SyncDir
// for files created with a size, so a power loss could otherwise drop the
// file of a fresh memtable with acknowledged ops in it.
//
// TestWALHoldsAppendedOps checks the layout this relies on.
type walSyncer struct {
	mu   sync.Mutex
	dir  string
	d    *os.File         // dir, kept open: listed after every commit
	open map[int]*os.File // fid -> log not yet known to be final
	done int              // logs with fid <= done are final and synced
}

func newWALSyncer(dir string) *walSyncer {
	return &walSyncer{dir: dir, open: map[int]*os.File{}, done: -1}
}

// sync makes everything Badger committed so far durable.
func (s *walSyncer) sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.d == nil {
		d, err := os.Open(s.dir)
		if err != nil {
			return err
		}
		s.d = d
	}
	if _, err := s.d.Seek(0, io.SeekStart); err != nil {
		return err
	}
	names, err := s.d.Readdirnames(-1)
	if err != nil {
		return err
	}
	newest, fresh := -1, false
	for _, n := range names {
		fid, ok := walFid(n)
		if !ok {
			continue
		}
		newest = max(newest, fid)
		if fid <= s.done || s.open[fid] != nil {
			continue
		}
		f, err := os.Open(filepath.Join(s.dir, n))
		if errors.Is(err, fs.ErrNotExist) {
			continue // flushed into a synced table and deleted meanwhile
		}
		if err != nil {
			return err
		}
		s.open[fid], fresh = f, true
	}
	if newest < 0 {
		// Badger always has a live memtable log; without one the layout
		// this relies on has changed, and nothing would be durable.
		return fmt.Errorf("no write-ahead log (*.mem) in %s", s.dir)
	}
	for fid, f := range s.open {
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return fmt.Errorf("sync %s: %w", f.Name(), err)
		}
		if fid < newest { // final: Badger writes only to the newest log
			f.Close()
			delete(s.open, fid)
			s.done = max(s.done, fid)
		}
	}
	if fresh {
		if err := s.d.Sync(); err != nil {
			return fmt.Errorf("sync directory %s: %w", s.dir, err)
		}
	}
	return nil
}

func (s *walSyncer) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for fid, f := range s.open {
		f.Close()
		delete(s.open, fid)
	}
	if s.d != nil {
		s.d.Close()
		s.d = nil
	}
}

func walFid(name string) (int, bool) {
	base, ok := strings.CutSuffix(name, ".mem")
	if !ok {
		return 0, false
	}
	fid, err := strconv.Atoi(base)
	return fid, err == nil
}
