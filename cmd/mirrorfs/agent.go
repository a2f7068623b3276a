package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/mirrorfs/mirrorfs/agent"
)

func newAgentCmd() *cobra.Command {
	var root string
	var idleExit time.Duration
	cmd := &cobra.Command{
		Use:   "agent --root DIR [--idle-exit DURATION]",
		Short: "Apply a master's changes below DIR (started by the master over SSH)",
		Long: `agent is the worker side of the agent transport. The master starts it
over an SSH exec channel, the way rsync starts "rsync --server", and speaks
mirrorfs's protocol on its standard input and output. Every path it is sent
is resolved below --root without following symlinks; nothing can make it
write outside that directory.

You do not run it yourself: the master uploads its own binary to
~/.cache/mirrorfs/ on the worker when that is missing or another build, and
falls back to SFTP (with a logged reason) when the agent cannot run there.
Choose per worker with "transport: agent" (the default) or "transport: sftp".

A master pings an idle agent every minute. With --idle-exit the agent exits
when nothing came from the master for that long: after a network cut, sshd
keeps the agent's input and output open until TCP gives up, hours later,
and an agent would be left behind on the worker after every outage. An
answer the master has not taken in for that long counts the same. The
master starts its agents with --idle-exit 10m0s.

Messages go to standard error, which the master shows when the agent fails.`,
		Example: `  # what the master runs on the worker, over ssh:
  ~/.cache/mirrorfs/mirrorfs-0123456789abcdef agent --root /var/www/html --idle-exit 10m0s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if root == "" {
				return errors.New("--root is required: the worker directory to apply changes to")
			}
			if idleExit < 0 {
				return fmt.Errorf("--idle-exit %s: want a positive duration, or 0 for never", idleExit)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			var in io.Reader = os.Stdin
			var out io.Writer = os.Stdout
			if idleExit > 0 {
				// Exit, not return: the read or write that waits cannot
				// be interrupted, and no change is under way meanwhile
				// (a temp file of a transfer cut short is swept later).
				in, out, _ = agent.WatchIdle(os.Stdin, os.Stdout, idleExit, func() {
					log.Warn("nothing from the master, or it takes nothing in: taking it for gone, exiting", "idle_exit", idleExit)
					os.Exit(1)
				})
			}
			return agent.Serve(cmd.Context(), in, out, root, log)
		},
	}
	cmd.Flags().StringVar(&root, "root", "", "worker root directory (absolute path)")
	cmd.Flags().DurationVar(&idleExit, "idle-exit", 0, "exit when nothing came from the master for this long (0: never)")
	return cmd
}
