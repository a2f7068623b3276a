// Package config loads and validates the mirrorfs configuration: one YAML
// file (DefaultPath unless told otherwise) whose top-level, batch, retry,
// log and ssh scalar keys can be overridden by MIRRORFS_* environment
// variables. Its one job is to turn that
// file into a complete, checked Config, or into errors that say which key is
// wrong, where it is, and what is expected.
//
// # File
//
// Keys are lower case and exact: an unknown or misspelt key anywhere (at the
// top level, in batch, retry, log or ssh, or in any worker) is an error. YAML
// anchors and merge keys (<<) may be used. Defaults:
//
//	store              omitted => InPlace: mirrorfs mounts over Mount itself
//	journal            /var/lib/mirrorfs/journal
//	control            /run/mirrorfs/mirrorfs.sock
//	exclude            none
//	batch.delay        10ms  (longest gathering; a batch ships at a rename or once the journal is quiet for 2 ms; 0 ships at once)
//	batch.max_ops      50000
//	batch.hold_open    60s   (0 never holds back files open for writing)
//	retry.min/max      100ms / 30s
//	log.level          info  (debug, info, warn or error; any case)
//	ssh.user           mirror
//	ssh.identity       [/etc/mirrorfs/id_ed25519] (also when given as [])
//	ssh.known_hosts    /etc/mirrorfs/known_hosts
//	ssh.connect_timeout 10s
//	workers[i].port    22
//	workers[i].root    the same path as mount
//	workers[i].user    ssh.user
//
// A key present with no value (`journal:`, `journal: ~`) counts as omitted,
// except store: `store:` with no value is an error, because omitting store
// mounts in place and a template rendering `store: ${STORE}` with STORE
// unset must not switch to that. A key set to the empty string ("") is an
// error too; omit the key for its default.
//
// Zero workers is a valid configuration: mirrorfs then only mounts and
// journals.
//
// # Paths
//
// Every local path (mount, store, journal, control, ssh.identity,
// ssh.known_hosts) and every worker root must be absolute. Relative paths are
// rejected, not resolved against the configuration file's directory: Parse
// has no directory, an environment override would be ambiguous, and a daemon
// started by systemd runs in /. Paths are cleaned. Validate never touches the
// file system (nothing has to exist yet), so it also works for a file meant
// for another host. A worker root of "/" is allowed: it is what a chrooted
// SFTP account or a `mirrorfs worker` (confined to its --root) shows. It does
// refuse layouts that cannot work: a mount of "/", store equal to, inside or around mount, a journal
// inside or around mount or store (it would journal itself), a control socket
// inside mount, store or journal, or a socket path longer than a Unix socket
// address allows.
//
// # Environment
//
// These scalar keys have a variable named MIRRORFS_ followed by the key path
// in upper case with dots as underscores: MIRRORFS_MOUNT, MIRRORFS_STORE,
// MIRRORFS_JOURNAL, MIRRORFS_CONTROL, MIRRORFS_BATCH_DELAY,
// MIRRORFS_BATCH_MAX_OPS, MIRRORFS_BATCH_HOLD_OPEN, MIRRORFS_RETRY_MIN,
// MIRRORFS_RETRY_MAX, MIRRORFS_LOG_LEVEL, MIRRORFS_SSH_USER,
// MIRRORFS_SSH_KNOWN_HOSTS and MIRRORFS_SSH_CONNECT_TIMEOUT. A variable set
// to the empty string counts as unset. MIRRORFS_JOURNAL sets the journal's
// directory whether the file writes journal as a path or as a mapping, and
// a journal.max_bytes from the file still holds. journal.max_bytes, the
// lists (exclude, ssh.identity) and workers (every workers[i] key) have no
// variable: they come from the file only. Every Load and Parse uses its own viper
// instance and reads the environment at that moment.
//
// # Exclude patterns
//
// Patterns are gitignore-style and are only checked here; matching lives in
// the replicator. A pattern is one or more "/"-separated segments, each a
// path.Match pattern ("**" is accepted as a whole segment), with an optional
// leading "/" (anchored at the root) and an optional trailing "/" (directories
// only). Negation ("!") is not supported, a leading "#" would be a gitignore
// comment (write `\#`), and empty, ".", ".." segments or surrounding spaces
// are refused.
//
// # Errors
//
// Problems are reported together, one *FieldError per key, joined with
// errors.Join; each matches ErrInvalid with errors.Is. A FieldError reads
//
//	/etc/mirrorfs/mirrorfs.yaml:14: workers[1].port: must be 1..65535, got 70000
//	/etc/mirrorfs/mirrorfs.yaml: batch.delay (from $MIRRORFS_BATCH_DELAY): invalid duration "10"...
//
// YAML syntax errors carry the file and the line the YAML parser reports.
package config
