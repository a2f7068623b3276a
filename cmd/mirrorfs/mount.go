package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/mirrorfs/mirrorfs/agent"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/mirrorfs/mirrorfs/config"
	"github.com/mirrorfs/mirrorfs/control"
	"github.com/mirrorfs/mirrorfs/fs"
	"github.com/mirrorfs/mirrorfs/journal"
	"github.com/mirrorfs/mirrorfs/replicate"
)

func newMountCmd() *cobra.Command {
	var cfgPath, cpuProfile string
	cmd := &cobra.Command{
		Use:   "mount",
		Short: "Mount the web root and replicate every change to the workers",
		Long: `Mount the web root through FUSE, journal every change made through it and
replicate the changes to every configured worker over SSH.

mount runs in the foreground until SIGINT or SIGTERM; then it stops
accepting writes, finishes the journal, unmounts cleanly and exits 0.
Workers that are unreachable simply fall behind and catch up from their own
position when they return; 'mirrorfs status' shows where each one stands.

With 'store' omitted from the configuration the existing directory at
'mount' is mounted over in place: its content stays where it is.`,
		Example: `  mirrorfs mount --config /etc/mirrorfs/mirrorfs.yaml
  MIRRORFS_LOG_LEVEL=debug mirrorfs mount -c ./mirrorfs.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			log, err := newLogger(os.Stderr, cfg.Log.Level)
			if err != nil {
				return err
			}
			if cpuProfile != "" {
				stop, err := startCPUProfile(cpuProfile)
				if err != nil {
					return err
				}
				defer stop()
			}
			return runMount(cmd.Context(), cfg, log)
		},
	}
	cmd.Flags().StringVarP(&cfgPath, "config", "c", "/etc/mirrorfs/mirrorfs.yaml", "configuration file")
	cmd.Flags().StringVar(&cpuProfile, "cpu-profile", "", "write a CPU profile of the whole run to this file when the daemon stops (read it with go tool pprof)")
	return cmd
}

// startCPUProfile profiles the daemon into path until stop is called.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpu-profile %s: %w", path, err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// runMount is the daemon: journal, mount, control socket and one shipper
// per worker, until ctx is cancelled.
func runMount(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	if mounted, err := fs.IsMountPoint(cfg.Mount); err != nil {
		return err
	} else if mounted {
		return fmt.Errorf("mount point %s is already a mount (another mirrorfs, or a stale one: fusermount3 -u %s)", cfg.Mount, cfg.Mount)
	}
	if st, err := control.Fetch(ctx, cfg.Control); err == nil {
		// Started anyway, this daemon would run without a socket, and the
		// CLI would read and resync the other one's workers for it.
		return fmt.Errorf("control socket %s is in use by another mirrorfs daemon (mount %s): give this configuration a control: path of its own", cfg.Control, st.Mount)
	}
	store := cfg.Store
	if cfg.InPlace {
		// Open the directory before the mount covers it; /proc/self/fd/N
		// then reaches the real directory for the FUSE layer and the
		// shippers alike.
		fd, err := unix.Open(cfg.Mount, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("mount point %s (in place, no store configured): %w", cfg.Mount, err)
		}
		defer unix.Close(fd)
		store = fmt.Sprintf("/proc/self/fd/%d", fd)
	} else if st, err := os.Stat(store); err != nil {
		return fmt.Errorf("store %s: %w", store, err)
	} else if !st.IsDir() {
		return fmt.Errorf("store %s: not a directory", store)
	}
	if st, err := os.Stat(cfg.Mount); err != nil {
		return fmt.Errorf("mount point %s: %w", cfg.Mount, err)
	} else if !st.IsDir() {
		return fmt.Errorf("mount point %s: not a directory", cfg.Mount)
	}
	// A web root that cannot be deployed to is a misconfiguration: refuse
	// it now rather than mount and fail every write with EROFS.
	if ro, err := readOnlyFS(store); err != nil {
		return fmt.Errorf("store %s: %w", storeName(cfg), err)
	} else if ro {
		return fmt.Errorf("store %s is on a read-only filesystem: mirrorfs needs to write to it (remount it read-write or configure another store)", storeName(cfg))
	}
	if ro, err := readOnlyFS(existingAncestor(cfg.Journal)); err != nil {
		return fmt.Errorf("journal %s: %w", cfg.Journal, err)
	} else if ro {
		return fmt.Errorf("journal %s is on a read-only filesystem: the journal must be writable (remount it read-write or configure another journal directory)", cfg.Journal)
	}

	j, err := journal.Open(cfg.Journal, journal.Options{Logger: log})
	switch {
	case errors.Is(err, journal.ErrLocked):
		return fmt.Errorf("journal %s is held by another process (is another mirrorfs mount running?): %w", cfg.Journal, err)
	case errors.Is(err, journal.ErrForeign):
		return fmt.Errorf("journal %s is not a mirrorfs journal; refusing to touch it (journal: must name an empty or new directory, or an existing journal): %w", cfg.Journal, err)
	case errors.Is(err, journal.ErrCorrupt):
		return fmt.Errorf("journal %s is damaged; it was left exactly as found (restore it from a backup, or move it aside and start with an empty journal: every worker is then compared with the store once): %w", cfg.Journal, err)
	case err != nil && !strings.Contains(err.Error(), cfg.Journal):
		return fmt.Errorf("journal %s: %w", cfg.Journal, err)
	case err != nil:
		return err
	}
	defer j.Close()
	if j.Recovered() {
		if err := reconcileAfterCrash(j, log); err != nil {
			return err
		}
	} else if err := reconcileStoreChanges(j, store, log); err != nil {
		return err
	}

	resync := &resyncAll{log: log}
	mnt, err := fs.New(ctx, fs.Options{Store: store, Mountpoint: cfg.Mount, Recorder: j, Logger: log, OnUnnamedChange: resync.request})
	if err != nil {
		return err
	}
	log.Info("mounted", "mount", cfg.Mount, "store", cfg.Store, "in_place", cfg.InPlace, "journal", cfg.Journal, "workers", len(cfg.Workers))

	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	shippers, err := startShippers(runCtx, &wg, cfg, store, j, mnt, log)
	if err != nil {
		stopRun()
		mnt.StopWrites()
		mnt.Unmount()
		return err
	}
	resync.ready(shippers)
	wg.Go(func() {
		d := daemonState{cfg: cfg, j: j, shippers: shippers, store: store, log: log}
		if err := control.Serve(runCtx, cfg.Control, func() control.Status { return daemonStatus(cfg, j, shippers) }, daemonRoutes(d)...); err != nil {
			// The daemon goes on replicating, but holds the journal:
			// status, journal, resync cannot reach it until a restart.
			log.Error("control socket failed: status, journal and resync cannot reach this daemon until it is restarted (replication goes on)", "socket", cfg.Control, "err", err)
		}
	})
	wg.Go(func() { trimLoop(runCtx, cfg, j, shippers, log) })

	gone := make(chan struct{})
	go func() { mnt.Wait(); close(gone) }()
	select {
	case <-ctx.Done():
		log.Info("stopping: no more writes accepted, unmounting")
	case <-gone:
		log.Warn("mount point was unmounted from outside; stopping", "mount", cfg.Mount)
	}
	// From now on a change to the store is not journaled: the next start
	// looks for changes made after this instant (reconcileStoreChanges).
	stoppedAt := time.Now()
	mnt.StopWrites()
	unmountErr := mnt.Unmount()
	stopRun()
	wg.Wait()
	if err := j.SetStoppedAt(stoppedAt); err != nil {
		log.Error("could not record the stop time: the next start will not notice changes made to the store meanwhile", "err", err)
	}
	if unmountErr != nil {
		return unmountErr
	}
	log.Info("stopped cleanly")
	return nil
}

// reconcileAfterCrash marks every worker for a full comparison with the
// store. The daemon died between changing the store and journaling the
// change at most for the calls in flight at that instant, and nothing
// names those paths; the comparison sends only what differs (size, mtime,
// type), so the cost is a walk of both trees, once, after a crash.
func reconcileAfterCrash(j *journal.Journal, log *slog.Logger) error {
	log.Warn("the previous mirrorfs did not stop cleanly: every worker is compared with the store once (only differences are sent)")
	return markAllForFullSync(j)
}

// storeName is the store as the configuration names it.
func storeName(cfg *config.Config) string {
	if cfg.InPlace {
		return cfg.Mount
	}
	return cfg.Store
}

// readOnlyFS reports whether p is on a filesystem mounted read-only
// (statfs ST_RDONLY). It only looks: nothing is written to find out.
func readOnlyFS(p string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		return false, err
	}
	return st.Flags&unix.ST_RDONLY != 0, nil
}

// existingAncestor is p, or its nearest existing parent when p does not
// exist yet (journal.Open creates a missing journal directory).
func existingAncestor(p string) string {
	p = filepath.Clean(p)
	for {
		if _, err := os.Lstat(p); err == nil {
			return p
		}
		parent := filepath.Dir(p)
		if parent == p {
			return p
		}
		p = parent
	}
}

func startShippers(ctx context.Context, wg *sync.WaitGroup, cfg *config.Config, store string, j *journal.Journal, mnt *fs.Mount, log *slog.Logger) ([]*replicate.Shipper, error) {
	var out []*replicate.Shipper
	for _, w := range cfg.Workers {
		s, err := replicate.NewShipper(replicate.Options{
			Name:    w.Name,
			Store:   store,
			Journal: j,
			Dial:    workerDialer(cfg, w, log),
			// The full copy skips files a writer still has open; their
			// Close record ships them.
			OpenForWrite: mnt.OpenForWrite,
			Exclude:      cfg.Exclude,
			Delay:        zeroIsNone(cfg.Batch.Delay),
			MaxOps:       cfg.Batch.MaxOps,
			HoldOpen:     zeroIsNone(cfg.Batch.HoldOpen),
			RetryMin:     cfg.Retry.Min,
			RetryMax:     cfg.Retry.Max,
			Logger:       log,
		})
		if err != nil {
			return nil, fmt.Errorf("worker %s: %w", w.Name, err)
		}
		out = append(out, s)
		wg.Go(func() { s.Run(ctx) })
	}
	return out, nil
}

func daemonStatus(cfg *config.Config, j *journal.Journal, shippers []*replicate.Shipper) control.Status {
	st := control.Status{Mount: cfg.Mount, LastSeq: j.LastSeq()}
	for i, s := range shippers {
		ss := s.Status()
		ws := control.WorkerStatus{
			Name:            ss.Name,
			Addr:            cfg.Workers[i].Addr(),
			Connected:       ss.Connected,
			LastError:       ss.LastError,
			Pending:         ss.Pending,
			LagSeconds:      ss.Lag.Seconds(),
			Applied:         ss.Applied,
			InitialCopy:     ss.InitialCopy,
			BytesSent:       ss.BytesSent,
			CopyChecked:     ss.CopyChecked,
			CopyHashed:      ss.CopyHashed,
			CopyFiles:       ss.CopyFiles,
			CopyBytes:       ss.CopyBytes,
			CopySeconds:     ss.CopyTook.Seconds(),
			ResyncRequested: ss.ResyncRequested,
			ResyncDone:      ss.ResyncDone,
		}
		if !ss.LastErrorAt.IsZero() {
			ws.LastErrorAt = ss.LastErrorAt.Format(time.RFC3339)
		}
		if !ss.ResyncDoneAt.IsZero() {
			ws.ResyncDoneAt = ss.ResyncDoneAt.Format(time.RFC3339)
		}
		if !ws.Connected {
			// Marked while away (journal over budget, or a crash): the
			// shipper starts with a full comparison when it connects.
			if c, ok, err := j.Cursor(ss.Name); err == nil && (!ok || c.FullSync) {
				ws.InitialCopy = true
			}
		}
		st.Workers = append(st.Workers, ws)
	}
	return st
}

// workerDialer connects to worker w with its transport: the agent (falling
// back to SFTP when it cannot run there) or SFTP.
func workerDialer(cfg *config.Config, w config.Worker, log *slog.Logger) func(context.Context) (replicate.Transport, error) {
	user := w.User
	if user == "" {
		user = cfg.SSH.User
	}
	o := replicate.SFTPOptions{
		Addr:           w.Addr(),
		User:           user,
		Root:           w.Root,
		IdentityFiles:  cfg.SSH.Identity,
		KnownHosts:     cfg.SSH.KnownHosts,
		ConnectTimeout: cfg.SSH.ConnectTimeout,
		Logger:         log.With("worker", w.Name),
	}
	return func(ctx context.Context) (replicate.Transport, error) {
		if w.Transport == config.TransportSFTP {
			return replicate.DialSFTP(ctx, o)
		}
		return agent.Dial(ctx, o)
	}
}

// zeroIsNone maps a configured duration of 0 (batch.delay: ship at once;
// batch.hold_open: never hold back) to what replicate.Options spells with
// a negative value; its 0 means the package default, which the config has
// already filled in for an omitted key.
func zeroIsNone(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// resyncAll compares every worker with the store on request: for a change
// through the mount that the journal could not record (fs.Options.
// OnUnnamedChange). A request made before the shippers run is served
// once they do.
type resyncAll struct {
	log      *slog.Logger
	mu       sync.Mutex
	shippers []*replicate.Shipper
	started  bool
	pending  bool
}

func (r *resyncAll) request() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.started {
		r.pending = true
		return
	}
	r.log.Info("a change the journal could not record: comparing every worker with the store")
	for _, s := range r.shippers {
		s.Resync(false)
	}
}

func (r *resyncAll) ready(shippers []*replicate.Shipper) {
	r.mu.Lock()
	r.shippers, r.started = shippers, true
	pending := r.pending
	r.mu.Unlock()
	if pending {
		r.request()
	}
}
