package replicate

import "testing"

func TestExcluder(t *testing.T) {
	tests := []struct {
		pattern string
		path    string
		isDir   bool
		want    bool
	}{
		// No slash: base name at any depth.
		{"*.tmp", "a.tmp", false, true},
		{"*.tmp", "d/e/a.tmp", false, true},
		{"*.tmp", "a.tmpx", false, false},
		{".git", "x/.git", true, true},
		{".git", "x/.git/HEAD", false, true}, // under an excluded directory
		{".git", ".gitignore", false, false},
		{"cache", "cache", false, true},
		// Leading slash: anchored.
		{"/cache", "cache", true, true},
		{"/cache", "cache/x", false, true},
		{"/cache", "d/cache", true, false},
		// Inner slash: anchored.
		{"var/log", "var/log", true, true},
		{"var/log", "x/var/log", true, false},
		{"var/*.log", "var/a.log", false, true},
		{"var/*.log", "var/sub/a.log", false, false},
		// Trailing slash: directories and everything beneath.
		{"node_modules/", "node_modules", true, true},
		{"node_modules/", "node_modules", false, false},
		{"node_modules/", "a/node_modules/x/y.js", false, true},
		{"/build/", "build", false, false},
		{"/build/", "build/out", false, true},
		// Double star.
		{"**/tmp", "tmp", true, true},
		{"**/tmp", "a/b/tmp", true, true},
		{"a/**/z", "a/z", false, true},
		{"a/**/z", "a/b/c/z", false, true},
		{"a/**", "a/b", false, true},
		{"a/**", "a", true, false},
		{"?.bak", "x.bak", false, true},
		{"[ab].txt", "c.txt", false, false},
		// The root is never excluded.
		{"*", "", true, false},
	}
	for _, tc := range tests {
		e, err := NewExcluder([]string{tc.pattern})
		if err != nil {
			t.Fatalf("%q: %v", tc.pattern, err)
		}
		if got := e.Excluded(tc.path, tc.isDir); got != tc.want {
			t.Errorf("pattern %q path %q dir %v: excluded = %v, want %v", tc.pattern, tc.path, tc.isDir, got, tc.want)
		}
	}
	var none *Excluder
	if none.Excluded("x", false) {
		t.Error("nil excluder excludes")
	}
	for _, bad := range []string{"!keep", "/", "[", "a/[/b"} {
		if _, err := NewExcluder([]string{bad}); err == nil {
			t.Errorf("pattern %q accepted", bad)
		}
	}
	if e, err := NewExcluder([]string{"# comment", "", "  "}); err != nil || e.Excluded("x", false) {
		t.Errorf("comments: %v", err)
	}
}
