// Package verify compares a worker's tree with the store, read-only: what
// `mirrorfs verify` reports and what `mirrorfs resync --dry-run` would
// repair.
//
// Compared, never following a symlink: the set of paths, the type, the size
// of regular files, the permission bits (with setuid, setgid and sticky),
// the owner, the mtime (whole seconds, or nanoseconds when the transport
// implements [replicate.LinkAttrs] and so keeps them), symlink targets and,
// with Options.Checksum, the SHA-256 of regular files' content. These are
// the attributes the shipper replicates; what it does not replicate is not
// compared: FIFOs, sockets and device nodes in the store (see
// replicate.Special), a directory's size, and a symlink's mode (its owner
// and mtime only when the transport has LinkAttrs, the only way they are
// replicated). user.* extended attributes of files, directories and the
// root are compared when the transport implements [replicate.Xattrs] (the
// agent), the only way they are replicated. Hard-link groups of regular
// files are compared when the transport reports inode numbers (the agent;
// SFTP does not). A worker's temp file (replicate.TempPrefix) is skipped while it
// may belong to a transfer under way (see inFlight), and reported when it
// is older or the store has that name.
package verify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrorfs/mirrorfs/replicate"
)

// Difference is one way a worker's tree differs from the store. Store and
// Worker describe the value on each side ("" where the path is absent).
type Difference struct {
	Path   string `json:"path"` // relative, slash-separated; "." is the root
	What   string `json:"what"` // one of the What* constants
	Store  string `json:"store"`
	Worker string `json:"worker"`
}

// What a Difference is about.
const (
	WhatMissing = "missing" // in the store, not on the worker
	WhatExtra   = "extra"   // on the worker, not in the store
	WhatType    = "type"    // e.g. a directory on one side, a file on the other
	WhatSize    = "size"
	WhatMode    = "mode" // permission bits incl. setuid, setgid, sticky
	WhatOwner   = "owner"
	WhatMtime   = "mtime"
	WhatTarget  = "target"  // symlink target
	WhatContent = "content" // SHA-256 (Options.Checksum only)
	WhatXattr   = "xattr"   // a user.* extended attribute (transports with Xattrs)
	WhatLinks   = "links"   // the hard-link group (transports that report inodes: the agent)
)

// Options tune Compare.
type Options struct {
	// Checksum compares the content of regular files of the same size,
	// by SHA-256; the transport must implement [replicate.Hasher].
	Checksum bool
	// Exclude: paths it matches are skipped on both sides (nil: none).
	Exclude *replicate.Excluder
}

// Compare walks the store directory store and the worker's tree behind t
// in step, one directory at a time in sorted order, and returns how the
// worker differs. Worker files named replicate.TempPrefix+* (transfers in
// flight) are ignored. It only reads: t's Lstat, ReadDir, Readlink and,
// with Checksum, Hash. An error means the comparison could not be done
// (the worker failed, the store cannot be read); differences found until
// then are returned with it.
func Compare(ctx context.Context, store string, t replicate.Transport, o Options) ([]Difference, error) {
	root, err := os.OpenRoot(store)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	defer root.Close()
	c := &comparer{store: root, storePath: store, t: t, o: o, links: linkGroups{store: map[uint64][]string{}, worker: map[uint64][]string{}}}
	_, c.nanos = t.(replicate.LinkAttrs)
	c.xattrs, _ = t.(replicate.Xattrs)
	if o.Checksum {
		h, ok := t.(replicate.Hasher)
		if !ok {
			return nil, fmt.Errorf("content comparison: %w: the transport cannot hash files", replicate.ErrUnsupported)
		}
		c.hasher = h
	}
	sfi, err := root.Lstat(".")
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	wfi, err := t.Lstat(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("worker root: %w", err)
	}
	s := storeEntry(sfi)
	if !s.Mode.IsDir() || !wfi.IsDir() {
		c.add("", WhatType, typeName(s.Mode), typeName(wfi.Mode))
		return c.diffs, nil
	}
	// The root: its mode and owner (the worker root exists before
	// mirrorfs, which then gives it the store's attributes), mtime and
	// user.* xattrs.
	c.attrs("", s, wfi)
	if c.xattrs != nil {
		if err := c.compareXattrs(ctx, ""); err != nil {
			return c.diffs, err
		}
	}
	err = c.dir(ctx, "")
	if err == nil {
		c.links.compare(c)
	}
	return c.diffs, err
}

// linkGroups gathers the hard-link groups of the regular files compared
// on both sides, by inode number, to compare them once the walk is done.
type linkGroups struct {
	known  bool                // the worker reports inode numbers
	store  map[uint64][]string // store inode -> paths, files with links
	worker map[uint64][]string // worker inode -> paths, files with links
	paths  []linkedPath
}

type linkedPath struct {
	p          string
	sIno, wIno uint64 // 0: no other link on that side
}

func (g *linkGroups) note(p string, s, w replicate.FileInfo) {
	if w.Ino != 0 {
		g.known = true
	}
	if s.Nlink < 2 && w.Nlink < 2 {
		return
	}
	lp := linkedPath{p: p}
	if s.Nlink >= 2 {
		lp.sIno = s.Ino
		g.store[s.Ino] = append(g.store[s.Ino], p)
	}
	if w.Nlink >= 2 && w.Ino != 0 {
		lp.wIno = w.Ino
		g.worker[w.Ino] = append(g.worker[w.Ino], p)
	}
	g.paths = append(g.paths, lp)
}

// compare reports each group that differs once, at its first path: the
// store's names of the file against the worker's.
func (g *linkGroups) compare(c *comparer) {
	if !g.known {
		return
	}
	group := func(m map[uint64][]string, ino uint64, p string) string {
		if ino == 0 {
			return p
		}
		names := slices.Clone(m[ino])
		slices.Sort(names)
		return strings.Join(names, " ")
	}
	reported := map[string]bool{}
	for _, lp := range g.paths {
		sg, wg := group(g.store, lp.sIno, lp.p), group(g.worker, lp.wIno, lp.p)
		if sg != wg && !reported[sg] && !reported[wg] {
			reported[sg], reported[wg] = true, true
			c.add(lp.p, WhatLinks, "linked: "+sg, "linked: "+wg)
		}
	}
}

type comparer struct {
	store *os.Root
	// storePath is the store directory, for the l*xattr calls os.Root lacks.
	storePath string
	xattrs    replicate.Xattrs // nil: the transport does not carry them
	t         replicate.Transport
	o         Options
	nanos     bool // the transport keeps nanosecond mtimes (LinkAttrs)
	hasher    replicate.Hasher
	links     linkGroups
	diffs     []Difference
}

func (c *comparer) add(p, what, store, worker string) {
	if p == "" {
		p = "."
	}
	c.diffs = append(c.diffs, Difference{Path: p, What: what, Store: store, Worker: worker})
}

// storeEntry is a store fs.FileInfo in the worker's FileInfo shape.
func storeEntry(fi fs.FileInfo) replicate.FileInfo {
	out := replicate.FileInfo{Name: fi.Name(), Mode: fi.Mode(), Size: fi.Size(), Mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		out.UID, out.GID = st.Uid, st.Gid
		out.Ino, out.Nlink = st.Ino, uint64(st.Nlink)
	}
	return out
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// special reports whether m is a FIFO, socket or device: not replicated.
func special(m fs.FileMode) bool {
	return m&(fs.ModeNamedPipe|fs.ModeSocket|fs.ModeDevice|fs.ModeCharDevice|fs.ModeIrregular) != 0
}

// tempAge is how long a worker's temp file may be a transfer under way:
// older, it is a leftover of one that was cut off (the shipper removes
// those when it next writes the directory) and is reported, since a web
// server may serve it.
const tempAge = time.Hour

// inFlight reports whether the worker entry w is a temp file of a transfer
// that may be under way, which is not compared: a temp name the store does
// not have itself, younger than tempAge.
func inFlight(w replicate.FileInfo, inStore bool, now time.Time) bool {
	return strings.HasPrefix(w.Name, replicate.TempPrefix) && !inStore && now.Sub(w.Mtime) < tempAge
}

// dir compares the entries of the directory p, a directory on both sides.
func (c *comparer) dir(ctx context.Context, p string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	sents, err := c.storeDir(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // removed from the store meanwhile
	}
	if err != nil {
		return fmt.Errorf("store: %s: %w", displayPath(p), err)
	}
	wents, err := c.t.ReadDir(ctx, p)
	if err != nil {
		return fmt.Errorf("worker: read directory %s: %w", displayPath(p), err)
	}
	inStore := make(map[string]bool, len(sents))
	for _, e := range sents {
		inStore[e.Name] = true
	}
	wents = slices.DeleteFunc(wents, func(w replicate.FileInfo) bool {
		return inFlight(w, inStore[w.Name], time.Now())
	})
	slices.SortFunc(wents, func(a, b replicate.FileInfo) int { return strings.Compare(a.Name, b.Name) })
	i, j := 0, 0
	for i < len(sents) || j < len(wents) {
		var s, w *replicate.FileInfo
		switch {
		case j >= len(wents) || i < len(sents) && sents[i].Name < wents[j].Name:
			s = &sents[i]
			i++
		case i >= len(sents) || wents[j].Name < sents[i].Name:
			w = &wents[j]
			j++
		default:
			s, w = &sents[i], &wents[j]
			i++
			j++
		}
		if err := c.entry(ctx, p, s, w); err != nil {
			return err
		}
	}
	return nil
}

// entry compares one name of directory p; s or w is nil where it is absent.
func (c *comparer) entry(ctx context.Context, dir string, s, w *replicate.FileInfo) error {
	var name string
	if s != nil {
		name = s.Name
	} else {
		name = w.Name
	}
	p := join(dir, name)
	// Excluded as the shipper sees it: by the store's entry if there is
	// one (the worker's is then left alone whatever it is), else by the
	// worker's.
	if s != nil && c.o.Exclude.Excluded(p, s.Mode.IsDir()) || s == nil && c.o.Exclude.Excluded(p, w.Mode.IsDir()) {
		return nil
	}
	if s != nil && special(s.Mode) {
		return nil // not replicated: whatever the worker has there stays
	}
	switch {
	case w == nil:
		c.add(p, WhatMissing, c.describe(p, *s, true), "")
		return nil
	case s == nil:
		c.add(p, WhatExtra, "", c.describe(p, *w, false))
		return nil
	}
	if s.Mode.Type() != w.Mode.Type() {
		c.add(p, WhatType, typeName(s.Mode), typeName(w.Mode))
		return nil
	}
	if s.Mode.IsRegular() && s.Size != w.Size {
		c.add(p, WhatSize, fmt.Sprint(s.Size), fmt.Sprint(w.Size))
	}
	c.attrs(p, *s, *w)
	switch {
	case s.Mode&fs.ModeSymlink != 0:
		st, err := c.store.Readlink(p)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.EINVAL) {
			return nil // changed in the store meanwhile
		}
		if err != nil {
			return fmt.Errorf("store: %s: %w", p, err)
		}
		wt, err := c.t.Readlink(ctx, p)
		if err != nil {
			return fmt.Errorf("worker: readlink %s: %w", p, err)
		}
		if st != wt {
			c.add(p, WhatTarget, st, wt)
		}
	case s.Mode.IsRegular():
		c.links.note(p, *s, *w)
		if err := c.compareXattrs(ctx, p); err != nil {
			return err
		}
		if c.hasher != nil && s.Size == w.Size {
			ss, err := c.storeHash(p)
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ELOOP) {
				return nil // changed in the store meanwhile
			}
			if err != nil {
				return fmt.Errorf("store: %s: %w", p, err)
			}
			ws, err := c.hasher.Hash(ctx, p)
			if err != nil {
				return fmt.Errorf("worker: hash %s: %w", p, err)
			}
			if string(ss) != string(ws) {
				c.add(p, WhatContent, "sha256:"+hex.EncodeToString(ss), "sha256:"+hex.EncodeToString(ws))
			}
		}
	case s.Mode.IsDir():
		if err := c.compareXattrs(ctx, p); err != nil {
			return err
		}
		return c.dir(ctx, p)
	}
	return nil
}

// compareXattrs compares the user.* extended attributes of p, when the
// transport carries them.
func (c *comparer) compareXattrs(ctx context.Context, p string) error {
	if c.xattrs == nil {
		return nil
	}
	want, err := storeXattrs(filepath.Join(c.storePath, displayPath(p)))
	if err != nil {
		return nil // changed in the store meanwhile
	}
	have, err := c.xattrs.ListXattrs(ctx, p)
	if err != nil {
		return fmt.Errorf("worker: xattrs of %s: %w", p, err)
	}
	names := map[string]bool{}
	for k := range want {
		names[k] = true
	}
	for k := range have {
		if strings.HasPrefix(k, "user.") {
			names[k] = true
		}
	}
	for _, k := range slices.Sorted(maps.Keys(names)) {
		sv, sok := want[k]
		wv, wok := have[k]
		switch {
		case !wok:
			c.add(p, WhatXattr, k+"="+strconv.Quote(string(sv)), "")
		case !sok:
			c.add(p, WhatXattr, "", k+"="+strconv.Quote(string(wv)))
		case string(sv) != string(wv):
			c.add(p, WhatXattr, k+"="+strconv.Quote(string(sv)), k+"="+strconv.Quote(string(wv)))
		}
	}
	return nil
}

// storeXattrs reads the user.* extended attributes of the store path p,
// without following a symlink.
func storeXattrs(p string) (map[string][]byte, error) {
	size, err := unix.Llistxattr(p, nil)
	if err != nil || size == 0 {
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		return nil, err
	}
	buf := make([]byte, size)
	if size, err = unix.Llistxattr(p, buf); err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for name := range strings.SplitSeq(string(buf[:size]), "\x00") {
		if !strings.HasPrefix(name, "user.") {
			continue
		}
		n, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			continue // removed meanwhile
		}
		v := make([]byte, n)
		if n, err = unix.Lgetxattr(p, name, v); err != nil {
			continue
		}
		out[name] = v[:n]
	}
	return out, nil
}

// attrs compares mode, owner and mtime of p, of the same type on both
// sides. A symlink's mode means nothing; its owner and mtime are
// replicated only through LinkAttrs.
func (c *comparer) attrs(p string, s, w replicate.FileInfo) {
	link := s.Mode&fs.ModeSymlink != 0
	if !link && permBits(s.Mode) != permBits(w.Mode) {
		c.add(p, WhatMode, fmtMode(s.Mode), fmtMode(w.Mode))
	}
	if link && !c.nanos {
		return
	}
	if s.UID != w.UID || s.GID != w.GID {
		c.add(p, WhatOwner, fmt.Sprintf("%d:%d", s.UID, s.GID), fmt.Sprintf("%d:%d", w.UID, w.GID))
	}
	if !c.sameMtime(s.Mtime, w.Mtime) {
		c.add(p, WhatMtime, c.fmtTime(s.Mtime), c.fmtTime(w.Mtime))
	}
}

// sameMtime compares at the grain the transport keeps, as the shipper
// does (replicate's sameMtime).
func (c *comparer) sameMtime(s, w time.Time) bool {
	if c.nanos {
		return s.Equal(w)
	}
	return s.Unix() == w.Unix()
}

func (c *comparer) fmtTime(t time.Time) string {
	if c.nanos {
		return t.UTC().Format(time.RFC3339Nano)
	}
	return t.UTC().Format(time.RFC3339)
}

// storeDir lists the store directory p, sorted by name.
func (c *comparer) storeDir(p string) ([]replicate.FileInfo, error) {
	fis, err := replicate.ReadRootDir(c.store, p)
	if err != nil {
		return nil, err
	}
	out := make([]replicate.FileInfo, len(fis))
	for i, fi := range fis {
		out[i] = storeEntry(fi)
	}
	return out, nil
}

// storeHash is the SHA-256 of the store's regular file p.
func (c *comparer) storeHash(p string) ([]byte, error) {
	f, err := c.store.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, fs.ErrNotExist // replaced meanwhile
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// describe says what the entry fi at p is, for a missing or extra path.
func (c *comparer) describe(p string, fi replicate.FileInfo, store bool) string {
	switch {
	case fi.Mode.IsRegular():
		return fmt.Sprintf("file, %d bytes", fi.Size)
	case fi.Mode&fs.ModeSymlink != 0 && store:
		// (An extra symlink's target is worth no worker round trip.)
		if t, err := c.store.Readlink(p); err == nil {
			return "symlink -> " + t
		}
	}
	return typeName(fi.Mode)
}

func displayPath(p string) string {
	if p == "" {
		return "."
	}
	return p
}

func permBits(m fs.FileMode) fs.FileMode {
	return m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

// fmtMode prints permission bits the chmod way: 0644, 4755, 1777.
func fmtMode(m fs.FileMode) string {
	v := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		v |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		v |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		v |= 0o1000
	}
	return fmt.Sprintf("%04o", v)
}

func typeName(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "file"
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	}
	return "irregular file"
}
