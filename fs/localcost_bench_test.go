package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/mirrorfs/mirrorfs/journal"
)

// The LocalCost benchmarks measure what the mount costs a local program
// (issue 6): the same workload on the store directly, through a bare
// go-fuse loopback mount of the same directory (the floor any FUSE layer
// pays) and through a mirrorfs mount with a real Badger journal, back to
// back in one iteration, so that the ratios come from the same run. Run
// them with
//
//	go test -run '^$' -bench LocalCost -benchtime 1x ./fs/
//
// (BenchmarkLocalCostGit, git checkout in a large repository, is below.)
//
// Each workload runs with the store on the root file system ("ext4",
// a b.TempDir) and, for the file-creating workloads, on a tmpfs of its
// own ("tmpfs"), which shows the FUSE layers' own cost without ext4's
// inode allocator. The journal is always in a b.TempDir on the root file
// system, where a daemon keeps it.
//
// Both mounts use mirrorfs's mount options, so that the loopback differs
// from mirrorfs only by mirrorfs's code and journal: entry and attribute
// timeouts of one hour, negative entries one second, max_write 1 MiB,
// no passthrough, no writeback cache, default_permissions, allow_other.
// Both FUSE servers run in the test process; they carry the pprof label
// "path" ("loopback" or "mirrorfs"), so that a -cpuprofile can be split
// with go tool pprof -tagfocus path=mirrorfs.

const (
	tarDirs     = 100
	tarPerDir   = 100
	seqSize     = 1 << 30
	seqChunk    = 1 << 20
	seqRounds   = 3 // len(localPaths): each path once in each place
	statDirs    = 100
	statPerDir  = 1000
	tmpfsSizeGB = 2
)

// localPaths are the three ways to reach the store, in the order they run
// (but see rotated).
var localPaths = []string{"store", "loopback", "mirrorfs"}

// rotated returns paths rotated left by round: with as many rounds as
// paths, each path runs once in each place of the order.
func rotated(paths []string, round int) []string {
	k := round % len(paths)
	return append(slices.Clone(paths[k:]), paths[:k]...)
}

// requireTool fails in CI and skips elsewhere when a program is missing,
// like requireFUSE.
func requireTool(b *testing.B, name string) {
	b.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") == "true" {
			b.Fatalf("benchmark needs %s: %v", name, err)
		}
		b.Skipf("benchmark needs %s: %v", name, err)
	}
}

// localTargets mounts a bare loopback and mirrorfs over one store and
// returns the root directory of each access path. On "tmpfs" the store is
// on a tmpfs mounted for this benchmark. Everything is unmounted in
// cleanup. It also returns mirrorfs's journal.
func localTargets(b *testing.B, fsType string) (map[string]string, *journal.Journal) {
	b.Helper()
	requireFUSE(b)
	requireTool(b, "fusermount3")
	mnts := b.TempDir()
	base := b.TempDir()
	if fsType == "tmpfs" {
		if err := unix.Mount("tmpfs", base, "tmpfs", 0, fmt.Sprintf("size=%dg", tmpfsSizeGB)); err != nil {
			b.Fatalf("mount tmpfs on %s: %v", base, err)
		}
		b.Cleanup(func() {
			if err := unix.Unmount(base, 0); err != nil {
				b.Errorf("unmount tmpfs %s: %v; detaching it", base, err)
				unix.Unmount(base, unix.MNT_DETACH)
			}
		})
	}
	store := filepath.Join(base, "store")
	loopMnt, mirrorMnt := filepath.Join(mnts, "loopback"), filepath.Join(mnts, "mirrorfs")
	for _, d := range []string{store, loopMnt, mirrorMnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	mountLoopback(b, store, loopMnt)
	j := mountMirror(b, store, mirrorMnt)
	return map[string]string{"store": store, "loopback": loopMnt, "mirrorfs": mirrorMnt}, j
}

// fuseUnmount is the fallback when a server's own unmount fails.
func fuseUnmount(b *testing.B, mnt string, err error) {
	b.Errorf("unmount %s: %v; detaching it with fusermount3 -u -z", mnt, err)
	if out, err := exec.Command("fusermount3", "-u", "-z", mnt).CombinedOutput(); err != nil {
		b.Errorf("fusermount3 -u -z %s: %v: %s", mnt, err, out)
	}
}

// mountLoopback mounts go-fuse's own loopback node over store, with
// mirrorfs's mount options (see New in mount.go).
func mountLoopback(b *testing.B, store, mnt string) {
	b.Helper()
	root, err := gofs.NewLoopbackRoot(store)
	if err != nil {
		b.Fatal(err)
	}
	hour, negative := time.Hour, time.Second
	var server *fuse.Server
	pprof.Do(context.Background(), pprof.Labels("path", "loopback"), func(context.Context) {
		server, err = gofs.Mount(mnt, root, &gofs.Options{
			EntryTimeout: &hour, AttrTimeout: &hour, NegativeTimeout: &negative,
			MountOptions: fuse.MountOptions{
				AllowOther:           true,
				FsName:               "loopback",
				Name:                 "loopback",
				Options:              []string{"default_permissions"},
				IgnoreSecurityLabels: true,
				DisabledCapabilities: fuse.CAP_PASSTHROUGH | fuse.CAP_WRITEBACK_CACHE,
				MaxWrite:             1 << 20,
				Logger:               log.New(testWriter{b}, "", 0),
			},
		})
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		var err error
		for range 10 {
			if err = server.Unmount(); err == nil {
				server.Wait()
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		fuseUnmount(b, mnt, err)
	})
}

// mountMirror mounts mirrorfs over store, journaling into a real Badger
// journal in a fresh directory of the root file system.
func mountMirror(b *testing.B, store, mnt string) *journal.Journal {
	b.Helper()
	logger := slog.New(slog.NewTextHandler(testWriter{b}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var (
		j   *journal.Journal
		m   *Mount
		err error
	)
	pprof.Do(b.Context(), pprof.Labels("path", "mirrorfs"), func(ctx context.Context) {
		if j, err = journal.Open(filepath.Join(b.TempDir(), "journal"), journal.Options{Logger: logger}); err != nil {
			return
		}
		m, err = New(ctx, Options{Store: store, Mountpoint: mnt, Recorder: j, Logger: logger})
	})
	if err != nil {
		if j != nil {
			j.Close()
		}
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			fuseUnmount(b, mnt, err)
		}
		if err := j.Close(); err != nil {
			b.Errorf("close journal: %v", err)
		}
	})
	return j
}

// reportPaths reports each path's seconds and the ratios of the mount
// times to the store's and the loopback's.
func reportPaths(b *testing.B, prefix string, secs map[string]float64) {
	for _, p := range localPaths {
		b.ReportMetric(secs[p], prefix+p+"-s")
	}
	b.ReportMetric(secs["loopback"]/secs["store"], prefix+"loopback/store")
	b.ReportMetric(secs["mirrorfs"]/secs["store"], prefix+"mirrorfs/store")
	b.ReportMetric(secs["mirrorfs"]/secs["loopback"], prefix+"mirrorfs/loopback")
}

// writeTarArchive writes 100 directories of 100 files of 1–4 KiB each.
func writeTarArchive(b *testing.B, name string) {
	b.Helper()
	f, err := os.Create(name)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	rng := rand.New(rand.NewPCG(6, 6))
	buf := make([]byte, 4096)
	for i := range buf {
		buf[i] = byte('a' + i%26)
	}
	mtime := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	uid, gid := os.Getuid(), os.Getgid()
	for d := range tarDirs {
		dir := fmt.Sprintf("d%03d/", d)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: mtime, Uid: uid, Gid: gid}); err != nil {
			b.Fatal(err)
		}
		for i := range tarPerDir {
			size := 1024 + rng.IntN(3*1024+1)
			hdr := &tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("%sf%03d.html", dir, i), Mode: 0o644, Size: int64(size), ModTime: mtime, Uid: uid, Gid: gid}
			if err := tw.WriteHeader(hdr); err != nil {
				b.Fatal(err)
			}
			if _, err := tw.Write(buf[:size]); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkLocalCostTar extracts 10,000 small files with Debian's tar -xf
// into a fresh directory of each access path. The archive is on the root
// file system and in the page cache (it was just written). As root, tar
// also sets each file's owner and mtime.
func BenchmarkLocalCostTar(b *testing.B) {
	requireTool(b, "tar")
	archive := filepath.Join(b.TempDir(), "site.tar")
	writeTarArchive(b, archive)
	for _, fsType := range []string{"ext4", "tmpfs"} {
		b.Run(fsType, func(b *testing.B) {
			targets, j := localTargets(b, fsType)
			secs := map[string]float64{}
			var ops uint64
			for i := range b.N {
				for _, p := range localPaths {
					seq := j.LastSeq()
					dst := filepath.Join(targets[p], fmt.Sprintf("tar%d-%s", i, p))
					if err := os.Mkdir(dst, 0o755); err != nil {
						b.Fatal(err)
					}
					start := time.Now()
					out, err := exec.Command("tar", "-xf", archive, "-C", dst).CombinedOutput()
					secs[p] += time.Since(start).Seconds() / float64(b.N)
					ops += j.LastSeq() - seq
					if err != nil {
						b.Fatalf("tar -xf into %s: %v: %s", dst, err, out)
					}
					last := filepath.Join(dst, fmt.Sprintf("d%03d/f%03d.html", tarDirs-1, tarPerDir-1))
					if _, err := os.Lstat(last); err != nil {
						b.Fatalf("after tar -xf via %s: %v", p, err)
					}
				}
			}
			reportPaths(b, "", secs)
			// Every op the journal took is one mirrorfs waited for
			// before replying (a durable commit each, unless several
			// shared one).
			b.ReportMetric(float64(ops)/float64(b.N*tarDirs*tarPerDir), "mirrorfs-journal-ops/file")
		})
	}
}

// BenchmarkLocalCostSeq writes one file of 1 GiB in 1 MiB writes, fsyncs
// and closes it, then opens it again and reads it back in 1 MiB reads, on
// each access path, and removes it. Nothing is dropped from the page cache:
// the read of the store is served from the page cache, and so are the FUSE
// servers' reads of the store; the bare loopback's own page cache of the
// file is dropped by the kernel on open (go-fuse's loopback does not ask to
// keep it), so each 1 MiB read through it is a request to its server.
//
// Each iteration runs seqRounds rounds, each path in another place of the
// order (see rotated), and reports the mean: on this kind of shared VM,
// which path wrote its gigabyte first or last changed its time by up to 5x,
// more than any difference between the paths.
func BenchmarkLocalCostSeq(b *testing.B) {
	b.Run("ext4", func(b *testing.B) {
		targets, _ := localTargets(b, "ext4")
		buf := make([]byte, seqChunk)
		rng := rand.New(rand.NewPCG(1, 2))
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		write, read := map[string]float64{}, map[string]float64{}
		runs := float64(b.N * seqRounds)
		for i := range b.N * seqRounds {
			for _, p := range rotated(localPaths, i) {
				name := filepath.Join(targets[p], fmt.Sprintf("big%d-%s", i, p))
				write[p] += seqWrite(b, name, buf) / runs
				read[p] += seqRead(b, name, buf) / runs
				if err := os.Remove(name); err != nil {
					b.Fatal(err)
				}
			}
		}
		reportPaths(b, "write-", write)
		reportPaths(b, "read-", read)
		for _, p := range localPaths {
			b.ReportMetric(seqSize/1e6/write[p], "write-"+p+"-MB/s")
			b.ReportMetric(seqSize/1e6/read[p], "read-"+p+"-MB/s")
		}
	})
}

// seqWrite writes seqSize bytes to a new file with plain system calls,
// fsyncs and closes it, and returns the seconds that took.
func seqWrite(b *testing.B, name string, buf []byte) float64 {
	b.Helper()
	start := time.Now()
	fd, err := unix.Open(name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	for range seqSize / seqChunk {
		if n, err := unix.Write(fd, buf); err != nil || n != len(buf) {
			unix.Close(fd)
			b.Fatalf("write %s: %d bytes, %v", name, n, err)
		}
	}
	if err := unix.Fsync(fd); err != nil {
		unix.Close(fd)
		b.Fatalf("fsync %s: %v", name, err)
	}
	if err := unix.Close(fd); err != nil {
		b.Fatalf("close %s: %v", name, err)
	}
	return time.Since(start).Seconds()
}

// seqRead reads name back in len(buf) reads and returns the seconds that
// took. buf is not compared (the reads land in it); the total is checked.
func seqRead(b *testing.B, name string, buf []byte) float64 {
	b.Helper()
	start := time.Now()
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	total := 0
	for range seqSize/seqChunk + 1 {
		n, err := unix.Read(fd, buf)
		if err != nil {
			b.Fatalf("read %s: %v", name, err)
		}
		if n == 0 {
			break
		}
		total += n
	}
	secs := time.Since(start).Seconds()
	if total != seqSize {
		b.Fatalf("read %s: %d bytes, want %d", name, total, seqSize)
	}
	return secs
}

// BenchmarkLocalCostStat creates 100,000 empty files (100 directories of
// 1,000) in the store directly, then lstats each of them through each
// access path, twice. The same names serve all three paths: each FUSE
// mount has its own dentries, so the first pass through a mount looks up
// every name with its server (which lstats the store, whose dentries are
// cached since the create). The store's first pass is already answered from
// the dentry cache; nothing is dropped from it. The second pass through a
// mount is answered by the kernel from the mount's dentries and attributes
// (both cached for one hour) without asking the server.
func BenchmarkLocalCostStat(b *testing.B) {
	for _, fsType := range []string{"ext4", "tmpfs"} {
		b.Run(fsType, func(b *testing.B) {
			targets, _ := localTargets(b, fsType)
			first, again := map[string]float64{}, map[string]float64{}
			var create float64
			for i := range b.N {
				top := fmt.Sprintf("stat%d", i)
				start := time.Now()
				createEmpty(b, filepath.Join(targets["store"], top))
				create += time.Since(start).Seconds() / float64(b.N)
				for _, p := range localPaths {
					first[p] += lstatAll(b, filepath.Join(targets[p], top)) / float64(b.N)
				}
				for _, p := range localPaths {
					again[p] += lstatAll(b, filepath.Join(targets[p], top)) / float64(b.N)
				}
			}
			b.ReportMetric(create, "create-store-s")
			reportPaths(b, "first-", first)
			reportPaths(b, "again-", again)
		})
	}
}

// createEmpty creates statDirs directories of statPerDir empty files.
func createEmpty(b *testing.B, top string) {
	b.Helper()
	if err := os.Mkdir(top, 0o755); err != nil {
		b.Fatal(err)
	}
	for d := range statDirs {
		dir := filepath.Join(top, fmt.Sprintf("d%03d", d))
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		for i := range statPerDir {
			fd, err := unix.Open(filepath.Join(dir, fmt.Sprintf("f%04d", i)), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
			if err != nil {
				b.Fatal(err)
			}
			unix.Close(fd)
		}
	}
}

// lstatAll lstats every file createEmpty made under top, with plain system
// calls, and returns the seconds that took.
func lstatAll(b *testing.B, top string) float64 {
	b.Helper()
	names := make([]string, 0, statDirs*statPerDir)
	for d := range statDirs {
		for i := range statPerDir {
			names = append(names, filepath.Join(top, fmt.Sprintf("d%03d/f%04d", d, i)))
		}
	}
	var st unix.Stat_t
	start := time.Now()
	for _, n := range names {
		if err := unix.Lstat(n, &st); err != nil {
			b.Fatalf("lstat %s: %v", n, err)
		}
	}
	return time.Since(start).Seconds()
}

// The synthetic repository of BenchmarkLocalCostGit: branch "a" holds
// gitDirs directories of gitPerDir files of 1–4 KiB; branch "b", one commit
// on top, changes 30% of them, deletes 5%, adds 5 files to every directory
// and gitNewDirs new directories of gitPerDir files. (Fewer directories
// with MIRRORFS_BENCH_GIT_DIRS.)
const (
	gitDirs    = 200
	gitPerDir  = 100
	gitNewDirs = 5
)

// gitRepo is the synthetic repository: a bare repository and what its
// branches hold, to check a checkout by.
type gitRepo struct {
	dir      string // the bare repository
	files    int    // in branch a
	changed  string // a file branch b changes, its content in a and in b
	inA, inB []byte
	onlyA    string // a file branch b deletes
	onlyB    string // a file only branch b has, in a new directory
}

// gitCmd runs git with a configuration of its own (no user or system
// configuration, no automatic gc) and fails the benchmark on error.
func gitCmd(b *testing.B, dir string, stdin io.Reader, args ...string) {
	b.Helper()
	cmd := exec.Command("git", append([]string{"-c", "gc.auto=0", "-c", "safe.directory=*", "-c", "advice.detachedHead=false"}, args...)...)
	cmd.Dir = dir
	cmd.Stdin = stdin
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "HOME="+dir, "LC_ALL=C")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("git %s in %s: %v: %s", strings.Join(args, " "), dir, err, out)
	}
}

// writeGitRepo builds the synthetic repository in a new bare repository
// with git fast-import (fast, and the objects end up in one pack, as after
// a clone).
func writeGitRepo(b *testing.B) gitRepo {
	b.Helper()
	r := gitRepo{dir: filepath.Join(b.TempDir(), "site.git")}
	gitCmd(b, filepath.Dir(r.dir), nil, "init", "-q", "--bare", r.dir)
	dirs, newDirs := gitDirs, gitNewDirs
	if v := os.Getenv("MIRRORFS_BENCH_GIT_DIRS"); v != "" { // a smaller repository, to check the harness
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("MIRRORFS_BENCH_GIT_DIRS=%q: want a number of directories (default %d)", v, gitDirs)
		}
		dirs, newDirs = n, max(1, n*gitNewDirs/gitDirs)
	}
	rng := rand.New(rand.NewPCG(7, 7))
	page := func(name string, version int) []byte {
		size := 1024 + rng.IntN(3*1024+1)
		c := make([]byte, size)
		for i := range c {
			c[i] = byte('a' + (i+version)%26)
		}
		copy(c, fmt.Sprintf("<!-- %s version %d -->\n", name, version))
		c[len(c)-1] = '\n'
		return c
	}
	var s bytes.Buffer
	blob := func(name string, data []byte) {
		fmt.Fprintf(&s, "M 100644 inline %s\ndata %d\n", name, len(data))
		s.Write(data)
		s.WriteByte('\n')
	}
	commit := func(branch, msg string, at int64) {
		fmt.Fprintf(&s, "commit refs/heads/%s\ncommitter Bench <bench@example.org> %d +0000\ndata %d\n%s\n", branch, at, len(msg), msg)
	}
	name := func(d, i int) string { return fmt.Sprintf("d%03d/f%03d.html", d, i) }
	commit("a", "site", 1767225600)
	for d := range dirs {
		for i := range gitPerDir {
			data := page(name(d, i), 0)
			blob(name(d, i), data)
			if d == 0 && i == 0 {
				r.changed, r.inA = name(d, i), data
			}
		}
	}
	r.files = dirs * gitPerDir
	commit("b", "30% changed, some added and deleted", 1767229200)
	s.WriteString("from refs/heads/a\n")
	for d := range dirs {
		for i := range gitPerDir {
			switch n := d*gitPerDir + i; {
			case n%10 < 3:
				data := page(name(d, i), 1)
				blob(name(d, i), data)
				if n == 0 {
					r.inB = data
				}
			case n%20 == 5:
				fmt.Fprintf(&s, "D %s\n", name(d, i))
				r.onlyA = name(d, i)
			}
		}
		for i := range 5 {
			n := fmt.Sprintf("d%03d/g%03d.html", d, i)
			blob(n, page(n, 1))
		}
	}
	for d := range newDirs {
		for i := range gitPerDir {
			n := fmt.Sprintf("n%03d/f%03d.html", d, i)
			blob(n, page(n, 1))
			r.onlyB = n
		}
	}
	s.WriteString("done\n")
	gitCmd(b, r.dir, &s, "fast-import", "--quiet", "--done")
	return r
}

// checkCheckout fails the benchmark unless the work tree wt holds branch
// "a" (or "b" when b is true), by the files the branches differ in.
func (r gitRepo) checkCheckout(tb *testing.B, wt string, b bool) {
	tb.Helper()
	got, err := os.ReadFile(filepath.Join(wt, r.changed))
	want := r.inA
	if b {
		want = r.inB
	}
	if err != nil || !bytes.Equal(got, want) {
		tb.Fatalf("%s after checkout of b=%v: %d bytes, %v; want %d bytes", filepath.Join(wt, r.changed), b, len(got), err, len(want))
	}
	for _, f := range []struct {
		name string
		want bool
	}{{r.onlyA, !b}, {r.onlyB, b}} {
		if _, err := os.Lstat(filepath.Join(wt, f.name)); (err == nil) != f.want {
			tb.Fatalf("%s after checkout of b=%v: exists %v, want %v", filepath.Join(wt, f.name), b, err == nil, f.want)
		}
	}
}

// BenchmarkLocalCostGit times Debian's git checkout in a large repository
// whose work tree and .git are on each access path: a synthetic site of
// 20,000 files of 1–4 KiB in 200 directories (writeGitRepo; no network),
// cloned (git clone --no-checkout --no-hardlinks of a local bare
// repository, which copies its one pack) into a fresh directory of each
// path, then checked out three times: branch a into the empty work tree
// ("initial-", 20,000 files created), then branch b (6,000 files changed,
// 1,000 deleted, 1,500 added in existing and 5 new directories) and back to
// a. The reported seconds without a prefix are those of the switch to b and
// back, added; those of the switch alone are reported with "switch-" too.
// git is run with no user configuration (default checkout.workers = 1).
// Run it with
//
//	go test -run '^$' -bench LocalCostGit -benchtime 1x ./fs/
//
// MIRRORFS_BENCH_GIT_DIRS sets the number of directories (default 200), for
// a quick check of the harness.
func BenchmarkLocalCostGit(b *testing.B) {
	requireTool(b, "git")
	repo := writeGitRepo(b)
	for _, fsType := range []string{"ext4", "tmpfs"} {
		b.Run(fsType, func(b *testing.B) {
			targets, j := localTargets(b, fsType)
			initial, there, back := map[string]float64{}, map[string]float64{}, map[string]float64{}
			var ops uint64
			for i := range b.N {
				for _, p := range localPaths {
					seq := j.LastSeq()
					wt := filepath.Join(targets[p], fmt.Sprintf("git%d-%s", i, p))
					gitCmd(b, targets[p], nil, "clone", "-q", "--no-checkout", "--no-hardlinks", repo.dir, wt)
					for _, step := range []struct {
						branch string
						secs   map[string]float64
					}{{"a", initial}, {"b", there}, {"a", back}} {
						start := time.Now()
						gitCmd(b, wt, nil, "checkout", "-q", step.branch)
						step.secs[p] += time.Since(start).Seconds() / float64(b.N)
						repo.checkCheckout(b, wt, step.branch == "b")
					}
					ops += j.LastSeq() - seq
				}
			}
			total := map[string]float64{}
			for _, p := range localPaths {
				total[p] = there[p] + back[p]
			}
			reportPaths(b, "", total)
			reportPaths(b, "switch-", there)
			reportPaths(b, "initial-", initial)
			// Ops journaled for the clone and the three checkouts.
			b.ReportMetric(float64(ops)/float64(b.N), "mirrorfs-journal-ops")
			b.Logf("git checkout, %d files in branch a (s; store / loopback / mirrorfs): initial %.2f / %.2f / %.2f, a→b %.2f / %.2f / %.2f, b→a %.2f / %.2f / %.2f; mirrorfs/loopback switch and back %.2f×, mirrorfs/store %.2f×",
				repo.files, initial["store"], initial["loopback"], initial["mirrorfs"], there["store"], there["loopback"], there["mirrorfs"],
				back["store"], back["loopback"], back["mirrorfs"], total["mirrorfs"]/total["loopback"], total["mirrorfs"]/total["store"])
		})
	}
}
