package fs

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BenchmarkPageCacheFolios tells how the kernel caches a file read through
// the mirrorfs mount, through the bare go-fuse loopback and from the store:
// in 4 KiB pages or in larger folios. It writes 64 MiB (through the mount,
// and into the store), reads each file once, maps it, touches every page
// and reads the page's flags (/proc/self/pagemap, /proc/kpageflags: bit 15
// heads a large folio, bit 16 is a tail page). It reports the share of the
// file's pages that belong to large folios for each path (needs root).
//
//	go test -run '^$' -bench PageCacheFolios -benchtime 1x ./fs/
func BenchmarkPageCacheFolios(b *testing.B) {
	targets, _ := localTargets(b, "ext4")
	const size = 64 << 20
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 7)
	}
	through := filepath.Join(targets["mirrorfs"], "written-through")
	if err := os.WriteFile(through, data, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(targets["store"], "written-in-store"), data, 0o644); err != nil {
		b.Fatal(err)
	}
	for name, p := range map[string]string{
		"mirrorfs-written":   through,
		"mirrorfs-readahead": filepath.Join(targets["mirrorfs"], "written-in-store"),
		"loopback-readahead": filepath.Join(targets["loopback"], "written-in-store"),
		"store":              filepath.Join(targets["store"], "written-in-store"),
	} {
		if _, err := os.ReadFile(p); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(largeFolioShare(b, p, size), name+"-large-folio-share")
	}
}

// largeFolioShare maps size bytes of p and returns the share of its pages
// that are part of a large folio.
func largeFolioShare(b *testing.B, p string, size int) float64 {
	b.Helper()
	f, err := os.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(m)
	pagemap, err := os.Open("/proc/self/pagemap")
	if err != nil {
		b.Fatal(err)
	}
	defer pagemap.Close()
	kflags, err := os.Open("/proc/kpageflags")
	if err != nil {
		b.Fatal(err)
	}
	defer kflags.Close()
	base := uintptr(unsafe.Pointer(&m[0]))
	var entry [8]byte
	large, pages := 0, size/4096
	var sum byte
	for i := range pages {
		sum += m[i*4096] // faults the page in
		if _, err := pagemap.ReadAt(entry[:], int64((base/4096+uintptr(i))*8)); err != nil {
			b.Fatal(err)
		}
		pfn := binary.LittleEndian.Uint64(entry[:]) & (1<<55 - 1)
		if _, err := kflags.ReadAt(entry[:], int64(pfn*8)); err != nil {
			b.Fatal(err)
		}
		if flags := binary.LittleEndian.Uint64(entry[:]); flags&(1<<15|1<<16) != 0 {
			large++
		}
	}
	folioSink = sum
	return float64(large) / float64(pages)
}

// folioSink keeps the compiler from dropping the reads that fault pages in.
var folioSink byte
