package worker

import (
	"context"
	"fmt"
	"syscall"

	"github.com/pkg/sftp"
	"golang.org/x/sys/unix"
)

// StatVFS answers statvfs@openssh.com for the file system holding a path of the root.
func (h *rootFS) StatVFS(r *sftp.Request) (*sftp.StatVFS, error) {
	name := local(r.Filepath)
	f, err := h.l.OpenFile(context.Background(), name, unix.O_PATH, 0)
	if err != nil {
		return nil, h.check("statvfs", name, err)
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("statvfs %s: %w", name, err)
	}
	var st syscall.Statfs_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.Fstatfs(int(fd), &st) }); err != nil {
		return nil, fmt.Errorf("statvfs %s: %w", name, err)
	}
	if serr != nil {
		return nil, fmt.Errorf("statvfs %s: %w", name, serr)
	}
	const stRdonly, stNosuid = 1, 2 // the only flags the extension defines
	return &sftp.StatVFS{
		Bsize:   uint64(st.Bsize),
		Frsize:  uint64(st.Frsize),
		Blocks:  st.Blocks,
		Bfree:   st.Bfree,
		Bavail:  st.Bavail,
		Files:   st.Files,
		Ffree:   st.Ffree,
		Favail:  st.Ffree, // Linux has no separate count of inodes free for unprivileged users
		Fsid:    uint64(uint32(st.Fsid.X__val[0]))<<32 | uint64(uint32(st.Fsid.X__val[1])),
		Flag:    uint64(st.Flags) & (stRdonly | stNosuid),
		Namemax: uint64(st.Namelen),
	}, nil
}
