package journal

import "fmt"

// Kind says which mutation an Op records.
type Kind uint8

// The mutations the FUSE layer journals. Values are part of the on-disk
// encoding: never renumber, only append.
const (
	KindInvalid     Kind = iota
	KindCreate           // regular file created (open O_CREAT, mknod S_IFREG, O_TMPFILE linked in)
	KindMkdir            // directory created
	KindMknod            // FIFO, socket or device node created
	KindWrite            // bytes [Offset, Offset+Length) of File written
	KindSetattr          // mode, owner, size and/or times changed; see Op.Mask
	KindUnlink           // name removed (file, symlink, node)
	KindRmdir            // directory removed
	KindRename           // Path renamed to NewPath; Flags carries RENAME_* flags
	KindSymlink          // symlink at Path pointing to Target
	KindLink             // hard link NewPath created for the file at Path
	KindSetxattr         // extended attribute XattrName set on Path
	KindRemovexattr      // extended attribute XattrName removed from Path
	KindFallocate        // space of File allocated or punched; Offset, Length, Flags
	KindCopyRange        // copy_file_range wrote [Offset, Offset+Length) of File
	KindClose            // last writer of File closed or fsynced it: its data may ship
	kindEnd              // first unused value
)

var kindNames = [...]string{
	KindInvalid:     "invalid",
	KindCreate:      "create",
	KindMkdir:       "mkdir",
	KindMknod:       "mknod",
	KindWrite:       "write",
	KindSetattr:     "setattr",
	KindUnlink:      "unlink",
	KindRmdir:       "rmdir",
	KindRename:      "rename",
	KindSymlink:     "symlink",
	KindLink:        "link",
	KindSetxattr:    "setxattr",
	KindRemovexattr: "removexattr",
	KindFallocate:   "fallocate",
	KindCopyRange:   "copy_range",
	KindClose:       "close",
}

func (k Kind) String() string {
	if k < kindEnd {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Valid reports whether k is a kind this version knows.
func (k Kind) Valid() bool { return k > KindInvalid && k < kindEnd }

// Setattr mask bits: which attribute fields of an Op are meaningful.
const (
	AttrMode  uint32 = 1 << iota // Mode holds the new permission bits (incl. setuid/setgid/sticky)
	AttrUID                      // UID holds the new owner
	AttrGID                      // GID holds the new group
	AttrSize                     // Size holds the new length (truncate)
	AttrAtime                    // Atime holds the new access time
	AttrMtime                    // Mtime holds the new modification time
)

// Op is one journaled mutation. The journal records intent, not bytes: a
// write is (File, Path, Offset, Length) and the replicator reads the current
// data from the store when it ships. Paths are relative to the store root,
// slash-separated, without a leading slash ("" is the root itself).
type Op struct {
	Seq  uint64 // assigned by Append, strictly increasing, never reused
	Time int64  // when the mutation was journaled, Unix nanoseconds
	Kind Kind

	// File is the stable identity of the file the op touched (the store's
	// inode number). Hard links share it; it survives renames and unlinks
	// while open, so data written before a rename lands at the new name.
	File uint64
	Path string
	// NewPath is the destination of a rename and the new name of a link.
	NewPath string
	// Target is the content of a symlink.
	Target string

	Offset int64  // write, fallocate, copy_range
	Length int64  // write, fallocate, copy_range
	Size   int64  // setattr with AttrSize
	Mode   uint32 // create/mkdir/mknod: full st_mode; setattr with AttrMode: permission bits
	UID    uint32
	GID    uint32
	Rdev   uint64 // mknod
	Atime  int64  // Unix nanoseconds
	Mtime  int64  // Unix nanoseconds
	Mask   uint32 // setattr: Attr* bits
	Flags  uint32 // rename: RENAME_* flags, RenameReplacedOtherLinks; fallocate: FALLOC_FL_* mode; unlink: UnlinkOtherLinks

	XattrName  string
	XattrValue []byte
}

func (o Op) String() string {
	switch o.Kind {
	case KindRename, KindLink:
		return fmt.Sprintf("#%d %s %q -> %q", o.Seq, o.Kind, o.Path, o.NewPath)
	case KindSymlink:
		return fmt.Sprintf("#%d %s %q -> %q", o.Seq, o.Kind, o.Path, o.Target)
	case KindWrite, KindCopyRange, KindFallocate:
		return fmt.Sprintf("#%d %s %q [%d,+%d)", o.Seq, o.Kind, o.Path, o.Offset, o.Length)
	default:
		return fmt.Sprintf("#%d %s %q", o.Seq, o.Kind, o.Path)
	}
}

// UnlinkOtherLinks in an unlink's Flags: the file had other hard links
// before the unlink, so it lives on under names the journal may not know
// (made before the journal began, or looked up by no op since).
const UnlinkOtherLinks = 1

// RenameReplacedOtherLinks in a rename's Flags, beside the RENAME_* flags
// (which use the low bits): the file the rename replaced at NewPath had
// other hard links, under which it lives on, as after UnlinkOtherLinks.
const RenameReplacedOtherLinks = 1 << 31

// FileID is the identity ops give (Op.File) the store file with inode
// number ino on device dev, the store's own device being storeDev: the
// inode number itself, mixed with the device for a file system mounted
// inside the store, so that the inode numbers of two file systems do not
// meet. go-fuse's loopback numbers the mount's inodes the same way.
func FileID(dev, ino, storeDev uint64) uint64 {
	swap := func(d uint64) uint64 { return d<<32 | d>>32 }
	return swap(dev) ^ swap(storeDev) ^ ino
}
