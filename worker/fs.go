package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/sys/unix"

	"github.com/mirrorfs/mirrorfs/replicate"
)

// rootFS implements pkg/sftp's request-server handlers on the worker root,
// through a replicate.Local: every path is reached without following a
// symlink, on the way or at its end (a symlink met is refused as an
// escape), as the agent reaches it. Every path it receives has been
// cleaned by the request server into an absolute slash path ("/" is the
// root); local turns it into the root-relative path Local takes.
type rootFS struct {
	l   *replicate.Local
	log *slog.Logger
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

// local maps a client path onto a path relative to the root ("" is the
// root). Lexical ".." cannot climb above "/".
func local(p string) string {
	return path.Clean("/" + p)[1:]
}

// check logs an operation refused because it would leave the root (a
// symlink on the way or at the name, or a path Local refuses), and turns
// such errors into a permission-denied status, which would otherwise reach
// the client as a generic failure.
func (h *rootFS) check(op, name string, err error) error {
	if err == nil || !errors.Is(err, replicate.ErrSymlink) && !errors.Is(err, replicate.ErrInvalidPath) {
		return err
	}
	h.log.Warn("refused: path escapes the root (through a symlink)", "op", op, "path", name, "err", err)
	return fmt.Errorf("%s %s: path escapes the root: %w", op, name, sftp.ErrSSHFxPermissionDenied)
}

// Fileread opens a file for reading (SSH_FXF_READ only).
func (h *rootFS) Fileread(r *sftp.Request) (io.ReaderAt, error) {
	name := local(r.Filepath)
	f, err := h.openFile(name, os.O_RDONLY, 0)
	if err != nil {
		return nil, h.check("open", name, err)
	}
	return f, nil
}

// openFile opens the regular file name itself, never through a symlink,
// and never a FIFO or device, whose open or read would block the session
// (pkg/sftp answers a session's requests in order): O_NONBLOCK keeps the
// open from waiting, and anything but a regular file is refused.
func (h *rootFS) openFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	f, err := h.l.OpenFile(context.Background(), name, flag|unix.O_NONBLOCK|unix.O_NOCTTY, uint32(perm.Perm()))
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = fmt.Errorf("%s: not a regular file (%v)", name, fi.Mode().Type())
		}
		return nil, err
	}
	return f, nil
}

// Filewrite opens a file for writing without reading.
func (h *rootFS) Filewrite(r *sftp.Request) (io.WriterAt, error) {
	return h.open(r, os.O_WRONLY)
}

// OpenFile opens a file for reading and writing.
func (h *rootFS) OpenFile(r *sftp.Request) (sftp.WriterAtReaderAt, error) {
	return h.open(r, os.O_RDWR)
}

func (h *rootFS) open(r *sftp.Request, access int) (*openFile, error) {
	name := local(r.Filepath)
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
	of := &openFile{f: f, h: h, name: name, created: pf.Creat}
	of.dirty.Store(pf.Creat || pf.Trunc)
	return of, nil
}

// openFile is a handle opened for writing. Closing it fsyncs the data if anything changed (the
// request server cannot route fsync@openssh.com), and the parent directory if the open could have
// created the file.
type openFile struct {
	f       *os.File
	h       *rootFS
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
		err = o.h.sync()
	}
	return err
}

// sync fsyncs the directories whose entries the session's changes touched
// (Local notes them), so that what it added, removed or renamed survives a
// crash before the reply.
func (h *rootFS) sync() error { return h.l.Sync(context.Background()) }

// Filecmd handles Setstat (and Fsetstat, which the request server turns into a Setstat on the
// handle's path), Rename, Rmdir, Mkdir, Link, Symlink and Remove.
func (h *rootFS) Filecmd(r *sftp.Request) error {
	ctx := context.Background()
	name := local(r.Filepath)
	switch r.Method {
	case "Setstat":
		return h.setstat(r, name)
	case "Rename":
		// SSH_FXP_RENAME must not replace an existing target (posix-rename@openssh.com does).
		// OpenSSH links and unlinks to get that atomically; a check then rename leaves a small
		// window, acceptable here because the master is the only writer of the root.
		target := local(r.Target)
		if _, err := h.l.Lstat(ctx, target); err == nil {
			return &os.LinkError{Op: "rename", Old: name, New: target, Err: fs.ErrExist}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return h.check("rename", target, err)
		}
		return h.rename(name, target)
	case "Mkdir":
		if err := h.l.Mkdir(ctx, name, 0o777); err != nil {
			return h.check("mkdir", name, err)
		}
		return h.sync()
	case "Rmdir":
		if err := h.l.Rmdir(ctx, name); err != nil {
			return h.check("rmdir", name, err)
		}
		return h.sync()
	case "Remove":
		if err := h.l.Remove(ctx, name); err != nil {
			return h.check("remove", name, err)
		}
		return h.sync()
	case "Link":
		target := local(r.Target)
		if err := h.l.Link(ctx, name, target); err != nil {
			return h.check("link", name, err)
		}
		return h.sync()
	case "Symlink":
		// For Symlink the request server puts the link's target, uncleaned and uninterpreted, in
		// Filepath and the path of the new link in Target. The target may be anything: the server
		// never follows a link.
		link := local(r.Target)
		if err := h.l.Symlink(ctx, r.Filepath, link); err != nil {
			return h.check("symlink", link, err)
		}
		return h.sync()
	default:
		return fmt.Errorf("%s: %w", r.Method, sftp.ErrSSHFxOpUnsupported)
	}
}

// PosixRename renames over an existing target atomically (posix-rename@openssh.com).
func (h *rootFS) PosixRename(r *sftp.Request) error {
	return h.rename(local(r.Filepath), local(r.Target))
}

func (h *rootFS) rename(from, to string) error {
	if err := h.l.Rename(context.Background(), from, to); err != nil {
		return h.check("rename", from+" -> "+to, err)
	}
	return h.sync()
}

// setstat applies every attribute the request carries, in the order size, owner, mode, times
// (chown clears set-id bits, so the mode comes after it), and returns the first error. Unlike
// OpenSSH's SSH_FXP_SETSTAT it never follows a symlink: it refuses one. pkg/sftp turns a change
// through an open handle (FSETSTAT) into one by name: a user of the worker who renames the
// master's temp file away and puts a symlink at its name would otherwise get the mode and owner
// meant for it on the file the symlink points to.
func (h *rootFS) setstat(r *sftp.Request, name string) error {
	ctx := context.Background()
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
		keep("chown", h.l.Chown(ctx, name, int(attrs.UID), int(attrs.GID)))
	}
	if flags.Permissions {
		keep("chmod", h.l.Chmod(ctx, name, attrs.FileMode()))
	}
	if flags.Acmodtime {
		keep("chtimes", h.l.Chtimes(ctx, name, attrs.AccessTime(), attrs.ModTime()))
	}
	return first
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
	ctx := context.Background()
	name := local(r.Filepath)
	switch r.Method {
	case "List":
		entries, err := h.l.ReadDir(ctx, name)
		if err != nil {
			return nil, h.check("readdir", name, err)
		}
		infos := make(listing, 0, len(entries))
		for _, e := range entries {
			infos = append(infos, entryInfo{e})
		}
		return infos, nil
	case "Stat":
		fi, err := h.stat(name)
		if err != nil {
			return nil, h.check("stat", name, err)
		}
		return listing{entryInfo{fi}}, nil
	default:
		return nil, fmt.Errorf("%s: %w", r.Method, sftp.ErrSSHFxOpUnsupported)
	}
}

// maxLinks bounds the symlinks stat follows, as the kernel's ELOOP does.
const maxLinks = 40

// stat is SSH_FXP_STAT: it follows symlinks at name, as long as each stays
// inside the root (a relative target that does not climb out of it); one
// that leads out (an absolute target, or "..") is refused. No symlink on
// the way to name is followed.
func (h *rootFS) stat(name string) (replicate.FileInfo, error) {
	ctx := context.Background()
	for range maxLinks {
		fi, err := h.l.Lstat(ctx, name)
		if err != nil || fi.Mode&fs.ModeSymlink == 0 {
			return fi, err
		}
		target, err := h.l.Readlink(ctx, name)
		if err != nil {
			return replicate.FileInfo{}, err
		}
		next := path.Join(path.Dir(name), target)
		if path.IsAbs(target) || next == ".." || len(next) > 2 && next[:3] == "../" {
			return replicate.FileInfo{}, fmt.Errorf("%s: a symlink to %s, outside the root: %w", name, target, replicate.ErrSymlink)
		}
		if name = next; name == "." {
			name = ""
		}
	}
	return replicate.FileInfo{}, &fs.PathError{Op: "stat", Path: name, Err: syscall.ELOOP}
}

// Lstat describes a symlink itself rather than its target.
func (h *rootFS) Lstat(r *sftp.Request) (sftp.ListerAt, error) {
	name := local(r.Filepath)
	fi, err := h.l.Lstat(context.Background(), name)
	if err != nil {
		return nil, h.check("lstat", name, err)
	}
	return listing{entryInfo{fi}}, nil
}

// Readlink returns a symlink's target exactly as stored, relative or absolute.
func (h *rootFS) Readlink(p string) (string, error) {
	name := local(p)
	target, err := h.l.Readlink(context.Background(), name)
	if err != nil {
		return "", h.check("readlink", name, err)
	}
	return target, nil
}

// entryInfo serves a Local FileInfo as an fs.FileInfo, with a
// *syscall.Stat_t as Sys() so that the client sees numeric uid and gid.
type entryInfo struct{ fi replicate.FileInfo }

func (e entryInfo) Name() string {
	if e.fi.Name == "" {
		return "."
	}
	return e.fi.Name
}
func (e entryInfo) Size() int64        { return e.fi.Size }
func (e entryInfo) Mode() fs.FileMode  { return e.fi.Mode }
func (e entryInfo) ModTime() time.Time { return e.fi.Mtime }
func (e entryInfo) IsDir() bool        { return e.fi.IsDir() }
func (e entryInfo) Sys() any {
	return &syscall.Stat_t{Uid: e.fi.UID, Gid: e.fi.GID, Ino: e.fi.Ino, Nlink: e.fi.Nlink, Size: e.fi.Size}
}

// listing serves FileInfos to the request server.
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
