package worker

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// allowedKeyOptions are the authorized_keys options a key may carry. Each only restricts what the
// key may do, and the server enforces all of them for every key anyway. Any other option (from=,
// command=, expiry-time=, permitopen=, cert-authority, …) would be a restriction or a change of
// meaning that this server does not implement, so a key carrying one is refused.
var allowedKeyOptions = map[string]bool{
	"restrict":            true,
	"no-pty":              true,
	"no-port-forwarding":  true,
	"no-agent-forwarding": true,
	"no-x11-forwarding":   true,
	"no-user-rc":          true,
}

// authorizedKey is one usable line of an authorized_keys file.
type authorizedKey struct {
	key     ssh.PublicKey
	comment string
	options []string
	line    int
}

// unsupportedOption returns the first option of k that the server does not honour, or "".
func (k authorizedKey) unsupportedOption() string {
	for _, o := range k.options {
		name, _, _ := strings.Cut(o, "=")
		if !allowedKeyOptions[strings.ToLower(name)] {
			return o
		}
	}
	return ""
}

// readAuthorizedKeys parses an OpenSSH authorized_keys file. Lines that do not parse are returned
// by number in bad, not treated as an error: OpenSSH skips them too.
func readAuthorizedKeys(path string) (keys []authorizedKey, bad []int, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("authorized keys %s: %w", path, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	n := 0
	for sc.Scan() {
		n++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		key, comment, options, _, err := ssh.ParseAuthorizedKey(line)
		if err != nil {
			bad = append(bad, n)
			continue
		}
		keys = append(keys, authorizedKey{key: key, comment: comment, options: options, line: n})
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("authorized keys %s: %w", path, err)
	}
	return keys, bad, nil
}

// readHostKey loads an unencrypted OpenSSH (or PEM) private key.
func readHostKey(path string) (ssh.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("host key %s: %w", path, err)
	}
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		var missing *ssh.PassphraseMissingError
		if errors.As(err, &missing) {
			return nil, fmt.Errorf("host key %s: encrypted with a passphrase; a host key must be unencrypted", path)
		}
		return nil, fmt.Errorf("host key %s: %w", path, err)
	}
	return signer, nil
}

// GenerateKeyFiles writes a new ed25519 private key in OpenSSH format to privPath (mode 0600) and
// its public half in authorized_keys format to privPath+".pub" (mode 0644), and returns the
// public key. Existing files are replaced; each file is written to a temporary name and renamed
// into place, so a reader never sees half a key. It serves as the host key or the master's key
// for the demo and the tests.
func GenerateKeyFiles(privPath string) (ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	comment := "mirrorfs"
	if host, err := os.Hostname(); err == nil && host != "" {
		comment = "mirrorfs@" + host
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, fmt.Errorf("encode private key %s: %w", privPath, err)
	}
	if err := writeFileAtomic(privPath, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, err
	}
	line := bytes.TrimSuffix(ssh.MarshalAuthorizedKey(sshPub), []byte("\n"))
	line = append(line, " "+comment+"\n"...)
	if err := writeFileAtomic(privPath+".pub", line, 0o644); err != nil {
		return nil, err
	}
	return sshPub, nil
}

// writeFileAtomic writes data to a temporary file beside path, syncs it, sets perm and renames it
// over path.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
