package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// DefaultPath is the file Load reads when given no path.
const DefaultPath = "/etc/mirrorfs/mirrorfs.yaml"

const (
	defaultJournal        = "/var/lib/mirrorfs/journal"
	defaultControl        = "/run/mirrorfs/mirrorfs.sock"
	defaultBatchDelay     = 10 * time.Millisecond
	defaultBatchMaxOps    = 50000
	defaultHoldOpen       = 60 * time.Second
	defaultRetryMin       = 100 * time.Millisecond
	defaultRetryMax       = 30 * time.Second
	defaultLogLevel       = "info"
	defaultSSHUser        = "mirror"
	defaultIdentity       = "/etc/mirrorfs/id_ed25519"
	defaultKnownHosts     = "/etc/mirrorfs/known_hosts"
	defaultConnectTimeout = 10 * time.Second
	defaultPort           = 22
)

// Config is a complete mirrorfs configuration, defaults applied.
type Config struct {
	Mount   string // the web root everyone uses; mirrorfs mounts here
	Store   string // the real bytes; "" when InPlace
	Journal string // journal directory
	// JournalMaxBytes is the journal's disk budget (journal.max_bytes); 0
	// means none. Over it, workers that are not connected stop holding
	// records back: they are marked for a comparison with the store when
	// they return, and the journal is trimmed without them.
	JournalMaxBytes int64
	Control         string // control socket
	Exclude         []string
	Batch           Batch
	Retry           Retry
	Log             Log
	SSH             SSH
	Workers         []Worker // may be empty: mount and journal only
	// InPlace is true when the file has no store: mirrorfs mounts over Mount
	// and keeps the bytes in the directory it covers. Store is then "".
	InPlace bool

	src *source // where the values came from, for error messages; nil if built in code
}

// Batch says how a shipper gathers journal operations into one batch.
type Batch struct {
	Delay    time.Duration // wait after a change before shipping
	MaxOps   int           // most operations in one batch
	HoldOpen time.Duration // longest a file open for writing is held back
}

// Retry is the capped exponential backoff of a worker's shipper.
type Retry struct {
	Min, Max time.Duration
}

// Log configures logging.
type Log struct {
	Level string // debug, info, warn or error
}

// SlogLevel returns the slog level named by l.Level (info if unknown).
func (l Log) SlogLevel() slog.Level {
	switch l.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// SSH holds the settings shared by all workers.
type SSH struct {
	User           string
	Identity       []string // private key files
	KnownHosts     string   // host keys are always verified against it
	ConnectTimeout time.Duration
}

// Worker is one replication target.
type Worker struct {
	Name string // unique; [A-Za-z0-9._-]+, used in file names and journal keys
	Host string // host name or IP address, without port or brackets
	Port int
	Root string // absolute path on the worker
	User string // SSH user; ssh.user unless overridden
	// Transport is "agent" (mirrorfs agent over SSH, falling back to SFTP
	// when it cannot run) or "sftp".
	Transport string
}

// Transports a worker may use.
const (
	TransportAgent = "agent"
	TransportSFTP  = "sftp"
)

// Addr returns host:port, with IPv6 addresses in brackets.
func (w Worker) Addr() string {
	return net.JoinHostPort(w.Host, strconv.Itoa(w.Port))
}

// ErrInvalid matches (errors.Is) every error about the content of a
// configuration, as opposed to failing to read it.
var ErrInvalid = errors.New("invalid configuration")

// FieldError is one problem with one key.
type FieldError struct {
	File string // configuration file; "" for Parse or a Config built in code
	Line int    // line in File; 0 if unknown or the value came from Env
	Env  string // environment variable the value came from, if any
	Key  string // e.g. "workers[1].port"
	Msg  string // what is wrong and what is expected
}

func (e *FieldError) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		fmt.Fprintf(&b, "%s: ", e.File)
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	b.WriteString(e.Key)
	if e.Env != "" {
		fmt.Fprintf(&b, " (from $%s)", e.Env)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// Is reports whether target is ErrInvalid.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// syntaxError is a file that is not valid YAML (or not a YAML mapping).
type syntaxError struct {
	file string
	err  error
}

func (e *syntaxError) Error() string {
	if e.file == "" {
		return e.err.Error()
	}
	return e.file + ": " + e.err.Error()
}

func (e *syntaxError) Unwrap() error        { return e.err }
func (e *syntaxError) Is(target error) bool { return target == ErrInvalid }

// Load reads the configuration file at path (DefaultPath if path is ""),
// applies MIRRORFS_* environment overrides and defaults, and validates the
// result. Errors name the file.
func Load(path string) (*Config, error) {
	if path == "" {
		path = DefaultPath
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	return parse(data, path)
}

// Parse is Load for a configuration read from r; errors name lines but no
// file.
func Parse(r io.Reader) (*Config, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return parse(data, "")
}

// envKeys are the keys environment variables override: every scalar key.
var envKeys = []string{
	"mount", "store", "journal", "control",
	"batch.delay", "batch.max_ops", "batch.hold_open",
	"retry.min", "retry.max",
	"log.level",
	"ssh.user", "ssh.known_hosts", "ssh.connect_timeout",
}

// envName returns the variable that overrides key.
func envName(key string) string {
	return "MIRRORFS_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// source records where a Config's values came from.
type source struct {
	file  string
	lines map[string]int    // key => line of the key in file
	env   map[string]string // key => environment variable that set it
}

// line returns the line of key, or of its closest ancestor in the file.
func (s *source) line(key string) int {
	for k := key; k != ""; k = parentKey(k) {
		if n, ok := s.lines[k]; ok {
			return n
		}
	}
	return 0
}

func parse(data []byte, file string) (*Config, error) {
	// viper parses the file (it reports syntax errors and duplicate keys
	// with their line) and layers the environment over it. The same bytes
	// are parsed again as a yaml.Node to find unknown keys, which viper
	// drops when their value is empty, and to know each key's line.
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
		var pe viper.ConfigParseError
		if errors.As(err, &pe) {
			err = pe.Unwrap()
		}
		return nil, &syntaxError{file, err}
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &syntaxError{file, err}
	}

	// MIRRORFS_JOURNAL names the journal's directory: once bound, viper
	// answers "journal" with the variable alone, so the file's mapping
	// (its max_bytes) is taken before.
	fileJournal, _ := v.Get("journal").(map[string]any)

	src := &source{file: file, lines: map[string]int{}, env: map[string]string{}}
	for _, k := range envKeys {
		name := envName(k)
		if err := v.BindEnv(k, name); err != nil {
			return nil, fmt.Errorf("bind %s: %w", name, err)
		}
		if os.Getenv(name) != "" { // viper, too, ignores empty variables
			src.env[k] = name
		}
	}

	p := &problems{src: src}
	nulls := checkShape(&root, src.lines, p)
	// An omitted store mounts in place, over the web root: never do that
	// because a template left `store: ${STORE}` empty. Omitting the key is
	// the one way to ask for it.
	if nulls["store"] && src.env["store"] == "" {
		p.add("store", "has no value (a template variable left empty?): give the store directory, or omit the key to mount in place")
	}
	c := decode(v, fileJournal, p)
	c.src = src
	c.validate(p)
	if err := p.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// decode builds a Config from v, with defaults for what v lacks. Values of
// the wrong type are reported to p and left at their default. fileJournal
// is the file's journal mapping, if it has one: its max_bytes holds even
// when MIRRORFS_JOURNAL overrides the directory.
func decode(v *viper.Viper, fileJournal map[string]any, p *problems) *Config {
	d := decoder{p}
	c := &Config{
		Journal: defaultJournal,
		Control: defaultControl,
		Batch:   Batch{Delay: defaultBatchDelay, MaxOps: defaultBatchMaxOps, HoldOpen: defaultHoldOpen},
		Retry:   Retry{Min: defaultRetryMin, Max: defaultRetryMax},
		Log:     Log{Level: defaultLogLevel},
		SSH: SSH{
			User:           defaultSSHUser,
			Identity:       []string{defaultIdentity},
			KnownHosts:     defaultKnownHosts,
			ConnectTimeout: defaultConnectTimeout,
		},
	}
	d.path("mount", v.Get("mount"), &c.Mount, "mount is required")
	c.InPlace = !d.path("store", v.Get("store"), &c.Store, "omit store to mount in place")
	switch jv := v.Get("journal").(type) {
	case map[string]any:
		d.path("journal.dir", jv["dir"], &c.Journal, "omit dir to use "+defaultJournal)
	default: // the file's scalar, or MIRRORFS_JOURNAL
		d.path("journal", jv, &c.Journal, "")
	}
	if mb := fileJournal["max_bytes"]; mb != nil {
		n, err := toBytes(mb)
		if err != nil {
			p.add("journal.max_bytes", "%v", err)
		}
		c.JournalMaxBytes = n
	}
	d.path("control", v.Get("control"), &c.Control, "")
	c.Exclude = d.list("exclude", v.Get("exclude"))

	d.duration("batch.delay", v.Get("batch.delay"), &c.Batch.Delay)
	d.integer("batch.max_ops", v.Get("batch.max_ops"), &c.Batch.MaxOps)
	d.duration("batch.hold_open", v.Get("batch.hold_open"), &c.Batch.HoldOpen)
	d.duration("retry.min", v.Get("retry.min"), &c.Retry.Min)
	d.duration("retry.max", v.Get("retry.max"), &c.Retry.Max)
	if d.str("log.level", v.Get("log.level"), &c.Log.Level, "") {
		c.Log.Level = strings.ToLower(c.Log.Level)
	}

	d.str("ssh.user", v.Get("ssh.user"), &c.SSH.User, "")
	if ids := d.list("ssh.identity", v.Get("ssh.identity")); len(ids) > 0 {
		for i := range ids {
			ids[i] = cleanAbs(ids[i])
		}
		c.SSH.Identity = ids
	}
	d.path("ssh.known_hosts", v.Get("ssh.known_hosts"), &c.SSH.KnownHosts, "")
	d.duration("ssh.connect_timeout", v.Get("ssh.connect_timeout"), &c.SSH.ConnectTimeout)

	switch ws := v.Get("workers").(type) {
	case nil:
	case []any:
		for i, item := range ws {
			key := fmt.Sprintf("workers[%d]", i)
			m, ok := item.(map[string]any)
			if !ok {
				p.add(key, "must be a mapping with name, host, port, root, user, transport")
				continue
			}
			w := Worker{Port: defaultPort, Root: c.Mount, User: c.SSH.User}
			d.str(key+".name", m["name"], &w.Name, "")
			d.str(key+".host", m["host"], &w.Host, "")
			d.integer(key+".port", m["port"], &w.Port)
			if d.str(key+".root", m["root"], &w.Root, "omit root to use mount") && path.IsAbs(w.Root) {
				w.Root = path.Clean(w.Root)
			}
			d.str(key+".user", m["user"], &w.User, "omit user to use ssh.user")
			w.Transport = TransportAgent
			if d.str(key+".transport", m["transport"], &w.Transport, "omit transport to use agent") &&
				w.Transport != TransportAgent && w.Transport != TransportSFTP {
				p.add(key+".transport", "must be agent or sftp, not %q", w.Transport)
			}
			c.Workers = append(c.Workers, w)
		}
	default:
		p.add("workers", "must be a list")
	}
	return c
}

// decoder converts the loosely typed values viper returns, reporting
// problems under their key. Each method leaves *dst alone unless the value
// is present and well typed, and reports whether it was present (not nil).
type decoder struct{ p *problems }

// str decodes a non-empty string. hint completes the message for "".
func (d decoder) str(key string, val any, dst *string, hint string) bool {
	if val == nil {
		return false
	}
	s, err := toString(val)
	switch {
	case err != nil:
		d.p.add(key, "%v", err)
	case s == "" && hint != "":
		d.p.add(key, "must not be empty (%s)", hint)
	case s == "":
		d.p.add(key, "must not be empty (omit the key to use the default)")
	default:
		*dst = s
	}
	return true
}

// path is str for a local path; absolute paths are cleaned, others are
// kept as written for Validate to report.
func (d decoder) path(key string, val any, dst *string, hint string) bool {
	present := d.str(key, val, dst, hint)
	*dst = cleanAbs(*dst)
	return present
}

func (d decoder) integer(key string, val any, dst *int) bool {
	if val == nil {
		return false
	}
	n, err := toInt(val)
	if err != nil {
		d.p.add(key, "%v", err)
	} else {
		*dst = n
	}
	return true
}

func (d decoder) duration(key string, val any, dst *time.Duration) bool {
	if val == nil {
		return false
	}
	t, err := toDuration(val)
	if err != nil {
		d.p.add(key, "%v", err)
	} else {
		*dst = t
	}
	return true
}

// list decodes a list of strings; nil if absent or malformed.
func (d decoder) list(key string, val any) []string {
	if val == nil {
		return nil
	}
	items, ok := val.([]any)
	if !ok {
		d.p.add(key, "must be a list, got %s", describe(val))
		return nil
	}
	out := make([]string, 0, len(items))
	for i, item := range items {
		s, err := toString(item)
		if err != nil {
			d.p.add(fmt.Sprintf("%s[%d]", key, i), "%v", err)
			continue
		}
		out = append(out, s)
	}
	return out
}

func toString(val any) (string, error) {
	switch v := val.(type) {
	case string:
		return v, nil
	case int:
		return strconv.Itoa(v), nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case uint64:
		return strconv.FormatUint(v, 10), nil
	case nil:
		return "", errors.New("must be a string, got nothing")
	}
	return "", fmt.Errorf("must be a string, got %s (quote it)", describe(val))
}

func toInt(val any) (int, error) {
	switch v := val.(type) {
	case int:
		return v, nil
	case int64:
		if int64(int(v)) == v {
			return int(v), nil
		}
	case uint64:
		if v <= uint64(int(^uint(0)>>1)) {
			return int(v), nil
		}
	case string: // from the environment, or quoted in the file
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
			return n, nil
		}
		return 0, fmt.Errorf("must be an integer, got %q", v)
	}
	return 0, fmt.Errorf("must be an integer, got %s", describe(val))
}

// byteUnits are the suffixes toBytes accepts, longest first.
var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
	{"B", 1},
}

// toBytes decodes a size: a number of bytes, or a number with a unit
// (512MiB, 2GB, 1G). 0 means no limit.
func toBytes(val any) (int64, error) {
	if n, err := toInt(val); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("must not be negative, got %d", n)
		}
		return int64(n), nil
	}
	str, ok := val.(string)
	if !ok {
		return 0, fmt.Errorf("must be a size such as 512MiB or 2GB, got %s", describe(val))
	}
	t := strings.TrimSpace(str)
	for _, u := range byteUnits {
		num, found := strings.CutSuffix(t, u.suffix)
		if !found {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err == nil && (math.IsNaN(f) || math.IsInf(f, 0)) {
			// ParseFloat reads "NaN" and "Inf": NaN passes every
			// comparison below, and int64(NaN) is negative.
			return 0, fmt.Errorf("invalid size %q: not a finite number (want bytes or a number with a unit: 512MiB, 2GB, 1G)", str)
		}
		if err != nil || f < 0 || f*float64(u.mult) > float64(1<<62) {
			break
		}
		return int64(f * float64(u.mult)), nil
	}
	return 0, fmt.Errorf("invalid size %q (want bytes or a number with a unit: 512MiB, 2GB, 1G)", str)
}

func toDuration(val any) (time.Duration, error) {
	switch v := val.(type) {
	case string:
		t, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q (want a number with a unit: 500ms, 10s, 1m)", v)
		}
		return t, nil
	case int:
		if v == 0 {
			return 0, nil
		}
		return 0, fmt.Errorf("duration %d has no unit (write e.g. %dms or %ds)", v, v, v)
	}
	return 0, fmt.Errorf("must be a duration such as 10s, got %s", describe(val))
}

// describe names a decoded YAML value for an error message.
func describe(val any) string {
	switch v := val.(type) {
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	case string:
		return strconv.Quote(v)
	}
	return fmt.Sprint(val)
}

// cleanAbs cleans p if it is absolute, and returns it unchanged otherwise.
func cleanAbs(p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return p
}

// parentKey returns the key that contains key: "workers[1]" for
// "workers[1].port", "workers" for "workers[1]", "" for "mount".
func parentKey(key string) string {
	if i := strings.LastIndexAny(key, ".["); i >= 0 {
		return key[:i]
	}
	return ""
}

// problems collects FieldErrors, at most one per key, and none under a key
// that already has one (a malformed "batch" hides its fields' problems).
type problems struct {
	src  *source
	list []*FieldError
}

func (p *problems) add(key, format string, args ...any) {
	for _, e := range p.list {
		if e.Key == key || strings.HasPrefix(key, e.Key+".") || strings.HasPrefix(key, e.Key+"[") {
			return
		}
	}
	e := &FieldError{Key: key, Msg: fmt.Sprintf(format, args...)}
	if p.src != nil {
		e.File = p.src.file
		if env, ok := p.src.env[key]; ok {
			e.Env = env
		} else {
			e.Line = p.src.line(key)
		}
	}
	p.list = append(p.list, e)
}

// err returns the problems in file order (those without a line last), or
// nil.
func (p *problems) err() error {
	slices.SortStableFunc(p.list, func(a, b *FieldError) int {
		return cmp.Compare(sortLine(a.Line), sortLine(b.Line))
	})
	switch len(p.list) {
	case 0:
		return nil
	case 1:
		return p.list[0]
	}
	errs := make([]error, len(p.list))
	for i, e := range p.list {
		errs[i] = e
	}
	return errors.Join(errs...)
}

func sortLine(n int) int {
	if n == 0 {
		return math.MaxInt
	}
	return n
}
