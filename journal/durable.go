package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/dgraph-io/badger/v4"
)

// durableName is the file that records the last op seq whose commit was
// synced. Badger cuts a damaged write-ahead log (*.mem, left by a crash) at
// the first entry that fails its checksum and goes on without the rest; a
// log damaged in its middle would thus lose acknowledged ops without a
// word. The mark tells the next start how far the journal must reach.
//
// It is written after each sync of the log, in place and without a sync of
// its own: written after the log's sync, it can never name more than the
// log holds, a kill -9 keeps it (page cache), and a power cut can only make
// it older, which weakens the check but never fails a sound journal.
const durableName = "DURABLE"

// durableMark is the open DURABLE file of a writer.
type durableMark struct {
	f   *os.File
	buf [12]byte // seq (8 bytes, big-endian), CRC-32C of it (4)
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func openDurableMark(dir string) (*durableMark, error) {
	f, err := os.OpenFile(filepath.Join(dir, durableName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	return &durableMark{f: f}, nil
}

// set records seq as durable.
func (m *durableMark) set(seq uint64) error {
	binary.BigEndian.PutUint64(m.buf[:8], seq)
	binary.BigEndian.PutUint32(m.buf[8:], crc32.Checksum(m.buf[:8], castagnoli))
	_, err := m.f.WriteAt(m.buf[:], 0)
	return err
}

func (m *durableMark) close() error { return m.f.Close() }

// readDurableMark returns the seq recorded in dir; ok is false when there is
// none (a journal of an older version) or it is torn.
func readDurableMark(dir string) (seq uint64, ok bool, err error) {
	f, err := os.Open(filepath.Join(dir, durableName))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	var b [12]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return 0, false, nil
	}
	if binary.BigEndian.Uint32(b[8:]) != crc32.Checksum(b[:8], castagnoli) {
		return 0, false, nil
	}
	return binary.BigEndian.Uint64(b[:8]), true, nil
}

// checkRecovery is, for a writer opening a journal left by a crash, a
// trial of Badger's recovery on a private copy: Badger would cut the
// write-ahead log in place, so the journal is refused (ErrCorrupt,
// untouched) when the recovered copy fails checkDurable.
func checkRecovery(dir string, log *slog.Logger) error {
	if _, ok, err := readDurableMark(dir); err != nil || !ok {
		return err
	}
	tmp, err := copyJournal(dir)
	if err != nil {
		return fmt.Errorf("open journal %s after a crash, for a trial of its recovery: %w", dir, err)
	}
	defer os.RemoveAll(tmp)
	db, err := badger.Open(badgerOptions(tmp, false, log))
	if err != nil {
		return fmt.Errorf("open journal %s: %w: trial recovery: %v", dir, ErrCorrupt, err)
	}
	j := newJournal(dir, tmp, db, log)
	err = j.load(false)
	if err == nil {
		err = checkDurable(dir, j.LastSeq(), log)
	}
	return errors.Join(err, j.closeDB())
}

// checkDurable refuses (ErrCorrupt) a journal recovered after a crash that
// ends at op last, before the op the DURABLE mark of dir names: the
// write-ahead log lost acknowledged ops to damage.
func checkDurable(dir string, last uint64, log *slog.Logger) error {
	want, ok, err := readDurableMark(dir)
	if err != nil {
		return fmt.Errorf("open journal %s: %w", dir, err)
	}
	if !ok || last >= want {
		log.Debug("recovered a crashed journal", "last_seq", last, "durable", want)
		return nil
	}
	return fmt.Errorf("open journal %s: %w: its write-ahead log (*.mem) is damaged: recovery would keep ops up to #%d, but #%d was acknowledged to a writer; the journal is left as found", dir, ErrCorrupt, last, want)
}
