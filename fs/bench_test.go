package fs

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// benchPage is what a web server does per request for a small static file:
// open, fstat, read, close. The file sits three directories deep, like
// assets of a site.
const benchPage = "site/assets/css/page.css"

func writeBenchPage(b *testing.B, store string) {
	b.Helper()
	p := filepath.Join(store, benchPage)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(p, make([]byte, 2048), 0o644); err != nil {
		b.Fatal(err)
	}
}

// servePage requests the page the way nginx does, with plain system calls
// (no Go runtime poller): open, fstat, read, close.
func servePage(b *testing.B, p string) {
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 4096)
		var st unix.Stat_t
		for pb.Next() {
			fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
			if err != nil {
				b.Error(err)
				return
			}
			if err := unix.Fstat(fd, &st); err != nil {
				b.Error(err)
			}
			if n, err := unix.Pread(fd, buf, 0); err != nil || n != 2048 {
				b.Errorf("read %s: %d bytes, %v", p, n, err)
			}
			unix.Close(fd)
		}
	})
}

// BenchmarkServePage compares the per-request cost of a small page read
// from the store directly, through a bare go-fuse loopback mount (the floor
// any FUSE layer pays) and through the mirrorfs mount.
func BenchmarkServePage(b *testing.B) {
	requireFUSE(b)
	b.Run("store", func(b *testing.B) {
		store := b.TempDir()
		writeBenchPage(b, store)
		servePage(b, filepath.Join(store, benchPage))
	})
	b.Run("loopback", func(b *testing.B) {
		dir := b.TempDir()
		store, mnt := filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
		os.Mkdir(store, 0o755)
		os.Mkdir(mnt, 0o755)
		writeBenchPage(b, store)
		root, err := gofs.NewLoopbackRoot(store)
		if err != nil {
			b.Fatal(err)
		}
		hour := time.Hour
		server, err := gofs.Mount(mnt, root, &gofs.Options{EntryTimeout: &hour, AttrTimeout: &hour,
			MountOptions: fuse.MountOptions{DisabledCapabilities: fuse.CAP_PASSTHROUGH}})
		if err != nil {
			b.Fatal(err)
		}
		defer server.Unmount()
		servePage(b, filepath.Join(mnt, benchPage))
	})
	b.Run("mirrorfs", func(b *testing.B) {
		m, mnt, store, _ := mountFresh(b)
		defer m.Unmount()
		writeBenchPage(b, store)
		servePage(b, filepath.Join(mnt, benchPage))
	})
}
