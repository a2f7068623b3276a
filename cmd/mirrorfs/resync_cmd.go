package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/mirrorfs/mirrorfs/config"
	"github.com/mirrorfs/mirrorfs/control"
	"github.com/mirrorfs/mirrorfs/replicate"
	"github.com/mirrorfs/mirrorfs/verify"
)

// resyncAnswer is the daemon's answer to POST /resync: the request's
// number, done once the worker's resync_done reaches it.
type resyncAnswer struct {
	Worker  string `json:"worker"`
	Request uint64 `json:"request"`
}

// resyncRoutes: POST /resync?worker=NAME[&checksum=1] makes that worker's
// shipper compare the worker with the store at its next batch (see
// replicate.Shipper.Resync).
func resyncRoutes(d daemonState) []control.Route {
	return []control.Route{{Pattern: "POST /resync", Handler: func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("worker")
		wk, err := findWorker(d.cfg, name)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		for i, cw := range d.cfg.Workers {
			if cw.Name == wk.Name && i < len(d.shippers) {
				s := d.shippers[i]
				s.Resync(r.URL.Query().Get("checksum") == "1")
				d.log.Info("resync requested over the control socket", "worker", name)
				control.WriteJSON(w, resyncAnswer{Worker: name, Request: s.Status().ResyncRequested})
				return
			}
		}
		http.Error(w, fmt.Sprintf("worker %q has no replicator", name), http.StatusNotFound)
	}}}
}

func newResyncCmd() *cobra.Command {
	var cfgPath string
	var dryRun, checksum bool
	cmd := &cobra.Command{
		Use:   "resync WORKER",
		Short: "Make one worker identical to the store again, sending only what differs",
		Long: `Reconcile one worker with the store after drift: files changed, removed or
added on the worker behind mirrorfs's back, a restored backup, a disk
replaced. Only what differs is sent; what the store does not have is
deleted from the worker. Paths matched by the exclude: patterns are left
alone on the worker.

The running daemon does the work, since it owns each worker's connection
and journal position: resync asks it (over the control socket) to compare
the worker with the store at its next batch, shows the progress (a bar on
a terminal, one line at the end otherwise) and a summary once done.
Replication of new changes to that worker resumes right after; other
workers are not affected.

The comparison is the one of a first copy: files of another type, size or
mtime are sent again, modes, owners and mtimes fixed, symlinks replaced,
extra paths removed. With --checksum, every file of the same size is then
compared by content too (SHA-256, computed on the worker by the agent; over
SFTP the worker's file is read back), since drift may keep sizes and
mtimes: expect a read of both trees.

--dry-run needs no daemon: it connects to the worker itself, reads its
root only (it may upload this binary to ~/.cache/mirrorfs of the SSH
account, outside the root, to run the agent), and lists what a resync would send or delete (as 'mirrorfs verify
--worker WORKER' does, with --checksum if given), then exits 0.

With no daemon running, resync fails: start it ('mirrorfs mount'), or see
the drift with 'mirrorfs verify'.`,
		Example: `  # what would change on web2?
  mirrorfs resync web2 --dry-run --config /etc/mirrorfs/mirrorfs.yaml

  # repair it (the daemon must be running)
  mirrorfs resync web2 -c /etc/mirrorfs/mirrorfs.yaml

  # also find files whose content changed with size and mtime kept
  mirrorfs resync web2 --checksum

  # then check, content included
  mirrorfs verify --worker web2 --checksum`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			w, err := findWorker(cfg, args[0])
			if err != nil {
				return err
			}
			if dryRun {
				return resyncDryRun(cmd.Context(), cmd.OutOrStdout(), cfg, w, checksum)
			}
			return resync(cmd.Context(), cmd.OutOrStdout(), cfg, w, checksum)
		},
	}
	cmd.Flags().StringVarP(&cfgPath, "config", "c", "/etc/mirrorfs/mirrorfs.yaml", "configuration file")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list what would be sent or deleted, change nothing (no daemon needed)")
	cmd.Flags().BoolVar(&checksum, "checksum", false, "also compare files of the same size by content (reads both trees)")
	return cmd
}

// resyncDryRun prints what a resync would do, from verify.Compare.
func resyncDryRun(ctx context.Context, out io.Writer, cfg *config.Config, w config.Worker, checksum bool) error {
	excl, err := replicate.NewExcluder(cfg.Exclude)
	if err != nil {
		return err
	}
	log, err := cliLogger()
	if err != nil {
		return err
	}
	r := verifyWorker(ctx, cfg, w, compareStore(cfg), verify.Options{Checksum: checksum, Exclude: excl}, log)
	if r.Status == "error" {
		return exitError{code: 2, msg: fmt.Sprintf("worker %s: %s", w.Name, r.Error)}
	}
	if len(r.Differences) == 0 {
		fmt.Fprintf(out, "%s: in sync; a resync would change nothing\n", w.Name)
		return nil
	}
	var send, remove, fix int
	fmt.Fprintf(out, "a resync of %s (%s:%s) would:\n", w.Name, w.Addr(), w.Root)
	store := compareStore(cfg)
	for _, d := range r.Differences {
		var action string
		switch {
		case d.What == verify.WhatMissing:
			action, send = "send", send+1
		case d.What == verify.WhatExtra:
			action, remove = "delete", remove+1
		case d.What == verify.WhatType, d.What == verify.WhatSize, d.What == verify.WhatContent, d.What == verify.WhatTarget:
			action, send = "replace", send+1
		case d.What == verify.WhatMtime && isRegular(filepath.Join(store, d.Path)):
			// The comparison takes a file whose mtime differs for another
			// version: it sends it (a delta over the agent).
			action, send = "replace", send+1
		default:
			action, fix = "fix "+d.What, fix+1
		}
		fmt.Fprintf(out, "  %-12s %s%s\n", action, d.Path, describeValues(d))
	}
	fmt.Fprintf(out, "%s: %d to send or replace, %d to delete, %d to fix in place (dry run: nothing changed)\n", w.Name, send, remove, fix)
	return nil
}

// resync asks the daemon and follows the progress until done.
func resync(ctx context.Context, out io.Writer, cfg *config.Config, w config.Worker, checksum bool) error {
	before, err := ownDaemon(ctx, cfg)
	if errors.Is(err, control.ErrNoDaemon) {
		return fmt.Errorf("resync needs the running daemon, which owns each worker's connection and position, "+
			"but none answers on %s: start it with 'mirrorfs mount', or see the drift with 'mirrorfs verify --worker %s --checksum' "+
			"(or 'mirrorfs resync %s --dry-run')", cfg.Control, w.Name, w.Name)
	}
	if err != nil {
		return err
	}
	ws0, ok := workerIn(before, w.Name)
	if !ok {
		return fmt.Errorf("the running daemon does not replicate to worker %q: was the configuration changed since it started?", w.Name)
	}
	// The bar's total: the regular files the comparison looks at, twice
	// with --checksum (by attributes, then by content).
	total := countStoreFiles(ctx, compareStore(cfg), cfg.Exclude)
	passes := int64(1)
	if checksum {
		passes = 2
	}

	var ans resyncAnswer
	if err := control.Call(ctx, cfg.Control, http.MethodPost, "/resync?worker="+url.QueryEscape(w.Name)+checksumParam(checksum), &ans); err != nil {
		return err
	}
	t0 := time.Now()
	var bar *progressbar.ProgressBar
	if f, ok := out.(*os.File); ok && isTerminal(f) {
		bar = progressbar.NewOptions64(max(passes*total, 1),
			progressbar.OptionSetWriter(f),
			progressbar.OptionSetDescription("resync "+w.Name+": waiting"),
			progressbar.OptionShowCount(),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionSetPredictTime(false),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionFullWidth(),
			progressbar.OptionClearOnFinish(),
		)
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var ws control.WorkerStatus
	for {
		select {
		case <-ctx.Done():
			if bar != nil {
				bar.Exit()
			}
			return fmt.Errorf("stopped waiting; the resync of %s goes on in the daemon ('mirrorfs status' shows it)", w.Name)
		case <-tick.C:
		}
		st, err := control.Fetch(ctx, cfg.Control)
		if err != nil {
			if ctx.Err() != nil {
				continue
			}
			return fmt.Errorf("following the resync: %w", err)
		}
		ws, _ = workerIn(st, w.Name)
		if ws.ResyncRequested < ans.Request {
			return fmt.Errorf("the daemon restarted during the resync of %s; a crash makes it compare every worker anyway, otherwise run resync again", w.Name)
		}
		if ws.ResyncDone >= ans.Request {
			break
		}
		if bar != nil {
			bar.Describe(resyncPhase(w.Name, ws))
			if ws.InitialCopy {
				bar.Set64(min(int64(ws.CopyChecked+ws.CopyHashed), passes*total))
			}
		}
	}
	if bar != nil {
		bar.Finish()
	}
	fmt.Fprintf(out, "%s: resync done in %s: %d file(s) sent (%s of data, %s on the wire), %d file(s) compared\n",
		w.Name, time.Since(t0).Round(100*time.Millisecond), ws.CopyFiles, humanBytes(ws.CopyBytes),
		humanBytes(ws.BytesSent-min(ws.BytesSent, ws0.BytesSent)), ws.CopyChecked)
	return nil
}

// resyncPhase is the bar's description.
func resyncPhase(name string, ws control.WorkerStatus) string {
	switch {
	case !ws.InitialCopy && !ws.Connected && ws.LastError != "":
		return fmt.Sprintf("resync %s: waiting (worker unreachable: %s)", name, truncate(ws.LastError, 60))
	case !ws.InitialCopy:
		return "resync " + name + ": waiting"
	case ws.CopyHashed > 0:
		return "resync " + name + ": comparing content"
	}
	return "resync " + name + ": comparing"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func workerIn(st control.Status, name string) (control.WorkerStatus, bool) {
	for _, ws := range st.Workers {
		if ws.Name == name {
			return ws, true
		}
	}
	return control.WorkerStatus{}, false
}

// countStoreFiles counts the regular files of the store that are not
// excluded (0 if it cannot be read: the bar then only shows counts).
func countStoreFiles(ctx context.Context, store string, exclude []string) int64 {
	excl, err := replicate.NewExcluder(exclude)
	if err != nil {
		return 0
	}
	root, err := os.OpenRoot(store)
	if err != nil {
		return 0
	}
	defer root.Close()
	var n int64
	_ = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if d.IsDir() {
			if p != "." && excl.Excluded(p, true) {
				return fs.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() && !excl.Excluded(p, false) {
			n++
		}
		return nil
	})
	return n
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func checksumParam(on bool) string {
	if on {
		return "&checksum=1"
	}
	return ""
}

// isRegular reports whether p is a regular file (not following a symlink).
func isRegular(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode().IsRegular()
}
