package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/mirrorfs/mirrorfs/replicate"
)

// cacheDir is where the master keeps its agent binary on a worker,
// relative to the SSH user's home.
const cacheDir = ".cache/mirrorfs"

// Dial connects to a worker and starts `mirrorfs agent` there over an SSH
// exec channel, uploading this very binary first when the worker lacks it
// or has another build. When the agent cannot run (an SFTP-only account,
// `mirrorfs worker`, another CPU architecture, no shell) it falls back to
// the SFTP transport on the same connection and logs why.
func Dial(ctx context.Context, o replicate.SFTPOptions) (replicate.Transport, error) {
	sc, err := replicate.DialSSH(ctx, o)
	if err != nil {
		// LoginError names the user when the login is refused.
		return nil, fmt.Errorf("agent %w", replicate.LoginError(err, o.User))
	}
	c, err := start(ctx, sc, o.Root)
	if err == nil {
		return c, nil
	}
	if ctx.Err() != nil {
		sc.Close()
		return nil, ctx.Err()
	}
	sc.Logger().Warn("agent transport unavailable on this worker: using SFTP (no deltas, no xattrs, no symlink owners, whole-second mtimes)", "reason", err)
	return replicate.NewSFTP(sc, o)
}

// start runs the agent, uploading it when needed.
func start(ctx context.Context, sc *replicate.SSHConn, root string) (*Client, error) {
	if !path.IsAbs(root) {
		return nil, fmt.Errorf("root %q is not an absolute path", root)
	}
	id, err := BuildID()
	if err != nil {
		return nil, fmt.Errorf("this executable's build id: %w", err)
	}
	remote, fresh, err := install(ctx, sc, selfExe, id, root, false)
	if err != nil {
		return nil, err
	}
	c, release, err := run(ctx, sc, remote, root)
	damaged := err == nil && c.BuildID() != id
	if (damaged || errors.Is(err, errNotRunnable)) && !fresh {
		// Same name, other content (a damaged upload), or a cached file
		// that does not run: replace it. Only the agent's session ends:
		// the connection serves the upload.
		if damaged {
			release()
		}
		if remote, _, err = install(ctx, sc, selfExe, id, root, true); err != nil {
			return nil, err
		}
		c, release, err = run(ctx, sc, remote, root)
	}
	if err != nil {
		return nil, err
	}
	if c.BuildID() != id {
		release() // Dial goes on with SFTP over the same connection
		return nil, fmt.Errorf("agent %s reports build %.16s, want %.16s", remote, c.BuildID(), id)
	}
	return c, nil
}

// install makes sure the worker has this binary at its cache path and
// returns that path, and whether it was uploaded now. It refuses when that
// path lies inside the worker root (an account whose home is the web root,
// or `mirrorfs worker`, whose SFTP root is the worker root): the binary
// would be served, and every full comparison would delete it again.
func install(ctx context.Context, sc *replicate.SSHConn, exe, id, root string, force bool) (remote string, uploaded bool, err error) {
	// Every step waits for the worker's SFTP server, which can hang (a
	// dead disk, a hung NFS home) while sshd answers, with no keepalive
	// or stall watch running yet: the look at the cache is bounded like
	// the dial (connect_timeout), the upload like any request (the reply
	// timeout without progress). Each bound closes the connection, and
	// the shipper retries.
	stop := context.AfterFunc(ctx, sc.Kill)
	defer stop()
	look := time.AfterFunc(sc.Timeout(), sc.Kill)
	defer look.Stop()
	c, err := sftp.NewClient(sc.Client)
	if err != nil {
		return "", false, fmt.Errorf("sftp for the agent upload: %w", err)
	}
	defer c.Close()
	home, err := c.Getwd()
	if err != nil {
		return "", false, fmt.Errorf("home directory: %w", err)
	}
	dir := path.Join(home, cacheDir)
	if within(dir, root) {
		return "", false, fmt.Errorf("the agent's cache %s would be inside the worker root %s (the SSH account's home is %s): not uploading it there", dir, root, home)
	}
	remote = path.Join(dir, "mirrorfs-"+id[:16])
	local, err := os.Stat(exe)
	if err != nil {
		return "", false, err
	}
	if fi, err := c.Stat(remote); err == nil && fi.Size() == local.Size() && !force {
		return remote, false, nil
	}
	look.Stop()
	watch := sc.StallWatch()
	defer watch.Stop()
	defer watch.Begin()()
	if err := c.MkdirAll(dir); err != nil {
		return "", false, fmt.Errorf("create %s: %w", dir, err)
	}
	src, err := os.Open(exe)
	if err != nil {
		return "", false, err
	}
	defer src.Close()
	tmp := path.Join(dir, replicate.TempName())
	dst, err := c.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return "", false, fmt.Errorf("upload agent to %s: %w", tmp, err)
	}
	_, err = dst.ReadFrom(watch.Reader(src)) // the worker taking the bytes in is progress
	if _, ok := c.HasExtension("fsync@openssh.com"); ok && err == nil {
		// On disk before the rename: after a power cut the worker has the
		// old name or the whole binary, never a damaged one under its name
		// (which would fail to run until someone removed it).
		err = dst.Sync()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = c.Chmod(tmp, 0o700)
	}
	if err == nil {
		err = c.PosixRename(tmp, remote)
	}
	if err != nil {
		_ = c.Remove(tmp)
		return "", false, fmt.Errorf("upload agent to %s: %w", remote, err)
	}
	sc.Logger().Info("uploaded the agent", "path", remote, "bytes", local.Size())
	pruneCache(c, dir, remote, sc.Logger())
	return remote, true, nil
}

// staleUpload is the age after which a temp file in the agent's cache is
// an upload that was cut off, not one under way.
const staleUpload = time.Hour

// pruneCache removes from the agent's cache dir the builds other than
// keep (each upgrade of the master left one more, about 25 MB each) and
// uploads cut off long ago. A running agent of a removed build goes on;
// a master of that build uploads it again when it next connects.
func pruneCache(c *sftp.Client, dir, keep string, log *slog.Logger) {
	ents, err := c.ReadDir(dir)
	if err != nil {
		log.Warn("list the agent cache", "dir", dir, "err", err)
		return
	}
	for _, e := range ents {
		p := path.Join(dir, e.Name())
		build := strings.HasPrefix(e.Name(), "mirrorfs-") && p != keep
		cutOff := strings.HasPrefix(e.Name(), replicate.TempPrefix) && time.Since(e.ModTime()) > staleUpload
		if !e.Mode().IsRegular() || !build && !cutOff {
			continue
		}
		if err := c.Remove(p); err != nil {
			log.Warn("remove an old agent build", "path", p, "err", err)
			continue
		}
		log.Info("removed an old agent build", "path", p)
	}
}

// within reports whether the slash path p is root or below it.
func within(p, root string) bool {
	p, root = path.Clean(p), path.Clean(root)
	return p == root || root == "/" || strings.HasPrefix(p, root+"/")
}

// run starts the agent at remote on an exec channel and greets it. The
// client's Close also closes the connection, which it then owns; release
// ends the agent's session only and leaves the connection open.
func run(ctx context.Context, sc *replicate.SSHConn, remote, root string) (c *Client, release func(), err error) {
	// Until the agent has greeted, as the dial: an sshd that takes the
	// connection but never opens the session would hold the connect.
	start := time.AfterFunc(sc.Timeout(), sc.Kill)
	defer start.Stop()
	sess, err := sc.NewSession()
	if err != nil {
		return nil, nil, fmt.Errorf("open a session: %w", err)
	}
	stdin, err := sess.StdinPipe()
	if err != nil {
		sess.Close()
		return nil, nil, err
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		sess.Close()
		return nil, nil, err
	}
	stderr := &tailBuffer{max: 4 << 10}
	sess.Stderr = stderr
	cmd := shellQuote(remote) + " agent --root " + shellQuote(root) + " --idle-exit " + IdleExit.String()
	if err := sess.Start(cmd); err != nil {
		sess.Close()
		return nil, nil, fmt.Errorf("run %s: %w", cmd, err)
	}
	done := make(chan struct{})
	var once sync.Once
	watch := sc.StallWatch()
	release = func() {
		once.Do(func() { close(done) })
		watch.Stop()
		stdin.Close()
		sess.Close()
	}
	closeFn := func() error {
		release()
		return sc.Close()
	}
	hctx, cancel := context.WithTimeout(ctx, sc.Timeout())
	defer cancel()
	c, err = NewClient(hctx, watch.Reader(stdout), watch.Writer(stdin), sc.Kill, closeFn, sc)
	if err != nil {
		watch.Stop()
		// The agent's own words say most (exec format error, bad root),
		// but its stderr arrives on its own: wait for the session to end
		// (briefly: a wedged worker must not stall the fallback).
		stdin.Close()
		ended := make(chan error, 1)
		go func() { ended <- sess.Wait() }()
		select {
		case werr := <-ended:
			if notRunnable(werr) {
				err = fmt.Errorf("%w: %w", errNotRunnable, err)
			}
		case <-time.After(2 * time.Second):
		}
		sess.Close()
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			err = fmt.Errorf("%w; agent said: %s", err, msg)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("%s exited at start: %w", cmd, err)
		}
		return nil, nil, err
	}
	c.watchStall(watch)
	go sc.KeepAlive(done)
	go c.pingWhileIdle(PingInterval, done)
	return c, release, nil
}

// errNotRunnable is a cached agent the worker's shell could not run at
// all: gone (another master's upload pruned it after this one looked) or
// not executable (a `chmod -R` of the home directory, say).
var errNotRunnable = errors.New("the cached agent could not be run")

// notRunnable reports whether the agent's session ended with the POSIX
// shell's status for a command it could not find (127) or not execute
// (126), as opposed to an agent that ran and exited.
func notRunnable(err error) bool {
	var exit *ssh.ExitError
	return errors.As(err, &exit) && (exit.ExitStatus() == 126 || exit.ExitStatus() == 127)
}

// shellQuote quotes s for the worker's POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// tailBuffer keeps the last max bytes written (the agent's stderr).
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   bytes.Buffer
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b.Write(p)
	if over := t.b.Len() - t.max; over > 0 {
		t.b.Next(over)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.b.String()
}
