package replicate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Extended attributes are replicated in the user namespace only: that is
// where applications keep theirs. security.* labels belong to each
// machine's policy, trusted.* and system.* (ACLs) to its administrator.
const xattrNamespace = "user."

// storeXattrs reads the user.* extended attributes of an open store file.
func storeXattrs(f *os.File) (map[string][]byte, error) {
	fd := int(f.Fd())
	size, err := unix.Flistxattr(fd, nil)
	if err != nil || size == 0 {
		return nil, ignoreNoXattrs(err)
	}
	names := make([]byte, size)
	if size, err = unix.Flistxattr(fd, names); err != nil {
		return nil, ignoreNoXattrs(err)
	}
	var out map[string][]byte
	for name := range strings.SplitSeq(string(names[:size]), "\x00") {
		if !strings.HasPrefix(name, xattrNamespace) {
			continue
		}
		n, err := unix.Fgetxattr(fd, name, nil)
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("xattr %s: %w", name, err)
		}
		v := make([]byte, n)
		if n, err = unix.Fgetxattr(fd, name, v); err != nil {
			if errors.Is(err, unix.ENODATA) {
				continue
			}
			return nil, fmt.Errorf("xattr %s: %w", name, err)
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[name] = v[:n]
	}
	return out, nil
}

func ignoreNoXattrs(err error) error {
	if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
		return nil
	}
	return err
}

// syncXattrs gives the worker's p the store's user.* extended attributes
// of the open store file f, when the transport can. Unless full is set it
// only adds what the store has (a file just written has none), sparing a
// listing request for the common file without attributes; full also
// removes what the store lacks (after a removexattr, a refresh).
func (s *Shipper) syncXattrs(ctx context.Context, p string, f *os.File, full bool) error {
	x, ok := s.xattrs()
	if !ok {
		return nil
	}
	want, err := storeXattrs(f)
	if err != nil {
		return s.errf(p, fmt.Errorf("store: %w", err))
	}
	if len(want) == 0 && !full {
		return nil
	}
	have := map[string][]byte{}
	if full {
		have, err = x.ListXattrs(ctx, p)
		if errors.Is(err, fs.ErrNotExist) {
			// Not on the worker yet (a file held open): its data ships
			// later into a new file, with the store's attributes.
			s.log.Debug("xattrs left to the file's data", "path", p)
			return nil
		}
		if err != nil {
			return s.errf(p, fmt.Errorf("list xattrs: %w", err))
		}
	}
	for name, v := range want {
		if hv, ok := have[name]; ok && bytes.Equal(hv, v) {
			continue
		}
		if err := x.SetXattr(ctx, p, name, v); err != nil {
			return s.errf(p, fmt.Errorf("set xattr %s: %w", name, err))
		}
	}
	for name := range have {
		if _, keep := want[name]; !keep && strings.HasPrefix(name, xattrNamespace) {
			if err := x.RemoveXattr(ctx, p, name); err != nil {
				return s.errf(p, fmt.Errorf("remove xattr %s: %w", name, err))
			}
		}
	}
	return nil
}

// syncXattrsAt is syncXattrs for a store path (a file or a directory; a
// symlink has no user.* attributes on Linux). A path the store no longer
// has is left alone: the op that removed it follows.
func (s *Shipper) syncXattrsAt(ctx context.Context, p string, full bool) error {
	if _, ok := s.xattrs(); !ok {
		return nil
	}
	f, err := s.store.OpenFile(rootName(p), os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ELOOP) || errors.Is(err, syscall.ENXIO) {
			return nil
		}
		return s.errf(p, fmt.Errorf("store: %w", err))
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !(fi.Mode().IsRegular() || fi.IsDir()) {
		return nil
	}
	return s.syncXattrs(ctx, p, f, full)
}
