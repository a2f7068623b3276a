package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"syscall"
	"time"

	"github.com/mirrorfs/mirrorfs/journal"
)

// scanSlack covers clock granularity between the recorded stop time and
// the ctimes the file system stamps.
const scanSlack = 10 * time.Millisecond

// errChangedBehind stops the store walk at the first change found.
var errChangedBehind = errors.New("store changed")

// storeChangedSince walks the store and returns the first entry whose
// inode changed (ctime: content, mode, owner, a rename of it, or, for a
// directory, an entry added or removed in it) after since, or "" when
// none did. ctime cannot be set back by touch or tar, so nothing made
// after since hides from it.
//
// The store may be reached through a symlink to the directory (in place it
// is /proc/self/fd/N): the walk starts at the directory it names, with
// stat, and lstats everything below, so the root is walked but no symlink
// inside it is followed.
func storeChangedSince(store string, since time.Time) (string, error) {
	limit := since.Add(-scanSlack)
	var changed string
	err := fs.WalkDir(os.DirFS(store), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		if time.Unix(st.Ctim.Sec, st.Ctim.Nsec).After(limit) {
			changed = p
			return errChangedBehind
		}
		return nil
	})
	if errors.Is(err, errChangedBehind) {
		return changed, nil
	}
	return "", err
}

// reconcileStoreChanges marks every worker for a full comparison with the
// store when the store changed while no daemon was running (files edited
// in the store directly, or in the web root itself while an in-place mount
// was down): the journal has no record of those changes. A journal that
// never saw a clean stop is either new (every worker gets a full copy
// anyway) or crashed (reconcileAfterCrash does the same).
func reconcileStoreChanges(j *journal.Journal, store string, log *slog.Logger) error {
	since, ok, err := j.StoppedAt()
	if err != nil || !ok {
		return err
	}
	start := time.Now()
	changed, err := storeChangedSince(store, since)
	if err != nil {
		return fmt.Errorf("scanning the store for changes made while mirrorfs was stopped: %w", err)
	}
	if changed == "" {
		log.Debug("store unchanged since the last clean stop", "stopped", since, "took", time.Since(start))
		return nil
	}
	log.Warn("the store changed while mirrorfs was stopped (not through the mount): every worker is compared with the store once (only differences are sent)",
		"stopped", since.Format(time.RFC3339), "first_change", changed, "scan", time.Since(start).Round(time.Millisecond))
	return markAllForFullSync(j)
}

// markAllForFullSync sets FullSync on every cursor the journal holds (a
// worker without one gets a full copy anyway), also those of workers the
// configuration leaves out now: one taken out for maintenance and put back
// later would otherwise resume from its cursor and never get what changed
// behind the journal's back.
func markAllForFullSync(j *journal.Journal) error {
	cursors, err := j.Cursors()
	if err != nil {
		return err
	}
	for name, c := range cursors {
		if c.FullSync {
			continue
		}
		c.FullSync = true
		if err := j.SetCursor(name, c); err != nil {
			return fmt.Errorf("mark worker %s for reconciliation: %w", name, err)
		}
	}
	return nil
}
