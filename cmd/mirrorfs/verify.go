package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mirrorfs/mirrorfs/config"
	"github.com/mirrorfs/mirrorfs/replicate"
	"github.com/mirrorfs/mirrorfs/verify"
)

func newVerifyCmd() *cobra.Command {
	var cfgPath, only string
	var checksum, asJSON bool
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Compare every worker with the store and list each difference",
		Long: `Compare every worker (or the one named by --worker) with the store, path by
path, and list each difference: the path, what differs, the store's value
and the worker's.

Compared, without following symlinks: the set of paths, the type, the size
of regular files, the permission bits (with setuid, setgid and sticky), the
owner, the mtime, symlink targets and, with --checksum, the SHA-256 of every
regular file's content. Mtimes are compared in whole seconds for workers on
SFTP (it carries no more) and to the nanosecond on the agent transport.
On the agent transport the user.* extended attributes of files and
directories, and hard-link groups (which names share one file), are
compared too (SFTP carries neither). What mirrorfs does not replicate is
not compared: paths matched by the configuration's exclude: patterns (on
both sides), FIFOs, sockets and device nodes. Worker files named
.mirrorfs-tmp-* younger than an hour are transfers in flight and are
ignored; older ones are leftovers, reported as extra.

Without --checksum a file whose content changed but whose size and mtime
did not goes unnoticed; with it, every file of equal size is read on both
sides (on the worker by the agent, so only digests cross the network; over
SFTP the file itself is read).

verify works whether or not the daemon runs: it reads the store directory
itself and opens its own SSH connection to each worker, whose root it
only reads (to run the agent there it may first upload this binary to
~/.cache/mirrorfs of the SSH account, outside the root). With no 'store:' in the configuration (in-place mode) the store is
hidden under the mount, so the mount point is compared instead: run verify
while the daemon runs, or the mount point is the bare store directory
anyway. Changes made while verify runs may show as differences that are
only replication in progress: run it again, or look at 'mirrorfs status'.

Exit status: 0 when every worker matches, 1 when a worker differs
(drift), 2 when a worker could not be reached or read (the worker and the
error are named). To repair a drifted worker: 'mirrorfs resync WORKER'.`,
		Example: `  # every worker, attributes only (fast: no file is read)
  mirrorfs verify --config /etc/mirrorfs/mirrorfs.yaml

  # one worker, content too
  mirrorfs verify -c /etc/mirrorfs/mirrorfs.yaml --worker web2 --checksum

  # for scripts and monitoring
  mirrorfs verify --json | jq '.workers[] | {name, status, differences: (.differences | length)}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			workers := cfg.Workers
			if only != "" {
				w, err := findWorker(cfg, only)
				if err != nil {
					return err
				}
				workers = []config.Worker{w}
			}
			if len(workers) == 0 {
				return errors.New("the configuration lists no workers: nothing to verify")
			}
			excl, err := replicate.NewExcluder(cfg.Exclude)
			if err != nil {
				return err
			}
			log, err := cliLogger()
			if err != nil {
				return err
			}
			store := compareStore(cfg)
			// The master's own store unreadable is this command's failure
			// (exit 1), not every worker's (exit 2, "could not be reached
			// or read", which a monitoring script alerts on per worker).
			if err := readableDir(store); err != nil {
				return fmt.Errorf("store %s: %w", store, err)
			}
			out := cmd.OutOrStdout()
			var report verifyReport
			for _, w := range workers {
				r := verifyWorker(cmd.Context(), cfg, w, store, verify.Options{Checksum: checksum, Exclude: excl}, log)
				if !asJSON {
					printWorkerReport(out, r)
				}
				report.Workers = append(report.Workers, r)
			}
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(report); err != nil {
					return err
				}
			} else {
				for _, r := range report.Workers {
					fmt.Fprintln(out, summaryLine(r))
				}
			}
			return report.err()
		},
	}
	f := cmd.Flags()
	f.StringVarP(&cfgPath, "config", "c", "/etc/mirrorfs/mirrorfs.yaml", "configuration file")
	f.StringVar(&only, "worker", "", "verify only this worker (default: all)")
	f.BoolVar(&checksum, "checksum", false, "also compare the content of regular files (SHA-256; reads every file)")
	f.BoolVar(&asJSON, "json", false, "print JSON instead of text")
	return cmd
}

// readableDir fails unless the directory d can be listed.
func readableDir(d string) error {
	f, err := os.Open(d)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Readdirnames(1); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// verifyReport is the output of `verify --json`.
type verifyReport struct {
	Workers []workerReport `json:"workers"`
}

// workerReport is one worker's outcome.
type workerReport struct {
	Name        string              `json:"name"`
	Addr        string              `json:"addr"`
	Root        string              `json:"root"`
	Status      string              `json:"status"` // "ok", "drift" or "error"
	Error       string              `json:"error,omitempty"`
	Differences []verify.Difference `json:"differences"`
}

// err maps the outcome to the exit status: 2 if a worker failed, else 1
// if one drifted.
func (r verifyReport) err() error {
	var failed, drifted []string
	for _, w := range r.Workers {
		switch w.Status {
		case "error":
			failed = append(failed, w.Name)
		case "drift":
			drifted = append(drifted, w.Name)
		}
	}
	switch {
	case len(failed) > 0:
		return exitError{code: 2, msg: fmt.Sprintf("could not verify worker(s) %s", strings.Join(failed, ", "))}
	case len(drifted) > 0:
		return exitError{code: 1, msg: fmt.Sprintf("worker(s) %s differ from the store", strings.Join(drifted, ", "))}
	}
	return nil
}

// exitError is an error with its own exit status. Code 2 is reported as
// errUsage is, which exitCode maps to 2.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

func (e exitError) Is(target error) bool { return e.code == 2 && target == errUsage }

func verifyWorker(ctx context.Context, cfg *config.Config, w config.Worker, store string, o verify.Options, log *slog.Logger) workerReport {
	r := workerReport{Name: w.Name, Addr: w.Addr(), Root: w.Root, Differences: []verify.Difference{}}
	t, err := dialWorker(ctx, cfg, w, log)
	if err != nil {
		r.Status, r.Error = "error", err.Error()
		return r
	}
	defer t.Close()
	d, err := verify.Compare(ctx, store, t, o)
	r.Differences = append(r.Differences, d...)
	switch {
	case err != nil:
		r.Status, r.Error = "error", err.Error()
	case len(d) > 0:
		r.Status = "drift"
	default:
		r.Status = "ok"
	}
	return r
}

func printWorkerReport(w io.Writer, r workerReport) {
	switch {
	case r.Status == "error" && len(r.Differences) == 0:
		fmt.Fprintf(w, "worker %s (%s:%s): %s\n", r.Name, r.Addr, r.Root, r.Error)
		return
	case r.Status == "ok":
		return
	}
	fmt.Fprintf(w, "worker %s (%s:%s):\n", r.Name, r.Addr, r.Root)
	printDifferences(w, r.Differences)
	if r.Error != "" {
		fmt.Fprintf(w, "  (stopped: %s)\n", r.Error)
	}
}

// printDifferences writes one line per difference.
func printDifferences(w io.Writer, diffs []verify.Difference) {
	for _, d := range diffs {
		fmt.Fprintf(w, "  %-8s %s%s\n", d.What, d.Path, describeValues(d))
	}
}

func describeValues(d verify.Difference) string {
	switch d.What {
	case verify.WhatMissing:
		return "  (store: " + d.Store + ")"
	case verify.WhatExtra:
		return "  (worker: " + d.Worker + ")"
	}
	return fmt.Sprintf("  store %s, worker %s", d.Store, d.Worker)
}

func summaryLine(r workerReport) string {
	switch r.Status {
	case "ok":
		return fmt.Sprintf("%s: in sync", r.Name)
	case "error":
		if len(r.Differences) > 0 {
			return fmt.Sprintf("%s: ERROR after %d difference(s): %s", r.Name, len(r.Differences), r.Error)
		}
		return fmt.Sprintf("%s: ERROR: %s", r.Name, r.Error)
	}
	return fmt.Sprintf("%s: DRIFT: %d difference(s) (%s)", r.Name, len(r.Differences), countByWhat(r.Differences))
}

// countByWhat is "2 missing, 1 mode", in a fixed order.
func countByWhat(diffs []verify.Difference) string {
	n := map[string]int{}
	for _, d := range diffs {
		n[d.What]++
	}
	var parts []string
	for _, what := range []string{verify.WhatMissing, verify.WhatExtra, verify.WhatType, verify.WhatSize, verify.WhatContent,
		verify.WhatMode, verify.WhatOwner, verify.WhatMtime, verify.WhatTarget} {
		if n[what] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n[what], what))
			delete(n, what)
		}
	}
	for _, what := range slices.Sorted(mapKeysOf(n)) {
		parts = append(parts, fmt.Sprintf("%d %s", n[what], what))
	}
	return strings.Join(parts, ", ")
}

func mapKeysOf(m map[string]int) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// findWorker returns the configured worker named name, or an error listing
// the configured names.
func findWorker(cfg *config.Config, name string) (config.Worker, error) {
	var names []string
	for _, w := range cfg.Workers {
		if w.Name == name {
			return w, nil
		}
		names = append(names, w.Name)
	}
	if len(names) == 0 {
		return config.Worker{}, fmt.Errorf("unknown worker %q: the configuration lists no workers", name)
	}
	return config.Worker{}, fmt.Errorf("unknown worker %q; configured workers: %s", name, strings.Join(names, ", "))
}

// compareStore is the directory that holds the truth: the store, or in
// place (no store configured) the mount point, since the real directory
// is under the mount.
func compareStore(cfg *config.Config) string {
	if cfg.InPlace {
		return cfg.Mount
	}
	return cfg.Store
}

// dialWorker connects to w as the daemon does (workerDialer).
func dialWorker(ctx context.Context, cfg *config.Config, w config.Worker, log *slog.Logger) (replicate.Transport, error) {
	t, err := workerDialer(cfg, w, log)(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return t, nil
}

// cliLogger logs warnings (such as an agent falling back to SFTP) of the
// one-shot commands to stderr.
func cliLogger() (*slog.Logger, error) {
	return newLogger(os.Stderr, "warn")
}
