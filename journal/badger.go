package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/ristretto/v2/z"
)

const (
	// externalMagic is stamped by Badger into the MANIFEST header. Open
	// reads it before starting Badger, so it recognises a foreign Badger
	// database without replaying (and so rewriting) any of its logs.
	externalMagic uint16 = 0x6d66 // "mf"

	memTableSize = 8 << 20
	// valueThreshold keeps every record inline in the LSM tree and its
	// write-ahead log: values below it never go to the value log, so the
	// value log needs neither syncing nor garbage collection (which is
	// where Badger has resurrected deleted keys). Badger's limit is 1 MiB;
	// with 8 MiB memtables a transaction holds up to 1.2 MiB, so even the
	// largest record fits one transaction.
	valueThreshold = 1 << 20
	// maxRecordSize is the largest encoded op Append accepts. Real ops are
	// far smaller (PATH_MAX is 4 KiB, an xattr value at most 64 KiB).
	maxRecordSize = valueThreshold - 1
)

// badgerOptions tunes Badger for a small daemon rather than a database
// server (whose defaults are 5 x 64 MiB memtables and a 256 MiB block cache):
// two 8 MiB memtables, small caches, two compactors, one version per key.
// Measured: an open journal adds about 3 MB of RSS, under 10 MB after 20k
// appends.
//
// SyncWrites is off: the journal syncs Badger's write-ahead log itself after
// each commit, see walSyncer.
func badgerOptions(dir string, readOnly bool, log *slog.Logger) badger.Options {
	return badger.DefaultOptions(dir).
		WithLogger(badgerLogger{log}).
		WithReadOnly(readOnly).
		WithBypassLockGuard(true). // see dirLock
		WithExternalMagic(externalMagic).
		WithSyncWrites(false).      // see walSyncer
		WithDetectConflicts(false). // the committer is the only writer of ops
		WithMetricsEnabled(false).
		WithNumVersionsToKeep(1).
		WithMemTableSize(memTableSize).
		WithNumMemtables(2).
		WithNumLevelZeroTables(4).
		WithNumLevelZeroTablesStall(8).
		WithBaseTableSize(2 << 20).
		WithBaseLevelSize(8 << 20).
		WithNumCompactors(2). // the minimum Badger accepts
		WithValueThreshold(valueThreshold).
		WithValueLogFileSize(8 << 20). // stays empty, see valueThreshold
		WithCompression(options.Snappy).
		WithBlockCacheSize(4 << 20). // required with compression
		WithIndexCacheSize(2 << 20)
}

// badgerLogger routes Badger's messages to slog at warning level and above;
// its info and debug chatter (every memtable flush, every compaction) is not
// worth an operator's attention.
type badgerLogger struct{ log *slog.Logger }

func (l badgerLogger) Errorf(format string, args ...any) {
	l.log.Error(strings.TrimSpace(fmt.Sprintf(format, args...)), "source", "badger")
}

func (l badgerLogger) Warningf(format string, args ...any) {
	l.log.Warn(strings.TrimSpace(fmt.Sprintf(format, args...)), "source", "badger")
}

func (badgerLogger) Infof(string, ...any)  {}
func (badgerLogger) Debugf(string, ...any) {}

type dirState int

const (
	dirNew     dirState = iota // missing or empty: a journal may be created
	dirJournal                 // holds a mirrorfs journal
)

// inspectDir tells a new directory from a journal and refuses anything else,
// reading but never writing, before Badger gets to touch the directory. With
// create it makes a missing directory.
func inspectDir(dir string, create bool) (dirState, error) {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if !create {
			return dirNew, fmt.Errorf("open journal %s: %w", dir, err)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return dirNew, fmt.Errorf("create journal %s: %w", dir, err)
		}
		return dirNew, nil
	}
	if err != nil {
		return dirNew, fmt.Errorf("open journal %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return dirNew, fmt.Errorf("open journal %s: %w (not a directory)", dir, ErrForeign)
	}
	names, err := readDirNames(dir)
	if err != nil {
		return dirNew, fmt.Errorf("open journal %s: %w", dir, err)
	}
	hdr, err := readHeader(filepath.Join(dir, badger.ManifestFilename))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Empty, or Badger died creating it before its manifest existed
		// (it writes LOCK, then MANIFEST-REWRITE, then renames that).
		for _, n := range names {
			if n != "LOCK" && n != "MANIFEST-REWRITE" {
				return dirNew, fmt.Errorf("open journal %s: %w (found %q)", dir, ErrForeign, n)
			}
		}
		return dirNew, nil
	case err != nil:
		return dirNew, fmt.Errorf("open journal %s: %w", dir, err)
	}
	// Manifest header: "Bdgr", external magic (uint16), Badger's version.
	if len(hdr) < 8 || string(hdr[:4]) != "Bdgr" {
		return dirNew, fmt.Errorf("open journal %s: %w (MANIFEST is not Badger's)", dir, ErrForeign)
	}
	if m := binary.BigEndian.Uint16(hdr[4:6]); m != externalMagic {
		return dirNew, fmt.Errorf("open journal %s: %w (Badger database of another application, magic %#x)", dir, ErrForeign, m)
	}
	return dirJournal, nil
}

func readDirNames(dir string) ([]string, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}

func readHeader(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, 8)
	n, err := io.ReadFull(f, b)
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		err = nil
	}
	return b[:n], err
}

// vlogHeaderSize is the header of Badger's value log files: an 8-byte
// encryption key id (0: unencrypted) and a 12-byte IV.
const vlogHeaderSize = 20

// verifyBeforeOpen checks, reading only, that Badger can open the journal
// in dir without "repairing" it. Badger opened for writing cuts a MANIFEST,
// a value log or a write-ahead log at the first record that fails its
// checksum and goes on without what followed, and it creates files before
// it notices a damaged table. Here a damaged journal is refused (ErrCorrupt)
// before Badger writes anything:
//
//   - the MANIFEST must replay completely; after a clean stop it must end
//     with a whole record (only a crash leaves a torn one, which Badger then
//     cuts off as designed);
//   - value logs must hold their header and nothing else: the journal never
//     stores a value there (valueThreshold), so any other byte is damage;
//   - after a clean stop, Badger opened read-only must accept the directory
//     (key registry, every table's index checksum, value log headers);
//   - every table the MANIFEST names must pass its block checksums
//     (verifyTable), which Badger itself checks only when it reads a block.
//
// After a crash the caller also recovers a copy and checks that it keeps
// every op up to the one the DURABLE mark names (checkRecovery for a
// writer; a reader checks the copy it reads): Badger cuts a write-ahead log
// (*.mem) at its first damaged entry, and what follows is lost.
func verifyBeforeOpen(dir string, unclean bool, log *slog.Logger) error {
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("open journal %s: %w: %s", dir, ErrCorrupt, fmt.Sprintf(format, args...))
	}
	mpath := filepath.Join(dir, badger.ManifestFilename)
	f, err := os.Open(mpath)
	if err != nil {
		return fmt.Errorf("open journal %s: %w", dir, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("open journal %s: %w", dir, err)
	}
	manifest, end, err := badger.ReplayManifestFile(f, externalMagic, badger.DefaultOptions(dir).WithLogger(badgerLogger{log}))
	f.Close()
	if err != nil {
		return corrupt("%s: %v", mpath, err)
	}
	if end != fi.Size() && !unclean {
		return corrupt("%s: damaged record at offset %d of %d after a clean stop", mpath, end, fi.Size())
	}

	names, err := readDirNames(dir)
	if err != nil {
		return fmt.Errorf("open journal %s: %w", dir, err)
	}
	buf := make([]byte, 64<<10)
	for _, n := range names {
		if !strings.HasSuffix(n, ".vlog") {
			continue
		}
		if err := checkEmptyVlog(filepath.Join(dir, n), buf); err != nil {
			return corrupt("%v", err)
		}
	}

	// Every table the MANIFEST names was complete before it was named, so
	// its blocks are checked after a crash too.
	for id, tm := range manifest.Tables {
		if err := verifyTable(filepath.Join(dir, table.IDToFilename(id)), tm.Compression); err != nil {
			return corrupt("%v", err)
		}
	}

	if unclean {
		// Badger read-only refuses a log that needs cutting, which every
		// journal left by a crash does. The caller recovers a copy and
		// checks it against the DURABLE mark (checkDurable).
		return nil
	}
	db, err := badger.Open(badgerOptions(dir, true, log))
	if err != nil {
		return corrupt("%v", err)
	}
	if err := db.Close(); err != nil {
		return corrupt("%v", err)
	}
	return nil
}

// verifyTable checks every block checksum of the table at p, reading only.
// It calls Badger's own verifier on a read-only mapping rather than letting
// a Badger instance do it, for two reasons: a Badger instance verifies in
// goroutines of its own, and v4.9.6 panics there (a nil block in
// Table.VerifyChecksum) when a damaged block fails to decompress; here the
// panic happens on this goroutine and is reported as damage. The table is
// unmapped and closed directly: Table.DecrRef would delete the file.
func verifyTable(p string, compression options.CompressionType) (err error) {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("table %s: %v", p, err)
	}
	defer f.Close()
	mf, err := z.OpenMmapFileUsing(f, 0, false)
	if err != nil {
		return fmt.Errorf("table %s: %v", p, err)
	}
	defer z.Munmap(mf.Data)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("table %s: a data block is damaged and does not decode (%v)", p, r)
		}
	}()
	t, err := table.OpenTable(mf, table.Options{
		ReadOnly:    true,
		BlockSize:   badger.DefaultOptions("").BlockSize,
		Compression: compression,
		ChkMode:     options.NoVerification,
	})
	if err != nil {
		return fmt.Errorf("table %s: %v", p, err)
	}
	if err := t.VerifyChecksum(); err != nil {
		return fmt.Errorf("table %s: %v", p, err)
	}
	return nil
}

// checkEmptyVlog checks that a value log holds an unencrypted header and
// then only zeros (a crash leaves the last one preallocated).
func checkEmptyVlog(p string, buf []byte) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	hdr := make([]byte, vlogHeaderSize)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return fmt.Errorf("%s: header: %v", p, err)
	}
	if id := binary.BigEndian.Uint64(hdr[:8]); id != 0 {
		return fmt.Errorf("%s: header names encryption key %d; this journal is not encrypted", p, id)
	}
	off := int64(vlogHeaderSize)
	for {
		n, rerr := f.Read(buf)
		if !isZero(buf[:n]) {
			return fmt.Errorf("%s: unexpected data near offset %d (the journal stores nothing in its value log)", p, off)
		}
		off += int64(n)
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return fmt.Errorf("%s: %v", p, rerr)
		}
	}
}

// dirLock is the journal's process lock: an flock on the directory, the
// lock Badger itself would take (Badger runs with BypassLockGuard because it
// reports a held lock only as a flattened string). A writer holds it
// exclusively and records its pid in LOCK, as Badger does; readers share it.
type dirLock struct {
	f   *os.File
	pid string // path of the pid file to remove, writers only
}

func lockDir(dir string, exclusive bool) (*dirLock, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	if err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("open journal %s: %w%s", dir, ErrLocked, lockHolder(dir))
		}
		return nil, fmt.Errorf("open journal %s: lock: %w", dir, err)
	}
	return &dirLock{f: f}, nil
}

// writePid records this process as the holder in LOCK, as Badger does. A
// writer calls it once the journal is accepted: a journal refused as
// damaged or foreign keeps the LOCK file it had (a crashed holder's).
func (l *dirLock) writePid(dir string) error {
	p := filepath.Join(dir, "LOCK")
	if err := os.WriteFile(p, fmt.Appendf(nil, "%d\n", os.Getpid()), 0o644); err != nil {
		return fmt.Errorf("open journal %s: %w", dir, err)
	}
	l.pid = p
	return nil
}

func (l *dirLock) release() error {
	var err error
	if l.pid != "" {
		err = os.Remove(l.pid) // before unlocking, so the next holder's pid is never removed
	}
	return errors.Join(err, l.f.Close())
}

// lockHolder names the writer holding dir, from its LOCK file.
func lockHolder(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "LOCK"))
	if err != nil {
		return ""
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b)))
	if err != nil {
		return ""
	}
	return fmt.Sprintf(" (pid %d)", pid)
}

// uncleanShutdown reports whether the journal in dir was left by a process
// that died: Badger removes its write-ahead logs (*.mem) when it closes
// cleanly, after flushing them into tables.
func uncleanShutdown(dir string) (bool, error) {
	names, err := readDirNames(dir)
	if err != nil {
		return false, err
	}
	for _, n := range names {
		if strings.HasSuffix(n, ".mem") {
			return true, nil
		}
	}
	return false, nil
}

// copyJournal copies the journal in dir to a new temporary directory, for
// openReadOnly and checkRecovery. Badger preallocates its log files, so
// runs of zeros are skipped rather than written: the copy stays as sparse
// as the original. An error says that the copy needs room in $TMPDIR: a
// full /tmp would otherwise look like a fault of the journal.
func copyJournal(dir string) (string, error) {
	names, err := readDirNames(dir)
	if err != nil {
		return "", err
	}
	inTmp := func(err error) error {
		return fmt.Errorf("copy the journal to %s to recover it there (the copy needs about the journal's size free; set TMPDIR to a directory with room): %w", os.TempDir(), err)
	}
	tmp, err := os.MkdirTemp("", "mirrorfs-journal-")
	if err != nil {
		return "", inTmp(err)
	}
	buf := make([]byte, 64<<10)
	for _, n := range names {
		if n == "LOCK" {
			continue
		}
		src := filepath.Join(dir, n)
		if fi, err := os.Lstat(src); err != nil || !fi.Mode().IsRegular() {
			if err != nil {
				_ = os.RemoveAll(tmp)
				return "", err
			}
			continue
		}
		if err := copySparse(src, filepath.Join(tmp, n), buf); err != nil {
			_ = os.RemoveAll(tmp)
			return "", inTmp(err)
		}
	}
	return tmp, nil
}

func copySparse(src, dst string, buf []byte) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	var size int64
	for {
		n, rerr := io.ReadFull(in, buf)
		if n > 0 {
			if isZero(buf[:n]) {
				_, err = out.Seek(int64(n), io.SeekCurrent)
			} else {
				_, err = out.Write(buf[:n])
			}
			if err != nil {
				out.Close()
				return err
			}
			size += int64(n)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			out.Close()
			return rerr
		}
	}
	if err := out.Truncate(size); err != nil { // a trailing hole was only seeked over
		out.Close()
		return err
	}
	return out.Close()
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// diskUsage sums the blocks allocated to the regular files in dir. Badger
// preallocates its logs as sparse files, so their apparent size would count
// tens of MiB that use no disk.
func diskUsage(dir string) (int64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed by a compaction meanwhile
		}
		if err != nil {
			return 0, err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			total += st.Blocks * 512
		} else {
			total += fi.Size()
		}
	}
	return total, nil
}
