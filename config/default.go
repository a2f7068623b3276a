package config

// Default returns an annotated example configuration, for documentation and
// --help. It parses and validates as it is.
func Default() string { return defaultYAML }

const defaultYAML = `# mirrorfs configuration, normally /etc/mirrorfs/mirrorfs.yaml.
#
# Keys are lower case; an unknown key is an error. All paths are absolute.
# The single-value keys of the top level and of batch, retry, log and ssh
# can be overridden by an environment variable named MIRRORFS_ and the key
# path in upper case with _ for dots, for example MIRRORFS_MOUNT,
# MIRRORFS_BATCH_DELAY, MIRRORFS_SSH_USER. MIRRORFS_JOURNAL sets the
# journal's directory (journal.dir) and keeps a max_bytes given here;
# journal.max_bytes, the lists and the workers' keys come from this file only.

# The web root that editors, deploy scripts and the web server use
# (required). mirrorfs mounts itself here.
mount: /var/www/html

# Where the real bytes live. Omit it to mount over the existing directory
# in place, keeping the bytes in the directory the mount covers. A store:
# with no value is an error, not in place.
store: /var/lib/mirrorfs/store

# The journal of every mutation (default /var/lib/mirrorfs/journal).
# Must not lie inside mount or store.
journal: /var/lib/mirrorfs/journal
# or, with a disk budget: over it, workers that are not connected stop
# holding records back and are compared with the store when they return.
# journal:
#   dir: /var/lib/mirrorfs/journal
#   max_bytes: 1GiB       # bytes, or with a unit: 512MiB, 2GB; 0 = no budget

# Control socket for mirrorfs status and journal (default shown).
control: /run/mirrorfs/mirrorfs.sock

# gitignore-style patterns; matching paths are not replicated. A leading /
# anchors a pattern at the root, a trailing / matches directories only.
# Negation (!) is not supported.
exclude:
  - "*.swp"
  - "*~"
  - ".git/"

batch:
  delay: 10ms      # longest a batch gathers changes; it ships once none came for 2 ms
  max_ops: 50000   # most journal operations in one batch
  hold_open: 60s   # longest a file still open for writing is held back

retry:             # capped exponential backoff, per worker
  min: 100ms
  max: 30s

log:
  level: info      # debug, info, warn or error

ssh:
  user: mirror                             # default user on the workers
  identity: [/etc/mirrorfs/id_ed25519]     # private keys to offer
  known_hosts: /etc/mirrorfs/known_hosts   # host keys are always verified
  connect_timeout: 10s

# The web servers to keep identical to the store. An empty list (or none)
# is allowed: mirrorfs then only mounts and journals.
workers:
  - name: web-worker-01   # unique; letters, digits, '.', '_', '-'
    host: 10.0.0.11       # host name or IP address (IPv6 without brackets)
    port: 22              # default 22
    root: /var/www/html   # path on the worker; default: same as mount
    transport: agent      # agent (default): mirrorfs uploads itself to
                          # ~/.cache/mirrorfs/ on the worker and runs there
                          # over ssh, falling back to sftp when it cannot;
                          # sftp: OpenSSH's sftp-server only
  - name: web-worker-02
    host: 10.0.0.12
    user: deploy          # overrides ssh.user for this worker
`
