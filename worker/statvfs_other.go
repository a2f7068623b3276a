//go:build !linux

package worker

import (
	"fmt"

	"github.com/pkg/sftp"
)

// StatVFS is only implemented on Linux.
func (h *rootFS) StatVFS(r *sftp.Request) (*sftp.StatVFS, error) {
	return nil, fmt.Errorf("statvfs: %w", sftp.ErrSSHFxOpUnsupported)
}
