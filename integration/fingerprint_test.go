package integration

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// treeFingerprint maps every entry under dir (dir itself as ".") to its
// type and mode, size, symlink target and, for regular files, SHA-256 of
// the content; with mtimes, also the mtime in nanoseconds. Equal
// fingerprints mean nothing under dir was created, removed or changed.
// Without mtimes, a directory whose entries came and went (a temp file
// written and removed) still compares equal.
func treeFingerprint(t testing.TB, dir string, mtimes bool) map[string]string {
	t.Helper()
	fp := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		v := fmt.Sprintf("%v %d", fi.Mode(), fi.Size())
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			v += fmt.Sprintf(" %x", sha256.Sum256(b))
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			v += " -> " + target
		}
		if mtimes {
			v += fmt.Sprintf(" mtime %d", fi.ModTime().UnixNano())
		}
		rel, _ := filepath.Rel(dir, p)
		fp[rel] = v
		return nil
	})
	if err != nil {
		t.Fatalf("fingerprint %s: %v", dir, err)
	}
	return fp
}

// fingerprintDiffs lists how after differs from before, sorted.
func fingerprintDiffs(before, after map[string]string) []string {
	var diffs []string
	for k, v := range before {
		if w, ok := after[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: gone (was %q)", k, v))
		} else if w != v {
			diffs = append(diffs, fmt.Sprintf("%s: %q -> %q", k, v, w))
		}
	}
	for k, v := range after {
		if _, ok := before[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: new %q", k, v))
		}
	}
	sort.Strings(diffs)
	return diffs
}

// requireUnchanged fails the test if dir's fingerprint moved from before.
func requireUnchanged(t testing.TB, what, dir string, before map[string]string, mtimes bool) {
	t.Helper()
	if d := fingerprintDiffs(before, treeFingerprint(t, dir, mtimes)); len(d) > 0 {
		t.Fatalf("%s changed:\n  %s", what, strings.Join(d, "\n  "))
	}
}
