package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mirrorfs/mirrorfs/config"
	"github.com/mirrorfs/mirrorfs/control"
	"github.com/mirrorfs/mirrorfs/journal"
)

func newStatusCmd() *cobra.Command {
	var cfgPath string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show each worker's replication state",
		Long: `Show, for every worker: whether it is connected, its last error, how many
journaled operations it still lacks, its lag (age of the oldest operation it
lacks) and the last sequence number it applied.

While the daemon runs, status asks it over the control socket. When no
daemon runs (after a crash, say), status opens the journal read-only and
reports the positions stored there, without changing anything.`,
		Example: `  mirrorfs status --config /etc/mirrorfs/mirrorfs.yaml
  mirrorfs status --config /etc/mirrorfs/mirrorfs.yaml --json | jq '.workers[] | {name, lag_seconds}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			st, err := ownDaemon(cmd.Context(), cfg)
			if errors.Is(err, control.ErrNoDaemon) {
				st, err = statusFromJournal(cfg)
			}
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	cmd.Flags().StringVarP(&cfgPath, "config", "c", "/etc/mirrorfs/mirrorfs.yaml", "configuration file")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return cmd
}

// statusFromJournal reports the stored positions when no daemon runs.
func statusFromJournal(cfg *config.Config) (control.Status, error) {
	j, err := journal.Open(cfg.Journal, journal.Options{ReadOnly: true})
	if err != nil {
		return control.Status{}, fmt.Errorf("no daemon answers on %s, and the journal cannot be read: %w", cfg.Control, err)
	}
	defer j.Close()
	st := control.Status{Mount: cfg.Mount, LastSeq: j.LastSeq()}
	for _, w := range cfg.Workers {
		ws := control.WorkerStatus{Name: w.Name, Addr: w.Addr(), LastError: "daemon not running"}
		c, ok, err := j.Cursor(w.Name)
		if err != nil {
			return st, err
		}
		if !ok || c.FullSync || j.Recovered() {
			// After a crash the next start compares every worker.
			ws.InitialCopy = true
		}
		ws.Applied = c.Applied
		ws.Pending = st.LastSeq - min(c.Applied, st.LastSeq)
		if ws.Pending > 0 {
			if ops, err := j.Read(c.Applied+1, 1); err == nil && len(ops) == 1 {
				ws.LagSeconds = time.Since(time.Unix(0, ops[0].Time)).Seconds()
			}
		}
		st.Workers = append(st.Workers, ws)
	}
	return st, nil
}

func printStatus(w io.Writer, st control.Status) {
	fmt.Fprintf(w, "mount %s, journal at #%d\n", st.Mount, st.LastSeq)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tADDRESS\tCONNECTED\tPENDING\tLAG\tAPPLIED\tLAST ERROR")
	for _, ws := range st.Workers {
		conn := "no"
		if ws.Connected {
			conn = "yes"
		}
		if ws.InitialCopy {
			conn += " (initial copy)"
		}
		lag := time.Duration(ws.LagSeconds * float64(time.Second)).Round(time.Millisecond)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t#%d\t%s\n", ws.Name, ws.Addr, conn, ws.Pending, lag, ws.Applied, ws.LastError)
	}
	tw.Flush()
}

// ownDaemon asks the daemon on cfg's control socket for its status and
// refuses one that serves another mount: two configurations sharing a
// control: path would have the CLI read, and resync, the other cluster's
// workers.
func ownDaemon(ctx context.Context, cfg *config.Config) (control.Status, error) {
	st, err := control.Fetch(ctx, cfg.Control)
	if err == nil && st.Mount != cfg.Mount {
		return st, fmt.Errorf("the daemon on control socket %s serves mount %s, not this configuration's %s: give each configuration a control: path of its own", cfg.Control, st.Mount, cfg.Mount)
	}
	return st, err
}
