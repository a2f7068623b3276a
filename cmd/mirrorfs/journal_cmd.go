package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mirrorfs/mirrorfs/config"
	"github.com/mirrorfs/mirrorfs/control"
	"github.com/mirrorfs/mirrorfs/journal"
)

// The journal tools: `mirrorfs journal stats|ls|show`. Like status, they
// ask the running daemon over the control socket (the daemon holds the
// journal, and Badger allows one process), and with no daemon they open
// the journal read-only themselves. Both ways run the same functions of
// package journal (Inspect, List, Show) and print the same JSON.

const journalLong = `Inspect the journal: what each worker still lacks, oldest first.

Every change made through the mount is journaled as an operation (op) with
a sequence number (seq). Each worker has a cursor, the last seq it applied;
the ops after it are pending for that worker. Ops every worker has are
trimmed from the journal, so the journal holds the ops from the lowest
cursor on (its first seq) up to the newest (its last seq). Over the
journal's budget (journal.max_bytes), workers that are not connected are
marked for a full copy (FULL COPY in stats) and stop holding ops back.

While the daemon runs, the journal tools ask it over the control socket.
When no daemon runs (after a crash, say), they open the journal read-only
and change nothing in it.

  stats      per worker: how much is pending, how old, how many bytes
  ls         the pending ops, oldest first
  show SEQ   one op in full, and which workers lack it

--path GLOB keeps only ops whose path, or new path (rename, link), matches
the glob. Paths are relative to the web root ("htdocs/index.html"); a
leading "/" is ignored, as is the mount point ("/var/www/html/htdocs").
The glob is matched (Go's path.Match: * ? [...], * never crosses a "/")
against the whole path and against each of its parent directories, so
"htdocs" and "htdocs/img*" also match everything below them.`

func newJournalCmd() *cobra.Command {
	var o journalFlags
	cmd := &cobra.Command{
		Use:   "journal",
		Short: "Inspect the journal: pending ops per worker (stats, ls, show)",
		Long:  journalLong,
		Example: `  mirrorfs journal stats
  mirrorfs journal ls --worker web2 --path 'htdocs/uploads'
  mirrorfs journal show 1234 --json`,
		Args: cobra.NoArgs,
	}
	cmd.PersistentFlags().StringVarP(&o.cfgPath, "config", "c", "/etc/mirrorfs/mirrorfs.yaml", "configuration file")
	cmd.PersistentFlags().BoolVar(&o.asJSON, "json", false, "print JSON instead of a table")
	cmd.AddCommand(newJournalStatsCmd(&o), newJournalLsCmd(&o), newJournalShowCmd(&o))
	// docs/operations.md: exit 2 for a bad --limit, whether its value is
	// out of range or not a number at all. Subcommands inherit this.
	cmd.SetFlagErrorFunc(flagUsageError)
	return cmd
}

type journalFlags struct {
	cfgPath string
	asJSON  bool
	worker  string
	path    string
}

func newJournalStatsCmd(o *journalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Per worker: pending ops, their age and the data they stand for",
		Long: `Show, for every worker (or only --worker), what it still lacks, and the
journal's extent and size on disk.

The first line names the journal, its first and last seq, how many ops it
stores and the disk space it uses. Then one row per worker:

  WORKER      the worker's name in the configuration
  CURSOR      the last seq it applied ("none": it never had a position)
  PENDING     ops after its cursor (with --path: those that match)
  OLDEST      age of the oldest of them: how far the worker is behind
  OLDEST SEQ  its seq ("mirrorfs journal show SEQ" shows it)
  DATA        bytes of file data to send: the lengths of the pending write,
              copy_range and fallocate ops (an overwritten range counts
              each time; the data itself is read from the store)
  FILES       distinct files those data ops touch
  FULL COPY   whether the worker needs a full copy of the web root first
              (no cursor yet, marked for one, or behind the journal's first
              seq), and why
  BY KIND     pending ops by kind (create, write, rename, close...)` + "\n\n" + journalPathHelp,
		Example: `  mirrorfs journal stats --config /etc/mirrorfs/mirrorfs.yaml
  mirrorfs journal stats --worker web2 --path htdocs/uploads
  mirrorfs journal stats --json | jq '.workers[] | {name, pending, oldest_age_seconds}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(o.cfgPath)
			if err != nil {
				return err
			}
			q := url.Values{}
			setParam(q, "worker", o.worker)
			setParam(q, "path", trimMount(cfg, o.path))
			var st journal.Stats
			src, err := journalCall(cmd.Context(), cfg, "/journal/stats", q, &st, func(j *journal.Journal, workers []string) (err error) {
				st, err = journal.Inspect(j, workers, journal.InspectOptions{Worker: o.worker, Path: trimMount(cfg, o.path)})
				return err
			})
			if err != nil {
				return err
			}
			if o.asJSON {
				return printJSON(cmd.OutOrStdout(), st)
			}
			printJournalStats(cmd.OutOrStdout(), cfg, src, st)
			return nil
		},
	}
	cmd.Flags().StringVarP(&o.worker, "worker", "w", "", "only this worker")
	cmd.Flags().StringVarP(&o.path, "path", "p", "", "only ops whose path or new path matches this glob")
	return cmd
}

const journalPathHelp = `--path GLOB keeps only ops whose path or new path matches: see
'mirrorfs journal --help'.`

func newJournalLsCmd(o *journalFlags) *cobra.Command {
	var limit int
	var from uint64
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List pending ops, oldest first",
		Long: `List the ops still pending, oldest first: with --worker, those after that
worker's cursor; without, those at least one worker lacks (after the lowest
cursor; a worker with no cursor lacks them all).

  SEQ      the op's sequence number ("mirrorfs journal show SEQ" shows it)
  AGE      how long ago it was journaled
  KIND     create, mkdir, mknod, write, setattr, unlink, rmdir, rename,
           symlink, link, setxattr, removexattr, fallocate, copy_range,
           close (a writer closed the file: its data may ship)
  SIZE     write, copy_range, fallocate: bytes of the range; setattr that
           truncates: "size=" the new length; other kinds: -
  LACKING  the workers that do not have it yet
  PATH     the path below the web root (--json: without the leading /);
           "OLD -> NEW" for a rename or a link, "PATH -> TARGET" for a
           symlink

At most --limit ops are listed; the last line then says how many more match
and the --from that lists them.` + "\n\n" + journalPathHelp,
		Example: `  mirrorfs journal ls
  mirrorfs journal ls --worker web2 --limit 50
  mirrorfs journal ls --path 'htdocs/*.css'
  mirrorfs journal ls --worker web2 --json | jq -r '.entries[] | "\(.seq) \(.kind) \(.path)"'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit <= 0 || limit > journal.MaxListLimit {
				return usageErrorf("--limit %d: want 1 to %d", limit, journal.MaxListLimit)
			}
			cfg, err := config.Load(o.cfgPath)
			if err != nil {
				return err
			}
			opts := journal.InspectOptions{Worker: o.worker, Path: trimMount(cfg, o.path), Limit: limit, From: from}
			q := url.Values{}
			setParam(q, "worker", opts.Worker)
			setParam(q, "path", opts.Path)
			q.Set("limit", strconv.Itoa(limit))
			if from > 0 {
				q.Set("from", strconv.FormatUint(from, 10))
			}
			var l journal.Listing
			src, err := journalCall(cmd.Context(), cfg, "/journal/ls", q, &l, func(j *journal.Journal, workers []string) (err error) {
				l, err = journal.List(j, workers, opts)
				return err
			})
			if err != nil {
				return err
			}
			if o.asJSON {
				return printJSON(cmd.OutOrStdout(), l)
			}
			printJournalList(cmd.OutOrStdout(), cfg, src, l)
			return nil
		},
	}
	cmd.Flags().StringVarP(&o.worker, "worker", "w", "", "list the ops this worker lacks (default: those any worker lacks)")
	cmd.Flags().StringVarP(&o.path, "path", "p", "", "only ops whose path or new path matches this glob")
	cmd.Flags().IntVarP(&limit, "limit", "n", journal.DefaultListLimit, "list at most this many ops")
	cmd.Flags().Uint64Var(&from, "from", 0, "start at this seq (to list what --limit left out)")
	return cmd
}

func newJournalShowCmd(o *journalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "show SEQ",
		Short: "Show one op in full, and which workers lack it",
		Long: `Show the op with sequence number SEQ: every field the journal stores for
it, then, for each worker, its cursor and whether it still lacks the op.

  seq, time, kind   the op's number, when it was journaled, what it is
  file              the store's inode number of the file (stable across
                    renames; hard links share it)
  path, new_path    the path (relative to the web root); the destination of
                    a rename, the new name of a link
  target            a symlink's content
  offset, length    the byte range of a write, copy_range or fallocate
  size              the new length of a truncating setattr
  mode, uid, gid    create/mkdir/mknod: the full st_mode; setattr: the new
                    permission bits and owner (see mask)
  rdev              a device node's number
  atime, mtime      new times of a setattr (see mask)
  mask              which attributes a setattr changes
  flags             RENAME_* flags of a rename, FALLOC_FL_* mode of a
                    fallocate
  xattr_name/value  the extended attribute a setxattr sets or a
                    removexattr removes

Only ops still in the journal can be shown: from its first seq (older ones
were trimmed once every worker had them) to its last.`,
		Example: `  mirrorfs journal show 1234
  mirrorfs journal show 1234 --json | jq '.workers[] | select(.lacks) | .name'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			seq, err := parseSeq(args[0])
			if err != nil {
				return usageErrorf("SEQ %q: %v", args[0], err)
			}
			cfg, err := config.Load(o.cfgPath)
			if err != nil {
				return err
			}
			q := url.Values{"seq": {strconv.FormatUint(seq, 10)}}
			var d journal.Detail
			src, err := journalCall(cmd.Context(), cfg, "/journal/show", q, &d, func(j *journal.Journal, workers []string) (err error) {
				d, err = journal.Show(j, workers, seq, journal.InspectOptions{})
				return err
			})
			if err != nil {
				return err
			}
			if o.asJSON {
				return printJSON(cmd.OutOrStdout(), d)
			}
			printJournalShow(cmd.OutOrStdout(), cfg, src, d)
			return nil
		},
	}
	return cmd
}

// parseSeq accepts "1234" and "#1234".
func parseSeq(s string) (uint64, error) {
	n, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(s), "#"), 10, 64)
	if err != nil || n == 0 {
		return 0, errors.New("want a positive sequence number")
	}
	return n, nil
}

func setParam(q url.Values, k, v string) {
	if v != "" {
		q.Set(k, v)
	}
}

// trimMount turns a glob spelled under the mount point into one relative
// to the web root.
func trimMount(cfg *config.Config, glob string) string {
	if m := strings.TrimRight(cfg.Mount, "/"); m != "" {
		if rest, ok := strings.CutPrefix(glob, m+"/"); ok {
			return rest
		}
		if glob == m {
			return ""
		}
	}
	return glob
}

func workerNames(cfg *config.Config) []string {
	names := make([]string, 0, len(cfg.Workers))
	for _, w := range cfg.Workers {
		names = append(names, w.Name)
	}
	return names
}

// journalCall asks the daemon for path?q and decodes its answer into out.
// With no daemon it opens the journal read-only and calls offline instead,
// which must fill out. It returns where the answer came from, for the
// table's first line.
func journalCall(ctx context.Context, cfg *config.Config, path string, q url.Values, out any, offline func(*journal.Journal, []string) error) (string, error) {
	target := path
	if len(q) > 0 {
		target += "?" + q.Encode()
	}
	_, err := ownDaemon(ctx, cfg)
	if err == nil {
		err = control.Call(ctx, cfg.Control, http.MethodGet, target, out)
	}
	if err == nil {
		return "from the running daemon", nil
	}
	if !errors.Is(err, control.ErrNoDaemon) {
		return "", err
	}
	j, err := journal.Open(cfg.Journal, journal.Options{ReadOnly: true})
	if err != nil {
		return "", fmt.Errorf("no daemon answers on %s, and the journal cannot be read: %w", cfg.Control, err)
	}
	defer j.Close()
	if err := offline(j, workerNames(cfg)); err != nil {
		return "", err
	}
	return "read-only: no daemon running", nil
}

// journalRoutes are the control socket's journal endpoints, each running
// the journal function the CLI runs itself when no daemon does:
//
//	GET /journal/stats?worker=&path=            journal.Inspect -> journal.Stats
//	GET /journal/ls?worker=&path=&limit=&from=  journal.List -> journal.Listing
//	GET /journal/show?seq=                      journal.Show -> journal.Detail
//
// Bad input is answered 400 with a message naming the parameter.
func journalRoutes(d daemonState) []control.Route {
	workers := workerNames(d.cfg)
	return []control.Route{
		{Pattern: "GET /journal/stats", Handler: func(w http.ResponseWriter, r *http.Request) {
			opts, err := inspectParams(r, "worker", "path")
			if err == nil {
				var st journal.Stats
				if st, err = journal.Inspect(d.j, workers, opts); err == nil {
					control.WriteJSON(w, st)
					return
				}
			}
			journalError(w, d, r, err)
		}},
		{Pattern: "GET /journal/ls", Handler: func(w http.ResponseWriter, r *http.Request) {
			opts, err := inspectParams(r, "worker", "path", "limit", "from")
			if err == nil {
				var l journal.Listing
				if l, err = journal.List(d.j, workers, opts); err == nil {
					control.WriteJSON(w, l)
					return
				}
			}
			journalError(w, d, r, err)
		}},
		{Pattern: "GET /journal/show", Handler: func(w http.ResponseWriter, r *http.Request) {
			_, err := inspectParams(r, "seq")
			if err == nil {
				var seq uint64
				s := r.URL.Query().Get("seq")
				if s == "" {
					err = &journal.InputError{Param: "seq", Err: errors.New("missing")}
				} else if seq, err = parseSeq(s); err != nil {
					err = &journal.InputError{Param: "seq", Err: fmt.Errorf("%q: %w", s, err)}
				} else {
					var det journal.Detail
					if det, err = journal.Show(d.j, workers, seq, journal.InspectOptions{}); err == nil {
						control.WriteJSON(w, det)
						return
					}
				}
			}
			journalError(w, d, r, err)
		}},
	}
}

// inspectParams reads the query parameters of a journal route, refusing
// any not in allowed.
func inspectParams(r *http.Request, allowed ...string) (journal.InspectOptions, error) {
	var opts journal.InspectOptions
	q := r.URL.Query()
	for k := range q {
		known := false
		for _, a := range allowed {
			known = known || k == a
		}
		if !known {
			return opts, &journal.InputError{Param: k, Err: fmt.Errorf("unknown parameter (want %s)", strings.Join(allowed, ", "))}
		}
	}
	opts.Worker, opts.Path = q.Get("worker"), q.Get("path")
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return opts, &journal.InputError{Param: "limit", Err: fmt.Errorf("%q: want a positive number", s)}
		}
		opts.Limit = n
	}
	if s := q.Get("from"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return opts, &journal.InputError{Param: "from", Err: fmt.Errorf("%q: want a sequence number", s)}
		}
		opts.From = n
	}
	return opts, nil
}

func journalError(w http.ResponseWriter, d daemonState, r *http.Request, err error) {
	var ie *journal.InputError
	if errors.As(err, &ie) {
		http.Error(w, "bad parameter "+ie.Error(), http.StatusBadRequest)
		return
	}
	if d.log != nil {
		d.log.Warn("control: journal request failed", "request", r.URL.String(), "err", err)
	}
	http.Error(w, err.Error(), http.StatusInternalServerError)
}

// Output.

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func journalHeader(w io.Writer, cfg *config.Config, src string, first, last uint64) {
	fmt.Fprintf(w, "journal %s (%s): ", cfg.Journal, src)
	switch {
	case last == 0:
		fmt.Fprintf(w, "empty")
	case first > last:
		fmt.Fprintf(w, "no ops stored, last #%d", last)
	default:
		fmt.Fprintf(w, "ops #%d to #%d", first, last)
	}
}

func printJournalStats(w io.Writer, cfg *config.Config, src string, st journal.Stats) {
	journalHeader(w, cfg, src, st.FirstSeq, st.LastSeq)
	fmt.Fprintf(w, " (%d stored, %s of records), %s on disk\n", st.Stored, fmtBytes(st.RecordBytes), fmtBytes(st.SizeBytes))
	if st.Path != "" {
		fmt.Fprintf(w, "counting only ops whose path matches %q\n", st.Path)
	}
	if len(st.Workers) == 0 {
		fmt.Fprintln(w, "no workers configured")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tCURSOR\tPENDING\tOLDEST\tOLDEST SEQ\tDATA\tFILES\tFULL COPY\tBY KIND")
	for _, ws := range st.Workers {
		cursor, oldest, oldestSeq := "none", "-", "-"
		if ws.HasCursor {
			cursor = fmt.Sprintf("#%d", ws.Applied)
		}
		if ws.Pending > 0 {
			oldest = fmtAge(ws.OldestAgeSeconds)
			oldestSeq = fmt.Sprintf("#%d", ws.OldestSeq)
		}
		full := "no"
		if ws.NeedsFullCopy {
			full = "yes (" + ws.FullCopyReason + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%d\t%s\t%s\n", ws.Name, cursor, ws.Pending, oldest, oldestSeq,
			fmtBytes(ws.DataBytes), ws.DataFiles, full, fmtKinds(ws.ByKind))
	}
	tw.Flush()
}

// fmtKinds lists counts by kind in the kinds' own order.
func fmtKinds(by map[string]uint64) string {
	var parts []string
	seen := 0
	for k := journal.Kind(1); k.Valid(); k++ {
		if n := by[k.String()]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", k, n))
			seen++
		}
	}
	if seen < len(by) { // kinds this binary does not know (a newer daemon)
		var rest []string
		for name, n := range by {
			if !journal.ParseKind(name).Valid() {
				rest = append(rest, fmt.Sprintf("%s=%d", name, n))
			}
		}
		sort.Strings(rest)
		parts = append(parts, rest...)
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

func printJournalList(w io.Writer, cfg *config.Config, src string, l journal.Listing) {
	journalHeader(w, cfg, src, l.FirstSeq, l.LastSeq)
	fmt.Fprintln(w)
	what := "ops at least one worker lacks"
	if l.Worker != "" {
		what = "ops " + l.Worker + " lacks"
	}
	if l.Path != "" {
		what += fmt.Sprintf(", path matching %q", l.Path)
	}
	if len(l.Entries) == 0 {
		fmt.Fprintf(w, "no %s\n", what)
		return
	}
	fmt.Fprintf(w, "%s, oldest first, from #%d:\n", what, l.From)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tAGE\tKIND\tSIZE\tLACKING\tPATH")
	for _, e := range l.Entries {
		lacking := strings.Join(e.Lacking, ",")
		if lacking == "" {
			lacking = "-"
		}
		fmt.Fprintf(tw, "#%d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, fmtAge(e.AgeSeconds), e.Kind, entrySize(e), lacking, entryPath(e))
	}
	tw.Flush()
	if l.More > 0 {
		fmt.Fprintf(w, "… %d more matching op(s) not listed (--limit %d); continue with --from %d\n", l.More, l.Limit, l.NextFrom)
	}
}

func entrySize(e journal.Entry) string {
	switch journal.ParseKind(e.Kind) {
	case journal.KindWrite, journal.KindCopyRange, journal.KindFallocate:
		return fmtBytes(e.Length)
	case journal.KindSetattr:
		if e.Mask&journal.AttrSize != 0 {
			return fmt.Sprintf("size=%d", e.Size)
		}
	}
	return "-"
}

func entryPath(e journal.Entry) string {
	p := "/" + e.Path
	switch journal.ParseKind(e.Kind) {
	case journal.KindRename, journal.KindLink:
		return p + " -> /" + e.NewPath
	case journal.KindSymlink:
		return p + " -> " + e.Target
	}
	return p
}

func printJournalShow(w io.Writer, cfg *config.Config, src string, d journal.Detail) {
	journalHeader(w, cfg, src, d.FirstSeq, d.LastSeq)
	fmt.Fprintln(w)
	e := d.Op
	fmt.Fprintf(w, "op #%d: %s, journaled %s ago\n", e.Seq, e.Kind, fmtAge(e.AgeSeconds))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "  %s\t%s\n", k, v) }
	row("seq", strconv.FormatUint(e.Seq, 10))
	row("time", e.Time.Local().Format(time.RFC3339Nano))
	row("kind", e.Kind)
	row("file", strconv.FormatUint(e.File, 10))
	row("path", strconv.Quote(e.Path))
	row("new_path", strconv.Quote(e.NewPath))
	row("target", strconv.Quote(e.Target))
	row("offset", strconv.FormatInt(e.Offset, 10))
	row("length", fmt.Sprintf("%d (%s)", e.Length, fmtBytes(e.Length)))
	row("size", strconv.FormatInt(e.Size, 10))
	row("mode", fmt.Sprintf("%#o", e.Mode))
	row("uid", strconv.FormatUint(uint64(e.UID), 10))
	row("gid", strconv.FormatUint(uint64(e.GID), 10))
	row("rdev", strconv.FormatUint(e.Rdev, 10))
	row("atime", fmtNanos(e.Atime))
	row("mtime", fmtNanos(e.Mtime))
	row("mask", fmtMask(e.Mask))
	row("flags", fmt.Sprintf("%#x", e.Flags))
	row("xattr_name", strconv.Quote(e.XattrName))
	row("xattr_value", fmt.Sprintf("%q (%d bytes)", e.XattrValue, len(e.XattrValue)))
	tw.Flush()
	if len(d.Workers) == 0 {
		fmt.Fprintln(w, "no workers configured")
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tCURSOR\tLACKS IT\tWHY")
	for _, wo := range d.Workers {
		cursor, lacks := "none", "no"
		if wo.HasCursor {
			cursor = fmt.Sprintf("#%d", wo.Applied)
		}
		if wo.Lacks {
			lacks = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", wo.Name, cursor, lacks, wo.Reason)
	}
	tw.Flush()
}

func fmtNanos(ns int64) string {
	if ns == 0 {
		return "0"
	}
	return fmt.Sprintf("%d (%s)", ns, time.Unix(0, ns).Local().Format(time.RFC3339Nano))
}

func fmtMask(m uint32) string {
	names := []string{"mode", "uid", "gid", "size", "atime", "mtime"}
	var set []string
	for i, n := range names {
		if m&(1<<i) != 0 {
			set = append(set, n)
		}
	}
	if rest := m &^ (1<<len(names) - 1); rest != 0 {
		set = append(set, fmt.Sprintf("%#x", rest))
	}
	if len(set) == 0 {
		return fmt.Sprintf("%#x", m)
	}
	return fmt.Sprintf("%#x (%s)", m, strings.Join(set, "|"))
}

// fmtAge prints an age in seconds at a precision that fits its size.
func fmtAge(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return d.Round(time.Minute).String()
	default:
		return fmt.Sprintf("%.1fd", d.Hours()/24)
	}
}

// fmtBytes prints n in binary units.
func fmtBytes(n int64) string {
	if n < 1024 && n > -1024 {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		v /= 1024
		if v < 1024 && v > -1024 || u == "TiB" {
			return fmt.Sprintf("%.1f %s", v, u)
		}
	}
	return fmt.Sprintf("%d B", n)
}
