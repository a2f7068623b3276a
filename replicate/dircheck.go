package replicate

import (
	"context"
	"fmt"
	"io/fs"
	"strings"
	"sync"
)

// dirCheck verifies that every parent of a path on the worker is a real
// directory, not a symlink (which could lead outside the worker root). It
// remembers verified directories until a namespace change invalidates them.
//
// The map is guarded, but not across lstat, which may itself forget
// (invalidate): callers may check from several goroutines.
type dirCheck struct {
	mu sync.Mutex
	ok map[string]bool
}

// check verifies the proper ancestors of p (the root itself is trusted).
func (c *dirCheck) check(ctx context.Context, p string, lstat func(context.Context, string) (FileInfo, error)) error {
	for i := 0; i < len(p); i++ {
		if p[i] != '/' {
			continue
		}
		dir := p[:i]
		if c.known(dir) {
			continue
		}
		fi, err := lstat(ctx, dir)
		if err != nil {
			return err
		}
		if fi.Mode&fs.ModeSymlink != 0 {
			return fmt.Errorf("%w: parent %q of %q", ErrSymlink, dir, p)
		}
		if !fi.IsDir() {
			return fmt.Errorf("parent %q of %q is not a directory: %w", dir, p, fs.ErrNotExist)
		}
		c.mu.Lock()
		if c.ok == nil {
			c.ok = make(map[string]bool)
		}
		c.ok[dir] = true
		c.mu.Unlock()
	}
	return nil
}

// known reports whether dir was verified and not forgotten since.
func (c *dirCheck) known(dir string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ok[dir]
}

// invalidate forgets p and everything under it. A directory below p is
// only ever verified together with p (check verifies every ancestor), and
// both are forgotten together, so when p is not cached nothing below it is:
// the common case of a file written or renamed costs one lookup, not a walk
// of every cached directory (466 µs per file with 20,000 of them).
func (c *dirCheck) invalidate(p string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.ok[p] {
		return
	}
	for d := range c.ok {
		if d == p || strings.HasPrefix(d, p+"/") {
			delete(c.ok, d)
		}
	}
}
