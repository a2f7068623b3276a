package worker

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/sys/unix"
)

// rootFS implements pkg/sftp's request-server handlers on an os.Root. Every path it receives has
// been cleaned by the request server into an absolute slash path ("/" is the root); rel turns it
// into a name relative to the root, and os.Root refuses anything that would leave the root,
// including through symlinks.
type rootFS struct {
	root *os.Root
	log  *slog.Logger
}

var (
	_ sftp.FileReader           = (*rootFS)(nil)
	_ sftp.OpenFileWriter       = (*rootFS)(nil)
	_ sftp.PosixRenameFileCmder = (*rootFS)(nil)
	_ sftp.StatVFSFileCmder     = (*rootFS)(nil)
	_ sftp.LstatFileLister      = (*rootFS)(nil)
	_ sftp.ReadlinkFileLister   = (*rootFS)(nil)
	_ sftp.WriterAtReaderAt     = (*openFile)(nil)
)

func (h *rootFS) handlers() sftp.Handlers {
	return sftp.Handlers{FileGet: h, FilePut: h, FileCmd: h, FileList: h}
}

// rel maps a client path onto a name relative to the root. Lexical ".." cannot climb above "/".
func rel(p string) string {
	p = path.Clean("/" + p)
	if p == "/" {
		return "."
	}
	return p[1:]
}

// check logs an operation refused because it would leave the root, and turns such errors into a
// permission-denied status (os.Root reports them as a plain error, which would reach the client
// as a generic failure).
func (h *rootFS) check(op, name string, err error) error {
	if err == nil || !isEscape(err) {
		return err
	}
	h.log.Warn("refused: path escapes the root", "op", op, "path", name, "err", err)
	return fmt.Errorf("%s %s: path escapes the root: %w", op, name, sftp.ErrSSHFxPermissionDenied)
}

// isEscape reports whether err is os.Root's refusal to leave the root. The standard library does
// not export that error, so it is recognised by its text.
func isEscape(err error) bool {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		err = le.Err
	}
	return err != nil && err.Error() == "path escapes from parent"
}

// Fileread opens a file for reading (SSH_FXF_READ only).
func (h *rootFS) Fileread(r *sftp.Request) (io.ReaderAt, error) {
	name := rel(r.Filepath)
	f, err := h.openFile(name, os.O_RDONLY, 0)
	if err != nil {
		return nil, h.check("open", name, err)
	}
	return f, nil
}

// openFile opens the regular file name itself: never through a symlink at
// name (which a user of the worker may put there between the master's
// look and its open; os.Root follows one even with O_NOFOLLOW), never a
// FIFO or device, whose open or read would block the session (pkg/sftp
// answers a session's requests in order). An existing entry is opened
// without following it, checked, then reopened through its descriptor; a
// new file is created exclusively, so a name that appears meanwhile fails.
func (h *rootFS) openFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	e, err := h.entry(name)
	if errors.Is(err, fs.ErrNotExist) && flag&os.O_CREATE != 0 {
		return h.root.OpenFile(name, flag|os.O_EXCL|unix.O_NOCTTY, perm)
	}
	if err != nil {
		return nil, err
	}
	defer e.Close()
	if flag&os.O_EXCL != 0 && flag&os.O_CREATE != 0 {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrExist}
	}
	if fi, err := e.Stat(); err != nil || !fi.Mode().IsRegular() {
		if err == nil {
			err = fmt.Errorf("%s: not a regular file (%v)", name, fi.Mode().Type())
		}
		return nil, err
	}
	return os.OpenFile(byFd(e), flag&^(os.O_CREATE|os.O_EXCL)|unix.O_NOCTTY, 0)
}

// entry opens name's own entry (O_PATH: no access needed, nothing
// opened) for a change of its attributes through the descriptor, never
// through a symlink at name. pkg/sftp turns a change through an open
// handle (FSETSTAT) into one by name: a user of the worker who renames
// the master's temp file away and puts a symlink at its name would
// otherwise get the mode and owner meant for it on the file the symlink
// points to.
func (h *rootFS) entry(name string) (*os.File, error) {
	f, err := h.root.OpenFile(name, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		err = fmt.Errorf("%s is a symlink: not changing what it points to: %w", name, sftp.ErrSSHFxPermissionDenied)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// byFd is the path of f's own entry, for calls that take a path.
func byFd(f *os.File) string { return fmt.Sprintf("/proc/self/fd/%d", f.Fd()) }

// Filewrite opens a file for writing without reading.
func (h *rootFS) Filewrite(r *sftp.Request) (io.WriterAt, error) {
	return h.open(r, os.O_WRONLY)
}

// OpenFile opens a file for reading and writing.
func (h *rootFS) OpenFile(r *sftp.Request) (sftp.WriterAtReaderAt, error) {
	return h.open(r, os.O_RDWR)
}

func (h *rootFS) open(r *sftp.Request, access int) (*openFile, error) {
	name := rel(r.Filepath)
	pf := r.Pflags()
	flag := access
	if pf.Creat {
		flag |= os.O_CREATE
	}
	if pf.Trunc {
		flag |= os.O_TRUNC
	}
	if pf.Excl {
		flag |= os.O_EXCL
	}
	// pf.Append is deliberately not mapped to O_APPEND: the request server writes with WriteAt at
	// the offsets the client sends, and Go refuses WriteAt on an O_APPEND file.
	//
	// The request server does not pass the attribute flags of an open packet to its handlers, so
	// a created file gets 0666 less the umask, like OpenSSH without attributes; the client sets
	// the mode it wants afterwards.
	f, err := h.openFile(name, flag, 0o666)
	if err != nil {
		return nil, h.check("open", name, err)
	}
	of := &openFile{f: f, root: h.root, name: name, created: pf.Creat}
	of.dirty.Store(pf.Creat || pf.Trunc)
	return of, nil
}

// openFile is a handle opened for writing. Closing it fsyncs the data if anything changed (the
// request server cannot route fsync@openssh.com), and the parent directory if the open could have
// created the file.
type openFile struct {
	f       *os.File
	root    *os.Root
	name    string
	created bool
	dirty   atomic.Bool
}

func (o *openFile) ReadAt(p []byte, off int64) (int, error) { return o.f.ReadAt(p, off) }

func (o *openFile) WriteAt(p []byte, off int64) (int, error) {
	o.dirty.Store(true)
	return o.f.WriteAt(p, off)
}

func (o *openFile) Close() error {
	var err error
	if o.dirty.Load() {
		if serr := o.f.Sync(); serr != nil {
			err = fmt.Errorf("fsync %s: %w", o.name, serr)
		}
	}
	if cerr := o.f.Close(); err == nil {
		err = cerr
	}
	if err == nil && o.created {
		err = syncDir(o.root, path.Dir(o.name))
	}
	return err
}

// syncDir fsyncs a directory of the root so that entries added, removed or renamed in it survive
// a crash.
func syncDir(root *os.Root, dir string) error {
	d, err := root.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// syncParents fsyncs the parent directory of each name once.
func syncParents(root *os.Root, names ...string) error {
	done := make(map[string]bool, len(names))
	for _, n := range names {
		dir := path.Dir(n)
		if done[dir] {
			continue
		}
		done[dir] = true
		if err := syncDir(root, dir); err != nil {
			return err
		}
	}
	return nil
}

// Filecmd handles Setstat (and Fsetstat, which the request server turns into a Setstat on the
// handle's path), Rename, Rmdir, Mkdir, Link, Symlink and Remove.
func (h *rootFS) Filecmd(r *sftp.Request) error {
	name := rel(r.Filepath)
	switch r.Method {
	case "Setstat":
		return h.setstat(r, name)
	case "Rename":
		// SSH_FXP_RENAME must not replace an existing target (posix-rename@openssh.com does).
		// OpenSSH links and unlinks to get that atomically; a check then rename leaves a small
		// window, acceptable here because the master is the only writer of the root.
		target := rel(r.Target)
		if _, err := h.root.Lstat(target); err == nil {
			return &os.LinkError{Op: "rename", Old: name, New: target, Err: fs.ErrExist}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return h.check("rename", target, err)
		}
		return h.rename(name, target)
	case "Mkdir":
		if err := h.root.Mkdir(name, 0o777); err != nil {
			return h.check("mkdir", name, err)
		}
		return syncParents(h.root, name)
	case "Rmdir":
		return h.remove(name, true)
	case "Remove":
		return h.remove(name, false)
	case "Link":
		target := rel(r.Target)
		if err := h.root.Link(name, target); err != nil {
			return h.check("link", name, err)
		}
		return syncParents(h.root, target)
	case "Symlink":
		// For Symlink the request server puts the link's target, uncleaned and uninterpreted, in
		// Filepath and the path of the new link in Target. The target may be anything: the server
		// never follows a link out of the root.
		link := rel(r.Target)
		if err := h.root.Symlink(r.Filepath, link); err != nil {
			return h.check("symlink", link, err)
		}
		return syncParents(h.root, link)
	default:
		return fmt.Errorf("%s: %w", r.Method, sftp.ErrSSHFxOpUnsupported)
	}
}

// PosixRename renames over an existing target atomically (posix-rename@openssh.com).
func (h *rootFS) PosixRename(r *sftp.Request) error {
	return h.rename(rel(r.Filepath), rel(r.Target))
}

func (h *rootFS) rename(from, to string) error {
	if err := h.root.Rename(from, to); err != nil {
		return h.check("rename", from+" -> "+to, err)
	}
	return syncParents(h.root, to, from)
}

func (h *rootFS) remove(name string, dir bool) error {
	op := "remove"
	if dir {
		op = "rmdir"
	}
	fi, err := h.root.Lstat(name)
	if err != nil {
		return h.check(op, name, err)
	}
	if fi.IsDir() != dir {
		want := "a directory"
		if !dir {
			want = "not a directory"
		}
		return fmt.Errorf("%s %s: must be %s", op, name, want)
	}
	if err := h.root.Remove(name); err != nil {
		return h.check(op, name, err)
	}
	return syncParents(h.root, name)
}

// setstat applies every attribute the request carries, in the order size, owner, mode, times
// (chown clears set-id bits, so the mode comes after it), and returns the first error. Unlike
// OpenSSH's SSH_FXP_SETSTAT it never follows a symlink at name: it refuses (see entry).
func (h *rootFS) setstat(r *sftp.Request, name string) error {
	flags := r.AttrFlags()
	attrs := r.Attributes()
	var first error
	keep := func(op string, err error) {
		if err != nil && first == nil {
			first = h.check(op, name, err)
		}
	}
	if flags.Size {
		keep("truncate", h.truncate(name, int64(attrs.Size)))
	}
	if flags.UidGid {
		keep("chown", h.chown(name, int(attrs.UID), int(attrs.GID)))
	}
	if flags.Permissions {
		keep("chmod", h.chmod(name, attrs.FileMode()))
	}
	if flags.Acmodtime {
		keep("chtimes", h.chtimes(name, attrs.AccessTime(), attrs.ModTime()))
	}
	return first
}

func (h *rootFS) chown(name string, uid, gid int) error {
	f, err := h.entry(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return os.Chown(byFd(f), uid, gid)
}

func (h *rootFS) chmod(name string, mode fs.FileMode) error {
	f, err := h.entry(name)
	if err != nil {
		return err
	}
	defer f.Close()
	perm := uint32(mode.Perm())
	for bit, m := range map[uint32]fs.FileMode{unix.S_ISUID: fs.ModeSetuid, unix.S_ISGID: fs.ModeSetgid, unix.S_ISVTX: fs.ModeSticky} {
		if mode&m != 0 {
			perm |= bit
		}
	}
	return unix.Chmod(byFd(f), perm)
}

func (h *rootFS) chtimes(name string, atime, mtime time.Time) error {
	f, err := h.entry(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return os.Chtimes(byFd(f), atime, mtime)
}

func (h *rootFS) truncate(name string, size int64) error {
	f, err := h.openFile(name, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Filelist handles List (opendir) and Stat (and Fstat, which the request server turns into a Stat
// on the handle's path).
func (h *rootFS) Filelist(r *sftp.Request) (sftp.ListerAt, error) {
	name := rel(r.Filepath)
	switch r.Method {
	case "List":
		d, err := h.root.Open(name)
		if err != nil {
			return nil, h.check("opendir", name, err)
		}
		defer d.Close()
		entries, err := d.ReadDir(-1)
		if err != nil {
			return nil, h.check("readdir", name, err)
		}
		infos := make(listing, 0, len(entries))
		for _, e := range entries {
			fi, err := e.Info()
			if err != nil {
				continue // removed since ReadDir
			}
			infos = append(infos, fi)
		}
		return infos, nil
	case "Stat":
		fi, err := h.root.Stat(name)
		if err != nil {
			return nil, h.check("stat", name, err)
		}
		return listing{fi}, nil
	default:
		return nil, fmt.Errorf("%s: %w", r.Method, sftp.ErrSSHFxOpUnsupported)
	}
}

// Lstat describes a symlink itself rather than its target.
func (h *rootFS) Lstat(r *sftp.Request) (sftp.ListerAt, error) {
	name := rel(r.Filepath)
	fi, err := h.root.Lstat(name)
	if err != nil {
		return nil, h.check("lstat", name, err)
	}
	return listing{fi}, nil
}

// Readlink returns a symlink's target exactly as stored, relative or absolute.
func (h *rootFS) Readlink(p string) (string, error) {
	name := rel(p)
	target, err := h.root.Readlink(name)
	if err != nil {
		return "", h.check("readlink", name, err)
	}
	return target, nil
}

// listing serves FileInfos to the request server. Entries come from lstat, so their Sys() is a
// *syscall.Stat_t and the client sees numeric uid and gid.
type listing []fs.FileInfo

func (l listing) ListAt(dst []fs.FileInfo, off int64) (int, error) {
	if off >= int64(len(l)) {
		return 0, io.EOF
	}
	n := copy(dst, l[off:])
	if n < len(dst) {
		return n, io.EOF
	}
	return n, nil
}
