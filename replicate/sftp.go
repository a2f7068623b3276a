package replicate

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"
)

// SFTPOptions configure DialSFTP.
type SFTPOptions struct {
	Addr string // host:port (port 22 if omitted)
	User string
	Root string // absolute path of the worker root on the worker
	// IdentityFiles are unencrypted private key files. If SSH_AUTH_SOCK
	// is set, the agent's keys are offered too.
	IdentityFiles []string
	// KnownHosts is the known_hosts file the worker's host key must be
	// in. Required: host keys are always verified.
	KnownHosts     string
	ConnectTimeout time.Duration // TCP connect and SSH handshake (default 15 s)
	KeepAlive      time.Duration // keepalive period; the connection is closed after 3 missed (default 15 s)
	// ReplyTimeout is the longest a request waits for the worker's answer
	// with nothing received meanwhile; then the connection is closed
	// (DefaultReplyTimeout). Keepalives cannot tell a worker whose disk
	// hangs: sshd answers them.
	ReplyTimeout time.Duration
	Logger       *slog.Logger
}

// SFTP is a Transport over SSH to OpenSSH's sftp-server (or any SFTP v3
// server). It uses posix-rename@openssh.com, hardlink@openssh.com and
// fsync@openssh.com when the server offers them.
//
// SFTP v3 carries mtimes in whole seconds: nanoseconds are lost (the agent
// transport will carry them). Setstat follows symlinks, so Chmod, Chown and
// Chtimes check with an Lstat first and refuse symlinks.
type SFTP struct {
	root   string
	ssh    *SSHConn
	c      *sftp.Client
	watch  *StallWatch // of c's channel
	log    *slog.Logger
	dirs   dirCheck
	posix  bool // posix-rename@openssh.com
	link   bool // hardlink@openssh.com
	fsync  bool // fsync@openssh.com
	done   chan struct{}
	closed sync.Once
	broken atomic.Bool
	// beforeStatVFS, when set (tests), runs before explainFailure asks
	// the worker.
	beforeStatVFS func()
}

var (
	_ Transport = (*SFTP)(nil)
	_ Stats     = (*SFTP)(nil)
)

// DialSFTP connects to a worker over SSH and starts an SFTP session.
func DialSFTP(ctx context.Context, o SFTPOptions) (Transport, error) {
	t, err := dialSFTP(ctx, o)
	if err != nil {
		return nil, err
	}
	return t, nil
}

func dialSFTP(ctx context.Context, o SFTPOptions) (*SFTP, error) {
	sc, err := DialSSH(ctx, o)
	if err != nil {
		return nil, fmt.Errorf("sftp %w", LoginError(err, o.User))
	}
	t, err := newSFTP(sc, o)
	if err != nil {
		sc.Close()
		return nil, err
	}
	return t, nil
}

// NewSFTP starts an SFTP session on an open SSH connection (the agent
// transport falls back to it). The transport owns sc from then on, also
// when NewSFTP fails.
func NewSFTP(sc *SSHConn, o SFTPOptions) (Transport, error) {
	t, err := newSFTP(sc, o)
	if err != nil {
		sc.Close()
		return nil, err
	}
	return t, nil
}

func newSFTP(sc *SSHConn, o SFTPOptions) (*SFTP, error) {
	addr := sc.Addr
	_ = sc.conn.SetDeadline(time.Now().Add(sc.timeout))
	watch := sc.StallWatch()
	c, err := startSFTP(sc, watch)
	_ = sc.conn.SetDeadline(time.Time{})
	if err != nil {
		watch.Stop()
		return nil, fmt.Errorf("sftp %s: start sftp subsystem: %w", addr, err)
	}
	t, err := checkSFTP(sc, o, c, watch)
	if err != nil {
		// The shipper dials again and again a worker whose root is
		// wrong: nothing of this attempt may outlive it.
		c.Close()
		watch.Stop()
		return nil, err
	}
	go sc.KeepAlive(t.done)
	return t, nil
}

// checkSFTP makes the transport over the started client c once the root
// is an absolute path to a real directory, and notes the server's
// extensions.
func checkSFTP(sc *SSHConn, o SFTPOptions, c *sftp.Client, watch *StallWatch) (*SFTP, error) {
	log, addr := sc.log, sc.Addr
	if !path.IsAbs(o.Root) {
		return nil, fmt.Errorf("sftp %s: root %q is not an absolute path", addr, o.Root)
	}
	t := &SFTP{root: path.Clean(o.Root), ssh: sc, c: c, watch: watch, log: log, done: make(chan struct{})}
	t.posix = hasExt(c, "posix-rename@openssh.com")
	t.link = hasExt(c, "hardlink@openssh.com")
	t.fsync = hasExt(c, "fsync@openssh.com")
	if !t.posix {
		log.Warn("server lacks posix-rename@openssh.com: replacing a file is remove + rename, not atomic")
	}
	if !t.link {
		log.Warn("server lacks hardlink@openssh.com: hard links are sent as copies")
	}
	if !t.fsync {
		log.Info("server lacks fsync@openssh.com: relying on the server to sync files when they are closed (mirrorfs worker does)")
	}
	// Lstat: a root that is itself a symlink (to / or ../..) is refused
	// rather than followed; the message names what it points to.
	fi, err := c.Lstat(t.root)
	if err == nil && fi.Mode()&os.ModeSymlink != 0 {
		target, terr := c.ReadLink(t.root)
		if terr != nil {
			target = "?"
		}
		resolved, rerr := c.RealPath(t.root)
		if rerr != nil {
			resolved = "unresolvable: " + rerr.Error()
		}
		return nil, fmt.Errorf("sftp %s: root %s is a symlink to %s (resolves to %s): a worker root must be a real directory; configure the resolved path instead", addr, t.root, target, resolved)
	}
	if err != nil || !fi.IsDir() {
		if err == nil {
			err = errors.New("not a directory")
		}
		return nil, fmt.Errorf("sftp %s: root %s: %w", addr, t.root, err)
	}
	return t, nil
}

// LoginError names the user in a refused login: x/crypto/ssh only says
// "unable to authenticate, attempted methods [...]", which tells the
// operator neither which account refused the key nor where to look. Any
// other error is returned unchanged.
func LoginError(err error, user string) error {
	if err == nil || !strings.Contains(err.Error(), "ssh: unable to authenticate") {
		return err
	}
	return fmt.Errorf("%w (the worker refused the login as user %q: is the daemon's key in that user's authorized_keys there?)", err, user)
}

func hasExt(c *sftp.Client, name string) bool {
	_, ok := c.HasExtension(name)
	return ok
}

// kill closes the connection so that blocked calls return.
func (t *SFTP) kill() {
	t.broken.Store(true)
	t.ssh.Kill()
}

// BytesSent implements Stats.
func (t *SFTP) BytesSent() uint64 { return t.ssh.BytesSent() }

// BytesReceived implements Stats.
func (t *SFTP) BytesReceived() uint64 { return t.ssh.BytesReceived() }

// Close implements Transport.
func (t *SFTP) Close() error {
	t.closed.Do(func() { close(t.done) })
	t.watch.Stop()
	t.c.Close()
	return t.ssh.Close()
}

// startSFTP starts the sftp subsystem on a session of sc, as
// sftp.NewClient does, with what the server sends counted by watch.
func startSFTP(sc *SSHConn, watch *StallWatch) (*sftp.Client, error) {
	sess, err := sc.NewSession()
	if err != nil {
		return nil, err
	}
	if err := sess.RequestSubsystem("sftp"); err != nil {
		sess.Close()
		return nil, err
	}
	w, err := sess.StdinPipe()
	if err != nil {
		sess.Close()
		return nil, err
	}
	r, err := sess.StdoutPipe()
	if err != nil {
		sess.Close()
		return nil, err
	}
	c, err := sftp.NewClientPipe(watch.Reader(r), watch.Writer(w))
	if err != nil {
		sess.Close()
		return nil, err
	}
	return c, nil
}

// call runs f with ctx honoured: cancelling ctx closes the connection
// (pkg/sftp has no per-request cancellation), as does a worker that stops
// answering (StallWatch).
func (t *SFTP) call(ctx context.Context, f func() error) error {
	return t.watched(ctx, true, f)
}

// callRemoving is call for a request that only frees space (a remove, an
// rmdir): its failure is never explained as a full disk. sftp-server
// answers an rmdir of a directory that is not empty with the same bare
// failure as a full disk's, and a worker whose disk was nearly full was
// told to free space when a directory kept a file it should not have.
func (t *SFTP) callRemoving(ctx context.Context, f func() error) error {
	return t.watched(ctx, false, f)
}

func (t *SFTP) watched(ctx context.Context, mayNeedSpace bool, f func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, t.kill)
	end := t.watch.Begin()
	// Explained while still watched and cancellable: the statvfs waits
	// for the same worker, which may be what hangs.
	err := t.explainFailure(f(), t.root, mayNeedSpace)
	end()
	if !stop() && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// statvfsReadOnly is SSH2_FXE_STATVFS_ST_RDONLY of statvfs@openssh.com.
const statvfsReadOnly = 0x1

// explainFailure makes a bare SSH_FX_FAILURE status say what is wrong
// when the worker's file system shows it: SFTP v3 has no status for a
// full disk or a read-only file system (OpenSSH's sftp-server reports
// ENOSPC, EROFS and more as "Failure"), which left `mirrorfs status` with
// nothing but `sftp: "Failure"`. It asks statvfs@openssh.com about dir
// (on the worker) and adds "read-only file system" or "no space left on
// device" when that is what the answer shows (the latter only when the
// request may have needed space: mayNeedSpace). A failure is asked about
// once: the error returned is marked, also when the answer showed
// nothing (then its text is err's). The status may be wrapped (pkg/sftp
// wraps some in an *os.PathError).
func (t *SFTP) explainFailure(err error, dir string, mayNeedSpace bool) error {
	var se *sftp.StatusError
	var done *explainedFailure
	if !errors.As(err, &se) || se.FxCode() != sftp.ErrSSHFxFailure || errors.As(err, &done) || !hasExt(t.c, "statvfs@openssh.com") {
		return err
	}
	if t.beforeStatVFS != nil {
		t.beforeStatVFS()
	}
	vfs, verr := t.c.StatVFS(dir)
	if verr != nil {
		return &explainedFailure{err: err}
	}
	switch free := vfs.Bavail * vfs.Frsize; {
	case vfs.Flag&statvfsReadOnly != 0:
		return &explainedFailure{err: err, why: fmt.Sprintf("read-only file system (%s on the worker is mounted read-only)", dir)}
	case mayNeedSpace && (free < 1<<20 || vfs.Favail == 0):
		return &explainedFailure{err: err, why: fmt.Sprintf("no space left on device (the file system of %s on the worker has %d bytes and %d inodes free)", dir, free, vfs.Favail)}
	}
	return &explainedFailure{err: err}
}

// explainedFailure is a failure status that statvfs was asked about, by
// the innermost call that saw it, with what the answer showed of its
// cause (why; empty: nothing).
type explainedFailure struct {
	err error
	why string
}

func (e *explainedFailure) Error() string {
	if e.why == "" {
		return e.err.Error()
	}
	return e.err.Error() + ": " + e.why
}
func (e *explainedFailure) Unwrap() error { return e.err }

// abs validates p and its parents and returns the worker's absolute path.
func (t *SFTP) abs(ctx context.Context, p string) (string, error) {
	if err := ValidPath(p); err != nil {
		return "", err
	}
	if err := t.dirs.check(ctx, p, t.lstatRaw); err != nil {
		return "", err
	}
	if p == "" {
		return t.root, nil
	}
	return t.root + "/" + p, nil
}

func sftpInfo(fi fs.FileInfo) FileInfo {
	out := FileInfo{Name: fi.Name(), Mode: fi.Mode(), Size: fi.Size(), Mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*sftp.FileStat); ok {
		out.UID, out.GID = st.UID, st.GID
	}
	return out
}

func (t *SFTP) lstatRaw(ctx context.Context, p string) (FileInfo, error) {
	full := t.root
	if p != "" {
		full += "/" + p
	}
	var fi fs.FileInfo
	err := t.call(ctx, func() (err error) { fi, err = t.c.Lstat(full); return err })
	if err != nil {
		return FileInfo{}, &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	return sftpInfo(fi), nil
}

// Lstat implements Transport.
func (t *SFTP) Lstat(ctx context.Context, p string) (FileInfo, error) {
	if _, err := t.abs(ctx, p); err != nil {
		return FileInfo{}, err
	}
	return t.lstatRaw(ctx, p)
}

// ReadDir implements Transport.
func (t *SFTP) ReadDir(ctx context.Context, p string) ([]FileInfo, error) {
	full, err := t.abs(ctx, p)
	if err != nil {
		return nil, err
	}
	if fi, err := t.lstatRaw(ctx, p); err != nil {
		return nil, err
	} else if fi.Mode&fs.ModeSymlink != 0 {
		return nil, fmt.Errorf("readdir %s: %w", p, ErrSymlink)
	}
	var list []fs.FileInfo
	err = t.call(ctx, func() (err error) { list, err = t.c.ReadDirContext(ctx, full); return err })
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: p, Err: err}
	}
	out := make([]FileInfo, 0, len(list))
	for _, fi := range list {
		if n := fi.Name(); n != "." && n != ".." {
			out = append(out, sftpInfo(fi))
		}
	}
	return out, nil
}

// Readlink implements Transport.
func (t *SFTP) Readlink(ctx context.Context, p string) (string, error) {
	full, err := t.abs(ctx, p)
	if err != nil {
		return "", err
	}
	var target string
	err = t.call(ctx, func() (err error) { target, err = t.c.ReadLink(full); return err })
	if err != nil {
		return "", &fs.PathError{Op: "readlink", Path: p, Err: err}
	}
	return target, nil
}

// Mkdir implements Transport.
func (t *SFTP) Mkdir(ctx context.Context, p string, perm fs.FileMode) error {
	full, err := t.abs(ctx, p)
	if err != nil {
		return err
	}
	if err := t.call(ctx, func() error { return t.c.Mkdir(full) }); err != nil {
		return &fs.PathError{Op: "mkdir", Path: p, Err: err}
	}
	if err := t.call(ctx, func() error { return t.c.Chmod(full, perm) }); err != nil {
		return &fs.PathError{Op: "chmod", Path: p, Err: err}
	}
	return nil
}

// Remove implements Transport.
func (t *SFTP) Remove(ctx context.Context, p string) error {
	full, err := t.abs(ctx, p)
	if err != nil {
		return err
	}
	if p == "" {
		return fmt.Errorf("remove: %w: the root", ErrInvalidPath)
	}
	t.dirs.invalidate(p)
	// pkg/sftp's Remove falls back to removing an empty directory.
	if fi, err := t.lstatRaw(ctx, p); err != nil {
		return err
	} else if fi.IsDir() {
		return &fs.PathError{Op: "remove", Path: p, Err: errors.New("is a directory")}
	}
	if err := t.callRemoving(ctx, func() error { return t.c.Remove(full) }); err != nil {
		return &fs.PathError{Op: "remove", Path: p, Err: err}
	}
	return nil
}

// Rmdir implements Transport.
func (t *SFTP) Rmdir(ctx context.Context, p string) error {
	full, err := t.abs(ctx, p)
	if err != nil {
		return err
	}
	if p == "" {
		return fmt.Errorf("rmdir: %w: the root", ErrInvalidPath)
	}
	t.dirs.invalidate(p)
	if err := t.callRemoving(ctx, func() error { return t.c.RemoveDirectory(full) }); err != nil {
		return &fs.PathError{Op: "rmdir", Path: p, Err: err}
	}
	return nil
}

// Rename implements Transport.
func (t *SFTP) Rename(ctx context.Context, from, to string) error {
	src, err := t.abs(ctx, from)
	if err != nil {
		return err
	}
	dst, err := t.abs(ctx, to)
	if err != nil {
		return err
	}
	if from == "" || to == "" {
		return fmt.Errorf("rename: %w: the root", ErrInvalidPath)
	}
	t.dirs.invalidate(from)
	t.dirs.invalidate(to)
	err = t.call(ctx, func() error {
		if t.posix {
			return t.c.PosixRename(src, dst)
		}
		// Plain SFTP rename refuses an existing target.
		if err := t.c.Rename(src, dst); err == nil {
			return nil
		}
		if _, err := t.c.Lstat(src); err != nil {
			return err
		}
		if err := t.c.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return t.c.Rename(src, dst)
	})
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// Symlink implements Transport.
func (t *SFTP) Symlink(ctx context.Context, target, p string) error {
	full, err := t.abs(ctx, p)
	if err != nil {
		return err
	}
	if p == "" || target == "" {
		return fmt.Errorf("symlink: %w", ErrInvalidPath)
	}
	if err := t.call(ctx, func() error { return t.c.Symlink(target, full) }); err != nil {
		return &os.LinkError{Op: "symlink", Old: target, New: p, Err: err}
	}
	return nil
}

// Link implements Transport.
func (t *SFTP) Link(ctx context.Context, existing, p string) error {
	src, err := t.abs(ctx, existing)
	if err != nil {
		return err
	}
	dst, err := t.abs(ctx, p)
	if err != nil {
		return err
	}
	if existing == "" || p == "" {
		return fmt.Errorf("link: %w: the root", ErrInvalidPath)
	}
	if !t.link {
		return &os.LinkError{Op: "link", Old: existing, New: p, Err: fmt.Errorf("%w: hardlink@openssh.com: %w", ErrUnsupported, fs.ErrPermission)}
	}
	if err := t.call(ctx, func() error { return t.c.Link(src, dst) }); err != nil {
		return &os.LinkError{Op: "link", Old: existing, New: p, Err: err}
	}
	return nil
}

// attrPath validates p for a setstat, which would follow a symlink.
func (t *SFTP) attrPath(ctx context.Context, p string) (string, error) {
	full, err := t.abs(ctx, p)
	if err != nil {
		return "", err
	}
	fi, err := t.lstatRaw(ctx, p)
	if err != nil {
		return "", err
	}
	if fi.Mode&fs.ModeSymlink != 0 {
		return "", fmt.Errorf("%s: %w", p, ErrSymlink)
	}
	return full, nil
}

// Chmod implements Transport.
func (t *SFTP) Chmod(ctx context.Context, p string, perm fs.FileMode) error {
	full, err := t.attrPath(ctx, p)
	if err != nil {
		return err
	}
	if err := t.call(ctx, func() error { return t.c.Chmod(full, permBits(perm)) }); err != nil {
		return &fs.PathError{Op: "chmod", Path: p, Err: err}
	}
	return nil
}

// Chown implements Transport.
func (t *SFTP) Chown(ctx context.Context, p string, uid, gid int) error {
	full, err := t.attrPath(ctx, p)
	if err != nil {
		return err
	}
	if err := t.call(ctx, func() error { return t.c.Chown(full, uid, gid) }); err != nil {
		return &fs.PathError{Op: "chown", Path: p, Err: err}
	}
	return nil
}

// Chtimes implements Transport. SFTP v3 carries whole seconds.
func (t *SFTP) Chtimes(ctx context.Context, p string, atime, mtime time.Time) error {
	full, err := t.attrPath(ctx, p)
	if err != nil {
		return err
	}
	if err := t.call(ctx, func() error { return t.c.Chtimes(full, atime, mtime) }); err != nil {
		return &fs.PathError{Op: "chtimes", Path: p, Err: err}
	}
	return nil
}

// WriteFileAtomic implements Transport.
func (t *SFTP) WriteFileAtomic(ctx context.Context, p string, r io.Reader, a Attrs) error {
	full, err := t.abs(ctx, p)
	if err != nil {
		return err
	}
	if p == "" {
		return fmt.Errorf("write: %w: the root", ErrInvalidPath)
	}
	tmpRel := joinPath(parentDir(p), TempName())
	tmp := t.root + "/" + tmpRel
	var ownerErr error
	dir := path.Dir(tmp)
	err = t.call(ctx, func() (err error) {
		f, err := t.c.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
		if err != nil {
			return t.explainFailure(err, dir, true)
		}
		ok := false
		defer func() {
			if !ok {
				// Explained before the temp file goes: removing it
				// frees the space a full disk lacked.
				err = t.explainFailure(err, dir, true)
				f.Close()
				_ = t.c.Remove(tmp)
			}
		}()
		if err := f.Chmod(0o600); err != nil {
			return err
		}
		if sr, ok := r.(SparseReader); ok {
			// sftp-server leaves holes where writes skip ranges and
			// extends the file with a hole on the size setstat.
			if err := writeSparse(ctx, f, sr); err != nil {
				return err
			}
		} else if _, err := f.ReadFrom(ctxReader{ctx, r}); err != nil {
			return err
		}
		if t.fsync {
			if err := f.Sync(); err != nil {
				return fmt.Errorf("fsync: %w", err)
			}
		}
		if a.UID >= 0 || a.GID >= 0 {
			if err := f.Chown(a.UID, a.GID); err != nil {
				if !errors.Is(err, fs.ErrPermission) {
					return fmt.Errorf("chown: %w", err)
				}
				ownerErr = fmt.Errorf("%s: %w: %w", p, ErrOwner, err)
			}
		}
		// After chown, which clears setuid/setgid.
		if err := f.Chmod(permBits(a.Perm)); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
		if err := f.Close(); err != nil {
			return err
		}
		if !a.Mtime.IsZero() {
			if err := t.c.Chtimes(tmp, a.atime(), a.Mtime); err != nil {
				return fmt.Errorf("chtimes: %w", err)
			}
		}
		if t.posix {
			err = t.c.PosixRename(tmp, full)
		} else {
			if err = t.c.Rename(tmp, full); err != nil {
				_ = t.c.Remove(full)
				err = t.c.Rename(tmp, full)
			}
		}
		if err != nil {
			return err
		}
		ok = true
		return nil
	})
	t.dirs.invalidate(p)
	if err != nil {
		return &fs.PathError{Op: "write", Path: p, Err: err}
	}
	return ownerErr
}

var _ Hasher = (*SFTP)(nil)

// Hash implements Hasher: the file is read through the SFTP session and
// hashed here (SFTP v3 has no digest request). Like Chmod it refuses a
// symlink rather than follow it.
func (t *SFTP) Hash(ctx context.Context, p string) ([]byte, error) {
	full, err := t.abs(ctx, p)
	if err != nil {
		return nil, err
	}
	// Refuse before opening: opening a FIFO or device on the worker may
	// block or have side effects.
	if fi, err := t.lstatRaw(ctx, p); err != nil {
		return nil, err
	} else if fi.Mode&fs.ModeSymlink != 0 {
		return nil, fmt.Errorf("%s: %w", p, ErrSymlink)
	} else if !fi.Mode.IsRegular() {
		return nil, &fs.PathError{Op: "hash", Path: p, Err: fmt.Errorf("not a regular file (%s)", fi.Mode.Type())}
	}
	var sum []byte
	err = t.call(ctx, func() error {
		f, err := t.c.OpenFile(full, os.O_RDONLY)
		if err != nil {
			return err
		}
		defer f.Close()
		// The open followed nothing the Lstat did not see as a regular
		// file, unless it was swapped meanwhile: check the handle.
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
		}
		h := sha256.New()
		if _, err := f.WriteTo(h); err != nil {
			return err
		}
		sum = h.Sum(nil)
		return nil
	})
	if err != nil {
		return nil, &fs.PathError{Op: "hash", Path: p, Err: err}
	}
	return sum, nil
}
