package config

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"path/filepath"
	"strings"
	"unicode"
)

// maxSocketPath is the longest path a Unix socket address holds on Linux
// (sun_path is 108 bytes including the terminating NUL).
const maxSocketPath = 107

var logLevels = []string{"debug", "info", "warn", "error"}

// Validate checks c as Load returns it: it applies no defaults, so a Config
// built in code must fill in every field (Worker.Port, Root and User
// included). It touches no file. All problems are reported, one *FieldError
// per key, joined with errors.Join.
func (c *Config) Validate() error {
	p := &problems{src: c.src}
	c.validate(p)
	return p.err()
}

func (c *Config) validate(p *problems) {
	localDir(p, "mount", c.Mount, "the web root to mount, e.g. /var/www/html")
	if c.Mount == "/" {
		p.add("mount", "must not be /")
	}

	switch {
	case c.InPlace && c.Store != "":
		p.add("store", "must be empty when mounting in place (InPlace), got %q", c.Store)
	case !c.InPlace && localDir(p, "store", c.Store, "where the real bytes live; omit store to mount in place"):
		switch {
		case c.Store == c.Mount:
			p.add("store", "must differ from mount (%s); omit store to mount in place", c.Mount)
		case within(c.Store, c.Mount):
			p.add("store", "must not be inside mount (%s): the mount would hide it", c.Mount)
		case within(c.Mount, c.Store):
			p.add("store", "must not contain mount (%s): the store would contain its own mount", c.Mount)
		}
	}

	if localDir(p, "journal", c.Journal, "the journal directory") {
		for _, o := range []struct{ key, dir string }{{"mount", c.Mount}, {"store", c.Store}} {
			if o.dir != "" && (within(c.Journal, o.dir) || within(o.dir, c.Journal)) {
				p.add("journal", "must not overlap %s (%s): mirrorfs would journal its own writes", o.key, o.dir)
				break
			}
		}
	}

	if localDir(p, "control", c.Control, "the control socket") {
		switch {
		case len(c.Control) > maxSocketPath:
			p.add("control", "socket path is %d bytes, longer than the %d a Unix socket allows", len(c.Control), maxSocketPath)
		case c.Mount != "" && within(c.Control, c.Mount):
			p.add("control", "must not be inside mount (%s)", c.Mount)
		case c.Store != "" && within(c.Control, c.Store):
			p.add("control", "must not be inside store (%s)", c.Store)
		case within(c.Control, c.Journal):
			p.add("control", "must not be inside journal (%s)", c.Journal)
		}
	}

	for i, pat := range c.Exclude {
		if err := checkPattern(pat); err != nil {
			p.add(fmt.Sprintf("exclude[%d]", i), "%q: %v", pat, err)
		}
	}

	if c.Batch.Delay < 0 {
		p.add("batch.delay", "must not be negative, got %v", c.Batch.Delay)
	}
	if c.Batch.MaxOps < 1 {
		p.add("batch.max_ops", "must be at least 1, got %d", c.Batch.MaxOps)
	}
	if c.Batch.HoldOpen < 0 {
		p.add("batch.hold_open", "must not be negative, got %v", c.Batch.HoldOpen)
	}
	switch {
	case c.Retry.Min <= 0:
		p.add("retry.min", "must be positive, got %v", c.Retry.Min)
	case c.Retry.Max < c.Retry.Min:
		p.add("retry.max", "must be at least retry.min (%v), got %v", c.Retry.Min, c.Retry.Max)
	}
	if !contains(logLevels, c.Log.Level) {
		p.add("log.level", "must be one of %s, got %q", strings.Join(logLevels, ", "), c.Log.Level)
	}

	if err := checkUser(c.SSH.User); err != nil {
		p.add("ssh.user", "%v", err)
	}
	if len(c.SSH.Identity) == 0 {
		p.add("ssh.identity", "must list at least one private key file")
	}
	for i, id := range c.SSH.Identity {
		localFile(p, fmt.Sprintf("ssh.identity[%d]", i), id)
	}
	localFile(p, "ssh.known_hosts", c.SSH.KnownHosts)
	if c.SSH.ConnectTimeout <= 0 {
		p.add("ssh.connect_timeout", "must be positive, got %v", c.SSH.ConnectTimeout)
	}

	names := map[string]int{}
	targets := map[string]int{}
	for i, w := range c.Workers {
		key := fmt.Sprintf("workers[%d]", i)
		if err := checkName(w.Name); err != nil {
			p.add(key+".name", "%v", err)
		} else if j, dup := names[w.Name]; dup {
			p.add(key+".name", "%q is already the name of workers[%d]", w.Name, j)
		} else {
			names[w.Name] = i
		}
		if err := checkHost(w.Host); err != nil {
			p.add(key+".host", "%v", err)
		}
		if w.Port < 1 || w.Port > 65535 {
			p.add(key+".port", "must be 1..65535, got %d", w.Port)
		}
		// A root defaulted from mount was checked as mount.
		if w.Root != c.Mount {
			switch {
			case w.Root == "":
				p.add(key+".root", "required: the absolute path on the worker")
			case !path.IsAbs(w.Root):
				p.add(key+".root", "must be an absolute path on the worker, got %q", w.Root)
			}
		}
		if err := checkUser(w.User); err != nil {
			p.add(key+".user", "%v", err)
		}
		target := fmt.Sprintf("%s\x00%d\x00%s", w.Host, w.Port, path.Clean(w.Root))
		if j, dup := targets[target]; dup && w.Host != "" {
			p.add(key, "replicates to the same host, port and root as workers[%d] (%s)", j, c.Workers[j].Name)
		} else {
			targets[target] = i
		}
	}
}

// localDir checks that an absolute local path is given, and reports whether
// it is. what says what the key is for when it is missing.
func localDir(p *problems, key, dir, what string) bool {
	switch {
	case dir == "":
		p.add(key, "required: %s", what)
	case !filepath.IsAbs(dir):
		p.add(key, "must be an absolute path, got %q", dir)
	default:
		return true
	}
	return false
}

func localFile(p *problems, key, file string) {
	switch {
	case file == "":
		p.add(key, "required: an absolute file path")
	case !filepath.IsAbs(file):
		p.add(key, "must be an absolute path, got %q", file)
	}
}

// within reports whether path a is dir or lies under it (both cleaned and
// absolute).
func within(a, dir string) bool {
	if a == "" || dir == "" {
		return false
	}
	return a == dir || dir == "/" || strings.HasPrefix(a, dir+"/")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// checkName accepts worker names usable as file names and journal keys.
func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("required: a unique name of letters, digits, '.', '_' and '-'")
	case name == "." || name == "..":
		return fmt.Errorf("%q cannot be used as a file name", name)
	case name[0] == '-':
		return fmt.Errorf("must not start with '-', got %q", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("may hold only letters, digits, '.', '_' and '-', got %q", name)
		}
	}
	return nil
}

// checkHost accepts a host name or an IP address, without port or brackets.
func checkHost(host string) error {
	switch {
	case host == "":
		return errors.New("required: a host name or IP address")
	case strings.ContainsFunc(host, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		return fmt.Errorf("must not contain spaces, got %q", host)
	case strings.ContainsAny(host, "[]"):
		return fmt.Errorf("write IPv6 addresses without brackets, got %q", host)
	case strings.ContainsAny(host, "@/"):
		return fmt.Errorf("must be a bare host name or IP address (use user and root for the rest), got %q", host)
	case strings.Contains(host, ":"):
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("must not include a port (use port), got %q", host)
		}
	}
	return nil
}

func checkUser(user string) error {
	switch {
	case user == "":
		return errors.New("required: the SSH user name")
	case strings.ContainsFunc(user, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		return fmt.Errorf("must not contain spaces, got %q", user)
	}
	return nil
}

// checkPattern checks the syntax of one gitignore-style exclude pattern
// (see the package documentation). It does not match anything.
func checkPattern(pat string) error {
	switch {
	case pat == "":
		return errors.New("empty pattern")
	case strings.HasPrefix(pat, "!"):
		return errors.New("negation (!) is not supported")
	case strings.HasPrefix(pat, "#"):
		return errors.New(`a leading # is a comment in gitignore; write \# for a literal #`)
	case strings.TrimLeftFunc(pat, unicode.IsSpace) != pat,
		strings.TrimRightFunc(pat, unicode.IsSpace) != pat && !strings.HasSuffix(pat, `\ `):
		return errors.New(`leading or trailing space (escape a real trailing one as "\ ")`)
	}
	body := strings.TrimPrefix(pat, "/")
	body = strings.TrimSuffix(body, "/")
	if body == "" {
		return errors.New("matches nothing but the root")
	}
	for _, seg := range strings.Split(body, "/") {
		switch seg {
		case "":
			return errors.New("empty path segment (//)")
		case ".", "..":
			return fmt.Errorf("%q segments are not allowed", seg)
		}
		if _, err := path.Match(seg, ""); err != nil {
			return fmt.Errorf("bad segment %q: %v", seg, err)
		}
	}
	return nil
}
