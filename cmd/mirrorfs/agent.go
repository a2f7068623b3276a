package main

import (
	"errors"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/mirrorfs/mirrorfs/agent"
)

func newAgentCmd() *cobra.Command {
	var root string
	cmd := &cobra.Command{
		Use:   "agent --root DIR",
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

Messages go to standard error, which the master shows when the agent fails.`,
		Example: `  # what the master runs on the worker, over ssh:
  ~/.cache/mirrorfs/mirrorfs-0123456789abcdef agent --root /var/www/html`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if root == "" {
				return errors.New("--root is required: the worker directory to apply changes to")
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			return agent.Serve(cmd.Context(), os.Stdin, os.Stdout, root, log)
		},
	}
	cmd.Flags().StringVar(&root, "root", "", "worker root directory (absolute path)")
	return cmd
}
