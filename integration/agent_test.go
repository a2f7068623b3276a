package integration

import (
	"os"
	"strings"
	"testing"
)

// A worker account that allows SFTP only (a forced sftp-server command, as
// hosting providers set up) cannot run the agent: mirrorfs says why in its
// log and replicates over SFTP on the same connection.
func TestAgentFallsBackToSFTP(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 1, Transport: "sftp-only", PrefillWorker: func(w *sshWorker) {
		keys, err := os.ReadFile(w.AuthorizedKeys)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for line := range strings.SplitSeq(strings.TrimSpace(string(keys)), "\n") {
			out = append(out, `restrict,command="/usr/lib/openssh/sftp-server" `+line)
		}
		if err := os.WriteFile(w.AuthorizedKeys, []byte(strings.Join(out, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}})
	if _, err := os.Stat("/usr/lib/openssh/sftp-server"); err != nil {
		requireReal(t, "/usr/lib/openssh/sftp-server (Debian: openssh-sftp-server)")
	}
	writeFile(t, c.Mount+"/index.html", "served over sftp\n")
	mkdirAll(t, c.Mount+"/css")
	writeFile(t, c.Mount+"/css/site.css", "body{}\n")
	c.waitConverged(t, converge)
	log := readFile(t, c.LogPath)
	if !strings.Contains(log, "agent transport unavailable on this worker: using SFTP") {
		t.Fatalf("no logged reason for the SFTP fallback in the daemon log:\n%s", logTail(c.LogPath, 40))
	}
}
