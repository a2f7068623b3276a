package replicate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSHConn is an authenticated SSH connection to a worker, with the bytes
// it moved counted on the TCP connection itself. Transports (SFTP, the
// agent) run their sessions on it.
type SSHConn struct {
	*ssh.Client
	Addr      string // host:port
	conn      *countingConn
	log       *slog.Logger
	timeout   time.Duration
	keepAlive time.Duration
	reply     time.Duration // see SFTPOptions.ReplyTimeout
}

// DialSSH connects to o.Addr and logs in as o.User, accepting only a host
// key listed for the address in o.KnownHosts. Errors start with the
// address.
func DialSSH(ctx context.Context, o SFTPOptions) (*SSHConn, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	addr := o.Addr
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(addr, "22")
	}
	log = log.With("addr", addr)
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 15 * time.Second
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = 15 * time.Second
	}
	if o.ReplyTimeout <= 0 {
		o.ReplyTimeout = DefaultReplyTimeout
	}
	hostKey, algos, err := hostKeyCheck(o.KnownHosts, addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	auth, closeAgent, err := authMethods(o.IdentityFiles)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	defer closeAgent()
	cfg := &ssh.ClientConfig{
		User:              o.User,
		Auth:              auth,
		HostKeyCallback:   hostKey,
		HostKeyAlgorithms: algos,
		Timeout:           o.ConnectTimeout,
	}
	dctx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
	defer cancel()
	raw, err := (&net.Dialer{KeepAlive: o.KeepAlive}).DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	conn := &countingConn{Conn: raw}
	_ = conn.SetDeadline(time.Now().Add(o.ConnectTimeout))
	stop := context.AfterFunc(dctx, func() { raw.Close() })
	sc, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	stopped := stop()
	_ = conn.SetDeadline(time.Time{})
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("%s: %w", addr, err) // x/crypto/ssh says "ssh: ..." itself
	}
	client := ssh.NewClient(sc, chans, reqs)
	if !stopped {
		client.Close()
		return nil, fmt.Errorf("%s: %w", addr, dctx.Err())
	}
	return &SSHConn{Client: client, Addr: addr, conn: conn, log: log, timeout: o.ConnectTimeout, keepAlive: o.KeepAlive, reply: o.ReplyTimeout}, nil
}

// StallWatch watches the requests of a channel of this connection and
// closes the connection when the worker stops answering them.
func (c *SSHConn) StallWatch() *StallWatch { return NewStallWatch(c.reply, c.Kill, c.log) }

// Kill closes the TCP connection so that every blocked call returns.
func (c *SSHConn) Kill() { _ = c.conn.Close() }

// BytesSent is what the connection wrote to the network.
func (c *SSHConn) BytesSent() uint64 { return c.conn.sent.Load() }

// BytesReceived is what the connection read from the network.
func (c *SSHConn) BytesReceived() uint64 { return c.conn.recv.Load() }

// Timeout is the connect timeout, also a bound for session start-up.
func (c *SSHConn) Timeout() time.Duration { return c.timeout }

// Logger is the connection's logger (with the worker's address).
func (c *SSHConn) Logger() *slog.Logger { return c.log }

// KeepAlive sends an SSH keepalive every keepAlive period until done is
// closed, and kills the connection after three unanswered ones: a worker
// that vanished without a FIN must not block the shipper forever.
func (c *SSHConn) KeepAlive(done <-chan struct{}) {
	every := c.keepAlive
	tick := time.NewTicker(every)
	defer tick.Stop()
	missed := 0
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		res := make(chan error, 1)
		go func() {
			_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
			res <- err
		}()
		select {
		case <-done:
			return
		case err := <-res:
			if err != nil {
				c.log.Warn("keepalive failed: closing the connection", "err", err)
				c.Kill()
				return
			}
			missed = 0
		case <-time.After(every):
			if missed++; missed >= 3 {
				c.log.Warn("keepalive unanswered: closing the connection")
				c.Kill()
				return
			}
		}
	}
}

// hostKeyCheck returns a callback accepting only keys in the known_hosts
// file for addr, and the host key algorithms to ask for (those of the
// known keys, so that the server does not offer another type first).
func hostKeyCheck(file, addr string) (ssh.HostKeyCallback, []string, error) {
	if file == "" {
		return nil, nil, errors.New("no known_hosts file configured (host keys are always verified)")
	}
	cb, err := knownhosts.New(file)
	if err != nil {
		return nil, nil, fmt.Errorf("known_hosts: %w", err)
	}
	check := func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		err := cb(hostname, remote, key)
		var ke *knownhosts.KeyError
		var re *knownhosts.RevokedError
		switch {
		case errors.As(err, &ke) && len(ke.Want) == 0:
			return fmt.Errorf("host key of %s is unknown: %s %s is not in %s (verify it, then add it there)",
				hostname, key.Type(), ssh.FingerprintSHA256(key), file)
		case errors.As(err, &ke):
			var known []string
			for _, w := range ke.Want {
				known = append(known, fmt.Sprintf("%s %s (%s:%d)", w.Key.Type(), ssh.FingerprintSHA256(w.Key), w.Filename, w.Line))
			}
			return fmt.Errorf("HOST KEY MISMATCH for %s: it offers %s %s, %s lists %s",
				hostname, key.Type(), ssh.FingerprintSHA256(key), file, strings.Join(known, ", "))
		case errors.As(err, &re):
			return fmt.Errorf("host key of %s is revoked: %s %s", hostname, key.Type(), ssh.FingerprintSHA256(key))
		}
		return err
	}
	// Ask the database which key types it knows for addr.
	var algos []string
	var ke *knownhosts.KeyError
	tcp, _ := net.ResolveTCPAddr("tcp", addr)
	if tcp == nil {
		tcp = &net.TCPAddr{}
	}
	// The callback takes host:port, as x/crypto's client gives it, and
	// normalizes it itself: Normalize drops port 22, which the callback
	// then cannot parse, and no key type was found for port 22.
	if err := cb(addr, tcp, probeKey{}); errors.As(err, &ke) {
		seen := map[string]bool{}
		for _, w := range ke.Want {
			for _, a := range algorithmsFor(w.Key.Type()) {
				if !seen[a] {
					seen[a] = true
					algos = append(algos, a)
				}
			}
		}
	}
	return check, algos, nil
}

func algorithmsFor(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{keyType}
}

// probeKey is a key no known_hosts line matches.
type probeKey struct{}

func (probeKey) Type() string                        { return "mirrorfs-probe" }
func (probeKey) Marshal() []byte                     { return []byte("mirrorfs-probe") }
func (probeKey) Verify([]byte, *ssh.Signature) error { return errors.New("probe key") }
func (probeKey) String() string                      { return "probe" }

// authMethods offers the identity files' keys and the agent's.
func authMethods(files []string) ([]ssh.AuthMethod, func(), error) {
	var signers []ssh.Signer
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, fmt.Errorf("identity file: %w", err)
		}
		s, err := ssh.ParsePrivateKey(b)
		var pp *ssh.PassphraseMissingError
		if errors.As(err, &pp) {
			return nil, nil, fmt.Errorf("identity file %s is encrypted: load it into ssh-agent instead", f)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("identity file %s: %w", f, err)
		}
		signers = append(signers, s)
	}
	closeAgent := func() {}
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
		if ac, err := net.Dial("unix", sock); err == nil {
			closeAgent = func() { ac.Close() }
			if as, err := agent.NewClient(ac).Signers(); err == nil {
				signers = append(signers, as...)
			}
		}
	}
	if len(signers) == 0 {
		closeAgent()
		return nil, nil, errors.New("no identity file and no ssh-agent key to log in with")
	}
	return []ssh.AuthMethod{ssh.PublicKeys(signers...)}, closeAgent, nil
}

// countingConn counts the bytes a connection moves.
type countingConn struct {
	net.Conn
	sent, recv atomic.Uint64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.recv.Add(uint64(n))
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.sent.Add(uint64(n))
	return n, err
}
