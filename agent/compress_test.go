package agent

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/s2"
	"github.com/mirrorfs/mirrorfs/replicate"
)

// countingWriter counts the bytes the master writes to the agent.
type countingWriter struct {
	w io.WriteCloser
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) Close() error { return c.w.Close() }

// A text file crosses the stream compressed (here about a tenth of its
// size) and lands intact; random data goes as it is, barely larger.
func TestWriteDataCompressed(t *testing.T) {
	dir := t.TempDir()
	toAgent, fromMaster := io.Pipe()
	toMaster, fromAgent := io.Pipe()
	go func() {
		Serve(t.Context(), toAgent, fromAgent, dir, nil)
		fromAgent.CloseWithError(io.EOF)
	}()
	cw := &countingWriter{w: fromMaster}
	c, err := NewClient(t.Context(), toMaster, cw, func() { fromMaster.Close(); toMaster.Close() }, cw.Close, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	page := []byte(strings.Repeat("<li><a href=\"/docs/page.html\">A page of the documentation</a></li>\n", 8000))
	random := randomBytes(len(page), 5)
	for _, tc := range []struct {
		name       string
		data       []byte
		maxPercent int64
	}{{"page.html", page, 20}, {"photo.jpg", random, 101}} {
		before := cw.n
		if err := c.WriteFileAtomic(t.Context(), tc.name, bytes.NewReader(tc.data), replicate.Attrs{Perm: 0o644, UID: -1, GID: -1}); err != nil {
			t.Fatal(err)
		}
		sent := cw.n - before
		t.Logf("%s: %d bytes of content, %d sent", tc.name, len(tc.data), sent)
		if sent*100 > int64(len(tc.data))*tc.maxPercent {
			t.Errorf("%s: %d bytes sent for %d bytes, want at most %d%%", tc.name, sent, len(tc.data), tc.maxPercent)
		}
		got, err := os.ReadFile(filepath.Join(dir, tc.name))
		if err != nil || !bytes.Equal(got, tc.data) {
			t.Fatalf("%s on the worker differs (%v)", tc.name, err)
		}
	}
}

// A compressed frame that does not decode, or decodes past a frame's
// size, fails the write (answered at WriteEnd) and leaves nothing behind.
func TestBadCompressedFrame(t *testing.T) {
	big := bytes.Repeat([]byte("a"), dataChunk+1)
	for name, data := range map[string][]byte{
		"garbage":  []byte("\xff\x00 not an s2 block at all"),
		"too long": s2.Encode(nil, big),
	} {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			send := rawAgent(t, root)
			send(request{Op: opWriteBegin, Path: "f", Mode: 0o644, UID: -1, GID: -1, Atime: noTime, Mtime: noTime})
			send(request{Op: opWriteData, Mode: dataS2, Data: data})
			resp, _ := send(request{Op: opWriteEnd, Off: int64(len(big))})
			if resp.err() == nil || !strings.Contains(resp.err().Error(), "compressed") {
				t.Fatalf("WriteEnd after a bad compressed frame: %v", resp.err())
			}
			noTemp(t, root)
			if _, err := os.Lstat(filepath.Join(root, "f")); err == nil {
				t.Fatal("the file was created")
			}
			// The stream is still in step.
			if resp, _ := send(request{Op: opLstat, Path: ""}); resp.err() != nil {
				t.Fatalf("lstat after: %v", resp.err())
			}
		})
	}
}
