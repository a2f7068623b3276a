package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"syscall"
	"time"

	"github.com/mirrorfs/mirrorfs/delta"
	"github.com/mirrorfs/mirrorfs/replicate"
)

// Version is the protocol version. Master and agent must speak the same:
// the master uploads its own binary when the worker's agent differs.
// 4: a directory listing is answered in as many frames as it needs.
// 5: an entry carries its inode number and link count.
// 6: opPing, which an idle master sends and the agent does not answer.
const Version = 6

// maxFrame bounds one frame: a data frame carries at most dataChunk bytes,
// a directory listing is split into frames of at most this size
// (listingFrames). A variable only so that tests can lower it.
var maxFrame = 16 << 20

// dataChunk is the payload of one WriteData frame.
const dataChunk = 256 << 10

// op is a request kind. Values are part of the protocol: append only.
type op uint8

const (
	opHello op = iota + 1
	opLstat
	opReadDir
	opReadlink
	opMkdir
	opRemove
	opRmdir
	opRename
	opSymlink
	opLink
	opChmod
	opChown
	opChtimes
	opLchown
	opLchtimes
	opListXattrs
	opSetXattr
	opRemoveXattr
	opMknod
	opWriteBegin // Path, Mode, UID, GID, Atime, Mtime: starts a WriteFileAtomic
	opWriteData  // Off, Data, Mode (dataS2: Data is compressed): no answer
	opWriteEnd   // Off = total size: answered with the outcome
	opWriteAbort // Path2 = why: the master's source failed; answered
	opHash       // Path: answered with the SHA-256 of the file's content in Data
	// Path: answered with the delta.Signature (MarshalBinary) of the
	// worker's regular file in Data; ErrUnsupported when it cannot serve
	// as a basis.
	opSignature
	// Like opWriteBegin, Off = the basis size the master expects: the
	// WriteData frames that follow carry a delta stream against the
	// worker's current file (their Off is ignored), rebuilt with
	// delta.Patch; WriteEnd/WriteAbort finish as for a write.
	opPatchBegin
	// Path, Off = size, Data = SHA-256, Mode, UID, GID, Atime, Mtime:
	// replicate.Keeper for one file; answered with Data = {1} when the
	// worker's file was the same and now has these attributes, {0} when
	// not. The master sends a batch of them before reading the answers.
	opKeepIfSame
	// replicate.Syncer: fsyncs the directories whose entries changed
	// since the last opSync; answered with the outcome.
	opSync
	// Path, Mode, UID, GID, Atime, Mtime, Data = the whole content
	// (Rdev = dataS2: compressed, as a WriteData frame): replicate.SmallWriter,
	// answered like opKeepIfSame, {1} kept, {0} written. The master sends
	// a batch of them before reading the answers.
	opWriteSmall
	// Path, Mode (fs.ModeDir set: the entry must be a directory), UID,
	// GID, Atime, Mtime: replicate.AttrSetter for one entry; answered
	// with its outcome and Data = {1} when the worker has the entry, of
	// that kind, {0} when not. The master sends a batch of them before
	// reading the answers.
	opSetAttrs
	// Not answered: a master with nothing to send says it is still
	// there (Client.pingWhileIdle), so that an agent run with
	// --idle-exit can tell it from one that went away.
	opPing
	opLast // not an op: bound for validation
)

// changesEntries reports whether a request of kind o may create, rename or
// remove a directory entry on the worker: what opSync makes durable.
func (o op) changesEntries() bool {
	switch o {
	case opMkdir, opRemove, opRmdir, opRename, opSymlink, opLink, opMknod, opWriteBegin, opPatchBegin, opWriteSmall:
		return true
	}
	return false
}

// dataS2 in a WriteData frame's Mode: Data is one S2 block (Snappy's
// successor, github.com/klauspost/compress/s2) of at most dataChunk bytes
// decoded. The master compresses a frame only when that saves an eighth.
const dataS2 = 1

// request is one frame from master to agent. One shape for every op keeps
// the codec small; unused fields cost a byte each.
type request struct {
	Op    op
	Path  string
	Path2 string // rename/link destination, symlink target, xattr name, abort reason
	Mode  uint32 // fs.FileMode
	UID   int64
	GID   int64
	Atime int64 // Unix ns; noTime for none
	Mtime int64
	Off   int64
	Rdev  uint64
	Data  []byte
}

// attrs are the attributes a write, a keep or a set of attributes asks
// for.
func (r request) attrs() replicate.Attrs {
	return replicate.Attrs{Perm: fs.FileMode(r.Mode) &^ fs.ModeDir, UID: int(r.UID), GID: int(r.GID),
		Atime: decodeTime(r.Atime), Mtime: decodeTime(r.Mtime)}
}

// attrsRequest is a request of kind o for p with the attributes a.
func attrsRequest(o op, p string, a replicate.Attrs) request {
	return request{Op: o, Path: p, Mode: uint32(a.Perm), UID: int64(a.UID), GID: int64(a.GID),
		Atime: encodeTime(a.Atime), Mtime: encodeTime(a.Mtime)}
}

// noTime encodes the zero time.Time ("leave it").
const noTime = math.MinInt64

func encodeTime(t time.Time) int64 {
	if t.IsZero() {
		return noTime
	}
	return t.UnixNano()
}

func decodeTime(ns int64) time.Time {
	if ns == noTime {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// Error classes a response carries, so that the master's errors.Is works
// as with a local transport. A bit set: ErrOwner comes with a permission
// error.
const (
	classNotExist uint32 = 1 << iota
	classExist
	classPermission
	classInvalidPath
	classSymlink
	classOwner
	classUnsupported
	classFailed   // any error
	classMismatch // delta.ErrMismatch: the patched result differs
	classCorrupt  // delta.ErrCorrupt: a malformed delta or signature
)

// response answers one request (every op but WriteData).
type response struct {
	Class  uint32 // 0: success
	Errno  uint32
	Msg    string
	Infos  []replicate.FileInfo
	Data   []byte // readlink target, hello: the agent's build id
	Xattrs map[string][]byte
}

// flag is the answer to a yes-or-no request (see flagResponse). In a
// frame of a directory listing it says that more frames follow.
func (r response) flag() bool { return len(r.Data) == 1 && r.Data[0] == 1 }

// infoMaxOverhead bounds the bytes one replicate.FileInfo takes in an
// encoded response besides its name: eight varints of at most 10 bytes.
const infoMaxOverhead = 8 * binary.MaxVarintLen64

// listingFrames splits the answer to a directory listing into responses
// that each encode to at most maxFrame bytes, so that a directory of any
// size can be listed: every one but the last carries Data = {1} (more
// follow). An error, or a listing that fits, is one response.
func listingFrames(r response) []response {
	// What a response costs besides its entries: class, errno, an empty
	// message, the entry count, Data and the xattr count.
	const fixed = 4 * binary.MaxVarintLen64
	var parts []response
	start, size := 0, fixed
	for i, fi := range r.Infos {
		n := len(fi.Name) + infoMaxOverhead
		if size+n > maxFrame && i > start {
			parts = append(parts, response{Infos: r.Infos[start:i], Data: []byte{1}})
			start, size = i, fixed
		}
		size += n
	}
	last := r
	last.Infos = r.Infos[start:]
	return append(parts, last)
}

type encoder struct{ b []byte }

func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) varint(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) bytes(p []byte) {
	e.uvarint(uint64(len(p)))
	e.b = append(e.b, p...)
}
func (e *encoder) str(s string) {
	e.uvarint(uint64(len(s)))
	e.b = append(e.b, s...)
}

type decoder struct {
	b   []byte
	err error
}

var errShort = errors.New("agent protocol: truncated frame")

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = errShort
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) str() string { return string(d.bytes()) }

func (d *decoder) u32() uint32 {
	v := d.uvarint()
	if v > math.MaxUint32 && d.err == nil {
		d.err = errors.New("agent protocol: value out of range")
	}
	return uint32(v)
}

func (r *request) encode() []byte {
	e := encoder{b: make([]byte, 0, 32+len(r.Path)+len(r.Path2)+len(r.Data))}
	e.b = append(e.b, byte(r.Op))
	e.str(r.Path)
	e.str(r.Path2)
	e.uvarint(uint64(r.Mode))
	e.varint(r.UID)
	e.varint(r.GID)
	e.varint(r.Atime)
	e.varint(r.Mtime)
	e.varint(r.Off)
	e.uvarint(r.Rdev)
	e.bytes(r.Data)
	return e.b
}

func decodeRequest(b []byte) (request, error) {
	var r request
	if len(b) == 0 {
		return r, errShort
	}
	r.Op = op(b[0])
	if r.Op == 0 || r.Op >= opLast {
		return r, fmt.Errorf("agent protocol: unknown op %d", b[0])
	}
	d := decoder{b: b[1:]}
	r.Path = d.str()
	r.Path2 = d.str()
	r.Mode = d.u32()
	r.UID = d.varint()
	r.GID = d.varint()
	r.Atime = d.varint()
	r.Mtime = d.varint()
	r.Off = d.varint()
	r.Rdev = d.uvarint()
	r.Data = d.bytes()
	if d.err == nil && len(d.b) != 0 {
		d.err = errors.New("agent protocol: trailing bytes in request")
	}
	return r, d.err
}

func (r *response) encode() []byte {
	e := encoder{b: make([]byte, 0, 64+len(r.Msg)+len(r.Data))}
	e.uvarint(uint64(r.Class))
	e.uvarint(uint64(r.Errno))
	e.str(r.Msg)
	e.uvarint(uint64(len(r.Infos)))
	for _, fi := range r.Infos {
		e.str(fi.Name)
		e.uvarint(uint64(fi.Mode))
		e.varint(fi.Size)
		e.varint(encodeTime(fi.Mtime))
		e.uvarint(uint64(fi.UID))
		e.uvarint(uint64(fi.GID))
		e.uvarint(fi.Ino)
		e.uvarint(fi.Nlink)
	}
	e.bytes(r.Data)
	e.uvarint(uint64(len(r.Xattrs)))
	for k, v := range r.Xattrs {
		e.str(k)
		e.bytes(v)
	}
	return e.b
}

func decodeResponse(b []byte) (response, error) {
	var r response
	d := decoder{b: b}
	r.Class = d.u32()
	r.Errno = d.u32()
	r.Msg = d.str()
	n := d.uvarint()
	// Every entry takes at least 8 bytes: a count beyond that is a lie
	// that must not allocate.
	if d.err == nil && n > uint64(len(d.b))/8 {
		return r, errShort
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		var fi replicate.FileInfo
		fi.Name = d.str()
		fi.Mode = fs.FileMode(d.u32())
		fi.Size = d.varint()
		fi.Mtime = decodeTime(d.varint())
		fi.UID = d.u32()
		fi.GID = d.u32()
		fi.Ino = d.uvarint()
		fi.Nlink = d.uvarint()
		r.Infos = append(r.Infos, fi)
	}
	r.Data = d.bytes()
	n = d.uvarint()
	if d.err == nil && n > uint64(len(d.b))/2 {
		return r, errShort
	}
	if n > 0 {
		r.Xattrs = make(map[string][]byte, n)
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		k := d.str()
		r.Xattrs[k] = d.bytes()
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = errors.New("agent protocol: trailing bytes in response")
	}
	return r, d.err
}

// writeFrame writes one length-prefixed frame.
func writeFrame(w io.Writer, body []byte) error {
	if len(body) > maxFrame {
		return fmt.Errorf("agent protocol: frame of %d bytes exceeds %d", len(body), maxFrame)
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(body)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(body)
	return err
}

// readFrame reads one frame into buf (grown as needed) and returns it.
func readFrame(r io.Reader, buf []byte) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return buf, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if int64(n) > int64(maxFrame) {
		return buf, fmt.Errorf("agent protocol: frame of %d bytes exceeds %d", n, maxFrame)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return buf, err
	}
	return buf, nil
}

// errorResponse classifies err for the wire.
func errorResponse(err error) response {
	r := response{Class: classFailed, Msg: err.Error()}
	for _, c := range []struct {
		target error
		class  uint32
	}{
		{fs.ErrNotExist, classNotExist},
		{fs.ErrExist, classExist},
		{fs.ErrPermission, classPermission},
		{replicate.ErrInvalidPath, classInvalidPath},
		{replicate.ErrSymlink, classSymlink},
		{replicate.ErrOwner, classOwner},
		{replicate.ErrUnsupported, classUnsupported},
		{delta.ErrMismatch, classMismatch},
		{delta.ErrCorrupt, classCorrupt},
	} {
		if errors.Is(err, c.target) {
			r.Class |= c.class
		}
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		r.Errno = uint32(errno)
	}
	return r
}

// RemoteError is an error the agent reported. errors.Is matches the
// sentinel errors of replicate and io/fs it was classified with, and the
// worker's errno.
type RemoteError struct {
	Class uint32
	Errno syscall.Errno
	Msg   string
}

func (e *RemoteError) Error() string { return "worker: " + e.Msg }

// Unwrap lets errors.Is see the classes and the errno.
func (e *RemoteError) Unwrap() []error {
	var errs []error
	for _, c := range []struct {
		class  uint32
		target error
	}{
		{classNotExist, fs.ErrNotExist},
		{classExist, fs.ErrExist},
		{classPermission, fs.ErrPermission},
		{classInvalidPath, replicate.ErrInvalidPath},
		{classSymlink, replicate.ErrSymlink},
		{classOwner, replicate.ErrOwner},
		{classUnsupported, replicate.ErrUnsupported},
		{classMismatch, delta.ErrMismatch},
		{classCorrupt, delta.ErrCorrupt},
	} {
		if e.Class&c.class != 0 {
			errs = append(errs, c.target)
		}
	}
	if e.Errno != 0 {
		errs = append(errs, e.Errno)
	}
	return errs
}

func (r *response) err() error {
	if r.Class == 0 {
		return nil
	}
	return &RemoteError{Class: r.Class, Errno: syscall.Errno(r.Errno), Msg: r.Msg}
}
