package replicate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/mirrorfs/mirrorfs/delta"
	"io"
	"io/fs"
	"strings"
	"time"
)

// Transport applies changes to one worker's root. Paths are relative to the
// worker root, slash-separated, without a leading slash; "" is the root
// itself. Implementations reject invalid paths (see [ValidPath]) with
// [ErrInvalidPath] and never follow a symlink in a parent directory.
//
// Errors for a missing path wrap [fs.ErrNotExist] and for a refused
// permission [fs.ErrPermission]; other failures may be opaque (SFTP v3
// reports most failures as a bare "failure"), so callers check the state
// with Lstat rather than classifying errors.
//
// A Transport is used by one goroutine at a time.
type Transport interface {
	// Lstat describes p without following a final symlink.
	Lstat(ctx context.Context, p string) (FileInfo, error)
	// ReadDir lists the directory p (without "." and ".."), in no
	// particular order.
	ReadDir(ctx context.Context, p string) ([]FileInfo, error)
	// Readlink returns the target of the symlink p.
	Readlink(ctx context.Context, p string) (string, error)
	// Mkdir creates the directory p. It fails if p exists.
	Mkdir(ctx context.Context, p string, perm fs.FileMode) error
	// Remove removes the non-directory p.
	Remove(ctx context.Context, p string) error
	// Rmdir removes the empty directory p.
	Rmdir(ctx context.Context, p string) error
	// Rename renames from to to with POSIX semantics: an existing to (a
	// non-directory, or an empty directory) is replaced atomically.
	Rename(ctx context.Context, from, to string) error
	// Symlink creates the symlink p pointing to target. It fails if p exists.
	Symlink(ctx context.Context, target, p string) error
	// Link creates p as a hard link to the existing file existing. It
	// fails if p exists.
	Link(ctx context.Context, existing, p string) error
	// Chmod, Chown and Chtimes set attributes of p. They refuse a symlink
	// with [ErrSymlink] rather than follow it.
	Chmod(ctx context.Context, p string, perm fs.FileMode) error
	Chown(ctx context.Context, p string, uid, gid int) error
	Chtimes(ctx context.Context, p string, atime, mtime time.Time) error
	// WriteFileAtomic replaces p with the content of r: it writes a temp
	// file (TempPrefix + random) in p's directory, fsyncs it, sets the
	// attributes a, then renames it over p. On failure the temp file is
	// removed and p is unchanged. If only the owner could not be set
	// because the worker refused it, the file is in place and the error
	// wraps [ErrOwner]. If r is a [SparseReader], only its data segments
	// are written (at their offsets) and the file keeps its holes.
	WriteFileAtomic(ctx context.Context, p string, r io.Reader, a Attrs) error
	// Close releases the connection.
	Close() error
}

// Syncer is an optional Transport capability: Sync makes durable the
// directory entries that the changes since the last Sync created, renamed
// or removed. A transport with it leaves directories unsynced in
// WriteFileAtomic (the file's data is still synced before its rename, so
// that no torn file can appear), and the shipper calls Sync once per batch,
// before the batch counts as applied: one flush per directory and batch
// instead of one per file.
type Syncer interface {
	Sync(ctx context.Context) error
}

// Stats is an optional Transport capability: bytes moved on the wire.
type Stats interface {
	BytesSent() uint64
	BytesReceived() uint64
}

// LinkAttrs is an optional Transport capability: attributes of a symlink
// itself (SFTP's setstat follows symlinks). Chown and Chtimes refuse
// symlinks so that a sync never changes a file outside the worker root
// through one; these methods exist so that the owner and times of the link
// itself can still be mirrored.
type LinkAttrs interface {
	// Lchown sets the owner of p without following a final symlink.
	Lchown(ctx context.Context, p string, uid, gid int) error
	// Lchtimes sets atime and mtime (nanoseconds kept) of p without
	// following a final symlink. A zero time leaves that time unchanged.
	Lchtimes(ctx context.Context, p string, atime, mtime time.Time) error
}

// Xattrs is an optional Transport capability: extended attributes. Not
// part of Transport because SFTP v3 has no way to carry them.
type Xattrs interface {
	// ListXattrs returns the extended attributes of p (names with their
	// namespace prefix, e.g. "user.x") and values, without following a
	// final symlink. A file system without xattr support gives an empty
	// map, not an error, so that a sync to such a worker degrades to
	// "no attributes" instead of failing.
	ListXattrs(ctx context.Context, p string) (map[string][]byte, error)
	// SetXattr sets one attribute of p (not following a final symlink),
	// creating or replacing it.
	SetXattr(ctx context.Context, p, name string, value []byte) error
	// RemoveXattr removes one attribute of p (not following a final
	// symlink); a missing attribute is not an error, so that removal is
	// idempotent like the rest of a sync.
	RemoveXattr(ctx context.Context, p, name string) error
}

// Special is an optional Transport capability: FIFOs and device nodes,
// which SFTP v3 cannot create.
type Special interface {
	// Mknod creates a FIFO, character or block device p with mode (Go
	// fs.FileMode encoding: fs.ModeNamedPipe, fs.ModeDevice|fs.ModeCharDevice,
	// fs.ModeDevice, plus permission bits) and the device number rdev
	// (ignored for a FIFO). A socket inode (fs.ModeSocket) may be created
	// too, as mknod(2) allows. It fails if p exists; any other type fails
	// with [ErrUnsupported], and so may a device node (the agent refuses
	// them: the master replicates none). The permission bits are applied
	// exactly, not masked by the worker's umask.
	Mknod(ctx context.Context, p string, mode fs.FileMode, rdev uint64) error
}

// Hasher is an optional Transport capability: the content digest of a
// worker file, so that a comparison with the store (mirrorfs verify
// --checksum, resync) reads files where they are and moves 32 bytes.
type Hasher interface {
	// Hash returns the SHA-256 of the regular file p's content. It does
	// not follow a final symlink: a symlink is refused with [ErrSymlink],
	// any other non-regular file with an error.
	Hash(ctx context.Context, p string) ([]byte, error)
}

// DeltaWriter is an optional Transport capability: rsync-style transfer of
// a replaced file. WriteFileDelta is WriteFileAtomic (temp file beside p,
// fsync, attributes a, rename over p: a reader never sees a mixed version)
// whose content crosses the wire as a delta against the worker's current
// regular file at p. It returns the literal bytes the delta carried. When
// there is no usable basis (p missing, not a regular file, too small to be
// worth it) it fails with an error wrapping [ErrUnsupported], and when the
// patched result does not match (delta.ErrMismatch) with that error: the
// caller then sends the file whole with WriteFileAtomic.
type DeltaWriter interface {
	WriteFileDelta(ctx context.Context, p string, r io.Reader, a Attrs) (literal int64, err error)
}

// RangeWriter is an optional Transport capability: WriteFileAtomic (temp
// file beside p, fsync, attributes a, rename over p) of a file changed in
// place, whose changed bytes the master knows from the journal. The
// worker's regular file p, of basisSize bytes, is the old version: equal to
// the new one r except in ranges and at or past keep. Only those bytes
// cross the wire; the rest is copied from the old version on the worker.
// The result's SHA-256 is checked against r's, so a worker copy that is not
// the old version fails (wrapping delta.ErrMismatch) and nothing changes:
// the caller then sends the file another way. It returns the literal bytes
// sent.
type RangeWriter interface {
	WriteFileRanges(ctx context.Context, p string, basisSize, keep int64, ranges []delta.Range, r RangeSource, a Attrs) (literal int64, err error)
}

// RangeSource is the new version for RangeWriter: the changed bytes are
// read with ReadAt, then the whole file with Read for its hash; Read
// reports a file that changed meanwhile at its end (errSourceChanged).
type RangeSource interface {
	io.Reader
	io.ReaderAt
}

// SmallWriter is an optional Transport capability for small files: one
// request carries a file's whole content and attributes. When the worker's
// regular file already has exactly this content (as Keeper decides), it
// keeps it and gives it the attributes; otherwise it writes the data as
// WriteFileAtomic does. A lone save then costs one round trip to the worker
// instead of three (compare, look, send), and the requests for many files
// go out together: one round trip for all of them.
//
// WriteSmallFiles answers, for each file, whether it was kept and the
// error of its own request; a failed request changes nothing else. The
// error it returns alone is the transport's: nothing is known of the files.
type SmallWriter interface {
	WriteSmallFiles(ctx context.Context, files []SmallFile) ([]SmallResult, error)
}

// SmallFile is one file for SmallWriter: at most SmallMax bytes.
type SmallFile struct {
	Path  string
	Data  []byte
	Attrs Attrs
}

// SmallResult is the outcome of one SmallFile.
type SmallResult struct {
	Kept bool
	Err  error
}

// SmallMax bounds the content of a SmallFile: files this small go by
// SmallWriter; larger ones by delta or streamed.
const SmallMax = 64 << 10

// AttrSetter is an optional Transport capability: the mode, owner and
// times of many entries in one round trip. A batch ends by giving every
// directory it changed the store's attributes (each rename, create or
// removal changes a directory's mtime on the worker too); over a
// transport without it, that is a look and a chtimes per directory, two
// round trips, after the files are already in place.
//
// For each item, the worker looks at its entry p without following a
// symlink. An entry that is missing, a symlink, or a directory where the
// item is none (or the other way round) is left alone: Found is false.
// Otherwise it gets the item's permission bits, owner (UID or GID -1:
// left) and times where they differ; a refused chown is an ErrOwner error
// and the times are set nonetheless. SetAttrs answers each item with its
// own outcome; the error it returns alone is the transport's.
type AttrSetter interface {
	SetAttrs(ctx context.Context, items []AttrItem) ([]AttrResult, error)
}

// AttrItem is one entry for AttrSetter.
type AttrItem struct {
	Path  string
	Dir   bool // the worker's entry must be a directory, else not one
	Attrs Attrs
}

// AttrResult is the outcome of one AttrItem.
type AttrResult struct {
	Found bool // the worker has the entry, of the item's kind
	Err   error
}

// Keeper is an optional Transport capability, for files saved again with
// the content the worker already has (a deploy that rewrites everything,
// an editor's save without changes). KeepIfSame answers, for each item,
// whether the worker's regular file Path has one name (no other hard
// links), Size bytes whose SHA-256 is Hash and no user.* extended
// attributes; where it has, the file is given
// the item's attributes (mode, owner, times, as WriteFileAtomic sets them)
// and needs nothing else. A worker that cannot set the owner answers false
// for that item. All items share one round trip.
type Keeper interface {
	KeepIfSame(ctx context.Context, items []KeepItem) ([]bool, error)
}

// KeepItem is one file for Keeper.KeepIfSame.
type KeepItem struct {
	Path  string
	Size  int64
	Hash  []byte // SHA-256 of the content
	Attrs Attrs
}

// FileInfo describes one worker entry.
type FileInfo struct {
	Name  string      // base name
	Mode  fs.FileMode // type and permission bits (Go encoding)
	Size  int64
	Mtime time.Time
	UID   uint32
	GID   uint32
	// Ino and Nlink are the entry's inode number and link count, for
	// comparing hard-link groups (verify); 0 when the transport does not
	// report them (SFTP).
	Ino   uint64
	Nlink uint64
}

// IsDir reports whether fi is a directory.
func (fi FileInfo) IsDir() bool { return fi.Mode.IsDir() }

// Attrs are the attributes WriteFileAtomic gives the new file.
type Attrs struct {
	Perm     fs.FileMode // permission bits incl. setuid, setgid, sticky (Go encoding)
	UID, GID int         // -1 leaves the transport's default
	Mtime    time.Time   // zero leaves it
	Atime    time.Time   // zero uses Mtime
}

// atime is the access time a transport sets with Mtime: Atime, or Mtime
// when Atime is zero.
func (a Attrs) atime() time.Time {
	if a.Atime.IsZero() {
		return a.Mtime
	}
	return a.Atime
}

// Sentinel errors of the package.
var (
	ErrInvalidPath = errors.New("invalid path")
	ErrSymlink     = errors.New("refusing to follow a symlink")
	ErrOwner       = errors.New("owner not set")
	ErrUnsupported = errors.New("not supported by transport")
)

// TempPrefix starts the name of every temp file a transport writes. Full
// syncs remove leftovers with this prefix.
const TempPrefix = ".mirrorfs-tmp-"

// TempName returns a fresh temp file name (no directory).
func TempName() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return TempPrefix + hex.EncodeToString(b[:])
}

// ValidPath reports whether p is a clean relative slash path: not absolute,
// no "." or ".." or empty elements, no NUL. "" (the root) is valid.
func ValidPath(p string) error {
	if p == "" {
		return nil
	}
	if strings.IndexByte(p, 0) >= 0 || strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") {
		return fmt.Errorf("%w: %q", ErrInvalidPath, p)
	}
	for el := range strings.SplitSeq(p, "/") {
		if el == "" || el == "." || el == ".." {
			return fmt.Errorf("%w: %q", ErrInvalidPath, p)
		}
	}
	return nil
}

// parentDir is path.Dir for relative paths with "" as the root.
func parentDir(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return ""
	}
	return p[:i]
}

// joinPath joins a relative directory and a name.
func joinPath(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// baseName is path.Base for relative paths.
func baseName(p string) string {
	return p[strings.LastIndexByte(p, '/')+1:]
}

// under reports whether p is dir or inside it.
func under(p, dir string) bool {
	if dir == "" {
		return true
	}
	return p == dir || (len(p) > len(dir) && p[len(dir)] == '/' && p[:len(dir)] == dir)
}

// reparent moves p from under old to under new; p must be under old.
func reparent(p, old, new string) string {
	if p == old {
		return new
	}
	if old == "" {
		return joinPath(new, p)
	}
	return joinPath(new, p[len(old)+1:])
}
