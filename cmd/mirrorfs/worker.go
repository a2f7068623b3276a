package main

import (
	"fmt"
	"net"
	"os"

	"github.com/spf13/cobra"

	"github.com/mirrorfs/mirrorfs/worker"
)

func newWorkerCmd() *cobra.Command {
	var listen, root, authKeys, hostKey, level string
	var genKey bool
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run an SFTP-only SSH server that confines the master to one directory",
		Long: `Run an embedded SSH server on a worker host that accepts nothing but SFTP,
only from the keys in --authorized-keys, and confines every file operation
to --root (symlinks cannot lead out of it; --root itself must not be a
symlink: configure the directory it resolves to). Use it on hosts that should give
the master no shell; a worker with OpenSSH needs no mirrorfs binary at all.

The master then lists this host as a worker with the port given here, and
its known_hosts must hold this server's host key (the .pub file next to
--host-key).`,
		Example: `  # create a host key once, then serve /var/www/html on port 2222
  mirrorfs worker --generate-host-key --host-key /etc/mirrorfs/worker_host_ed25519 \
      --listen :2222 --root /var/www/html --authorized-keys /etc/mirrorfs/master.pub`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := newLogger(os.Stderr, level)
			if err != nil {
				return err
			}
			if genKey {
				if _, err := os.Stat(hostKey); os.IsNotExist(err) {
					if _, err := worker.GenerateKeyFiles(hostKey); err != nil {
						return fmt.Errorf("generate host key %s: %w", hostKey, err)
					}
					log.Info("generated host key", "file", hostKey)
				}
			}
			srv, err := worker.New(worker.Options{Root: root, AuthorizedKeys: authKeys, HostKey: hostKey, Logger: log})
			if err != nil {
				return err
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen %s: %w", listen, err)
			}
			log.Info("worker listening", "addr", l.Addr().String(), "root", root)
			return srv.Serve(cmd.Context(), l)
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", ":2222", "address to listen on (host:port)")
	f.StringVar(&root, "root", "", "directory the master may write to (required)")
	f.StringVar(&authKeys, "authorized-keys", "", "OpenSSH authorized_keys file with the master's public key (required)")
	f.StringVar(&hostKey, "host-key", "", "OpenSSH private host key file (required)")
	f.BoolVar(&genKey, "generate-host-key", false, "create --host-key (ed25519) if it does not exist")
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	for _, name := range []string{"root", "authorized-keys", "host-key"} {
		cmd.MarkFlagRequired(name)
	}
	return cmd
}
