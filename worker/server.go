package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/mirrorfs/mirrorfs/replicate"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// Options configures a Server.
type Options struct {
	Root           string       // directory every path is confined to
	AuthorizedKeys string       // path of an OpenSSH authorized_keys file
	HostKey        string       // path of an OpenSSH private host key (ed25519 etc.)
	Logger         *slog.Logger // nil = discard
}

// Server is an SSH server that offers only the sftp subsystem, confined to one directory.
// One Server may Serve several listeners at once.
type Server struct {
	root     string
	authKeys string
	hostKey  ssh.Signer
	log      *slog.Logger
	config   *ssh.ServerConfig
}

const (
	// handshakeTimeout bounds the SSH handshake and authentication of a new connection.
	handshakeTimeout = 30 * time.Second

	// Keys of ssh.Permissions.Extensions set by a successful authentication.
	extFingerprint = "mirrorfs-key-fingerprint"
	extComment     = "mirrorfs-key-comment"
)

// New validates opts and returns a Server. It fails if the root is not an existing directory (a
// symlink to one is refused, naming its target and the resolved path), the
// host key cannot be read or parsed (or is encrypted), or the authorized keys file cannot be read;
// every error names the file at fault.
func New(opts Options) (*Server, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Root == "" {
		return nil, errors.New("worker: no root directory given")
	}
	root, err := filepath.Abs(opts.Root)
	if err != nil {
		return nil, fmt.Errorf("worker: root %s: %w", opts.Root, err)
	}
	// Like the agent, never follow a symlinked root.
	r, err := replicate.OpenRoot(root)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	r.Close()

	if opts.HostKey == "" {
		return nil, errors.New("worker: no host key file given")
	}
	hostKey, err := readHostKey(opts.HostKey)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}

	if opts.AuthorizedKeys == "" {
		return nil, errors.New("worker: no authorized keys file given")
	}
	keys, bad, err := readAuthorizedKeys(opts.AuthorizedKeys)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	if len(bad) > 0 {
		log.Warn("authorized keys: skipping lines that do not parse", "file", opts.AuthorizedKeys, "lines", bad)
	}
	if len(keys) == 0 {
		log.Warn("authorized keys: no usable key yet; every connection will be refused until one is added",
			"file", opts.AuthorizedKeys)
	}

	s := &Server{
		root:     root,
		authKeys: opts.AuthorizedKeys,
		hostKey:  hostKey,
		log:      log,
	}
	s.config = &ssh.ServerConfig{
		PublicKeyCallback: s.authorize,
		ServerVersion:     "SSH-2.0-mirrorfs-worker",
	}
	s.config.AddHostKey(hostKey)
	return s, nil
}

// Serve accepts connections on l until ctx is done, then closes l and every open connection,
// waits for their goroutines and returns nil. If l fails for another reason, Serve closes the
// open connections and returns that error.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	s.log.Info("worker listening", "addr", l.Addr().String(), "root", s.root,
		"host_key", ssh.FingerprintSHA256(s.hostKey.PublicKey()))

	var (
		mu     sync.Mutex
		conns  = make(map[net.Conn]struct{})
		closed bool
		wg     sync.WaitGroup
	)
	closeAll := func() {
		mu.Lock()
		defer mu.Unlock()
		closed = true
		for c := range conns {
			c.Close()
		}
	}
	stop := context.AfterFunc(ctx, func() {
		l.Close()
		closeAll()
	})
	defer func() {
		stop()
		closeAll()
		wg.Wait()
	}()

	backoff := time.Duration(0)
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				s.log.Info("worker stopped", "addr", l.Addr().String())
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("worker: accept: %w", err)
			}
			// Transient failures such as EMFILE: back off instead of spinning or giving up.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", "err", err, "in", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			continue
		}
		backoff = 0

		mu.Lock()
		if closed {
			mu.Unlock()
			c.Close()
			continue
		}
		conns[c] = struct{}{}
		mu.Unlock()

		wg.Go(func() {
			defer func() {
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
			s.serveConn(&wg, c)
		})
	}
}

// authorize is the PublicKeyCallback. It re-reads the authorized keys file on every call, so
// keys can be added and revoked while the server runs, and fails closed if the file is unreadable.
func (s *Server) authorize(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	fp := ssh.FingerprintSHA256(key)
	log := s.log.With("remote", meta.RemoteAddr().String(), "user", meta.User(), "key", fp, "key_type", key.Type())
	keys, bad, err := readAuthorizedKeys(s.authKeys)
	if err != nil {
		log.Error("refused key: cannot read authorized keys", "err", err)
		return nil, errors.New("authorized keys unavailable")
	}
	if len(bad) > 0 {
		log.Debug("authorized keys: skipping lines that do not parse", "file", s.authKeys, "lines", bad)
	}
	wire := key.Marshal()
	refusal := ""
	for _, k := range keys {
		if !bytes.Equal(k.key.Marshal(), wire) {
			continue
		}
		if opt := k.unsupportedOption(); opt != "" {
			refusal = fmt.Sprintf("listed on line %d with unsupported option %q", k.line, opt)
			continue
		}
		if _, cert := k.key.(*ssh.Certificate); cert {
			// Its validity, principals and critical options would go
			// unchecked; OpenSSH takes a user certificate only through a
			// cert-authority line, which this server refuses.
			refusal = fmt.Sprintf("listed on line %d as a certificate: list the plain public key instead", k.line)
			continue
		}
		return &ssh.Permissions{Extensions: map[string]string{extFingerprint: fp, extComment: k.comment}}, nil
	}
	if refusal == "" {
		refusal = "not in " + s.authKeys
	}
	log.Warn("refused key", "reason", refusal)
	return nil, errors.New("public key not authorized")
}

// serveConn runs one SSH connection until it closes. Channel goroutines are added to wg so that
// Serve waits for them.
func (s *Server) serveConn(wg *sync.WaitGroup, c net.Conn) {
	remote := c.RemoteAddr().String()
	start := time.Now()
	_ = c.SetDeadline(start.Add(handshakeTimeout))
	sc, chans, reqs, err := ssh.NewServerConn(c, s.config)
	if err != nil {
		if errors.Is(err, net.ErrClosed) {
			s.log.Info("connection closed during handshake by shutdown", "remote", remote)
		} else {
			s.log.Warn("refused connection", "remote", remote, "reason", err)
		}
		return
	}
	_ = c.SetDeadline(time.Time{})
	log := s.log.With("remote", remote, "user", sc.User(),
		"key", sc.Permissions.Extensions[extFingerprint])
	log.Info("connection accepted", "key_comment", sc.Permissions.Extensions[extComment],
		"client", string(sc.ClientVersion()))

	wg.Go(func() { refuseGlobalRequests(log, reqs) })
	for nc := range chans {
		if t := nc.ChannelType(); t != "session" {
			log.Warn("refused channel", "type", t, "reason", "only session channels for the sftp subsystem are allowed")
			_ = nc.Reject(ssh.Prohibited, "only the sftp subsystem is available")
			continue
		}
		wg.Go(func() { s.serveSession(log, nc) })
	}
	err = sc.Wait()
	if errors.Is(err, io.EOF) {
		err = nil
	}
	log.Info("connection closed", "duration", time.Since(start).Round(time.Millisecond), "err", err)
}

// refuseGlobalRequests answers every global request (tcpip-forward, …) with a failure.
// OpenSSH keepalives expect exactly that, so they are not logged as refusals.
func refuseGlobalRequests(log *slog.Logger, reqs <-chan *ssh.Request) {
	for req := range reqs {
		if !strings.HasPrefix(req.Type, "keepalive@") {
			log.Warn("refused global request", "type", req.Type, "reason", "only the sftp subsystem is available")
		}
		if req.WantReply {
			_ = req.Reply(false, nil)
		}
	}
}

// serveSession accepts a session channel and serves its one sftp subsystem request; every other
// request (exec, shell, pty-req, env, x11-req, …) is refused.
func (s *Server) serveSession(log *slog.Logger, nc ssh.NewChannel) {
	ch, reqs, err := nc.Accept()
	if err != nil {
		log.Warn("accept session channel", "err", err)
		return
	}
	var done sync.WaitGroup
	started := false
	for req := range reqs {
		ok := false
		switch req.Type {
		case "subsystem":
			var p struct{ Name string }
			switch err := ssh.Unmarshal(req.Payload, &p); {
			case err != nil:
				log.Warn("refused subsystem request", "reason", "malformed: "+err.Error())
			case p.Name != "sftp":
				log.Warn("refused subsystem", "subsystem", p.Name, "reason", "only sftp is available")
			case started:
				log.Warn("refused subsystem", "subsystem", p.Name, "reason", "session already runs sftp")
			default:
				// The root is checked again: a symlink put in its
				// place since the start is not followed either.
				root, err := s.openRoot()
				if err != nil {
					log.Error("refused subsystem: cannot open root", "root", s.root, "err", err)
					break
				}
				ok, started = true, true
				done.Go(func() { s.serveSFTP(log, ch, root) })
			}
		case "env":
			// OpenSSH clients send LANG and the like; refusing is normal and harmless.
			log.Debug("refused env request")
		case "exec":
			var p struct{ Command string }
			_ = ssh.Unmarshal(req.Payload, &p)
			log.Warn("refused exec", "command", p.Command, "reason", "only the sftp subsystem is available")
		default:
			log.Warn("refused session request", "type", req.Type, "reason", "only the sftp subsystem is available")
		}
		if req.WantReply {
			_ = req.Reply(ok, nil)
		}
	}
	done.Wait()
	ch.Close()
}

// openRoot opens the root for one session, refusing it if it has become
// a symlink.
func (s *Server) openRoot() (*replicate.Local, error) {
	return replicate.NewLocal(s.root)
}

// serveSFTP runs pkg/sftp's request server on ch, confined to root, then reports an exit status
// and closes the channel.
func (s *Server) serveSFTP(log *slog.Logger, ch ssh.Channel, root *replicate.Local) {
	defer root.Close()
	log.Info("sftp session started")
	h := &rootFS{l: root, log: log}
	srv := sftp.NewRequestServer(ch, h.handlers())
	err := srv.Serve()
	srv.Close()
	status := uint32(0)
	if err != nil && !errors.Is(err, io.EOF) {
		status = 1
		log.Warn("sftp session failed", "err", err)
	} else {
		log.Info("sftp session ended")
	}
	_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{status}))
	ch.Close()
}
