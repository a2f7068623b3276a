package fs

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/mirrorfs/mirrorfs/journal"
)

// Recorder is where the mount journals mutations. *journal.Journal
// implements it.
type Recorder interface {
	// Append must return only once the op is durable.
	Append(ctx context.Context, op journal.Op) (uint64, error)
	// AppendUnsynced must return only once the op would survive a crash
	// of the daemon, and make it durable soon after, in order with every
	// other op. The mount uses it only for changes that a durable op
	// already covers: see mirror.recordChange.
	AppendUnsynced(ctx context.Context, op journal.Op) (uint64, error)
	// Sync must return only once every op appended so far is durable.
	Sync() error
}

// Options configure a mount.
type Options struct {
	// Store is the directory holding the real bytes. For an in-place
	// mount it is a /proc/self/fd/N path of the directory opened before
	// the mount covered it.
	Store string
	// Mountpoint is where the web root appears.
	Mountpoint string
	Recorder   Recorder
	Logger     *slog.Logger
	// CacheTimeout is the kernel's entry and attribute timeout. Zero
	// means one hour: every change passes through the mount.
	CacheTimeout time.Duration
	// Debug logs every FUSE request.
	Debug bool
	// OnUnnamedChange is called when the writer of a file closes or syncs
	// it after changes the journal could not record: the mount knew no
	// name of the file, which still has hard links made before the mount
	// started. The daemon then compares every worker with the store.
	OnUnnamedChange func()
}

// ErrAlreadyMounted is returned when the mount point is already a mount.
var ErrAlreadyMounted = errors.New("mount point is already a mount")

// Mount is a live mirrorfs mount.
type Mount struct {
	server *fuse.Server
	mirror *mirror
	point  string
}

// New mounts the store at opts.Mountpoint and starts serving. It journals a
// Close with File 0 first: no writer from an earlier run is still open.
func New(ctx context.Context, opts Options) (*Mount, error) {
	if opts.Recorder == nil {
		return nil, errors.New("fs: no recorder")
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	st, err := os.Stat(opts.Store)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", opts.Store, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("store %s: not a directory", opts.Store)
	}
	mounted, err := IsMountPoint(opts.Mountpoint)
	if err != nil {
		return nil, err
	}
	if mounted {
		return nil, fmt.Errorf("%s: %w (unmount it first, e.g. fusermount3 -u %s)", opts.Mountpoint, ErrAlreadyMounted, opts.Mountpoint)
	}

	m := newMirror(opts.Recorder, logger)
	m.onUnnamed = opts.OnUnnamedChange
	if m.rootFd, err = unix.Open(opts.Store, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
		return nil, fmt.Errorf("store %s: %w", opts.Store, err)
	}
	if _, err := opts.Recorder.Append(ctx, journal.Op{Kind: journal.KindClose}); err != nil {
		unix.Close(m.rootFd)
		return nil, fmt.Errorf("journal mount start: %w", err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	m.storeDev = uint64(sys.Dev)
	rootData := &gofs.LoopbackRoot{Path: opts.Store, Dev: uint64(sys.Dev)}
	root := &node{LoopbackNode: &gofs.LoopbackNode{RootData: rootData}, m: m}
	rootData.RootNode = root
	m.root = root

	timeout := opts.CacheTimeout
	if timeout == 0 {
		timeout = time.Hour
	}
	negative := time.Second
	mo := fuse.MountOptions{
		AllowOther:           true,
		FsName:               "mirrorfs",
		Name:                 "mirrorfs",
		Options:              []string{"default_permissions"},
		IgnoreSecurityLabels: true,
		// mount(2) and umount(2) directly (the daemon runs as root), with
		// fusermount3 as the fallback. Unmounting through fusermount3 cost
		// an exec per unmount, and under heavy load go-fuse's wait for that
		// helper's stderr pipe was seen to hang Unmount.
		DirectMount: true,
		// Passthrough would let the kernel write to the store behind the
		// journal's back; writeback would merge writes before we see them.
		DisabledCapabilities: fuse.CAP_PASSTHROUGH | fuse.CAP_WRITEBACK_CACHE,
		// The kernel would drop a file's whole page cache whenever it sees
		// a new mtime, i.e. after every write through the mount. Every
		// change passes through the mount and the kernel keeps the pages
		// of what it writes, truncates, punches or copies right, so no
		// cached page can be stale: keep them.
		ExplicitDataCacheControl: true,
		Debug:                    opts.Debug,
		MaxWrite:                 1 << 20,
		Logger:                   log.New(slogWriter{logger}, "", 0),
	}
	server, err := gofs.Mount(opts.Mountpoint, root, &gofs.Options{
		MountOptions:    mo,
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &negative,
		Logger:          log.New(slogWriter{logger}, "", 0),
	})
	if err != nil {
		unix.Close(m.rootFd)
		return nil, fmt.Errorf("mount %s: %w", opts.Mountpoint, err)
	}
	go func() {
		server.Wait()
		unix.Close(m.rootFd)
		m.closeKept()
	}()
	if err := closeOnExecFUSE(); err != nil {
		logger.Warn("cannot mark the FUSE connection close-on-exec: programs this process starts inherit it", "err", err)
	}
	return &Mount{server: server, mirror: m, point: opts.Mountpoint}, nil
}

// closeOnExecFUSE marks every /dev/fuse descriptor of this process
// close-on-exec. go-fuse's direct mount opens /dev/fuse without the flag; a
// program started afterwards (the demo's workers, tar in a benchmark) would
// inherit the connection and keep it alive after the unmount.
func closeOnExecFUSE() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil || target != "/dev/fuse" {
			continue // closed meanwhile (the ReadDir's own descriptor), or not FUSE
		}
		if fd, err := strconv.Atoi(e.Name()); err == nil {
			syscall.CloseOnExec(fd)
		}
	}
	return nil
}

// StopWrites makes every later mutation fail with EROFS. Called on
// shutdown so nothing changes between the last journal record and the
// unmount.
func (mt *Mount) StopWrites() { mt.mirror.readOnly.Store(true) }

// Unmount unmounts, retrying for a second while the mount is busy. If
// programs still hold files open it detaches the mount lazily instead of
// failing: writes were already stopped, so nothing can change any more,
// and the open descriptors fail once the daemon exits.
func (mt *Mount) Unmount() error {
	var err error
	for range 10 {
		if err = mt.server.Unmount(); err == nil {
			mt.server.Wait()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	mt.mirror.log.Warn("mount point busy: detaching it lazily; programs holding files open on it get errors from now on",
		"mount", mt.point, "err", err)
	if derr := unix.Unmount(mt.point, unix.MNT_DETACH); derr != nil {
		return fmt.Errorf("unmount %s: %w (lazy unmount: %v)", mt.point, err, derr)
	}
	return nil
}

// OpenForWrite reports whether the store file with identity ino (see
// journal.FileID) is being written through the mount: a writable handle is open and its writer has
// not closed (or fsynced) it since its last open or write. Its content may
// be half-written. A file whose last writer called close(2) is not: the
// kernel releases the handle asynchronously, after close returned.
func (mt *Mount) OpenForWrite(ino uint64) bool {
	m := mt.mirror
	m.mu.Lock()
	defer m.mu.Unlock()
	w := m.writers[ino]
	return w != nil && w.open > 0 && !w.published
}

// Wait blocks until the mount is gone (unmounted from outside, too).
func (mt *Mount) Wait() { mt.server.Wait() }

// IsMountPoint reports whether dir is listed as a mount point in
// /proc/self/mountinfo.
func IsMountPoint(dir string) (bool, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false, err
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("read mount table: %w", err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 && unescapeMountinfo(fields[4]) == abs {
			return true, nil
		}
	}
	return false, nil
}

// unescapeMountinfo undoes the octal escapes (\040 for space, ...) the
// kernel uses in /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// slogWriter routes go-fuse's log.Logger output to slog at debug level.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Debug("fuse", "msg", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
