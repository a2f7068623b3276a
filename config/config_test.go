package config

import (
	"errors"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// clearEnv hides any MIRRORFS_* variable of the environment the tests run
// in (an empty variable counts as unset).
func clearEnv(t *testing.T) {
	t.Helper()
	for _, k := range envKeys {
		t.Setenv(envName(k), "")
	}
}

// writeConfig writes body to a mirrorfs.yaml in a temporary directory and
// returns its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mirrorfs.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// load writes body to a file and loads it with a clean environment.
func load(t *testing.T, body string) (*Config, string, error) {
	t.Helper()
	clearEnv(t)
	p := writeConfig(t, body)
	c, err := Load(p)
	return c, p, err
}

// fieldErrors returns every *FieldError in err.
func fieldErrors(err error) []*FieldError {
	var out []*FieldError
	var fe *FieldError
	switch {
	case errors.As(err, &fe) && err == error(fe):
		out = append(out, fe)
	default:
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				out = append(out, fieldErrors(e)...)
			}
		}
	}
	return out
}

func TestFullConfigRoundTrip(t *testing.T) {
	c, _, err := load(t, `
mount: /srv/www/
store: /srv/store
journal: /srv/journal
control: /run/m.sock
exclude: ["*.swp", "/cache/", "**/tmp/*.log"]
batch: {delay: 250ms, max_ops: 1000, hold_open: 5m}
retry: {min: 1s, max: 1m}
log: {level: DEBUG}
ssh:
  user: sync
  identity: [/etc/k1, /etc//k2]
  known_hosts: /etc/kh
  connect_timeout: 3s
workers:
  - {name: w1, host: 10.0.0.1, port: 2222, root: /var/www/html/, user: other, transport: sftp}
  - name: w2
    host: "fe80::1"
`)
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Mount:   "/srv/www",
		Store:   "/srv/store",
		Journal: "/srv/journal",
		Control: "/run/m.sock",
		Exclude: []string{"*.swp", "/cache/", "**/tmp/*.log"},
		Batch:   Batch{Delay: 250 * time.Millisecond, MaxOps: 1000, HoldOpen: 5 * time.Minute},
		Retry:   Retry{Min: time.Second, Max: time.Minute},
		Log:     Log{Level: "debug"},
		SSH: SSH{
			User:           "sync",
			Identity:       []string{"/etc/k1", "/etc/k2"},
			KnownHosts:     "/etc/kh",
			ConnectTimeout: 3 * time.Second,
		},
		Workers: []Worker{
			{Name: "w1", Host: "10.0.0.1", Port: 2222, Root: "/var/www/html", User: "other", Transport: "sftp"},
			{Name: "w2", Host: "fe80::1", Port: 22, Root: "/srv/www", User: "sync", Transport: "agent"},
		},
	}
	c.src = nil
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
}

func TestDefaults(t *testing.T) {
	c, _, err := load(t, "mount: /var/www/html\nworkers: [{name: w, host: h}]\n")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"store", c.Store, ""},
		{"in place", c.InPlace, true},
		{"journal", c.Journal, "/var/lib/mirrorfs/journal"},
		{"control", c.Control, "/run/mirrorfs/mirrorfs.sock"},
		{"exclude", len(c.Exclude), 0},
		{"batch.delay", c.Batch.Delay, 10 * time.Millisecond},
		{"batch.max_ops", c.Batch.MaxOps, 50000},
		{"batch.hold_open", c.Batch.HoldOpen, 60 * time.Second},
		{"retry.min", c.Retry.Min, 100 * time.Millisecond},
		{"retry.max", c.Retry.Max, 30 * time.Second},
		{"log.level", c.Log.Level, "info"},
		{"ssh.user", c.SSH.User, "mirror"},
		{"ssh.identity", c.SSH.Identity, []string{"/etc/mirrorfs/id_ed25519"}},
		{"ssh.known_hosts", c.SSH.KnownHosts, "/etc/mirrorfs/known_hosts"},
		{"ssh.connect_timeout", c.SSH.ConnectTimeout, 10 * time.Second},
		{"workers[0].port", c.Workers[0].Port, 22},
		{"workers[0].root", c.Workers[0].Root, "/var/www/html"},
		{"workers[0].user", c.Workers[0].User, "mirror"},
	} {
		if !reflect.DeepEqual(tc.got, tc.want) {
			t.Errorf("%s = %#v, want %#v", tc.name, tc.got, tc.want)
		}
	}
}

func TestDefaultCases(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		check      func(*Config) bool
	}{
		{"zero workers", "mount: /w\n", func(c *Config) bool { return len(c.Workers) == 0 }},
		{"empty workers list", "mount: /w\nworkers: []\n", func(c *Config) bool { return len(c.Workers) == 0 }},
		{"key without value is omitted", "mount: /w\njournal:\nbatch:\nlog: ~\n", func(c *Config) bool {
			return c.InPlace && c.Batch.MaxOps == 50000 && c.Journal == defaultJournal && c.Log.Level == "info"
		}},
		{"store given", "mount: /w\nstore: /s\n", func(c *Config) bool { return !c.InPlace && c.Store == "/s" }},
		{"journal as a mapping", "mount: /w\njournal: {dir: /j/, max_bytes: 512MiB}\n", func(c *Config) bool {
			return c.Journal == "/j" && c.JournalMaxBytes == 512<<20
		}},
		{"journal budget in bytes", "mount: /w\njournal: {max_bytes: 1000000}\n", func(c *Config) bool {
			return c.Journal == "/var/lib/mirrorfs/journal" && c.JournalMaxBytes == 1000000
		}},
		{"journal budget in GB", "mount: /w\njournal: {max_bytes: 2GB}\n", func(c *Config) bool { return c.JournalMaxBytes == 2e9 }},
		{"journal as a path has no budget", "mount: /w\njournal: /j\n", func(c *Config) bool { return c.JournalMaxBytes == 0 }},
		{"empty identity list", "mount: /w\nssh: {identity: []}\n", func(c *Config) bool {
			return reflect.DeepEqual(c.SSH.Identity, []string{"/etc/mirrorfs/id_ed25519"})
		}},
		{"worker user follows ssh.user", "mount: /w\nssh: {user: u}\nworkers: [{name: a, host: h}]\n", func(c *Config) bool {
			return c.Workers[0].User == "u"
		}},
		{"worker root follows mount", "mount: /srv/x/\nworkers: [{name: a, host: h}]\n", func(c *Config) bool {
			return c.Workers[0].Root == "/srv/x"
		}},
		{"zero delays", "mount: /w\nbatch: {delay: 0, hold_open: 0s}\n", func(c *Config) bool {
			return c.Batch.Delay == 0 && c.Batch.HoldOpen == 0
		}},
		{"quoted port", "mount: /w\nworkers: [{name: a, host: h, port: '2222'}]\n", func(c *Config) bool {
			return c.Workers[0].Port == 2222
		}},
		{"numeric user", "mount: /w\nssh: {user: 1000}\n", func(c *Config) bool { return c.SSH.User == "1000" }},
		{"merge keys", `
mount: /w
workers:
  - &base {name: a, host: h, port: 2200, root: /r1}
  - <<: *base
    name: b
    root: /r2
`, func(c *Config) bool {
			b := c.Workers[1]
			return b.Name == "b" && b.Host == "h" && b.Port == 2200 && b.Root == "/r2"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, err := load(t, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(c) {
				t.Errorf("unexpected config %+v", c)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	const worker = "workers: [{name: w, host: h}]\n"
	for _, tc := range []struct {
		name, body string
		key, msg   string // the error for key must contain msg
	}{
		// unknown keys
		{"unknown top-level key", "mount: /w\nmonut: /x\n", "monut", "unknown key"},
		{"unknown key without value", "mount: /w\nfoo:\n", "foo", "unknown key"},
		{"unknown empty mapping", "mount: /w\nfoo: {}\n", "foo", "unknown key"},
		{"upper-case key", "mount: /w\nJournal: /j\n", "Journal", "lower case"},
		{"unknown batch key", "mount: /w\nbatch: {size: 3}\n", "batch.size", "delay, max_ops, hold_open"},
		{"unknown retry key", "mount: /w\nretry: {factor: 2}\n", "retry.factor", "unknown key"},
		{"unknown log key", "mount: /w\nlog: {format: json}\n", "log.format", "unknown key"},
		{"unknown ssh key", "mount: /w\nssh: {password: x}\n", "ssh.password", "unknown key"},
		{"unknown worker key", "mount: /w\nworkers:\n  - {name: a, host: h}\n  - {name: b, host: h2, prot: 22}\n", "workers[1].prot", "unknown key"},
		{"unknown key merged into worker", "mount: /w\nworkers:\n  - &b {name: a, host: h, bogus: 1}\n  - {<<: *b, name: c, host: h2}\n", "workers[0].bogus", "unknown key"},

		// wrong kinds
		{"mapping expected", "mount: /w\nbatch: 5\n", "batch", "must be a mapping"},
		{"list expected", "mount: /w\nworkers: {name: a, host: h}\n", "workers", "must be a list"},
		{"exclude not a list", "mount: /w\nexclude: '*.swp'\n", "exclude", "must be a list"},
		{"worker not a mapping", "mount: /w\nworkers: [a]\n", "workers[0]", "must be a mapping"},
		{"scalar expected", "mount: [/w]\n", "mount", "must be a single value"},
		{"bool for a string", "mount: /w\nssh: {user: true}\n", "ssh.user", "must be a string"},

		// durations
		{"bad duration", "mount: /w\nbatch: {delay: soon}\n", "batch.delay", "invalid duration"},
		{"duration without unit", "mount: /w\nbatch: {delay: 10}\n", "batch.delay", "no unit"},
		{"negative delay", "mount: /w\nbatch: {delay: -1ms}\n", "batch.delay", "negative"},
		{"negative hold_open", "mount: /w\nbatch: {hold_open: -1s}\n", "batch.hold_open", "negative"},
		{"negative retry.min", "mount: /w\nretry: {min: -1s}\n", "retry.min", "positive"},
		{"zero retry.min", "mount: /w\nretry: {min: 0s}\n", "retry.min", "positive"},
		{"bad retry.max", "mount: /w\nretry: {max: x}\n", "retry.max", "invalid duration"},
		{"retry.min > retry.max", "mount: /w\nretry: {min: 1m, max: 30s}\n", "retry.max", "at least retry.min"},
		{"zero connect_timeout", "mount: /w\nssh: {connect_timeout: 0s}\n", "ssh.connect_timeout", "positive"},
		{"bool duration", "mount: /w\nssh: {connect_timeout: true}\n", "ssh.connect_timeout", "duration"},

		// batch.max_ops
		{"max_ops 0", "mount: /w\nbatch: {max_ops: 0}\n", "batch.max_ops", "at least 1"},
		{"max_ops negative", "mount: /w\nbatch: {max_ops: -5}\n", "batch.max_ops", "at least 1"},
		{"max_ops not a number", "mount: /w\nbatch: {max_ops: lots}\n", "batch.max_ops", "integer"},
		{"max_ops fraction", "mount: /w\nbatch: {max_ops: 1.5}\n", "batch.max_ops", "integer"},

		// paths
		{"mount missing", "store: /s\n", "mount", "required"},
		{"mount empty", "mount: ''\n", "mount", "must not be empty"},
		{"mount relative", "mount: www\n", "mount", "absolute"},
		{"mount root", "mount: /\n", "mount", "must not be /"},
		{"store empty", "mount: /w\nstore: ''\n", "store", "omit store"},
		// A template's `store: ${STORE}` with STORE unset must not mount in place.
		{"store without value", "mount: /w\nstore:\n", "store", "omit the key to mount in place"},
		{"store ~", "mount: /w\nstore: ~\n", "store", "has no value"},
		{"store null", "mount: /w\nstore: null\n", "store", "has no value"},
		{"store relative", "mount: /w\nstore: s\n", "store", "absolute"},
		{"store is mount", "mount: /w\nstore: /w/\n", "store", "must differ from mount"},
		{"store inside mount", "mount: /w\nstore: /w/s\n", "store", "inside mount"},
		{"mount inside store", "mount: /s/w\nstore: /s\n", "store", "contain mount"},
		{"journal relative", "mount: /w\njournal: j\n", "journal", "absolute"},
		{"journal budget without unit sense", "mount: /w\njournal: {max_bytes: lots}\n", "journal.max_bytes", "512MiB"},
		{"journal budget negative", "mount: /w\njournal: {max_bytes: -1}\n", "journal.max_bytes", "negative"},
		{"journal budget NaN", "mount: /w\njournal: {max_bytes: NaNB}\n", "journal.max_bytes", "not a finite number"},
		{"journal budget nan GiB", "mount: /w\njournal: {max_bytes: nanGiB}\n", "journal.max_bytes", "not a finite number"},
		{"journal budget Inf", "mount: /w\njournal: {max_bytes: InfB}\n", "journal.max_bytes", "not a finite number"},
		{"journal budget -Inf", "mount: /w\njournal: {max_bytes: -infinityMiB}\n", "journal.max_bytes", "not a finite number"},
		{"journal budget YAML .nan", "mount: /w\njournal: {max_bytes: .nan}\n", "journal.max_bytes", "512MiB"},
		{"journal unknown key", "mount: /w\njournal: {dir: /j, size: 1G}\n", "journal.size", "max_bytes"},
		{"journal inside mount", "mount: /w\njournal: /w/.journal\n", "journal", "overlap mount"},
		{"journal inside store", "mount: /w\nstore: /s\njournal: /s/j\n", "journal", "overlap store"},
		{"journal is store", "mount: /w\nstore: /s\njournal: /s\n", "journal", "overlap store"},
		{"mount inside journal", "mount: /j/w\njournal: /j\n", "journal", "overlap mount"},
		{"control relative", "mount: /w\ncontrol: m.sock\n", "control", "absolute"},
		{"control inside mount", "mount: /w\ncontrol: /w/m.sock\n", "control", "inside mount"},
		{"control inside journal", "mount: /w\ncontrol: /var/lib/mirrorfs/journal/s\n", "control", "inside journal"},
		{"control too long", "mount: /w\ncontrol: /" + strings.Repeat("x", 120) + "\n", "control", "Unix socket"},

		// exclude
		{"negated pattern", "mount: /w\nexclude: ['*.swp', '!keep']\n", "exclude[1]", "negation"},
		{"empty pattern", "mount: /w\nexclude: ['']\n", "exclude[0]", "empty pattern"},
		{"bad bracket", "mount: /w\nexclude: ['[a-']\n", "exclude[0]", "[a-"},
		{"empty segment", "mount: /w\nexclude: ['a//b']\n", "exclude[0]", "empty path segment"},
		{"root pattern", "mount: /w\nexclude: ['/']\n", "exclude[0]", "root"},
		{"dot-dot pattern", "mount: /w\nexclude: ['../x']\n", "exclude[0]", `".."`},
		{"comment pattern", "mount: /w\nexclude: ['#x']\n", "exclude[0]", "comment"},
		{"trailing space", "mount: /w\nexclude: ['x ']\n", "exclude[0]", "space"},
		{"trailing backslash", "mount: /w\nexclude: ['x\\']\n", "exclude[0]", "syntax error"},

		// log
		{"unknown log level", "mount: /w\nlog: {level: verbose}\n", "log.level", "debug, info, warn, error"},

		// ssh
		{"empty ssh user", "mount: /w\nssh: {user: ''}\n", "ssh.user", "empty"},
		{"ssh user with space", "mount: /w\nssh: {user: 'a b'}\n", "ssh.user", "spaces"},
		{"relative identity", "mount: /w\nssh: {identity: [/k, id_ed25519]}\n", "ssh.identity[1]", "absolute"},
		{"identity not a list", "mount: /w\nssh: {identity: /k}\n", "ssh.identity", "must be a list"},
		{"relative known_hosts", "mount: /w\nssh: {known_hosts: kh}\n", "ssh.known_hosts", "absolute"},

		// workers
		{"port too big", "mount: /w\nworkers:\n  - {name: a, host: h}\n  - {name: b, host: h2, port: 70000}\n", "workers[1].port", "must be 1..65535, got 70000"},
		{"port zero", "mount: /w\nworkers: [{name: a, host: h, port: 0}]\n", "workers[0].port", "1..65535"},
		{"port not a number", "mount: /w\nworkers: [{name: a, host: h, port: ssh}]\n", "workers[0].port", "integer"},
		{"worker name missing", "mount: /w\nworkers: [{host: h}]\n", "workers[0].name", "required"},
		{"worker name empty", "mount: /w\nworkers: [{name: '', host: h}]\n", "workers[0].name", "empty"},
		{"worker name with space", "mount: /w\nworkers: [{name: 'web 1', host: h}]\n", "workers[0].name", "letters, digits"},
		{"worker name with slash", "mount: /w\nworkers: [{name: a/b, host: h}]\n", "workers[0].name", "letters, digits"},
		{"worker name dot-dot", "mount: /w\nworkers: [{name: '..', host: h}]\n", "workers[0].name", "file name"},
		{"worker name dash", "mount: /w\nworkers: [{name: -a, host: h}]\n", "workers[0].name", "'-'"},
		{"duplicate worker names", "mount: /w\nworkers:\n  - {name: a, host: h1}\n  - {name: a, host: h2}\n", "workers[1].name", "workers[0]"},
		{"worker host missing", "mount: /w\nworkers: [{name: a}]\n", "workers[0].host", "required"},
		{"worker host with port", "mount: /w\nworkers: [{name: a, host: 'h:22'}]\n", "workers[0].host", "port"},
		{"worker host in brackets", "mount: /w\nworkers: [{name: a, host: '[::1]'}]\n", "workers[0].host", "brackets"},
		{"worker host with user", "mount: /w\nworkers: [{name: a, host: u@h}]\n", "workers[0].host", "bare host"},
		{"worker root relative", "mount: /w\nworkers: [{name: a, host: h, root: www}]\n", "workers[0].root", "absolute"},
		{"worker user empty", "mount: /w\nworkers: [{name: a, host: h, user: ''}]\n", "workers[0].user", "ssh.user"},
		{"worker transport unknown", "mount: /w\nworkers: [{name: a, host: h, transport: rsync}]\n", "workers[0].transport", "agent or sftp"},
		{"same target twice", "mount: /w\nworkers:\n  - {name: a, host: h}\n  - {name: b, host: h, root: /w/}\n", "workers[1]", "same host, port and root"},
		{"error after valid worker", "mount: /w\n" + worker + "log: {level: x}\n", "log.level", "got \"x\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, path, err := load(t, tc.body)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not match ErrInvalid: %v", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, path) {
				t.Errorf("error does not name the file %s:\n%s", path, msg)
			}
			for _, fe := range fieldErrors(err) {
				if fe.Key == tc.key {
					if !strings.Contains(fe.Msg, tc.msg) {
						t.Errorf("%s: got %q, want it to mention %q", tc.key, fe.Msg, tc.msg)
					}
					if !strings.Contains(fe.Error(), path) || !strings.Contains(fe.Error(), tc.key+":") {
						t.Errorf("error %q lacks file or key", fe.Error())
					}
					return
				}
			}
			t.Errorf("no error for key %s:\n%s", tc.key, msg)
		})
	}
}

func TestErrorLine(t *testing.T) {
	_, path, err := load(t, `mount: /w
workers:
  - name: a
    host: h
  - name: b
    host: h2
    port: 70000
`)
	want := path + ":7: workers[1].port: must be 1..65535, got 70000"
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}
}

func TestAllErrorsReported(t *testing.T) {
	_, _, err := load(t, "mount: www\nbatch: {max_ops: 0}\nlog: {level: loud}\nfoo: 1\n")
	var keys []string
	for _, fe := range fieldErrors(err) {
		keys = append(keys, fe.Key)
	}
	want := []string{"mount", "batch.max_ops", "log.level", "foo"}
	if !reflect.DeepEqual(keys, want) {
		t.Errorf("keys %v, want %v (in file order); error:\n%v", keys, want, err)
	}
}

func TestSyntaxError(t *testing.T) {
	for _, tc := range []struct{ name, body, want string }{
		{"bad indentation", "mount: /w\n  store: [\n", "line 2"},
		{"duplicate key", "mount: /w\nmount: /x\n", "line 2"},
		{"not a mapping", "- mount\n", "line 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, path, err := load(t, tc.body)
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q should name %s and %s", err, path, tc.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not match ErrInvalid")
			}
		})
	}
}

func TestEnvOverride(t *testing.T) {
	clearEnv(t)
	p := writeConfig(t, `mount: /a
batch: {delay: 1s}
ssh: {user: fileuser}
workers: [{name: w, host: h}]
`)
	for k, v := range map[string]string{
		"MIRRORFS_MOUNT":               "/b",
		"MIRRORFS_STORE":               "/srv/store",
		"MIRRORFS_JOURNAL":             "/srv/journal",
		"MIRRORFS_CONTROL":             "/run/x.sock",
		"MIRRORFS_BATCH_DELAY":         "2s",
		"MIRRORFS_BATCH_MAX_OPS":       "7",
		"MIRRORFS_BATCH_HOLD_OPEN":     "3s",
		"MIRRORFS_RETRY_MIN":           "1s",
		"MIRRORFS_RETRY_MAX":           "2m",
		"MIRRORFS_LOG_LEVEL":           "warn",
		"MIRRORFS_SSH_USER":            "envuser",
		"MIRRORFS_SSH_KNOWN_HOSTS":     "/k",
		"MIRRORFS_SSH_CONNECT_TIMEOUT": "4s",
	} {
		t.Setenv(k, v)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	c.src = nil
	want := &Config{
		Mount:   "/b",
		Store:   "/srv/store",
		Journal: "/srv/journal",
		Control: "/run/x.sock",
		Batch:   Batch{Delay: 2 * time.Second, MaxOps: 7, HoldOpen: 3 * time.Second},
		Retry:   Retry{Min: time.Second, Max: 2 * time.Minute},
		Log:     Log{Level: "warn"},
		SSH: SSH{
			User:           "envuser",
			Identity:       []string{"/etc/mirrorfs/id_ed25519"},
			KnownHosts:     "/k",
			ConnectTimeout: 4 * time.Second,
		},
		Workers: []Worker{{Name: "w", Host: "h", Port: 22, Root: "/b", User: "envuser", Transport: "agent"}},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
}

// MIRRORFS_JOURNAL overrides the journal's directory only: a budget
// (journal.max_bytes) from the file still holds, and is still checked.
func TestEnvJournalKeepsMaxBytes(t *testing.T) {
	clearEnv(t)
	p := writeConfig(t, "mount: /w\njournal: {dir: /var/lib/j, max_bytes: 1GiB}\n")
	t.Setenv("MIRRORFS_JOURNAL", "/srv/journal")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Journal != "/srv/journal" || c.JournalMaxBytes != 1<<30 {
		t.Errorf("journal %q max_bytes %d, want /srv/journal and %d", c.Journal, c.JournalMaxBytes, 1<<30)
	}
	p = writeConfig(t, "mount: /w\njournal: {dir: /var/lib/j, max_bytes: lots}\n")
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), p+":2: journal.max_bytes: invalid size") {
		t.Errorf("a bad max_bytes with MIRRORFS_JOURNAL set: %v", err)
	}
}

// The variables the package documentation names are exactly those that
// exist, and keys it says have none (journal.dir, journal.max_bytes,
// workers) are not read from the environment.
func TestEnvVariablesDocumented(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile(`MIRRORFS_[A-Z_]*[A-Z]`).FindAllString(string(doc), -1) {
		documented[m] = true
	}
	want := map[string]bool{}
	for _, k := range envKeys {
		want[envName(k)] = true
	}
	if !reflect.DeepEqual(documented, want) {
		t.Errorf("doc.go names %v, the variables are %v", slices.Sorted(maps.Keys(documented)), slices.Sorted(maps.Keys(want)))
	}
	for _, text := range []string{string(doc), defaultYAML} {
		for _, claim := range []string{"Every single-value key", "Each scalar key"} {
			if strings.Contains(text, claim) {
				t.Errorf("the documentation still says %q", claim)
			}
		}
	}

	clearEnv(t)
	t.Setenv("MIRRORFS_JOURNAL_DIR", "/env/journal")
	t.Setenv("MIRRORFS_JOURNAL_MAX_BYTES", "1GiB")
	t.Setenv("MIRRORFS_WORKERS_0_HOST", "envhost")
	c, err := Parse(strings.NewReader("mount: /w\njournal: {dir: /j}\nworkers: [{name: w, host: h}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Journal != "/j" || c.JournalMaxBytes != 0 || c.Workers[0].Host != "h" {
		t.Errorf("undocumented variables were read: journal %q, max_bytes %d, host %q", c.Journal, c.JournalMaxBytes, c.Workers[0].Host)
	}
}

// An empty MIRRORFS_STORE leaves store unset (in place); a set one gives
// the value a `store:` with no value left out, which alone is refused.
func TestEnvStore(t *testing.T) {
	for _, tc := range []struct {
		env, file string
		inPlace   bool
		store     string
	}{
		{"", "mount: /w\n", true, ""},
		{"/srv/store", "mount: /w\nstore:\n", false, "/srv/store"},
	} {
		clearEnv(t)
		t.Setenv("MIRRORFS_STORE", tc.env)
		c, err := Parse(strings.NewReader(tc.file))
		if err != nil {
			t.Fatalf("MIRRORFS_STORE=%q, %q: %v", tc.env, tc.file, err)
		}
		if c.InPlace != tc.inPlace || c.Store != tc.store {
			t.Errorf("MIRRORFS_STORE=%q, %q: store %q, in place %v; want %q, %v", tc.env, tc.file, c.Store, c.InPlace, tc.store, tc.inPlace)
		}
	}
}

func TestEnvError(t *testing.T) {
	clearEnv(t)
	p := writeConfig(t, "mount: /w\n")
	t.Setenv("MIRRORFS_BATCH_MAX_OPS", "many")
	t.Setenv("MIRRORFS_MOUNT", "relative")
	_, err := Load(p)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		p + ": batch.max_ops (from $MIRRORFS_BATCH_MAX_OPS): must be an integer",
		p + `: mount (from $MIRRORFS_MOUNT): must be an absolute path, got "relative"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestDefaultParses(t *testing.T) {
	clearEnv(t)
	c, err := Parse(strings.NewReader(Default()))
	if err != nil {
		t.Fatal(err)
	}
	if c.Mount != "/var/www/html" || len(c.Workers) != 2 || c.Workers[1].User != "deploy" {
		t.Errorf("unexpected config from Default(): %+v", c)
	}
	// The example shows the defaults it mentions.
	d, err := Parse(strings.NewReader("mount: /var/www/html\nstore: /var/lib/mirrorfs/store\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Journal != d.Journal || c.Control != d.Control || c.Batch != d.Batch || c.Retry != d.Retry ||
		c.Log != d.Log || !reflect.DeepEqual(c.SSH, d.SSH) {
		t.Errorf("Default() disagrees with the defaults:\n%+v\n%+v", c, d)
	}
}

func TestLoadDefaultPath(t *testing.T) {
	if _, err := os.Stat(DefaultPath); err == nil {
		t.Skipf("%s exists on this host", DefaultPath)
	}
	clearEnv(t)
	_, err := Load("")
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), DefaultPath) {
		t.Errorf("Load(\"\") = %v, want a not-exist error naming %s", err, DefaultPath)
	}
	if errors.Is(err, ErrInvalid) {
		t.Error("a missing file is not an invalid configuration")
	}
}

func TestValidateBuiltInCode(t *testing.T) {
	clearEnv(t)
	c, err := Parse(strings.NewReader(Default()))
	if err != nil {
		t.Fatal(err)
	}
	c.src = nil
	if err := c.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	c.Workers[0].Port = 0
	c.Batch.MaxOps = 0
	err = c.Validate()
	want := "batch.max_ops: must be at least 1, got 0\nworkers[0].port: must be 1..65535, got 0"
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}

	var zero Config
	err = zero.Validate()
	for _, key := range []string{"mount", "store", "journal", "control", "batch.max_ops", "retry.min", "log.level", "ssh.user", "ssh.identity", "ssh.known_hosts", "ssh.connect_timeout"} {
		if !strings.Contains(err.Error(), key+": ") {
			t.Errorf("zero Config: no error for %s:\n%v", key, err)
		}
	}
}

func TestExcludePatterns(t *testing.T) {
	for _, pat := range []string{"*.swp", "*~", ".git/", "/cache/", "**/tmp", "a/**/b", `\#x`, `foo\ `, "[a-z]*.log", "a/b/c"} {
		if err := checkPattern(pat); err != nil {
			t.Errorf("checkPattern(%q) = %v, want nil", pat, err)
		}
	}
}

func TestAddr(t *testing.T) {
	for _, tc := range []struct {
		w    Worker
		want string
	}{
		{Worker{Host: "10.0.0.11", Port: 22}, "10.0.0.11:22"},
		{Worker{Host: "web1.example.com", Port: 2222}, "web1.example.com:2222"},
		{Worker{Host: "2001:db8::1", Port: 22}, "[2001:db8::1]:22"},
		{Worker{Host: "fe80::1%eth0", Port: 22}, "[fe80::1%eth0]:22"},
	} {
		if got := tc.w.Addr(); got != tc.want {
			t.Errorf("Addr(%q, %d) = %q, want %q", tc.w.Host, tc.w.Port, got, tc.want)
		}
	}
}

func TestSlogLevel(t *testing.T) {
	for level, want := range map[string]slog.Level{
		"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError,
	} {
		if got := (Log{Level: level}).SlogLevel(); got != want {
			t.Errorf("SlogLevel(%s) = %v, want %v", level, got, want)
		}
	}
}
