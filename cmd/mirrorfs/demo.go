package main

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"github.com/mirrorfs/mirrorfs/config"
	"github.com/mirrorfs/mirrorfs/fs"
	"github.com/mirrorfs/mirrorfs/worker"
)

//go:embed demo.yaml
var demoConfig string

type demoWorker struct {
	Name, Root string
	Port       int
}

func newDemoCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Try mirrorfs locally: two workers, one mounted web root, no configuration",
		Long: `Run mirrorfs end to end on this machine with an embedded default
configuration: it starts two 'mirrorfs worker' SSH servers on 127.0.0.1 with
freshly generated keys, mounts a demo web root, writes a few files through
the mount and prints each worker's copy and how long each change took to
reach it. Then it keeps running so you can try it yourself (edit files in
the printed mount point, watch the worker directories) until Ctrl-C.
With DEMO_ONESHOT=1 it stops right after the scripted changes.

Needs root (FUSE with allow_other) and /dev/fuse.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDemo(cmd.Context(), cmd.OutOrStdout(), dir, os.Getenv("DEMO_ONESHOT") == "1")
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "/tmp/mirrorfs-demo", "scratch directory for the demo (emptied first)")
	return cmd
}

func runDemo(ctx context.Context, out io.Writer, dir string, oneshot bool) error {
	if os.Geteuid() != 0 {
		return errors.New("the demo mounts a FUSE file system with allow_other: run it as root (sudo make demo)")
	}
	if mounted, _ := fs.IsMountPoint(filepath.Join(dir, "html")); mounted {
		return fmt.Errorf("%s/html is still mounted from an earlier demo: fusermount3 -u %s/html", dir, dir)
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	keys := filepath.Join(dir, "keys")
	for _, d := range []string{keys, filepath.Join(dir, "html"), filepath.Join(dir, "store")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	clientKey, err := worker.GenerateKeyFiles(filepath.Join(keys, "id_ed25519"))
	if err != nil {
		return err
	}
	authorized := filepath.Join(keys, "authorized_keys")
	if err := os.WriteFile(authorized, ssh.MarshalAuthorizedKey(clientKey), 0o600); err != nil {
		return err
	}

	self, err := os.Executable()
	if err != nil {
		return err
	}
	// The workers stop (SIGTERM) when the demo returns, however it returns.
	workerCtx, stopWorkers := context.WithCancel(ctx)
	var procs []*exec.Cmd
	defer func() {
		stopWorkers()
		for _, p := range procs {
			p.Wait()
		}
	}()
	var workers []demoWorker
	var knownHosts bytes.Buffer
	for i := 1; i <= 2; i++ {
		w := demoWorker{Name: fmt.Sprintf("web-worker-%02d", i), Root: filepath.Join(dir, fmt.Sprintf("worker%d", i))}
		if err := os.MkdirAll(w.Root, 0o755); err != nil {
			return err
		}
		hostKeyFile := filepath.Join(keys, w.Name+"_host_ed25519")
		hostKey, err := worker.GenerateKeyFiles(hostKeyFile)
		if err != nil {
			return err
		}
		if w.Port, err = freePort(); err != nil {
			return err
		}
		p := exec.CommandContext(workerCtx, self, "worker", "--listen", fmt.Sprintf("127.0.0.1:%d", w.Port),
			"--root", w.Root, "--authorized-keys", authorized, "--host-key", hostKeyFile, "--log-level", "warn")
		p.Stderr = os.Stderr
		p.Cancel = func() error { return p.Process.Signal(syscall.SIGTERM) }
		if err := p.Start(); err != nil {
			return fmt.Errorf("start worker %s: %w", w.Name, err)
		}
		procs = append(procs, p)
		fmt.Fprintf(&knownHosts, "[127.0.0.1]:%d %s", w.Port, ssh.MarshalAuthorizedKey(hostKey))
		workers = append(workers, w)
	}
	if err := os.WriteFile(filepath.Join(keys, "known_hosts"), knownHosts.Bytes(), 0o644); err != nil {
		return err
	}

	var cfgText bytes.Buffer
	if err := template.Must(template.New("demo").Parse(demoConfig)).Execute(&cfgText, map[string]any{"Dir": dir, "Workers": workers}); err != nil {
		return err
	}
	cfg, err := config.Parse(&cfgText)
	if err != nil {
		return fmt.Errorf("embedded demo configuration: %w", err)
	}
	log, _ := newLogger(os.Stderr, cfg.Log.Level)

	daemonCtx, stopDaemon := context.WithCancel(ctx)
	defer stopDaemon()
	daemonDone := make(chan error, 1)
	go func() { daemonDone <- runMount(daemonCtx, cfg, log) }()
	if err := waitMounted(cfg.Mount, daemonDone); err != nil {
		return err
	}
	fmt.Fprintf(out, "mirrorfs demo: web root %s (store %s), workers:\n", cfg.Mount, cfg.Store)
	for _, w := range workers {
		fmt.Fprintf(out, "  %-14s 127.0.0.1:%d -> %s\n", w.Name, w.Port, w.Root)
	}
	fmt.Fprintln(out)

	steps := []struct {
		what string
		do   func() error
		rel  string
		want string // content expected on the workers; "" = path absent
	}{
		{"create index.html", func() error {
			return os.WriteFile(cfg.Mount+"/index.html", []byte("<h1>Hello from mirrorfs</h1>\n"), 0o644)
		}, "index.html", "<h1>Hello from mirrorfs</h1>\n"},
		{"mkdir css + write css/site.css", func() error {
			if err := os.Mkdir(cfg.Mount+"/css", 0o755); err != nil {
				return err
			}
			return os.WriteFile(cfg.Mount+"/css/site.css", []byte("body { color: teal }\n"), 0o644)
		}, "css/site.css", "body { color: teal }\n"},
		{"save index.html by rename (as editors do)", func() error {
			if err := os.WriteFile(cfg.Mount+"/.index.html.tmp", []byte("<h1>Version 2</h1>\n"), 0o644); err != nil {
				return err
			}
			return os.Rename(cfg.Mount+"/.index.html.tmp", cfg.Mount+"/index.html")
		}, "index.html", "<h1>Version 2</h1>\n"},
		{"append to index.html", func() error {
			f, err := os.OpenFile(cfg.Mount+"/index.html", os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			f.WriteString("<p>appended</p>\n")
			return f.Close()
		}, "index.html", "<h1>Version 2</h1>\n<p>appended</p>\n"},
		{"remove css/site.css", func() error { return os.Remove(cfg.Mount + "/css/site.css") }, "css/site.css", ""},
	}
	for _, s := range steps {
		start := time.Now()
		if err := s.do(); err != nil {
			return fmt.Errorf("%s: %w", s.what, err)
		}
		fmt.Fprintf(out, "%-44s", s.what)
		for _, w := range workers {
			d, err := waitContent(filepath.Join(w.Root, s.rel), s.want, start, 30*time.Second)
			if err != nil {
				return fmt.Errorf("%s on %s: %w", s.what, w.Name, err)
			}
			fmt.Fprintf(out, "  %s %6.1f ms", w.Name, float64(d.Microseconds())/1000)
		}
		fmt.Fprintln(out)
	}
	fmt.Fprintln(out)
	for _, w := range workers {
		fmt.Fprintf(out, "%s (%s):\n", w.Name, w.Root)
		filepath.WalkDir(w.Root, func(p string, d os.DirEntry, err error) error {
			if err != nil || p == w.Root {
				return nil
			}
			rel, _ := filepath.Rel(w.Root, p)
			if d.IsDir() {
				fmt.Fprintf(out, "  %s/\n", rel)
				return nil
			}
			data, _ := os.ReadFile(p)
			fmt.Fprintf(out, "  %-12s %q\n", rel, strings.TrimSpace(string(data)))
			return nil
		})
	}

	if oneshot {
		fmt.Fprintln(out, "\nDEMO_ONESHOT=1: stopping.")
	} else {
		fmt.Fprintf(out, "\nThe mount stays up: change files in %s and watch %s/worker*. Ctrl-C stops.\n", cfg.Mount, dir)
		select {
		case <-ctx.Done():
		case err := <-daemonDone:
			return err
		}
	}
	stopDaemon()
	return <-daemonDone
}

// waitMounted returns once the mount is live, or the daemon's error.
func waitMounted(mnt string, daemonDone <-chan error) error {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-daemonDone:
			return fmt.Errorf("daemon stopped before mounting: %w", err)
		default:
		}
		if ok, _ := fs.IsMountPoint(mnt); ok {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("%s not mounted after 15s", mnt)
}

// waitContent polls until path has content want ("" = absent) and returns
// the time since start.
func waitContent(path, want string, start time.Time, timeout time.Duration) (time.Duration, error) {
	for {
		data, err := os.ReadFile(path)
		if (want == "" && errors.Is(err, os.ErrNotExist)) || (err == nil && want != "" && string(data) == want) {
			return time.Since(start), nil
		}
		if time.Since(start) > timeout {
			return 0, fmt.Errorf("%s did not converge within %s (last read: %q, %v)", path, timeout, data, err)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
