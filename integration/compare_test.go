package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// workerTempPrefix starts the name of a file the daemon is still writing on a
// worker (data goes to a temp file in the target's directory, then is renamed
// over the target).
const workerTempPrefix = ".mirrorfs-tmp-"

// compareTrees lists, in readable form, how the tree at worker differs from
// the tree at store. An empty result means the worker is a faithful mirror.
//
// Compared, without ever following a symlink: the set of paths, file types,
// sizes and contents (sha256) of regular files, permission bits including
// setuid, setgid and sticky, owner and group, symlink targets, device
// numbers, hard-link groups (paths that share an inode in the store must
// share one on the worker, and no others), and mtimes of regular files and
// directories at whole-second granularity: SFTP protocol v3 carries times in
// whole seconds, so that is all a worker can be asked to match. Symlink
// mtimes are not compared. Of the root directories only the permission bits
// are compared (the worker root is not something mirrorfs creates).
//
// rel paths given to excluded are slash-separated and relative to the root,
// e.g. "css/site.css"; an excluded path is skipped on both sides with all
// that is under it. excluded may be nil.
//
// Worker files named .mirrorfs-tmp-* are transfers in flight and are ignored
// while other differences remain; once everything else matches, any that are
// still there are reported, because a leftover temp file is a defect.
func compareTrees(store, worker string, excluded func(rel string) bool) []string {
	return compareTreesWith(store, worker, excluded, false)
}

// compareTreesWith is compareTrees; precise also compares what only the
// agent transport carries: mtimes to the nanosecond (symlinks' too) and
// user.* extended attributes.
func compareTreesWith(store, worker string, excluded func(rel string) bool, precise bool) []string {
	if excluded == nil {
		excluded = func(string) bool { return false }
	}
	c := &treeComparison{
		store:        store,
		worker:       worker,
		excluded:     excluded,
		precise:      precise,
		storeInodes:  map[inodeKey][]string{},
		workerInodes: map[inodeKey][]string{},
		storeIno:     map[string]inodeKey{},
		workerIno:    map[string]inodeKey{},
	}
	c.compareRoot()
	c.compareDir("")
	c.compareHardLinks()
	if len(c.diffs) == 0 {
		for _, rel := range c.temps {
			c.diffs = append(c.diffs, rel+": leftover temp file on worker")
		}
	}
	return c.diffs
}

type inodeKey struct{ dev, ino uint64 }

type treeComparison struct {
	store, worker string
	excluded      func(string) bool
	precise       bool
	diffs         []string
	temps         []string

	// Hard links: regular files present on both sides, with their inode on
	// each side, and which of those paths share each inode.
	common                    []string
	storeIno, workerIno       map[string]inodeKey
	storeInodes, workerInodes map[inodeKey][]string
}

func (c *treeComparison) add(rel, format string, args ...any) {
	if rel == "" {
		rel = "."
	}
	c.diffs = append(c.diffs, rel+": "+fmt.Sprintf(format, args...))
}

func lstat(p string) (*syscall.Stat_t, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return nil, &os.PathError{Op: "lstat", Path: p, Err: err}
	}
	return &st, nil
}

func (c *treeComparison) compareRoot() {
	s, err := lstat(c.store)
	if err != nil {
		c.add("", "store root: %v", err)
		return
	}
	w, err := lstat(c.worker)
	if err != nil {
		c.add("", "worker root: %v", err)
		return
	}
	if s.Mode&syscall.S_IFMT != syscall.S_IFDIR || w.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		c.add("", "roots are not both directories (store %s, worker %s)", typeName(s.Mode), typeName(w.Mode))
		return
	}
	// The worker root exists before mirrorfs, which gives it the store
	// root's attributes like any directory's: its mtime changes with
	// every entry made or removed at the top.
	if perm(s.Mode) != perm(w.Mode) {
		c.add("", "mode differs: store %04o, worker %04o", perm(s.Mode), perm(w.Mode))
	}
	if s.Uid != w.Uid || s.Gid != w.Gid {
		c.add("", "owner differs: store %d:%d, worker %d:%d", s.Uid, s.Gid, w.Uid, w.Gid)
	}
	if s.Mtim.Sec != w.Mtim.Sec || c.precise && s.Mtim != w.Mtim {
		c.add("", "directory mtime differs: store %s, worker %s", fmtTimeNs(s.Mtim), fmtTimeNs(w.Mtim))
	}
	if c.precise {
		c.compareXattrs("")
	}
}

// compareDir compares the entries of directory rel (both sides are known to
// be directories).
func (c *treeComparison) compareDir(rel string) {
	sNames, err := readNames(filepath.Join(c.store, rel))
	if err != nil {
		c.add(rel, "read store directory: %v", err)
		return
	}
	wNames, err := readNames(filepath.Join(c.worker, rel))
	if err != nil {
		c.add(rel, "read worker directory: %v", err)
		return
	}
	inStore := map[string]bool{}
	for _, n := range sNames {
		inStore[n] = true
	}
	names := append([]string(nil), sNames...)
	for _, n := range wNames {
		if !inStore[n] {
			names = append(names, n)
		}
	}
	sort.Strings(names)

	for _, name := range names {
		child := path.Join(rel, name)
		if strings.HasPrefix(name, workerTempPrefix) && !inStore[name] {
			c.temps = append(c.temps, child)
			continue
		}
		if c.excluded(child) {
			continue
		}
		s, serr := lstat(filepath.Join(c.store, child))
		w, werr := lstat(filepath.Join(c.worker, child))
		switch {
		case serr != nil && werr != nil:
			// Vanished from both while we looked.
			if !os.IsNotExist(serr) || !os.IsNotExist(werr) {
				c.add(child, "store: %v; worker: %v", serr, werr)
			}
		case serr != nil && os.IsNotExist(serr):
			c.add(child, "extra on worker (%s)", describe(w))
		case serr != nil:
			c.add(child, "store: %v", serr)
		case werr != nil && os.IsNotExist(werr):
			c.add(child, "missing on worker (store has %s)", describe(s))
		case werr != nil:
			c.add(child, "worker: %v", werr)
		default:
			c.compareEntry(child, s, w)
		}
	}
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// compareEntry compares one path present on both sides.
func (c *treeComparison) compareEntry(rel string, s, w *syscall.Stat_t) {
	st, wt := s.Mode&syscall.S_IFMT, w.Mode&syscall.S_IFMT
	if st != wt {
		c.add(rel, "type differs: store %s, worker %s", typeName(s.Mode), typeName(w.Mode))
		return
	}
	if st != syscall.S_IFLNK && perm(s.Mode) != perm(w.Mode) {
		c.add(rel, "mode differs: store %04o, worker %04o", perm(s.Mode), perm(w.Mode))
	}
	if s.Uid != w.Uid || s.Gid != w.Gid {
		c.add(rel, "owner differs: store %d:%d, worker %d:%d", s.Uid, s.Gid, w.Uid, w.Gid)
	}
	if c.precise {
		if s.Mtim != w.Mtim && st != syscall.S_IFREG && st != syscall.S_IFDIR {
			c.add(rel, "mtime differs: store %s, worker %s", fmtTimeNs(s.Mtim), fmtTimeNs(w.Mtim))
		}
		if st != syscall.S_IFLNK {
			c.compareXattrs(rel)
		}
	}
	switch st {
	case syscall.S_IFREG:
		c.compareFile(rel, s, w)
	case syscall.S_IFDIR:
		// Whole seconds: SFTP v3 carries no more (see compareTrees).
		if s.Mtim.Sec != w.Mtim.Sec || c.precise && s.Mtim != w.Mtim {
			c.add(rel, "directory mtime differs: store %s, worker %s", fmtTimeNs(s.Mtim), fmtTimeNs(w.Mtim))
		}
		c.compareDir(rel)
	case syscall.S_IFLNK:
		sTarget, serr := os.Readlink(filepath.Join(c.store, rel))
		wTarget, werr := os.Readlink(filepath.Join(c.worker, rel))
		switch {
		case serr != nil || werr != nil:
			c.add(rel, "readlink: store %v, worker %v", serr, werr)
		case sTarget != wTarget:
			c.add(rel, "symlink target differs: store %q, worker %q", sTarget, wTarget)
		}
	case syscall.S_IFCHR, syscall.S_IFBLK:
		if s.Rdev != w.Rdev {
			c.add(rel, "device number differs: store %#x, worker %#x", s.Rdev, w.Rdev)
		}
	}
}

func (c *treeComparison) compareFile(rel string, s, w *syscall.Stat_t) {
	if s.Size != w.Size {
		c.add(rel, "size differs: store %d bytes, worker %d bytes", s.Size, w.Size)
	} else {
		sSum, serr := fileSHA256(filepath.Join(c.store, rel))
		wSum, werr := fileSHA256(filepath.Join(c.worker, rel))
		switch {
		case serr != nil || werr != nil:
			c.add(rel, "read: store %v, worker %v", serr, werr)
		case sSum != wSum:
			c.add(rel, "content differs (%d bytes): store sha256 %.16s…, worker sha256 %.16s…", s.Size, sSum, wSum)
		}
	}
	// Whole seconds: SFTP v3 carries no more (see compareTrees).
	if s.Mtim.Sec != w.Mtim.Sec || c.precise && s.Mtim != w.Mtim {
		c.add(rel, "mtime differs: store %s, worker %s", fmtTimeNs(s.Mtim), fmtTimeNs(w.Mtim))
	}
	sk, wk := inodeKey{s.Dev, s.Ino}, inodeKey{w.Dev, w.Ino}
	c.common = append(c.common, rel)
	c.storeIno[rel], c.workerIno[rel] = sk, wk
	c.storeInodes[sk] = append(c.storeInodes[sk], rel)
	c.workerInodes[wk] = append(c.workerInodes[wk], rel)
}

// compareHardLinks checks that the paths sharing an inode are the same on both
// sides, considering only regular files present on both sides (a missing or
// extra path is reported as such already). Paths linked on either side form
// one cluster; each cluster whose grouping differs is reported once, e.g.
// "a: hard-link groups differ: store [a b], worker [a] [b]".
func (c *treeComparison) compareHardLinks() {
	parent := map[string]string{}
	var find func(string) string
	find = func(p string) string {
		if parent[p] == p {
			return p
		}
		r := find(parent[p])
		parent[p] = r
		return r
	}
	for _, rel := range c.common {
		parent[rel] = rel
	}
	for _, m := range []map[inodeKey][]string{c.storeInodes, c.workerInodes} {
		for _, group := range m {
			for _, p := range group[1:] {
				parent[find(p)] = find(group[0])
			}
		}
	}
	clusters := map[string][]string{}
	for _, rel := range c.common {
		r := find(rel)
		clusters[r] = append(clusters[r], rel)
	}
	var roots []string
	for r, members := range clusters {
		if len(members) > 1 {
			sort.Strings(members)
			roots = append(roots, r)
		}
	}
	sort.Slice(roots, func(i, j int) bool { return clusters[roots[i]][0] < clusters[roots[j]][0] })
	for _, r := range roots {
		members := clusters[r]
		sp, wp := partition(members, c.storeIno), partition(members, c.workerIno)
		if sp != wp {
			c.add(members[0], "hard-link groups differ: store %s, worker %s", sp, wp)
		}
	}
}

// partition describes how paths are grouped by inode, e.g. "[a b] [c]".
func partition(paths []string, ino map[string]inodeKey) string {
	groups := map[inodeKey][]string{}
	for _, p := range paths {
		groups[ino[p]] = append(groups[ino[p]], p)
	}
	var parts []string
	for _, g := range groups {
		sort.Strings(g)
		parts = append(parts, "["+strings.Join(g, " ")+"]")
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func perm(mode uint32) uint32 { return mode & 0o7777 }

func typeName(mode uint32) string {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		return "regular file"
	case syscall.S_IFDIR:
		return "directory"
	case syscall.S_IFLNK:
		return "symlink"
	case syscall.S_IFIFO:
		return "fifo"
	case syscall.S_IFSOCK:
		return "socket"
	case syscall.S_IFCHR:
		return "char device"
	case syscall.S_IFBLK:
		return "block device"
	}
	return fmt.Sprintf("unknown type %#o", mode&syscall.S_IFMT)
}

func describe(st *syscall.Stat_t) string {
	if st.Mode&syscall.S_IFMT == syscall.S_IFREG {
		return fmt.Sprintf("regular file, %d bytes", st.Size)
	}
	return typeName(st.Mode)
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// excludeMatcher turns exclude patterns into the excluded func of
// compareTrees. A pattern without a slash matches any single path component
// ("*.swp", ".git"); a pattern with a slash matches the whole relative path
// ("cache/*", a leading "/" is dropped). Matching uses path.Match, and an
// excluded directory excludes everything under it. Unlike the daemon's
// matcher it does not know a path's type: a directory-only pattern
// ("node_modules/") skips files of that name too, so tests use file
// patterns.
func excludeMatcher(patterns []string) func(rel string) bool {
	if len(patterns) == 0 {
		return nil
	}
	return func(rel string) bool {
		for _, p := range patterns {
			if strings.Contains(strings.TrimSuffix(p, "/"), "/") {
				if ok, _ := path.Match(strings.TrimPrefix(strings.TrimSuffix(p, "/"), "/"), rel); ok {
					return true
				}
				continue
			}
			if ok, _ := path.Match(strings.TrimSuffix(p, "/"), path.Base(rel)); ok {
				return true
			}
		}
		return false
	}
}

// fmtTimeNs shows a time with its nanoseconds.
func fmtTimeNs(ts syscall.Timespec) string {
	return time.Unix(ts.Sec, ts.Nsec).UTC().Format("2006-01-02T15:04:05.000000000Z")
}

// compareXattrs compares the user.* extended attributes of rel.
func (c *treeComparison) compareXattrs(rel string) {
	sx, serr := userXattrs(filepath.Join(c.store, rel))
	wx, werr := userXattrs(filepath.Join(c.worker, rel))
	if serr != nil || werr != nil {
		c.add(rel, "xattrs: store %v, worker %v", serr, werr)
		return
	}
	for k, v := range sx {
		if wv, ok := wx[k]; !ok {
			c.add(rel, "xattr %s missing on worker", k)
		} else if wv != v {
			c.add(rel, "xattr %s differs: store %q, worker %q", k, v, wv)
		}
	}
	for k := range wx {
		if _, ok := sx[k]; !ok {
			c.add(rel, "xattr %s extra on worker", k)
		}
	}
}

// userXattrs reads the user.* extended attributes of p (not following a
// symlink).
func userXattrs(p string) (map[string]string, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) || os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	out := map[string]string{}
	for name := range strings.SplitSeq(string(buf[:n]), "\x00") {
		if !strings.HasPrefix(name, "user.") {
			continue
		}
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out[name] = string(v[:m])
	}
	return out, nil
}
