package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/mirrorfs/mirrorfs/delta"
	"github.com/mirrorfs/mirrorfs/replicate"
	"github.com/mirrorfs/mirrorfs/replicate/transporttest"
	"golang.org/x/sys/unix"
)

// lowerMaxFrame sets the frame limit to n until the test's cleanup, which
// runs after that of an agent started afterwards.
func lowerMaxFrame(t testing.TB, n int) {
	saved := maxFrame
	maxFrame = n
	t.Cleanup(func() { maxFrame = saved })
}

// pipeClient runs an agent on dir in this process, connected by pipes.
func pipeClient(t testing.TB, dir string) *Client {
	t.Helper()
	return pipeClientWith(t, dir, nil)
}

// pipeClientWith is pipeClient with the agent's input passed through in
// (when not nil).
func pipeClientWith(t testing.TB, dir string, in func(io.Reader) io.Reader) *Client {
	t.Helper()
	toAgent, fromMaster := io.Pipe()
	toMaster, fromAgent := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	var agentIn io.Reader = toAgent
	if in != nil {
		agentIn = in(toAgent)
	}
	go func() {
		err := Serve(ctx, agentIn, fromAgent, dir, nil)
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
	f.Add((&request{Op: opWriteSmall, Path: "p.html", Mode: 0o644, Rdev: dataS2, Data: []byte{0x05, 0x10, 'h', 'e', 'l', 'l', 'o'}}).encode())
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

// A root that is itself a symlink is refused before anything is read or
// written, naming the root, its target and the resolved path.
func TestServeRefusesSymlinkRoot(t *testing.T) {
	parent := t.TempDir()
	if err := os.MkdirAll(filepath.Join(parent, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"/", "../.."} {
		root := filepath.Join(parent, "x", "www")
		os.Remove(root)
		if err := os.Symlink(target, root); err != nil {
			t.Fatal(err)
		}
		in := bytes.NewReader(nil)
		var out bytes.Buffer
		err := Serve(t.Context(), in, &out, root, nil)
		if err == nil {
			t.Fatalf("Serve with root %s -> %s: no error", root, target)
		}
		for _, want := range []string{root, "symlink", target} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Serve with root -> %s: error %q does not mention %q", target, err, want)
			}
		}
		if out.Len() != 0 {
			t.Errorf("Serve with a symlink root answered %d bytes", out.Len())
		}
	}
	ents, err := os.ReadDir(parent)
	if err != nil || len(ents) != 1 || ents[0].Name() != "x" {
		t.Fatalf("parent of the root holds %v (%v), want only x", ents, err)
	}
}

// agentPipes serves an agent on root until the test ends, over pipes: the
// master's frames go to fromMaster, the agent's answers come from toMaster.
func agentPipes(t *testing.T, root string) (fromMaster *io.PipeWriter, toMaster *io.PipeReader) {
	t.Helper()
	toAgent, fromMaster := io.Pipe()
	toMaster, fromAgent := io.Pipe()
	served := make(chan error, 1)
	go func() {
		err := Serve(t.Context(), toAgent, fromAgent, root, nil)
		fromAgent.CloseWithError(io.EOF)
		served <- err
	}()
	t.Cleanup(func() {
		fromMaster.Close()
		if err := <-served; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	return fromMaster, toMaster
}

// rawAgent runs Serve on root and returns a function sending one request
// frame and returning the decoded answer (none for opWriteBegin).
func rawAgent(t *testing.T, root string) func(request) (response, bool) {
	t.Helper()
	fromMaster, toMaster := agentPipes(t, root)
	var buf []byte
	send := func(r request) (response, bool) {
		t.Helper()
		if err := writeFrame(fromMaster, r.encode()); err != nil {
			t.Fatalf("send %v: %v", r.Op, err)
		}
		if r.Op == opWriteBegin || r.Op == opWriteData || r.Op == opPatchBegin {
			return response{}, false
		}
		var err error
		buf, err = readFrame(toMaster, buf)
		if err != nil {
			t.Fatalf("answer to %v %q %q: %v", r.Op, r.Path, r.Path2, err)
		}
		resp, err := decodeResponse(buf)
		if err != nil {
			t.Fatalf("answer to %v: %v", r.Op, err)
		}
		return resp, true
	}
	if resp, _ := send(request{Op: opHello, Off: Version}); resp.err() != nil {
		t.Fatalf("hello: %v", resp.err())
	}
	return send
}

// Paths escaping the root, sent as raw frames in every path-carrying op,
// are refused with ErrInvalidPath and create nothing, inside the root or
// out of it. A symlink's target is data, not a path: any is accepted.
func TestRawFramesInvalidPaths(t *testing.T) {
	parent := t.TempDir()
	root := filepath.Join(parent, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "ok"), []byte("ok"), 0o644); err != nil {
		t.Fatal(err)
	}
	send := rawAgent(t, root)
	now := time.Now().UnixNano()
	for _, bad := range []string{"../x", "/abs", "a/../../b", "..", "ok/../../c"} {
		reqs := []request{
			{Op: opLstat, Path: bad},
			{Op: opReadDir, Path: bad},
			{Op: opReadlink, Path: bad},
			{Op: opMkdir, Path: bad, Mode: 0o755},
			{Op: opRemove, Path: bad},
			{Op: opRmdir, Path: bad},
			{Op: opRename, Path: bad, Path2: "new"},
			{Op: opRename, Path: "ok", Path2: bad},
			{Op: opSymlink, Path: bad, Path2: "ok"},
			{Op: opLink, Path: bad, Path2: "new"},
			{Op: opLink, Path: "ok", Path2: bad},
			{Op: opChmod, Path: bad, Mode: 0o777},
			{Op: opChown, Path: bad, UID: 1, GID: 1},
			{Op: opChtimes, Path: bad, Atime: now, Mtime: now},
			{Op: opLchown, Path: bad, UID: 1, GID: 1},
			{Op: opLchtimes, Path: bad, Atime: now, Mtime: now},
			{Op: opListXattrs, Path: bad},
			{Op: opSetXattr, Path: bad, Path2: "user.k", Data: []byte("v")},
			{Op: opRemoveXattr, Path: bad, Path2: "user.k"},
			{Op: opMknod, Path: bad, Mode: uint32(fs.ModeNamedPipe | 0o644)},
			{Op: opHash, Path: bad},
			{Op: opWriteSmall, Path: bad, Mode: 0o644, UID: -1, GID: -1, Atime: noTime, Mtime: noTime, Data: []byte("escaped")},
		}
		for _, r := range reqs {
			resp, _ := send(r)
			if err := resp.err(); !errors.Is(err, replicate.ErrInvalidPath) {
				t.Errorf("op %d path %q path2 %q: %v, want ErrInvalidPath", r.Op, r.Path, r.Path2, err)
			}
		}
		// A write: WriteBegin is answered at WriteEnd.
		send(request{Op: opWriteBegin, Path: bad, Mode: 0o644, UID: -1, GID: -1, Atime: noTime, Mtime: noTime})
		send(request{Op: opWriteData, Off: 0, Data: []byte("escaped")})
		resp, _ := send(request{Op: opWriteEnd, Off: 7})
		if err := resp.err(); !errors.Is(err, replicate.ErrInvalidPath) {
			t.Errorf("write %q: %v, want ErrInvalidPath", bad, err)
		}
	}
	// Symlink targets are data: any target is stored as given, inside the root.
	for i, target := range []string{"../x", "/abs", "a/../../b"} {
		name := fmt.Sprintf("link%d", i)
		if resp, _ := send(request{Op: opSymlink, Path: name, Path2: target}); resp.err() != nil {
			t.Errorf("symlink %s -> %s: %v", name, target, resp.err())
			continue
		}
		if got, err := os.Readlink(filepath.Join(root, name)); err != nil || got != target {
			t.Errorf("link%d -> %q (%v), want %q", i, got, err, target)
		}
	}
	// The agent is still in step: a valid request works.
	if resp, _ := send(request{Op: opLstat, Path: "ok"}); resp.err() != nil || len(resp.Infos) != 1 {
		t.Fatalf("lstat ok after the refusals: %v", resp.err())
	}
	ents, err := os.ReadDir(parent)
	if err != nil || len(ents) != 1 || ents[0].Name() != "root" {
		t.Fatalf("parent of the root holds %v (%v), want only root", ents, err)
	}
	ents, err = os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := []string{"link0", "link1", "link2", "ok"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("root holds %v, want %v", names, want)
	}
	if _, err := os.Lstat("/abs"); err == nil {
		t.Fatal("/abs exists")
	}
}

// randomBytes returns n deterministic pseudo-random bytes.
func randomBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// noTemp fails if dir holds a temp file.
func noTemp(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), replicate.TempPrefix) {
			t.Errorf("temp file %s left behind", e.Name())
		}
	}
}

func TestWriteFileDelta(t *testing.T) {
	dir := t.TempDir()
	c := pipeClient(t, dir)
	old := randomBytes(1<<20, 1)
	if err := os.WriteFile(filepath.Join(dir, "f"), old, 0o644); err != nil {
		t.Fatal(err)
	}
	next := bytes.Clone(old)
	copy(next[500<<10:], randomBytes(1<<10, 2))
	mtime := time.Unix(1700000000, 123456789)
	a := replicate.Attrs{Perm: 0o640, UID: -1, GID: -1, Mtime: mtime}
	lit, err := c.WriteFileDelta(t.Context(), "f", bytes.NewReader(next), a)
	if err != nil {
		t.Fatal(err)
	}
	if lit >= 16<<10 {
		t.Errorf("literal = %d bytes for a 1 KiB change, want < 16 KiB", lit)
	}
	got, err := os.ReadFile(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, next) {
		t.Error("worker content differs after the delta")
	}
	fi, err := os.Stat(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(mtime) {
		t.Errorf("attributes %v %v, want 0640 %v", fi.Mode(), fi.ModTime(), mtime)
	}
	noTemp(t, dir)

	// No basis, a small basis, a directory: the caller sends whole.
	if _, err := c.WriteFileDelta(t.Context(), "missing", bytes.NewReader(next), a); !errors.Is(err, replicate.ErrUnsupported) {
		t.Errorf("missing basis: %v, want ErrUnsupported", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "small"), old[:1000], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteFileDelta(t.Context(), "small", bytes.NewReader(next), a); !errors.Is(err, replicate.ErrUnsupported) {
		t.Errorf("small basis: %v, want ErrUnsupported", err)
	}
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteFileDelta(t.Context(), "d", bytes.NewReader(next), a); !errors.Is(err, replicate.ErrUnsupported) {
		t.Errorf("directory basis: %v, want ErrUnsupported", err)
	}
	// The client stays usable.
	if _, err := c.Lstat(t.Context(), "f"); err != nil {
		t.Fatal(err)
	}
}

// A delta computed against another basis than the worker's file fails
// with ErrMismatch and leaves the file and no temp file.
func TestPatchMismatch(t *testing.T) {
	dir := t.TempDir()
	send := rawAgent(t, dir)
	worker := randomBytes(1<<20, 3)
	if err := os.WriteFile(filepath.Join(dir, "f"), worker, 0o644); err != nil {
		t.Fatal(err)
	}
	other := bytes.Clone(worker)
	copy(other[300<<10:], randomBytes(4<<10, 4)) // the master's idea of the basis
	sig, err := delta.NewSignature(bytes.NewReader(other), delta.BlockSize(int64(len(other))))
	if err != nil {
		t.Fatal(err)
	}
	next := bytes.Clone(other)
	copy(next[700<<10:], randomBytes(1<<10, 5))
	var d bytes.Buffer
	if _, err := delta.NewDelta(sig, bytes.NewReader(next), &d); err != nil {
		t.Fatal(err)
	}
	send(request{Op: opPatchBegin, Path: "f", Mode: 0o644, UID: -1, GID: -1, Atime: noTime, Mtime: noTime, Off: int64(len(other))})
	stream := d.Bytes()
	for off := 0; off < len(stream); off += dataChunk {
		send(request{Op: opWriteData, Off: int64(off), Data: stream[off:min(off+dataChunk, len(stream))]})
	}
	resp, _ := send(request{Op: opWriteEnd, Off: int64(len(stream))})
	if err := resp.err(); !errors.Is(err, delta.ErrMismatch) {
		t.Fatalf("patch against another basis: %v, want delta.ErrMismatch", err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, worker) {
		t.Error("worker file changed by a failed patch")
	}
	noTemp(t, dir)

	// A corrupt delta: ErrCorrupt, nothing changed; the agent goes on.
	send(request{Op: opPatchBegin, Path: "f", Mode: 0o644, UID: -1, GID: -1, Atime: noTime, Mtime: noTime, Off: int64(len(worker))})
	send(request{Op: opWriteData, Data: []byte("garbage that is no delta")})
	resp, _ = send(request{Op: opWriteEnd, Off: 24})
	if err := resp.err(); !errors.Is(err, delta.ErrCorrupt) {
		t.Errorf("corrupt delta: %v, want delta.ErrCorrupt", err)
	}
	// A basis of another size than the master expects: ErrMismatch.
	send(request{Op: opPatchBegin, Path: "f", Mode: 0o644, UID: -1, GID: -1, Atime: noTime, Mtime: noTime, Off: 5})
	send(request{Op: opWriteData, Data: stream[:min(len(stream), 1000)]})
	resp, _ = send(request{Op: opWriteEnd, Off: 1000})
	if err := resp.err(); !errors.Is(err, delta.ErrMismatch) {
		t.Errorf("basis of another size: %v, want delta.ErrMismatch", err)
	}
	got, _ = os.ReadFile(filepath.Join(dir, "f"))
	if !bytes.Equal(got, worker) {
		t.Error("worker file changed by a failed patch")
	}
	noTemp(t, dir)
	if resp, _ := send(request{Op: opLstat, Path: "f"}); resp.err() != nil {
		t.Errorf("agent unusable after failed patches: %v", resp.err())
	}
}

// TestSyncOnlyAfterEntryChanges: the client asks the agent for a Sync only
// when a request since the last one may have changed a directory entry.
func TestSyncOnlyAfterEntryChanges(t *testing.T) {
	dir := t.TempDir()
	c := pipeClient(t, dir)
	ctx := t.Context()
	if err := c.WriteFileAtomic(ctx, "a.html", strings.NewReader("a"), replicate.Attrs{Perm: 0o644, UID: -1, GID: -1}); err != nil {
		t.Fatal(err)
	}
	if !c.unsynced {
		t.Fatal("a write left nothing to sync")
	}
	if err := c.Sync(ctx); err != nil || c.unsynced {
		t.Fatalf("Sync = %v, unsynced %v after it", err, c.unsynced)
	}
	if err := c.Chmod(ctx, "a.html", 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Lstat(ctx, "a.html"); err != nil {
		t.Fatal(err)
	}
	if c.unsynced {
		t.Fatal("chmod and lstat change no directory entry, yet a Sync would be sent")
	}
	if err := c.Rename(ctx, "a.html", "b.html"); err != nil {
		t.Fatal(err)
	}
	if !c.unsynced {
		t.Fatal("a rename left nothing to sync")
	}
}

// The attributes of a batch's directories, its last change, carry the
// batch's Sync along: the Sync that ends the batch then sends nothing.
func TestSetAttrsCarriesTheSync(t *testing.T) {
	dir := t.TempDir()
	c := pipeClient(t, dir)
	ctx := t.Context()
	if err := c.Mkdir(ctx, "d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteFileAtomic(ctx, "d/a.html", strings.NewReader("a"), replicate.Attrs{Perm: 0o644, UID: -1, GID: -1}); err != nil {
		t.Fatal(err)
	}
	mt := time.Unix(1_600_000_000, 0)
	res, err := c.SetAttrs(ctx, []replicate.AttrItem{{Path: "d", Dir: true, Attrs: replicate.Attrs{Perm: 0o750, UID: -1, GID: -1, Atime: mt, Mtime: mt}}})
	if err != nil || len(res) != 1 || !res[0].Found || res[0].Err != nil {
		t.Fatalf("SetAttrs: %+v, %v", res, err)
	}
	if c.unsynced {
		t.Error("SetAttrs after a write did not sync: the batch's Sync would cost a round trip of its own")
	}
	if fi, err := os.Stat(filepath.Join(dir, "d")); err != nil || fi.Mode().Perm() != 0o750 || !fi.ModTime().Equal(mt) {
		t.Errorf("d: %v, %v; want mode 0750 and mtime %v", fi.Mode(), err, mt)
	}
}

// A small write with data that does not decode is refused and writes
// nothing; the agent stays in step.
func TestRawFramesBadSmallWrite(t *testing.T) {
	root := t.TempDir()
	send := rawAgent(t, root)
	for _, r := range []request{
		{Op: opWriteSmall, Path: "p", Mode: 0o644, UID: -1, GID: -1, Atime: noTime, Mtime: noTime, Rdev: dataS2, Data: []byte{0xff, 0xff, 0xff}},
		{Op: opWriteSmall, Path: "p", Mode: 0o644, UID: -1, GID: -1, Atime: noTime, Mtime: noTime, Rdev: 7, Data: []byte("x")},
	} {
		if resp, _ := send(r); resp.err() == nil {
			t.Errorf("small write with encoding %d and data %q: no error", r.Rdev, r.Data)
		}
	}
	noTemp(t, root)
	if _, err := os.Lstat(filepath.Join(root, "p")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("p after refused writes: %v, want it missing", err)
	}
	if resp, _ := send(request{Op: opWriteSmall, Path: "p", Mode: 0o644, UID: -1, GID: -1, Atime: noTime, Mtime: noTime, Data: []byte("ok")}); resp.err() != nil {
		t.Fatalf("a valid small write after the refusals: %v", resp.err())
	}
	if b, err := os.ReadFile(filepath.Join(root, "p")); err != nil || string(b) != "ok" {
		t.Errorf("p = %q, %v", b, err)
	}
}

// More requests than one pipeline group holds (pipelineMax) each get their
// own answer, in order: 1,100 small files written, then all kept.
func TestPipelineAcrossGroups(t *testing.T) {
	dir := t.TempDir()
	c := pipeClient(t, dir)
	const n = pipelineMax + 76
	files := make([]replicate.SmallFile, n)
	items := make([]replicate.KeepItem, n)
	for i := range files {
		data := []byte(fmt.Sprintf("file %d\n", i))
		a := replicate.Attrs{Perm: 0o644, UID: -1, GID: -1, Mtime: time.Unix(1_600_000_000, 0)}
		files[i] = replicate.SmallFile{Path: fmt.Sprintf("f%04d", i), Data: data, Attrs: a}
		sum := sha256.Sum256(data)
		items[i] = replicate.KeepItem{Path: files[i].Path, Size: int64(len(data)), Hash: sum[:], Attrs: a}
	}
	res, err := c.WriteSmallFiles(t.Context(), files)
	if err != nil || len(res) != n {
		t.Fatalf("WriteSmallFiles: %d results, %v", len(res), err)
	}
	for i, r := range res {
		if r.Err != nil || r.Kept {
			t.Fatalf("file %d: kept %v, %v; want written", i, r.Kept, r.Err)
		}
		if b, err := os.ReadFile(filepath.Join(dir, files[i].Path)); err != nil || !bytes.Equal(b, files[i].Data) {
			t.Fatalf("%s = %q, %v", files[i].Path, b, err)
		}
	}
	same, err := c.KeepIfSame(t.Context(), items)
	if err != nil || len(same) != n {
		t.Fatalf("KeepIfSame: %d answers, %v", len(same), err)
	}
	for i, ok := range same {
		if !ok {
			t.Fatalf("file %d not kept", i)
		}
	}
}

// Small files that arrive together are written as one run (their fsyncs
// side by side: replicate.Local.WriteSmallFiles), and a request of another
// kind ends the run: the answers come in order, and a removal sent after
// a file's write finds the file there.
func TestSmallFilesRunUntilAnotherRequest(t *testing.T) {
	var mu sync.Mutex
	var runs []int
	testHookSmallRun = func(n int) { mu.Lock(); runs = append(runs, n); mu.Unlock() }
	t.Cleanup(func() { testHookSmallRun = nil })

	root := t.TempDir()
	fromMaster, toMaster := agentPipes(t, root)
	small := func(p, data string) request {
		return request{Op: opWriteSmall, Path: p, Mode: 0o644, UID: -1, GID: -1, Atime: noTime, Mtime: noTime, Data: []byte(data)}
	}
	reqs := []request{{Op: opHello, Off: Version}, small("a.html", "a"), small("b.html", "b"), {Op: opRemove, Path: "a.html"}, small("c.html", "c")}
	var frames bytes.Buffer
	for _, r := range reqs {
		if err := writeFrame(&frames, r.encode()); err != nil {
			t.Fatal(err)
		}
	}
	sent := make(chan error, 1)
	go func() { _, err := fromMaster.Write(frames.Bytes()); sent <- err }() // one write: all buffered at once
	var buf []byte
	for _, r := range reqs {
		var err error
		if buf, err = readFrame(toMaster, buf); err != nil {
			t.Fatalf("answer to %v %s: %v", r.Op, r.Path, err)
		}
		resp, err := decodeResponse(buf)
		if err != nil || resp.err() != nil {
			t.Fatalf("answer to %v %s: %v, %v", r.Op, r.Path, err, resp.err())
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(root, "a.html")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a.html after its removal: %v", err)
	}
	for _, p := range []string{"b.html", "c.html"} {
		if b, err := os.ReadFile(filepath.Join(root, p)); err != nil || string(b) != p[:1] {
			t.Errorf("%s = %q, %v", p, b, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(runs, []int{2, 1}) {
		t.Errorf("small files per run: %v, want [2 1] (a.html and b.html, then c.html after the removal)", runs)
	}
}

// A directory whose listing is larger than one frame is listed whole, in
// several frames none of which exceeds the limit, and the agent stays up.
// The limit is lowered so that a few thousand entries cross it; the
// listing is the agent's real one.
func TestReadDirLargerThanAFrame(t *testing.T) {
	lowerMaxFrame(t, 64<<10) // restored after the agent stopped
	dir := t.TempDir()
	const n = 2000
	want := make([]string, 0, n)
	for i := range n {
		name := fmt.Sprintf("%04d-%s", i, strings.Repeat("n", 110))
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		want = append(want, name)
	}
	// Each entry takes about 130 bytes on the wire: 2000 of them need
	// several 64 KiB frames.
	c := pipeClient(t, dir)
	fis, err := c.ReadDir(t.Context(), "")
	if err != nil {
		t.Fatalf("listing %d entries: %v", n, err)
	}
	var got []string
	for _, fi := range fis {
		got = append(got, fi.Name)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("listing has %d entries, want %d", len(got), len(want))
	}
	// The agent is still in step.
	if _, err := c.Lstat(t.Context(), want[0]); err != nil {
		t.Fatalf("lstat after the listing: %v", err)
	}
}

// listingFrames keeps every frame within the limit, even with the longest
// names a directory can hold, and loses no entry.
func TestListingFramesWithinLimit(t *testing.T) {
	lowerMaxFrame(t, 8<<10)
	var infos []replicate.FileInfo
	for i := range 500 {
		infos = append(infos, replicate.FileInfo{Name: fmt.Sprintf("%03d%s", i, strings.Repeat("x", 252)),
			Mode: fs.ModeDir | fs.ModeSetuid | 0o777, Size: -1 << 62, Mtime: time.Unix(-1<<40, 999999999), UID: 1<<32 - 1, GID: 1<<32 - 1})
	}
	parts := listingFrames(response{Infos: infos})
	var total int
	for i, p := range parts {
		if b := p.encode(); len(b) > maxFrame {
			t.Errorf("frame %d is %d bytes, over %d", i, len(b), maxFrame)
		}
		if more := i < len(parts)-1; p.flag() != more {
			t.Errorf("frame %d of %d: more=%v", i, len(parts), p.flag())
		}
		total += len(p.Infos)
	}
	if total != len(infos) || len(parts) < 2 {
		t.Errorf("%d entries in %d frames, want %d in several", total, len(parts), len(infos))
	}
	if parts := listingFrames(response{}); len(parts) != 1 || parts[0].flag() {
		t.Errorf("an empty listing: %+v", parts)
	}
}

// Requests the master never sends and that would grant privileges on the
// worker are refused, naming the path and what was refused: device nodes
// of any number, and setting or removing xattrs outside user.*. FIFOs,
// sockets and user.* attributes are still served.
func TestRawFramesRefusePrivileged(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	send := rawAgent(t, root)
	refused := []struct {
		req  request
		want []string
	}{
		{request{Op: opMknod, Path: "null", Mode: uint32(fs.ModeDevice | fs.ModeCharDevice | 0o666), Rdev: unix.Mkdev(1, 3)}, []string{"null", "character device"}},
		{request{Op: opMknod, Path: "sda", Mode: uint32(fs.ModeDevice | 0o660), Rdev: unix.Mkdev(8, 0)}, []string{"sda", "block device"}},
		{request{Op: opMknod, Path: "mem", Mode: uint32(fs.ModeCharDevice | 0o666), Rdev: unix.Mkdev(1, 1)}, []string{"mem", "character device"}},
		{request{Op: opSetXattr, Path: "f", Path2: "security.capability", Data: []byte{1, 0, 0, 2, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}}, []string{"f", "security.capability", "set"}},
		{request{Op: opSetXattr, Path: "f", Path2: "trusted.x", Data: []byte("v")}, []string{"f", "trusted.x", "set"}},
		{request{Op: opSetXattr, Path: "f", Path2: "system.posix_acl_access", Data: []byte("v")}, []string{"f", "system.posix_acl_access"}},
		{request{Op: opSetXattr, Path: "f", Path2: "user", Data: []byte("v")}, []string{"f", `"user"`}},
		{request{Op: opRemoveXattr, Path: "f", Path2: "security.selinux"}, []string{"f", "security.selinux", "remove"}},
		{request{Op: opRemoveXattr, Path: "f", Path2: "trusted.x"}, []string{"f", "trusted.x", "remove"}},
	}
	for _, c := range refused {
		resp, _ := send(c.req)
		err := resp.err()
		if err == nil {
			t.Errorf("op %d %q %q: accepted", c.req.Op, c.req.Path, c.req.Path2)
			continue
		}
		for _, w := range append(c.want, "refuses") {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("op %d %q %q: error %q does not mention %q", c.req.Op, c.req.Path, c.req.Path2, err, w)
			}
		}
	}
	for _, name := range []string{"null", "sda", "mem"} {
		if _, err := os.Lstat(filepath.Join(root, name)); err == nil {
			t.Errorf("device node %s created", name)
		}
	}
	for _, name := range []string{"security.capability", "trusted.x", "system.posix_acl_access", "user"} {
		if _, err := unix.Lgetxattr(filepath.Join(root, "f"), name, nil); err == nil {
			t.Errorf("xattr %s set", name)
		}
	}
	// What the master may send is still served.
	if resp, _ := send(request{Op: opMknod, Path: "fifo", Mode: uint32(fs.ModeNamedPipe | 0o644)}); resp.err() != nil {
		t.Errorf("mknod fifo: %v", resp.err())
	}
	if resp, _ := send(request{Op: opMknod, Path: "sock", Mode: uint32(fs.ModeSocket | 0o644)}); resp.err() != nil {
		t.Errorf("mknod socket: %v", resp.err())
	}
	resp, _ := send(request{Op: opSetXattr, Path: "f", Path2: "user.k", Data: []byte("v")})
	if err := resp.err(); errors.Is(err, unix.ENOTSUP) {
		t.Logf("no user xattrs here: %v", err)
	} else if err != nil {
		t.Errorf("set user.k: %v", err)
	} else if resp, _ := send(request{Op: opRemoveXattr, Path: "f", Path2: "user.k"}); resp.err() != nil {
		t.Errorf("remove user.k: %v", resp.err())
	}
}

// An agent that stops answering (its disk hangs) while the connection
// stays up: the stall watch closes the stream once a request waited its
// limit, and the call fails instead of waiting forever.
func TestClientGivesUpOnSilentAgent(t *testing.T) {
	toAgent, fromMaster := io.Pipe()
	toMaster, fromAgent := io.Pipe()
	go func() { // answers the hello, then takes requests and never answers
		if _, err := readFrame(toAgent, nil); err != nil {
			return
		}
		hello := response{Data: []byte("silent")}
		if err := writeFrame(fromAgent, hello.encode()); err != nil {
			return
		}
		io.Copy(io.Discard, toAgent)
	}()
	kill := func() {
		fromMaster.CloseWithError(errors.New("killed"))
		toMaster.CloseWithError(errors.New("killed"))
	}
	watch := replicate.NewStallWatch(100*time.Millisecond, kill, slog.New(slog.DiscardHandler))
	defer watch.Stop()
	c, err := NewClient(t.Context(), watch.Reader(toMaster), watch.Writer(fromMaster), kill, func() error { kill(); return nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.watchStall(watch)
	done := make(chan error, 1)
	go func() { _, err := c.Lstat(context.Background(), "index.html"); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Lstat answered by a silent agent")
		}
	case <-time.After(5 * time.Second):
		kill()
		t.Fatal("Lstat still waiting 5 s after the agent went silent (limit 100 ms)")
	}
}

// A small-file request with more than SmallMax bytes is refused before its
// data is copied: up to smallRunMax requests wait in memory for their run,
// and each frame may hold 16 MiB (4 GiB held before any was refused).
func TestSmallRequestOverSmallMaxHoldsNoData(t *testing.T) {
	for _, tc := range []struct {
		name string
		enc  uint64
		data []byte
	}{
		{"plain", 0, make([]byte, replicate.SmallMax+1)},
		{"compressed", dataS2, s2.Encode(nil, make([]byte, replicate.SmallMax+1))},
	} {
		f := smallRequest(request{Op: opWriteSmall, Path: "f", Rdev: tc.enc, Data: tc.data})
		if f.err == nil || f.file.Data != nil {
			t.Errorf("%s request of %d bytes: error %v, %d bytes held; want an error and none", tc.name, replicate.SmallMax+1, f.err, len(f.file.Data))
		}
	}
	if f := smallRequest(request{Op: opWriteSmall, Path: "f", Data: make([]byte, replicate.SmallMax)}); f.err != nil {
		t.Errorf("a request of SmallMax bytes: %v", f.err)
	}
}

// An answer over one frame (here a file's extended attributes, with the
// limit lowered) is an error naming the file, and the agent stays up: it
// used to end on its own answer, and the master dialled again and asked
// again, for good.
func TestAnswerOverAFrameIsAnError(t *testing.T) {
	lowerMaxFrame(t, 2<<10) // restored after the agent stopped
	dir := t.TempDir()
	big := filepath.Join(dir, "big.html")
	if err := os.WriteFile(big, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := unix.Setxattr(big, fmt.Sprintf("user.x%d", i), bytes.Repeat([]byte{'v'}, 1500), 0); err != nil {
			t.Fatalf("user xattrs on %s: %v", dir, err)
		}
	}
	c := pipeClient(t, dir)
	x, err := c.ListXattrs(t.Context(), "big.html")
	if err == nil || !strings.Contains(err.Error(), "big.html") {
		t.Fatalf("ListXattrs of 3,000 bytes with a 2 KiB frame: %d attributes, %v; want an error naming big.html", len(x), err)
	}
	t.Logf("ListXattrs: %v", err)
	if _, err := c.Lstat(t.Context(), "big.html"); err != nil {
		t.Fatalf("lstat after the refused answer: %v", err)
	}
}
