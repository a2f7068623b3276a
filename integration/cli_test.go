package integration

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runMirrorfs runs the binary with args and returns stdout, stderr and the
// exit code (-1 if it did not exit by itself within 30 s).
func runMirrorfs(t *testing.T, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = daemonEnv()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	// Children that outlive mirrorfs must not keep Run waiting for output.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return o.String(), e.String(), 0
	case errors.As(err, &ee) && ee.Exited():
		return o.String(), e.String(), ee.ExitCode()
	default:
		return o.String(), e.String(), -1
	}
}

// TestMountRefusals: mount refuses, with a message naming the culprit, a
// missing store, a mount point that is already mounted and a journal held
// by another daemon; each refusal leaves the running daemon untouched.
func TestMountRefusals(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 1})
	writeFile(t, c.Mount+"/before.html", "before")

	variant := func(name string, edit func(cfg string) string) string {
		data, err := os.ReadFile(c.Config)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), name+".yaml")
		if err := os.WriteFile(p, []byte(edit(string(data))), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	replaceLine := func(cfg, key, value string) string {
		var out []string
		for _, l := range strings.Split(cfg, "\n") {
			if strings.HasPrefix(l, key+":") {
				l = key + ": " + yamlString(value)
			}
			out = append(out, l)
		}
		return strings.Join(out, "\n")
	}
	otherMount := filepath.Join(t.TempDir(), "mnt2")
	mkdirAll(t, otherMount)
	otherCtl := filepath.Join(filepath.Dir(c.Control), "ctl2.sock")

	cases := []struct {
		name string
		cfg  string
		want []string
	}{
		{"missing store", variant("nostore", func(s string) string {
			s = replaceLine(s, "store", "/nonexistent/store")
			s = replaceLine(s, "mount", otherMount)
			return replaceLine(s, "control", otherCtl)
		}), []string{"/nonexistent/store"}},
		{"already mounted", variant("same", func(s string) string { return s }), []string{c.Mount, "already a mount"}},
		{"journal held", variant("journal", func(s string) string {
			s = replaceLine(s, "mount", otherMount)
			return replaceLine(s, "control", otherCtl)
		}), []string{c.Journal, "another process"}},
		{"unknown key", variant("unknown", func(s string) string { return s + "\nbatchh: {delay: 1s}\n" }), []string{"batchh"}},
		{"bad value", variant("badvalue", func(s string) string {
			return strings.Replace(s, "max_ops: 50000", "max_ops: -3", 1)
		}), []string{"batch.max_ops"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := runMirrorfs(t, c.Bin, "mount", "--config", tc.cfg)
			if code <= 0 {
				t.Fatalf("mount exited %d, want a failure\nstderr:\n%s", code, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("error does not mention %q:\n%s", w, stderr)
				}
			}
		})
	}
	if isMounted(otherMount) {
		t.Fatal("a refused mount left a mount behind")
	}
	// The running daemon was not disturbed.
	writeFile(t, c.Mount+"/after.html", "after")
	c.waitConverged(t, converge)
	c.Stop(t)
}

func TestCLIBasics(t *testing.T) {
	needRoot(t)
	bin := mirrorfsBinary(t)
	out, _, code := runMirrorfs(t, bin, "version")
	if code != 0 || !strings.HasPrefix(out, "mirrorfs ") {
		t.Fatalf("version: exit %d, %q", code, out)
	}
	for _, sub := range []string{"mount", "status", "worker"} {
		out, _, code := runMirrorfs(t, bin, sub, "--help")
		if code != 0 || !strings.Contains(out, "Usage:") || !strings.Contains(out, "Examples:") {
			t.Fatalf("%s --help: exit %d\n%s", sub, code, out)
		}
	}
	_, stderr, code := runMirrorfs(t, bin, "status", "--config", "/nonexistent/mirrorfs.yaml")
	if code == 0 || !strings.Contains(stderr, "/nonexistent/mirrorfs.yaml") {
		t.Fatalf("status with a missing config: exit %d, stderr %q", code, stderr)
	}
}

// TestJournalUsageErrors: every mistake in how a journal command is
// called exits 2, as docs/operations.md says, a flag that does not parse
// included, and the message the user sees names the mistake with no
// internal suffix. Nothing is read: the configuration does not exist.
func TestJournalUsageErrors(t *testing.T) {
	needRoot(t)
	bin := mirrorfsBinary(t)
	cfg := filepath.Join(t.TempDir(), "missing.yaml")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"journal", "ls", "--limit", "abc"}, `"abc"`},
		{[]string{"journal", "ls", "-n", "1.5"}, `"1.5"`},
		{[]string{"journal", "ls", "--limit", "0"}, "--limit 0"},
		{[]string{"journal", "ls", "--limit", "100001"}, "--limit 100001"},
		{[]string{"journal", "ls", "--from", "-3"}, `"-3"`},
		{[]string{"journal", "ls", "--no-such-flag"}, "--no-such-flag"},
		{[]string{"journal", "stats", "--json=maybe"}, `"maybe"`},
		{[]string{"journal", "show", "abc"}, `SEQ "abc"`},
	} {
		_, stderr, code := runMirrorfs(t, bin, append(tc.args, "--config", cfg)...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and %s", tc.args, code, stderr, tc.want)
		}
		if strings.Contains(stderr, ": usage") {
			t.Errorf("%v: stderr %q ends in the internal %q", tc.args, stderr, ": usage")
		}
	}
}

// TestStatusWithoutDaemon: after the daemon stopped, status reads the
// journal read-only and still shows each worker's position.
func TestStatusWithoutDaemon(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 2})
	writeFile(t, c.Mount+"/a.html", "a")
	c.waitConverged(t, converge)
	live := c.status(t)
	c.Stop(t)
	st := c.status(t)
	for _, name := range []string{"w1", "w2"} {
		ws, ok := st.worker(name)
		lw, _ := live.worker(name)
		if !ok || ws.Applied != lw.Applied || ws.Applied == 0 || ws.Connected {
			t.Fatalf("offline status of %s = %+v, live was %+v", name, ws, lw)
		}
	}
}
