package agent

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mirrorfs/mirrorfs/replicate"
	"github.com/mirrorfs/mirrorfs/replicate/transporttest"
)

// pipeClient runs an agent on dir in this process, connected by pipes.
func pipeClient(t testing.TB, dir string) *Client {
	t.Helper()
	toAgent, fromMaster := io.Pipe()
	toMaster, fromAgent := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		err := Serve(ctx, toAgent, fromAgent, dir, nil)
		fromAgent.CloseWithError(io.EOF)
		served <- err
	}()
	kill := func() {
		fromMaster.CloseWithError(errors.New("killed"))
		toMaster.CloseWithError(errors.New("killed"))
	}
	closeFn := func() error {
		fromMaster.Close()
		return nil
	}
	c, err := NewClient(t.Context(), toMaster, fromMaster, kill, closeFn, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("agent: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("agent did not stop after the master closed its input")
		}
		cancel()
	})
	return c
}

func TestConformance(t *testing.T) {
	transporttest.Run(t, func(t *testing.T) (replicate.Transport, string) {
		dir := t.TempDir()
		return pipeClient(t, dir), dir
	})
}

func TestRemoteErrorsKeepTheirClass(t *testing.T) {
	c := pipeClient(t, t.TempDir())
	_, err := c.Lstat(t.Context(), "missing")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Lstat of a missing path: %v, want fs.ErrNotExist", err)
	}
	if err := c.Mkdir(t.Context(), "../up", 0o755); !errors.Is(err, replicate.ErrInvalidPath) {
		t.Errorf("Mkdir ../up: %v, want ErrInvalidPath", err)
	}
	// The client stays usable after remote errors.
	if err := c.Mkdir(t.Context(), "d", 0o755); err != nil {
		t.Fatal(err)
	}
}

// A failing source aborts the transfer: the agent removes its temp file
// and the client stays usable.
func TestWriteAbort(t *testing.T) {
	dir := t.TempDir()
	c := pipeClient(t, dir)
	boom := errors.New("source changed")
	r := io.MultiReader(strings.NewReader(strings.Repeat("x", 3*dataChunk)), errReader{boom})
	err := c.WriteFileAtomic(t.Context(), "f", r, replicate.Attrs{Perm: 0o644, UID: -1, GID: -1})
	if !errors.Is(err, boom) {
		t.Fatalf("WriteFileAtomic with a failing source: %v, want %v", err, boom)
	}
	fis, err := c.ReadDir(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(fis) != 0 {
		t.Fatalf("after an aborted write the root holds %v", fis)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestRoundTrip(t *testing.T) {
	reqs := []request{
		{Op: opHello, Off: Version},
		{Op: opWriteBegin, Path: "a/b", Mode: 0o4755, UID: -1, GID: 33, Atime: noTime, Mtime: 1234567890123456789},
		{Op: opSetXattr, Path: "x", Path2: "user.k", Data: []byte{0, 1, 2}},
	}
	for _, r := range reqs {
		got, err := decodeRequest(r.encode())
		if err != nil {
			t.Fatal(err)
		}
		if r.Data == nil {
			r.Data = []byte{}
		}
		if got.Data == nil {
			got.Data = []byte{}
		}
		if !reflect.DeepEqual(got, r) {
			t.Errorf("round trip %+v -> %+v", r, got)
		}
	}
	resp := response{Infos: []replicate.FileInfo{{Name: "n", Mode: fs.ModeDir | 0o755, Size: 4096, Mtime: time.Unix(5, 6), UID: 1, GID: 2}},
		Xattrs: map[string][]byte{"user.a": []byte("v")}, Data: []byte("target")}
	got, err := decodeResponse(resp.encode())
	if err != nil {
		t.Fatal(err)
	}
	if !got.Infos[0].Mtime.Equal(resp.Infos[0].Mtime) || got.Infos[0].Name != "n" || string(got.Xattrs["user.a"]) != "v" || string(got.Data) != "target" {
		t.Errorf("response round trip: %+v", got)
	}
}

// FuzzDecode: nothing on the wire makes either side panic or allocate
// without bound, and what decodes re-encodes to the same request.
func FuzzDecode(f *testing.F) {
	f.Add((&request{Op: opRename, Path: "a", Path2: "b"}).encode())
	f.Add((&response{Infos: []replicate.FileInfo{{Name: "x"}}, Xattrs: map[string][]byte{"user.k": nil}}).encode())
	f.Add([]byte{byte(opWriteData), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := decodeRequest(b); err == nil {
			again, err := decodeRequest(r.encode())
			if err != nil || again.Path != r.Path || again.Path2 != r.Path2 || again.Off != r.Off || string(again.Data) != string(r.Data) {
				t.Fatalf("request does not round-trip: %+v vs %+v (%v)", r, again, err)
			}
		}
		_, _ = decodeResponse(b)
	})
}
