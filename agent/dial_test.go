package agent

import "testing"

// The agent is never uploaded into the tree it would mirror.
func TestWithin(t *testing.T) {
	for _, tc := range []struct {
		p, root string
		want    bool
	}{
		{"/var/www/.cache/mirrorfs", "/var/www", true},
		{"/var/www/html/.cache/mirrorfs", "/var/www/html/", true},
		{"/.cache/mirrorfs", "/", true},
		{"/home/deploy/.cache/mirrorfs", "/", true},
		{"/var/www", "/var/www", true},
		{"/root/.cache/mirrorfs", "/var/www/html", false},
		{"/var/www-old/.cache/mirrorfs", "/var/www", false},
		{"/var/.cache/mirrorfs", "/var/www", false},
	} {
		if got := within(tc.p, tc.root); got != tc.want {
			t.Errorf("within(%q, %q) = %v, want %v", tc.p, tc.root, got, tc.want)
		}
	}
}
