package replicate

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// isDense tells a sparse file with space preallocated past its end
// (fallocate KEEP_SIZE: as many blocks as bytes, holes all the same) from
// a dense one, and leaves the file at its start. Taken for dense, such a
// file was sent as ranges and its holes filled on the worker.
func TestIsDenseSeesHolesBehindPreallocation(t *testing.T) {
	dir := t.TempDir()
	const size = 4 << 20
	open := func(name string, fill func(f *os.File) error) (*os.File, os.FileInfo) {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		if err := fill(f); err != nil {
			t.Fatal(err)
		}
		fi, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		return f, fi
	}
	sparse, sfi := open("sparse", func(f *os.File) error {
		if _, err := f.WriteAt(make([]byte, 64<<10), size-(64<<10)); err != nil {
			return err
		}
		return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, size, 8<<20)
	})
	t.Logf("sparse file: %d bytes, %d allocated", sfi.Size(), sfi.Sys().(*syscall.Stat_t).Blocks*512)
	dense, dfi := open("dense", func(f *os.File) error {
		_, err := f.WriteAt(bytes.Repeat([]byte("x"), size), 0)
		return err
	})
	for _, tc := range []struct {
		f    *os.File
		fi   os.FileInfo
		want bool
	}{{sparse, sfi, false}, {dense, dfi, true}} {
		if got := isDense(tc.f, tc.fi); got != tc.want {
			t.Errorf("isDense(%s) = %v, want %v", tc.fi.Name(), got, tc.want)
		}
		if off, err := tc.f.Seek(0, io.SeekCurrent); err != nil || off != 0 {
			t.Errorf("%s left at offset %d (%v), want 0", tc.fi.Name(), off, err)
		}
	}
}
