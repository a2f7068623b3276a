package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// keyStopped holds the big-endian int64 Unix nanoseconds at which the last
// daemon began to stop cleanly: changes found in the store after that time
// were made behind the mount's back.
var keyStopped = []byte{prefixMeta, 's', 't', 'o', 'p', 'p', 'e', 'd'}

// SetStoppedAt records that the daemon stops cleanly at t: from then on,
// nothing that changes the store is journaled. It is on disk (synced) when
// SetStoppedAt returns.
func (j *Journal) SetStoppedAt(t time.Time) error {
	if j.readOnly {
		return j.wrap("set stop time", ErrReadOnly)
	}
	release, err := j.use("set stop time")
	if err != nil {
		return err
	}
	defer release()
	v := binary.BigEndian.AppendUint64(nil, uint64(t.UnixNano()))
	if err := j.update(func(txn *badger.Txn) error { return txn.Set(keyStopped, v) }); err != nil {
		return j.wrap("set stop time", err)
	}
	return nil
}

// StoppedAt returns the time SetStoppedAt recorded last; ok is false when
// no daemon ever stopped cleanly with this journal.
func (j *Journal) StoppedAt() (t time.Time, ok bool, err error) {
	release, err := j.use("stop time")
	if err != nil {
		return time.Time{}, false, err
	}
	defer release()
	err = j.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(keyStopped)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("stop time record of %d bytes, want 8", len(v))
			}
			t, ok = time.Unix(0, int64(binary.BigEndian.Uint64(v))), true
			return nil
		})
	})
	if err != nil {
		return time.Time{}, false, j.wrap("stop time", err)
	}
	return t, ok, nil
}
