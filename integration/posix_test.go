package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPosixReplicated makes the POSIX edge cases that package fs proves
// through the mount (fs/posix_test.go) and checks that each also arrives
// intact on the workers (through the agent transport: nanosecond mtimes,
// user.* xattrs and symlink owners are compared too). FIFOs and device
// nodes are left out: they are refused (docs/semantics.md).
func TestPosixReplicated(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 2})
	m := c.Mount

	t.Run("O_TMPFILE linked in", func(t *testing.T) {
		mkdirAll(t, m+"/tmpfile")
		fd, err := unix.Open(m+"/tmpfile", unix.O_TMPFILE|unix.O_RDWR, 0o644)
		if err != nil {
			t.Fatalf("O_TMPFILE through the mount: %v", err)
		}
		defer unix.Close(fd)
		if _, err := unix.Pwrite(fd, []byte("written before it had a name"), 0); err != nil {
			t.Fatal(err)
		}
		if err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), unix.AT_FDCWD, m+"/tmpfile/page.html", unix.AT_SYMLINK_FOLLOW); err != nil {
			t.Fatalf("linkat of the O_TMPFILE file: %v", err)
		}
		if _, err := unix.Pwrite(fd, []byte(" and after"), 28); err != nil {
			t.Fatal(err)
		}
		if err := unix.Close(fd); err != nil {
			t.Fatal(err)
		}
		c.waitConverged(t, converge)
		for _, w := range c.Workers {
			if got := readFile(t, w.Root+"/tmpfile/page.html"); got != "written before it had a name and after" {
				t.Fatalf("%s: page.html = %q", w.Name, got)
			}
		}
	})

	t.Run("unlinked while open", func(t *testing.T) {
		f, err := os.Create(m + "/scratch")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		f.WriteString("first")
		writeFile(t, m+"/neighbour.html", "unrelated")
		if err := os.Remove(m + "/scratch"); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(" then more, with no name"); err != nil {
			t.Fatalf("write after unlink: %v", err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, _ := f.ReadAt(buf, 0)
		if got := string(buf[:n]); got != "first then more, with no name" {
			t.Fatalf("read back %q", got)
		}
		f.Close()
		c.waitConverged(t, converge)
	})

	t.Run("rename over an open file", func(t *testing.T) {
		writeFile(t, m+"/live.html", "old version")
		old, err := os.OpenFile(m+"/live.html", os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer old.Close()
		writeFile(t, m+"/live.html.tmp", "new version")
		mustRename(t, m+"/live.html.tmp", m+"/live.html")
		// A late write to the replaced file must not reach the new one.
		old.WriteAt([]byte("OLD"), 0)
		old.Close()
		c.waitConverged(t, converge)
		for _, w := range c.Workers {
			if got := readFile(t, w.Root+"/live.html"); got != "new version" {
				t.Fatalf("%s: live.html = %q", w.Name, got)
			}
		}
	})

	t.Run("renameat2", func(t *testing.T) {
		writeFile(t, m+"/a.html", "A")
		writeFile(t, m+"/b.html", "B")
		if err := unix.Renameat2(unix.AT_FDCWD, m+"/a.html", unix.AT_FDCWD, m+"/b.html", unix.RENAME_NOREPLACE); err != unix.EEXIST {
			t.Fatalf("RENAME_NOREPLACE onto an existing file: %v, want EEXIST", err)
		}
		if err := unix.Renameat2(unix.AT_FDCWD, m+"/a.html", unix.AT_FDCWD, m+"/b.html", unix.RENAME_EXCHANGE); err != nil {
			t.Fatal(err)
		}
		if err := unix.Renameat2(unix.AT_FDCWD, m+"/a.html", unix.AT_FDCWD, m+"/c.html", unix.RENAME_NOREPLACE); err != nil {
			t.Fatal(err)
		}
		c.waitConverged(t, converge)
		for _, w := range c.Workers {
			if got := readFile(t, w.Root+"/c.html") + readFile(t, w.Root+"/b.html"); got != "BA" {
				t.Fatalf("%s: c.html+b.html = %q, want BA", w.Name, got)
			}
		}
	})

	t.Run("hard links", func(t *testing.T) {
		writeFile(t, m+"/hl-a", "one")
		if err := os.Link(m+"/hl-a", m+"/hl-b"); err != nil {
			t.Fatal(err)
		}
		mkdirAll(t, m+"/hl")
		if err := os.Link(m+"/hl-b", m+"/hl/c"); err != nil {
			t.Fatal(err)
		}
		appendFile(t, m+"/hl/c", " two")
		c.waitConverged(t, converge)
		for _, w := range c.Workers {
			var st unix.Stat_t
			if err := unix.Stat(w.Root+"/hl-a", &st); err != nil || st.Nlink != 3 {
				t.Fatalf("%s: hl-a nlink %d (%v), want 3", w.Name, st.Nlink, err)
			}
		}
	})

	t.Run("xattrs", func(t *testing.T) {
		writeFile(t, m+"/tagged.html", "x")
		mkdirAll(t, m+"/tagged-dir")
		for _, p := range []string{m + "/tagged.html", m + "/tagged-dir"} {
			if err := unix.Setxattr(p, "user.origin", []byte("deploy 42"), 0); err != nil {
				t.Fatalf("setxattr through the mount: %v", err)
			}
			if err := unix.Setxattr(p, "user.gone", []byte("soon"), 0); err != nil {
				t.Fatal(err)
			}
		}
		c.waitConverged(t, converge)
		for _, w := range c.Workers {
			v := make([]byte, 64)
			n, err := unix.Getxattr(w.Root+"/tagged.html", "user.origin", v)
			if err != nil || string(v[:n]) != "deploy 42" {
				t.Fatalf("%s: user.origin = %q, %v", w.Name, v[:max(n, 0)], err)
			}
		}
		if err := unix.Removexattr(m+"/tagged.html", "user.gone"); err != nil {
			t.Fatal(err)
		}
		if err := unix.Setxattr(m+"/tagged-dir", "user.origin", []byte("deploy 43"), 0); err != nil {
			t.Fatal(err)
		}
		c.waitConverged(t, converge)
		// A new version of the file keeps the attributes the store has.
		writeFile(t, m+"/tagged.html.tmp", "y")
		if err := unix.Setxattr(m+"/tagged.html.tmp", "user.origin", []byte("deploy 44"), 0); err != nil {
			t.Fatal(err)
		}
		mustRename(t, m+"/tagged.html.tmp", m+"/tagged.html")
		c.waitConverged(t, converge)
	})

	t.Run("symlink owner and times", func(t *testing.T) {
		if err := os.Symlink("tagged.html", m+"/owned-link"); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(m+"/owned-link", 33, 33); err != nil {
			t.Fatal(err)
		}
		ts := []unix.Timespec{{Sec: 1400000000, Nsec: 123456789}, {Sec: 1400000000, Nsec: 123456789}}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, m+"/owned-link", ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
		c.waitConverged(t, converge)
		for _, w := range c.Workers {
			var st unix.Stat_t
			if err := unix.Lstat(w.Root+"/owned-link", &st); err != nil {
				t.Fatal(err)
			}
			if st.Uid != 33 || st.Gid != 33 || st.Mtim.Sec != 1400000000 || st.Mtim.Nsec != 123456789 {
				t.Fatalf("%s: symlink owner %d:%d mtime %d.%09d", w.Name, st.Uid, st.Gid, st.Mtim.Sec, st.Mtim.Nsec)
			}
		}
	})

	t.Run("utimensat", func(t *testing.T) {
		writeFile(t, m+"/timed.html", "t")
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: 1500000000, Nsec: 987654321}}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, m+"/timed.html", ts, 0); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		unix.Stat(m+"/timed.html", &st)
		if st.Mtim.Sec != 1500000000 || st.Mtim.Nsec != 987654321 {
			t.Fatalf("mtime through the mount %d.%09d", st.Mtim.Sec, st.Mtim.Nsec)
		}
		c.waitConverged(t, converge) // whole seconds over SFTP
	})

	t.Run("fallocate and copy_file_range", func(t *testing.T) {
		src, err := os.Create(m + "/cfr-src")
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		src.Write(bytes.Repeat([]byte("0123456789"), 10000))
		dst, err := os.Create(m + "/cfr-dst")
		if err != nil {
			t.Fatal(err)
		}
		defer dst.Close()
		if err := unix.Fallocate(int(dst.Fd()), 0, 0, 256<<10); err != nil {
			t.Fatal(err)
		}
		offIn, offOut := int64(3), int64(1000)
		if _, err := unix.CopyFileRange(int(src.Fd()), &offIn, int(dst.Fd()), &offOut, 50000, 0); err != nil {
			t.Fatal(err)
		}
		if err := unix.Fallocate(int(dst.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 4096, 8192); err != nil {
			t.Fatal(err)
		}
		src.Close()
		dst.Close()
		c.waitConverged(t, converge)
	})

	t.Run("odd names and deep directories", func(t *testing.T) {
		mkdirAll(t, m+"/names")
		for _, n := range []string{strings.Repeat("n", 255), "caf\xe9", "line\nbreak", "tab\tspace ", "\x01"} {
			writeFile(t, m+"/names/"+n, n)
		}
		deep := m + "/deep"
		for i := range 60 {
			deep = filepath.Join(deep, fmt.Sprintf("d%02d", i))
		}
		mkdirAll(t, deep)
		writeFile(t, deep+"/leaf.html", "deep")
		c.waitConverged(t, converge)
	})

	t.Run("sparse file", func(t *testing.T) {
		f, err := os.Create(m + "/sparse.bin")
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt(bytes.Repeat([]byte("d"), 4096), 32<<20)
		f.Truncate(64 << 20)
		f.Close()
		c.waitConverged(t, converge)
		var st unix.Stat_t
		for _, w := range c.Workers {
			if err := unix.Stat(w.Root+"/sparse.bin", &st); err != nil {
				t.Fatal(err)
			}
			if used := st.Blocks * 512; used > 1<<20 {
				t.Errorf("%s: sparse.bin (64 MiB, 4 KiB of data) uses %d bytes: holes were filled", w.Name, used)
			}
		}
	})
}
