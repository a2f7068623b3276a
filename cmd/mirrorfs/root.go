package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// errUsage marks a mistake in how a command was called (exit status 2,
// where a command documents it): match it with errors.Is; build such
// errors with usageErrorf, whose text is the mistake alone.
var errUsage = errors.New("usage")

// usageError is a mistake in how a command was called: it reads as the
// mistake and matches errUsage.
type usageError struct{ err error }

func (e usageError) Error() string        { return e.err.Error() }
func (e usageError) Unwrap() error        { return e.err }
func (e usageError) Is(target error) bool { return target == errUsage }

func usageErrorf(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// flagUsageError makes a flag that does not parse (unknown, or a value of
// the wrong type) a usage error; set on commands whose exit status 2
// documents usage errors (cobra's default makes them exit 1).
func flagUsageError(_ *cobra.Command, err error) error { return usageError{err} }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "mirrorfs",
		Short: "Keep a web root identical on every web server of a cluster",
		Long: `mirrorfs keeps a web root identical on a cluster of web servers.

The master's web root (say /var/www/html) is mounted through FUSE. Editors,
deploy scripts and the local web server use it like any directory. Every
change made through the mount is written to a persistent journal before the
call returns, and one replicator per worker ships the changes over SSH,
resuming from that worker's own position after an outage, a reboot or a
crash.

Start with:
  mirrorfs mount --config /etc/mirrorfs/mirrorfs.yaml   run the mount and the replicators
  mirrorfs status --config /etc/mirrorfs/mirrorfs.yaml  see what each worker still lacks
  mirrorfs worker --help                                an SFTP-only SSH server for workers`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newMountCmd(), newStatusCmd(), newWorkerCmd(), newAgentCmd(), newVersionCmd(), newDemoCmd(), newJournalCmd(), newVerifyCmd(), newResyncCmd())
	return root
}

func exitCode(err error) int {
	if errors.Is(err, errUsage) {
		return 2
	}
	return 1
}

// newLogger builds the text logger every subcommand uses.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	switch strings.ToLower(level) {
	case "", "info":
		l = slog.LevelInfo
	case "debug":
		l = slog.LevelDebug
	case "warn", "warning":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
