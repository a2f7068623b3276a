// Command mirrorfs keeps a web root identical on a cluster of web servers:
// it mounts the web root through FUSE, journals every change and ships it
// to each worker over SSH.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "mirrorfs:", err)
		os.Exit(exitCode(err))
	}
}
