package replicate

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func newHostKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// The host key callback accepts the listed key and refuses others with a
// message that names the address, the fingerprint of the key offered and,
// for a mismatch, the known key and the known_hosts file.
func TestHostKeyCheckMessages(t *testing.T) {
	const addr = "127.0.0.1:2222"
	known, other := newHostKey(t), newHostKey(t)
	file := filepath.Join(t.TempDir(), "known_hosts")
	line := knownhosts.Line([]string{knownhosts.Normalize(addr)}, known)
	if err := os.WriteFile(file, []byte(line+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	check, algos, err := hostKeyCheck(file, addr)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(algos, []string{ssh.KeyAlgoED25519}) {
		t.Errorf("host key algorithms = %v, want [%s]", algos, ssh.KeyAlgoED25519)
	}
	tcp := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2222}

	if err := check(addr, tcp, known); err != nil {
		t.Fatalf("the listed key is refused: %v", err)
	}

	// Mismatch: the worker offers another key than the one listed.
	err = check(addr, tcp, other)
	if err == nil {
		t.Fatal("a changed host key is accepted")
	}
	msg := err.Error()
	for _, want := range []string{"MISMATCH", addr, "ssh-ed25519 " + ssh.FingerprintSHA256(other), ssh.FingerprintSHA256(known), file} {
		if !strings.Contains(msg, want) {
			t.Errorf("mismatch error lacks %q: %s", want, msg)
		}
	}
	var ke *knownhosts.KeyError
	if errors.As(err, &ke) {
		t.Errorf("mismatch error wraps the raw knownhosts.KeyError (its text says nothing useful): %v", err)
	}

	// Unknown: no line for the address at all.
	const unknownAddr = "127.0.0.1:2223"
	err = check(unknownAddr, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2223}, other)
	if err == nil {
		t.Fatal("an unknown host is accepted")
	}
	msg = err.Error()
	for _, want := range []string{"unknown", unknownAddr, "ssh-ed25519 " + ssh.FingerprintSHA256(other), file} {
		if !strings.Contains(msg, want) {
			t.Errorf("unknown-host error lacks %q: %s", want, msg)
		}
	}
	if strings.Contains(msg, "MISMATCH") {
		t.Errorf("unknown-host error claims a mismatch: %s", msg)
	}
}

// The key types known_hosts lists for a worker are what the client asks
// for, on port 22 too (whose lines have no port). The lookup got no type
// for port 22, and a worker with RSA and ed25519 host keys offered RSA
// where only its ed25519 key was listed: HOST KEY MISMATCH.
func TestHostKeyAlgorithmsOnEveryPort(t *testing.T) {
	known := newHostKey(t)
	file := filepath.Join(t.TempDir(), "known_hosts")
	addrs := []string{"127.0.0.1:22", "127.0.0.1:2222", "[::1]:22", "web1.example:22"}
	var lines []string
	for _, addr := range addrs {
		lines = append(lines, knownhosts.Line([]string{knownhosts.Normalize(addr)}, known))
	}
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, addr := range addrs {
		_, algos, err := hostKeyCheck(file, addr)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(algos, []string{ssh.KeyAlgoED25519}) {
			t.Errorf("%s: host key algorithms %v, want [%s], the only type known_hosts lists", addr, algos, ssh.KeyAlgoED25519)
		}
	}
}
