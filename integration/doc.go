// Package integration holds mirrorfs's end-to-end tests. They use only real
// parts: the mirrorfs binary built from this module, a real FUSE mount, and
// real OpenSSH sshd processes as workers (one per worker, on 127.0.0.1, each
// with its own host key and root directory).
//
// A test that cannot get one of its real parts (root, /dev/fuse, fusermount3,
// sshd) is skipped on a developer machine and fails when CI=true, so CI never
// passes by skipping silently.
//
// The harness lives in the _test.go files: newCluster starts workers and the
// daemon, waitConverged polls until every worker root equals the store, and
// compareTrees says what differs.
package integration
