package journal

import (
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"
)

// This file is the read-only inspection behind `mirrorfs journal stats|ls|
// show`: what each worker still lacks, oldest first. It uses only the read
// methods of *Journal (Read, LastSeq, FirstSeq, Cursors, Size), so it runs
// as well on the daemon's live journal as on one opened with
// Options.ReadOnly, and never writes. Ops are streamed with Read in pages
// of InspectOptions.PageSize: memory grows with the number of ops listed
// (Limit) and, for Inspect, of distinct files with pending data, never with
// the length of the journal.

// DefaultPageSize is how many ops one Read of an inspection fetches.
const DefaultPageSize = 4096

// DefaultListLimit is how many ops List returns when Limit is 0;
// MaxListLimit is the most it accepts.
const (
	DefaultListLimit = 1000
	MaxListLimit     = 100000
)

// InputError is a bad option of an inspection, one the caller supplied
// (the control socket answers it with 400 Bad Request). Param names the
// option as the control socket's query spells it: "worker", "path",
// "limit", "from" or "seq".
type InputError struct {
	Param string
	Err   error
}

func (e *InputError) Error() string { return e.Param + ": " + e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

// ErrSeqRange is wrapped by Show's error for a seq that is not stored:
// trimmed already, or never appended.
var ErrSeqRange = errors.New("seq is not in the journal")

// InspectOptions select what Inspect, List and Show look at.
type InspectOptions struct {
	// Worker restricts Inspect to that worker and makes List show the ops
	// it lacks. It must be one of the workers passed. "" means every
	// worker; List then shows the ops at least one worker lacks.
	Worker string
	// Path keeps only ops whose Path or NewPath matches this glob (see
	// MatchPath). "" keeps every op.
	Path string
	// Limit caps List's entries: 0 means DefaultListLimit, at most
	// MaxListLimit.
	Limit int
	// From makes List start at this seq instead of the first pending one
	// (to page on with Listing.NextFrom); ops before the cursor stay out.
	From uint64
	// Now is the instant ages are measured from; zero means time.Now().
	Now time.Time
	// PageSize is how many ops each Read fetches; 0 means DefaultPageSize.
	PageSize int
}

// WorkerStats is what one worker lacks, as Inspect reports it.
type WorkerStats struct {
	Name string `json:"name"`
	// HasCursor is false for a worker that never had a position: it gets a
	// full copy of the store first.
	HasCursor bool `json:"has_cursor"`
	// Applied is the cursor: every op up to it is on the worker. With
	// FullSync it is where the journal resumes after the full copy.
	Applied  uint64 `json:"applied"`
	FullSync bool   `json:"full_sync"`
	// NeedsFullCopy: no cursor, FullSync, or a cursor below the journal's
	// retention (ops it lacks were trimmed). FullCopyReason says which.
	NeedsFullCopy  bool   `json:"needs_full_copy"`
	FullCopyReason string `json:"full_copy_reason,omitempty"`
	// Pending counts the stored ops after the cursor (that match Path).
	Pending uint64 `json:"pending"`
	// OldestSeq, OldestTime and OldestAgeSeconds describe the first of
	// them; OldestSeq is 0 when nothing is pending.
	OldestSeq        uint64    `json:"oldest_seq"`
	OldestTime       time.Time `json:"oldest_time,omitzero"`
	OldestAgeSeconds float64   `json:"oldest_age_seconds"`
	// DataBytes sums Length over the pending write, copy_range and
	// fallocate ops; DataFiles counts the distinct files they touch.
	DataBytes int64  `json:"data_bytes"`
	DataFiles uint64 `json:"data_files"`
	// ByKind counts the pending ops by Kind.String().
	ByKind map[string]uint64 `json:"by_kind"`
}

// Stats is Inspect's answer.
type Stats struct {
	FirstSeq  uint64 `json:"first_seq"`
	LastSeq   uint64 `json:"last_seq"`
	Stored    uint64 `json:"stored"`     // ops between FirstSeq and LastSeq
	SizeBytes int64  `json:"size_bytes"` // Journal.Size: disk blocks used
	// RecordBytes is Journal.RecordBytes: the records stored, which is
	// what journal.max_bytes limits.
	RecordBytes int64         `json:"record_bytes"`
	Path        string        `json:"path,omitempty"`
	Now         time.Time     `json:"now"`
	Workers     []WorkerStats `json:"workers"`
}

// Entry is one op as the journal tools show it: every field of Op (Kind
// by name, Time as a timestamp) plus its age, the data bytes it stands
// for and the workers lacking it.
type Entry struct {
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	AgeSeconds float64   `json:"age_seconds"`
	Kind       string    `json:"kind"`
	File       uint64    `json:"file"`
	Path       string    `json:"path"`
	NewPath    string    `json:"new_path"`
	Target     string    `json:"target"`
	Offset     int64     `json:"offset"`
	Length     int64     `json:"length"`
	Size       int64     `json:"size"`
	Mode       uint32    `json:"mode"`
	UID        uint32    `json:"uid"`
	GID        uint32    `json:"gid"`
	Rdev       uint64    `json:"rdev"`
	Atime      int64     `json:"atime"` // Unix nanoseconds, as in Op
	Mtime      int64     `json:"mtime"` // Unix nanoseconds, as in Op
	Mask       uint32    `json:"mask"`
	Flags      uint32    `json:"flags"`
	XattrName  string    `json:"xattr_name"`
	XattrValue []byte    `json:"xattr_value"` // base64 in JSON
	// DataBytes is Length for write, copy_range and fallocate, else 0.
	DataBytes int64 `json:"data_bytes"`
	// Lacking names the workers (of those inspected) that do not have
	// this op yet, in the order given.
	Lacking []string `json:"lacking"`
}

// Op returns the journal op e shows.
func (e Entry) Op() Op {
	return Op{
		Seq: e.Seq, Time: e.Time.UnixNano(), Kind: ParseKind(e.Kind),
		File: e.File, Path: e.Path, NewPath: e.NewPath, Target: e.Target,
		Offset: e.Offset, Length: e.Length, Size: e.Size,
		Mode: e.Mode, UID: e.UID, GID: e.GID, Rdev: e.Rdev,
		Atime: e.Atime, Mtime: e.Mtime, Mask: e.Mask, Flags: e.Flags,
		XattrName: e.XattrName, XattrValue: e.XattrValue,
	}
}

// ParseKind is the inverse of Kind.String; unknown names give KindInvalid.
func ParseKind(s string) Kind {
	for k := Kind(1); k.Valid(); k++ {
		if k.String() == s {
			return k
		}
	}
	if n, ok := strings.CutPrefix(s, "kind("); ok {
		if v, err := strconv.ParseUint(strings.TrimSuffix(n, ")"), 10, 8); err == nil {
			return Kind(v)
		}
	}
	return KindInvalid
}

// Listing is List's answer.
type Listing struct {
	Worker   string    `json:"worker,omitempty"`
	Path     string    `json:"path,omitempty"`
	From     uint64    `json:"from"` // the first seq considered
	FirstSeq uint64    `json:"first_seq"`
	LastSeq  uint64    `json:"last_seq"`
	Limit    int       `json:"limit"`
	Now      time.Time `json:"now"`
	Entries  []Entry   `json:"entries"`
	// More counts the matching ops after the last entry that Limit left
	// out; NextFrom is the From that lists them (0 when More is 0).
	More     uint64 `json:"more"`
	NextFrom uint64 `json:"next_from,omitempty"`
}

// WorkerOp says whether one worker has an op, in Show's answer.
type WorkerOp struct {
	Name      string `json:"name"`
	HasCursor bool   `json:"has_cursor"`
	Applied   uint64 `json:"applied"`
	FullSync  bool   `json:"full_sync"`
	// Lacks: the op is after the cursor, or the worker awaits a full copy
	// (no cursor, FullSync): until that copy is done it lacks everything.
	Lacks  bool   `json:"lacks"`
	Reason string `json:"reason"`
}

// Detail is Show's answer.
type Detail struct {
	FirstSeq uint64     `json:"first_seq"`
	LastSeq  uint64     `json:"last_seq"`
	Now      time.Time  `json:"now"`
	Op       Entry      `json:"op"`
	Workers  []WorkerOp `json:"workers"`
}

// position is one worker's cursor as the inspection sees it.
type position struct {
	name     string
	has      bool
	cursor   Cursor
	fullCopy string // why it needs a full copy; "" if it does not
}

// lacks reports whether the worker lacks op seq.
func (p position) lacks(seq uint64) bool {
	return !p.has || p.cursor.FullSync || seq > p.cursor.Applied
}

// snapshot reads the cursors of workers, then LastSeq and FirstSeq, in
// that order: no cursor read can be beyond the LastSeq returned.
func snapshot(j *Journal, workers []string) (pos []position, first, last uint64, err error) {
	cs, err := j.Cursors()
	if err != nil {
		return nil, 0, 0, err
	}
	last, first = j.LastSeq(), j.FirstSeq()
	for _, w := range workers {
		c, ok := cs[w]
		p := position{name: w, has: ok, cursor: c}
		switch {
		case !ok:
			p.fullCopy = "no cursor yet"
		case c.FullSync:
			p.fullCopy = "marked for a full copy"
		case j.readOnly && j.recovered:
			// No daemon runs; the next one marks every worker.
			p.fullCopy = "the daemon did not stop cleanly: every worker is compared with the store at its next start"
		case first > 0 && c.Applied+1 < first:
			p.fullCopy = fmt.Sprintf("cursor #%d is below the journal's first op #%d", c.Applied, first)
		}
		pos = append(pos, p)
	}
	return pos, first, last, nil
}

// selectWorker returns pos, or only the entry of worker when it is set.
func selectWorker(pos []position, worker string) ([]position, error) {
	if worker == "" {
		return pos, nil
	}
	names := make([]string, 0, len(pos))
	for _, p := range pos {
		if p.name == worker {
			return []position{p}, nil
		}
		names = append(names, p.name)
	}
	known := "none are configured"
	if len(names) > 0 {
		known = "known workers: " + strings.Join(names, ", ")
	}
	return nil, &InputError{"worker", fmt.Errorf("no worker %q (%s)", worker, known)}
}

// PathMatcher returns the match function of glob for MatchPath, or an
// InputError for a malformed glob.
func PathMatcher(glob string) (func(Op) bool, error) {
	g := normGlob(glob)
	if g == "" {
		return func(Op) bool { return true }, nil
	}
	if _, err := path.Match(g, ""); err != nil {
		return nil, &InputError{"path", fmt.Errorf("bad glob %q: %w", glob, err)}
	}
	return func(op Op) bool {
		return matchOne(g, op.Path) || (op.NewPath != "" && matchOne(g, op.NewPath))
	}, nil
}

// MatchPath reports whether op's Path or NewPath matches glob, as the
// journal tools' --path does. Paths are relative to the store root
// ("htdocs/index.html"); a leading "/" or "./" and a trailing "/" of glob
// are ignored. glob is matched with path.Match against the whole path and
// against each of its parent directories, so "htdocs" or "htdocs/img*"
// also match everything below them. "" matches every op. A malformed glob
// matches nothing.
func MatchPath(glob string, op Op) bool {
	m, err := PathMatcher(glob)
	return err == nil && m(op)
}

func normGlob(glob string) string {
	g := strings.TrimLeft(glob, "/")
	for strings.HasPrefix(g, "./") {
		g = strings.TrimLeft(g[2:], "/")
	}
	if g == "." {
		return ""
	}
	return strings.TrimRight(g, "/")
}

func matchOne(glob, p string) bool {
	if p == "" {
		return false
	}
	if ok, _ := path.Match(glob, p); ok {
		return true
	}
	for i := 0; i < len(p); i++ {
		if p[i] == '/' {
			if ok, _ := path.Match(glob, p[:i]); ok {
				return true
			}
		}
	}
	return false
}

// scan calls fn with each stored op with from <= Seq <= upto, in seq order,
// reading pageSize ops at a time, until fn returns false.
func scan(j *Journal, from, upto uint64, pageSize int, fn func(Op) bool) error {
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	for from <= upto {
		ops, err := j.Read(from, pageSize)
		if err != nil {
			return err
		}
		if len(ops) == 0 {
			return nil
		}
		for _, op := range ops {
			if op.Seq > upto || !fn(op) {
				return nil
			}
		}
		from = ops[len(ops)-1].Seq + 1
	}
	return nil
}

// isData reports whether op stands for file data to ship.
func isData(k Kind) bool {
	return k == KindWrite || k == KindCopyRange || k == KindFallocate
}

func now(opts InspectOptions) time.Time {
	if opts.Now.IsZero() {
		return time.Now()
	}
	return opts.Now
}

func age(now time.Time, t int64) float64 {
	return max(0, now.Sub(time.Unix(0, t)).Seconds())
}

// NewEntry returns op as an Entry, its age measured at now and lacking
// left nil.
func NewEntry(op Op, now time.Time) Entry {
	e := Entry{
		Seq: op.Seq, Time: time.Unix(0, op.Time), AgeSeconds: age(now, op.Time),
		Kind: op.Kind.String(), File: op.File, Path: op.Path, NewPath: op.NewPath, Target: op.Target,
		Offset: op.Offset, Length: op.Length, Size: op.Size,
		Mode: op.Mode, UID: op.UID, GID: op.GID, Rdev: op.Rdev,
		Atime: op.Atime, Mtime: op.Mtime, Mask: op.Mask, Flags: op.Flags,
		XattrName: op.XattrName, XattrValue: op.XattrValue,
	}
	if isData(op.Kind) {
		e.DataBytes = op.Length
	}
	return e
}

func lacking(pos []position, seq uint64) []string {
	out := []string{}
	for _, p := range pos {
		if p.lacks(seq) {
			out = append(out, p.name)
		}
	}
	return out
}

// Inspect reports, for each of workers (the configured worker names, in
// the order to report them) or only opts.Worker, what it lacks: the
// stored ops after its cursor that match opts.Path. It reads the journal
// once, from the lowest of those cursors to the LastSeq it started at.
func Inspect(j *Journal, workers []string, opts InspectOptions) (Stats, error) {
	match, err := PathMatcher(opts.Path)
	if err != nil {
		return Stats{}, err
	}
	all, first, last, err := snapshot(j, workers)
	if err != nil {
		return Stats{}, err
	}
	pos, err := selectWorker(all, opts.Worker)
	if err != nil {
		return Stats{}, err
	}
	size, err := j.Size()
	if err != nil {
		return Stats{}, err
	}
	st := Stats{FirstSeq: first, LastSeq: last, SizeBytes: size, RecordBytes: j.RecordBytes(), Path: opts.Path, Now: now(opts)}
	if last >= first && first > 0 {
		st.Stored = last - first + 1
	}
	from := last + 1
	for _, p := range pos {
		st.Workers = append(st.Workers, WorkerStats{
			Name: p.name, HasCursor: p.has, Applied: p.cursor.Applied, FullSync: p.cursor.FullSync,
			NeedsFullCopy: p.fullCopy != "", FullCopyReason: p.fullCopy, ByKind: map[string]uint64{},
		})
		from = min(from, p.cursor.Applied+1)
	}
	// The last data op of each file: a worker lacks data of the file iff
	// its cursor is below that seq. One map serves every worker.
	type fileKey struct {
		file uint64
		path string // only for an op without a file identity
	}
	lastData := map[fileKey]uint64{}
	err = scan(j, from, last, opts.PageSize, func(op Op) bool {
		if !match(op) {
			return true
		}
		if isData(op.Kind) {
			k := fileKey{file: op.File}
			if op.File == 0 {
				k.path = op.Path
			}
			lastData[k] = op.Seq
		}
		for i, p := range pos {
			if op.Seq <= p.cursor.Applied {
				continue
			}
			ws := &st.Workers[i]
			if ws.Pending == 0 {
				ws.OldestSeq = op.Seq
				ws.OldestTime = time.Unix(0, op.Time)
				ws.OldestAgeSeconds = age(st.Now, op.Time)
			}
			ws.Pending++
			ws.ByKind[op.Kind.String()]++
			if isData(op.Kind) {
				ws.DataBytes += op.Length
			}
		}
		return true
	})
	if err != nil {
		return Stats{}, err
	}
	for _, seq := range lastData {
		for i, p := range pos {
			if seq > p.cursor.Applied {
				st.Workers[i].DataFiles++
			}
		}
	}
	return st, nil
}

// List returns the stored ops that opts.Worker lacks (with no Worker: that
// at least one of workers lacks, i.e. after the lowest cursor) and that
// match opts.Path, oldest first, at most opts.Limit of them, counting in
// Listing.More those the limit left out.
func List(j *Journal, workers []string, opts InspectOptions) (Listing, error) {
	limit := opts.Limit
	switch {
	case limit < 0:
		return Listing{}, &InputError{"limit", fmt.Errorf("%d: must be positive (0 means %d)", limit, DefaultListLimit)}
	case limit == 0:
		limit = DefaultListLimit
	case limit > MaxListLimit:
		return Listing{}, &InputError{"limit", fmt.Errorf("%d: at most %d; page on with from", limit, MaxListLimit)}
	}
	match, err := PathMatcher(opts.Path)
	if err != nil {
		return Listing{}, err
	}
	all, first, last, err := snapshot(j, workers)
	if err != nil {
		return Listing{}, err
	}
	sel, err := selectWorker(all, opts.Worker)
	if err != nil {
		return Listing{}, err
	}
	l := Listing{Worker: opts.Worker, Path: opts.Path, FirstSeq: first, LastSeq: last, Limit: limit, Now: now(opts), Entries: []Entry{}}
	l.From = last + 1
	for _, p := range sel {
		l.From = min(l.From, p.cursor.Applied+1)
	}
	l.From = max(l.From, opts.From, first, 1)
	err = scan(j, l.From, last, opts.PageSize, func(op Op) bool {
		if !match(op) {
			return true
		}
		if len(l.Entries) < limit {
			e := NewEntry(op, l.Now)
			e.Lacking = lacking(all, op.Seq)
			l.Entries = append(l.Entries, e)
			return true
		}
		if l.More == 0 {
			l.NextFrom = op.Seq
		}
		l.More++
		return true
	})
	if err != nil {
		return Listing{}, err
	}
	return l, nil
}

// Show returns op seq in full and, for each of workers, whether it lacks
// it. A seq that is not stored (trimmed, or not yet appended) is an
// InputError on "seq" wrapping ErrSeqRange and naming the valid range.
func Show(j *Journal, workers []string, seq uint64, opts InspectOptions) (Detail, error) {
	pos, first, last, err := snapshot(j, workers)
	if err != nil {
		return Detail{}, err
	}
	d := Detail{FirstSeq: first, LastSeq: last, Now: now(opts)}
	if err := checkSeq(seq, first, last); err != nil {
		return d, err
	}
	ops, err := j.Read(seq, 1)
	if err != nil {
		return d, err
	}
	if len(ops) == 0 || ops[0].Seq != seq {
		// Trimmed between the snapshot and the Read.
		return d, checkSeq(seq, j.FirstSeq(), j.LastSeq())
	}
	d.Op = NewEntry(ops[0], d.Now)
	d.Op.Lacking = lacking(pos, seq)
	for _, p := range pos {
		w := WorkerOp{Name: p.name, HasCursor: p.has, Applied: p.cursor.Applied, FullSync: p.cursor.FullSync, Lacks: p.lacks(seq)}
		switch {
		case !p.has:
			w.Reason = "no cursor yet: awaits a full copy"
		case p.cursor.FullSync:
			w.Reason = "marked for a full copy"
		case w.Lacks:
			w.Reason = fmt.Sprintf("after its cursor #%d", p.cursor.Applied)
		default:
			w.Reason = fmt.Sprintf("applied (cursor #%d)", p.cursor.Applied)
		}
		d.Workers = append(d.Workers, w)
	}
	return d, nil
}

// checkSeq returns nil if seq is within [first, last], else an error
// naming seq and the valid range.
func checkSeq(seq, first, last uint64) error {
	var why string
	switch {
	case last == 0:
		why = "the journal is empty"
	case first > last:
		why = fmt.Sprintf("no op is stored: every op up to #%d was trimmed", last)
	case seq == 0:
		why = fmt.Sprintf("seqs start at 1; valid range is #%d to #%d", first, last)
	case seq < first:
		why = fmt.Sprintf("it was trimmed (every worker had it, or the journal went over its budget: see journal stats); valid range is #%d to #%d", first, last)
	case seq > last:
		why = fmt.Sprintf("the last op is #%d; valid range is #%d to #%d", last, first, last)
	default:
		return nil
	}
	return &InputError{"seq", fmt.Errorf("%w: #%d: %s", ErrSeqRange, seq, why)}
}
