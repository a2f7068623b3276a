package verify_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrorfs/mirrorfs/replicate"
	"github.com/mirrorfs/mirrorfs/verify"
)

var mtime = time.Unix(1_700_000_000, 123_456_789)

// tree fills dir with the same small web root every time, attributes
// included (mtimes to the nanosecond, symlinks' too).
func tree(t *testing.T, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"css", "img", "cache", "cache/sub"} {
		must(os.Mkdir(filepath.Join(dir, d), 0o755))
	}
	files := map[string]string{
		"index.html":    "<h1>hello</h1>\n",
		"about.html":    "about us\n",
		"css/site.css":  "body{}\n",
		"img/logo.png":  "PNG....",
		"cache/x.tmp":   "cached",
		"cache/sub/y":   "y",
		"bin/setuid.sh": "#!/bin/sh\n",
	}
	must(os.Mkdir(filepath.Join(dir, "bin"), 0o755))
	for p, content := range files {
		must(os.WriteFile(filepath.Join(dir, p), []byte(content), 0o644))
	}
	must(os.Chmod(filepath.Join(dir, "bin/setuid.sh"), 0o755|os.ModeSetuid))
	must(os.Symlink("index.html", filepath.Join(dir, "home.html")))
	// Children first, so that directory mtimes stay put.
	for _, p := range []string{"index.html", "about.html", "css/site.css", "img/logo.png", "cache/x.tmp", "cache/sub/y", "bin/setuid.sh", "home.html",
		"css", "img", "cache/sub", "cache", "bin", "."} {
		setMtime(t, filepath.Join(dir, p), mtime)
	}
}

func setMtime(t *testing.T, p string, mt time.Time) {
	t.Helper()
	ts := unix.NsecToTimespec(mt.UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
}

// pair returns a store and a worker with identical trees, and a Local
// transport on the worker.
func pair(t *testing.T) (store, worker string, tr *replicate.Local) {
	t.Helper()
	store, worker = t.TempDir(), t.TempDir()
	tree(t, store)
	tree(t, worker)
	tr, err := replicate.NewLocal(worker)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return store, worker, tr
}

func compare(t *testing.T, store string, tr replicate.Transport, o verify.Options) []verify.Difference {
	t.Helper()
	d, err := verify.Compare(t.Context(), store, tr, o)
	if err != nil {
		t.Fatalf("Compare: %v", err)
	}
	return d
}

// want checks that diffs are exactly one difference per path given, with
// the given What.
func want(t *testing.T, diffs []verify.Difference, wantWhat map[string]string) {
	t.Helper()
	got := map[string]string{}
	for _, d := range diffs {
		if _, dup := got[d.Path]; dup {
			t.Errorf("more than one difference for %s: %+v", d.Path, diffs)
		}
		got[d.Path] = d.What
	}
	for p, w := range wantWhat {
		if got[p] != w {
			t.Errorf("%s: got %q, want %q (all: %+v)", p, got[p], w, diffs)
		}
	}
	for p := range got {
		if _, ok := wantWhat[p]; !ok {
			t.Errorf("unexpected difference %+v", diffs)
		}
	}
}

func TestIdentical(t *testing.T) {
	store, _, tr := pair(t)
	for _, sum := range []bool{false, true} {
		if d := compare(t, store, tr, verify.Options{Checksum: sum}); len(d) != 0 {
			t.Errorf("Checksum=%v: identical trees differ: %+v", sum, d)
		}
	}
}

func TestEachDrift(t *testing.T) {
	cases := []struct {
		name   string
		drift  func(t *testing.T, store, worker string)
		want   map[string]string
		values *verify.Difference // the one difference, with its values, if set
	}{
		{"missing", func(t *testing.T, store, w string) {
			os.Remove(filepath.Join(w, "about.html"))
			setMtime(t, w, mtime)
		}, map[string]string{"about.html": verify.WhatMissing},
			&verify.Difference{Path: "about.html", What: verify.WhatMissing, Store: "file, 9 bytes"}},
		{"missing directory", func(t *testing.T, store, w string) {
			os.RemoveAll(filepath.Join(w, "css"))
			setMtime(t, w, mtime)
		}, map[string]string{"css": verify.WhatMissing}, nil},
		{"extra", func(t *testing.T, store, w string) {
			os.WriteFile(filepath.Join(w, "img/extra.png"), []byte("xx"), 0o644)
			setMtime(t, filepath.Join(w, "img"), mtime)
		}, map[string]string{"img/extra.png": verify.WhatExtra},
			&verify.Difference{Path: "img/extra.png", What: verify.WhatExtra, Worker: "file, 2 bytes"}},
		{"type", func(t *testing.T, store, w string) {
			p := filepath.Join(w, "css/site.css")
			os.Remove(p)
			os.Mkdir(p, 0o644)
			setMtime(t, p, mtime)
			setMtime(t, filepath.Join(w, "css"), mtime)
		}, map[string]string{"css/site.css": verify.WhatType},
			&verify.Difference{Path: "css/site.css", What: verify.WhatType, Store: "file", Worker: "directory"}},
		{"size", func(t *testing.T, store, w string) {
			p := filepath.Join(w, "index.html")
			os.WriteFile(p, []byte("<h1>hello, world</h1>\n"), 0o644)
			setMtime(t, p, mtime)
		}, map[string]string{"index.html": verify.WhatSize},
			&verify.Difference{Path: "index.html", What: verify.WhatSize, Store: "15", Worker: "22"}},
		{"mode", func(t *testing.T, store, w string) {
			os.Chmod(filepath.Join(w, "about.html"), 0o600)
		}, map[string]string{"about.html": verify.WhatMode},
			&verify.Difference{Path: "about.html", What: verify.WhatMode, Store: "0644", Worker: "0600"}},
		{"setuid", func(t *testing.T, store, w string) {
			os.Chmod(filepath.Join(w, "bin/setuid.sh"), 0o755)
		}, map[string]string{"bin/setuid.sh": verify.WhatMode},
			&verify.Difference{Path: "bin/setuid.sh", What: verify.WhatMode, Store: "4755", Worker: "0755"}},
		{"sticky directory", func(t *testing.T, store, w string) {
			os.Chmod(filepath.Join(w, "img"), 0o755|os.ModeSticky)
		}, map[string]string{"img": verify.WhatMode},
			&verify.Difference{Path: "img", What: verify.WhatMode, Store: "0755", Worker: "1755"}},
		{"owner", func(t *testing.T, store, w string) {
			if err := os.Lchown(filepath.Join(w, "css/site.css"), 1234, 1234); err != nil {
				t.Skipf("chown: %v", err)
			}
		}, map[string]string{"css/site.css": verify.WhatOwner},
			&verify.Difference{Path: "css/site.css", What: verify.WhatOwner, Store: "0:0", Worker: "1234:1234"}},
		{"mtime", func(t *testing.T, store, w string) {
			setMtime(t, filepath.Join(w, "img/logo.png"), mtime.Add(time.Hour))
		}, map[string]string{"img/logo.png": verify.WhatMtime},
			&verify.Difference{Path: "img/logo.png", What: verify.WhatMtime,
				Store: "2023-11-14T22:13:20.123456789Z", Worker: "2023-11-14T23:13:20.123456789Z"}},
		{"mtime nanoseconds", func(t *testing.T, store, w string) {
			setMtime(t, filepath.Join(w, "img/logo.png"), mtime.Add(time.Microsecond))
		}, map[string]string{"img/logo.png": verify.WhatMtime}, nil},
		{"directory mtime", func(t *testing.T, store, w string) {
			setMtime(t, filepath.Join(w, "css"), mtime.Add(-time.Hour))
		}, map[string]string{"css": verify.WhatMtime}, nil},
		{"symlink target", func(t *testing.T, store, w string) {
			p := filepath.Join(w, "home.html")
			os.Remove(p)
			os.Symlink("about.html", p)
			setMtime(t, p, mtime)
			setMtime(t, w, mtime)
		}, map[string]string{"home.html": verify.WhatTarget},
			&verify.Difference{Path: "home.html", What: verify.WhatTarget, Store: "index.html", Worker: "about.html"}},
		{"symlink mtime", func(t *testing.T, store, w string) {
			setMtime(t, filepath.Join(w, "home.html"), mtime.Add(time.Second))
		}, map[string]string{"home.html": verify.WhatMtime}, nil},
		{"root mode", func(t *testing.T, store, w string) {
			os.Chmod(w, 0o700)
		}, map[string]string{".": verify.WhatMode}, nil},
		{"temp files are ignored", func(t *testing.T, store, w string) {
			os.WriteFile(filepath.Join(w, "css", replicate.TempPrefix+"0123"), []byte("in flight"), 0o600)
			setMtime(t, filepath.Join(w, "css"), mtime)
		}, map[string]string{}, nil},
		{"an old temp file is a leftover", func(t *testing.T, store, w string) {
			p := filepath.Join(w, "css", replicate.TempPrefix+"0123")
			os.WriteFile(p, []byte("DB_PASSWORD=secret"), 0o600)
			setMtime(t, p, time.Now().Add(-2*time.Hour))
			setMtime(t, filepath.Join(w, "css"), mtime)
		}, map[string]string{"css/" + replicate.TempPrefix + "0123": verify.WhatExtra}, nil},
		{"a store file with a temp name is compared", func(t *testing.T, store, w string) {
			for _, root := range []string{store, w} {
				p := filepath.Join(root, replicate.TempPrefix+"user-file")
				os.WriteFile(p, []byte("the store's own"), 0o644)
				setMtime(t, p, mtime)
				setMtime(t, root, mtime)
			}
			os.Chmod(filepath.Join(w, replicate.TempPrefix+"user-file"), 0o600)
		}, map[string]string{replicate.TempPrefix + "user-file": verify.WhatMode}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			store, worker, tr := pair(t)
			tc.drift(t, store, worker)
			for _, sum := range []bool{false, true} {
				d := compare(t, store, tr, verify.Options{Checksum: sum})
				want(t, d, tc.want)
				if tc.values != nil && len(d) == 1 && d[0] != *tc.values {
					t.Errorf("difference = %+v, want %+v", d[0], *tc.values)
				}
			}
		})
	}
}

// A change of content that keeps the size and the mtime is found only by
// the checksum.
func TestContentNeedsChecksum(t *testing.T) {
	store, worker, tr := pair(t)
	p := filepath.Join(worker, "index.html")
	if err := os.WriteFile(p, []byte("<h1>HELLO</h1>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	setMtime(t, p, mtime)
	if d := compare(t, store, tr, verify.Options{}); len(d) != 0 {
		t.Errorf("without checksum: %+v, want nothing", d)
	}
	d := compare(t, store, tr, verify.Options{Checksum: true})
	want(t, d, map[string]string{"index.html": verify.WhatContent})
	if len(d) == 1 && (!strings.HasPrefix(d[0].Store, "sha256:") || d[0].Store == d[0].Worker) {
		t.Errorf("content difference %+v", d[0])
	}
}

func TestExcluded(t *testing.T) {
	store, worker, tr := pair(t)
	ex, err := replicate.NewExcluder([]string{"cache/", "*.log"})
	if err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(worker, "cache/sub"))                                   // missing, excluded
	os.WriteFile(filepath.Join(worker, "cache/x.tmp"), []byte("other content"), 0o600) // differs, excluded
	os.WriteFile(filepath.Join(worker, "css/debug.log"), []byte("log"), 0o644)         // extra, excluded
	os.WriteFile(filepath.Join(store, "error.log"), []byte("log"), 0o644)              // missing, excluded
	for _, p := range []string{"cache/x.tmp", "css", "cache"} {
		setMtime(t, filepath.Join(worker, p), mtime)
	}
	setMtime(t, store, mtime)
	if d := compare(t, store, tr, verify.Options{Checksum: true, Exclude: ex}); len(d) != 0 {
		t.Errorf("excluded paths reported: %+v", d)
	}
	// Without the patterns, all of it shows.
	d := compare(t, store, tr, verify.Options{Checksum: true})
	want(t, d, map[string]string{
		"cache/sub": verify.WhatMissing, "cache/x.tmp": verify.WhatSize,
		"css/debug.log": verify.WhatExtra, "error.log": verify.WhatMissing,
	})
}

// The differences come in the order of a sorted walk.
func TestSorted(t *testing.T) {
	store, worker, tr := pair(t)
	for _, p := range []string{"zz", "css/a", "aa", "img/b"} {
		os.WriteFile(filepath.Join(worker, p), nil, 0o644)
	}
	var got []string
	for _, d := range compare(t, store, tr, verify.Options{}) {
		if d.What == verify.WhatExtra {
			got = append(got, d.Path)
		}
	}
	if w := []string{"aa", "css/a", "img/b", "zz"}; !slices.Equal(got, w) {
		t.Errorf("extra paths in order %v, want %v", got, w)
	}
}

// plain is a transport with none of the optional capabilities, like a
// minimal SFTP server: whole-second mtimes, no hashing.
type plain struct{ replicate.Transport }

func TestWholeSecondsWithoutLinkAttrs(t *testing.T) {
	store, worker, tr := pair(t)
	setMtime(t, filepath.Join(worker, "img/logo.png"), mtime.Add(time.Microsecond))
	setMtime(t, filepath.Join(worker, "home.html"), mtime.Add(time.Hour)) // symlink times are not replicated
	if d := compare(t, store, plain{tr}, verify.Options{}); len(d) != 0 {
		t.Errorf("sub-second or symlink mtime reported without LinkAttrs: %+v", d)
	}
	setMtime(t, filepath.Join(worker, "img/logo.png"), mtime.Add(time.Second))
	want(t, compare(t, store, plain{tr}, verify.Options{}), map[string]string{"img/logo.png": verify.WhatMtime})
	if _, err := verify.Compare(t.Context(), store, plain{tr}, verify.Options{Checksum: true}); !errors.Is(err, replicate.ErrUnsupported) {
		t.Errorf("Checksum without Hasher: %v, want ErrUnsupported", err)
	}
}

// A worker that fails is an error, not a difference.
func TestWorkerError(t *testing.T) {
	store, _, tr := pair(t)
	tr.Close()
	if _, err := verify.Compare(t.Context(), store, tr, verify.Options{}); err == nil {
		t.Error("Compare on a closed transport succeeded")
	}
}

// user.* xattrs are compared over a transport that carries them (Local,
// like the agent, implements replicate.Xattrs): missing, extra and
// changed values are drift; other namespaces are not.
func TestXattrs(t *testing.T) {
	store, worker, tr := pair(t)
	set := func(p, name, value string) {
		t.Helper()
		if err := unix.Lsetxattr(p, name, []byte(value), 0); err != nil {
			t.Fatal(err)
		}
	}
	set(store+"/index.html", "user.origin", "deploy 1")
	set(worker+"/index.html", "user.origin", "deploy 1")
	if d := compare(t, store, tr, verify.Options{}); len(d) != 0 {
		t.Fatalf("equal xattrs differ: %+v", d)
	}
	set(store+"/index.html", "user.origin", "deploy 2")
	want(t, compare(t, store, tr, verify.Options{}), map[string]string{"index.html": verify.WhatXattr})
	set(worker+"/index.html", "user.origin", "deploy 2")
	set(worker+"/css", "user.stray", "x")
	want(t, compare(t, store, tr, verify.Options{}), map[string]string{"css": verify.WhatXattr})
	if err := unix.Lremovexattr(worker+"/css", "user.stray"); err != nil {
		t.Fatal(err)
	}
	set(store+"/css", "user.only-in-store", "y")
	want(t, compare(t, store, tr, verify.Options{}), map[string]string{"css": verify.WhatXattr})
	set(worker+"/css", "user.only-in-store", "y")
	set(store, "user.root", "z") // the root's too
	want(t, compare(t, store, tr, verify.Options{}), map[string]string{".": verify.WhatXattr})
}

// Hard-link groups are compared over a transport that reports inode
// numbers (Local, like the agent): a file the store has under two names
// that the worker has as two copies is drift, and so is the reverse.
func TestHardLinkGroups(t *testing.T) {
	store, worker, tr := pair(t)
	link := func(root, a, b string) {
		t.Helper()
		if err := os.Link(filepath.Join(root, a), filepath.Join(root, b)); err != nil {
			t.Fatal(err)
		}
		setMtime(t, root, mtime)
	}
	link(store, "index.html", "mirror.html")
	link(worker, "index.html", "mirror.html")
	if d := compare(t, store, tr, verify.Options{}); len(d) != 0 {
		t.Fatalf("equal link groups differ: %+v", d)
	}

	// The worker's mirror.html becomes a copy of its own.
	data, err := os.ReadFile(filepath.Join(worker, "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(worker, "mirror.html")
	os.Remove(p)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	setMtime(t, p, mtime)
	setMtime(t, worker, mtime)
	d := compare(t, store, tr, verify.Options{})
	want(t, d, map[string]string{"index.html": verify.WhatLinks}) // the group's first name
	if d[0].Store != "linked: index.html mirror.html" || d[0].Worker != "linked: index.html" {
		t.Errorf("difference = %+v", d[0])
	}

	// The reverse: linked on the worker, apart in the store.
	os.Remove(filepath.Join(store, "mirror.html"))
	if err := os.WriteFile(filepath.Join(store, "mirror.html"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	setMtime(t, filepath.Join(store, "mirror.html"), mtime)
	setMtime(t, store, mtime)
	os.Remove(p)
	link(worker, "index.html", "mirror.html")
	want(t, compare(t, store, tr, verify.Options{}), map[string]string{"index.html": verify.WhatLinks})
}
