package transporttest

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/mirrorfs/mirrorfs/replicate"
)

// sparseSource is a replicate.SparseReader in memory: data segments in a
// content of size bytes.
type sparseSource struct {
	size int64
	segs []sparseSeg
	end  error // returned by NextData after the last segment (io.EOF if nil)
	next int
	all  *bytes.Reader // the dense content, for Read
}

type sparseSeg struct {
	off  int64
	data []byte
}

func newSparseSource(size int64, end error, segs ...sparseSeg) *sparseSource {
	b := make([]byte, size)
	for _, s := range segs {
		copy(b[s.off:], s.data)
	}
	return &sparseSource{size: size, segs: segs, end: end, all: bytes.NewReader(b)}
}

func (s *sparseSource) content() []byte {
	b := make([]byte, s.size)
	_, _ = s.all.ReadAt(b, 0)
	return b
}

func (s *sparseSource) Read(b []byte) (int, error) { return s.all.Read(b) }
func (s *sparseSource) Size() int64                { return s.size }

func (s *sparseSource) NextData() (int64, io.Reader, error) {
	if s.next == len(s.segs) {
		if s.end != nil {
			return 0, nil, s.end
		}
		return 0, nil, io.EOF
	}
	seg := s.segs[s.next]
	s.next++
	return seg.off, bytes.NewReader(seg.data), nil
}

var _ replicate.SparseReader = (*sparseSource)(nil)

// testSparse: a SparseReader's holes stay holes on the worker, and its
// end error fails the write like a reader's error.
func testSparse(t *testing.T, tr replicate.Transport, dir string) {
	ctx := t.Context()
	data := bytes.Repeat([]byte("sparse!\n"), 512) // 4 KiB
	const size = 3 << 20                           // a 1 MiB hole, 4 KiB of data, a trailing hole
	a := replicate.Attrs{Perm: 0o644, UID: -1, GID: -1}

	src := newSparseSource(size, nil, sparseSeg{1 << 20, data})
	if err := tr.WriteFileAtomic(ctx, "sparse", src, a); err != nil {
		t.Fatalf("WriteFileAtomic(sparse): %v", err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, src.content()) {
		t.Fatalf("sparse: content differs (len %d, want %d)", len(got), size)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, "sparse"), &st); err != nil {
		t.Fatal(err)
	}
	if alloc := st.Blocks * 512; alloc >= 64<<10 {
		t.Errorf("sparse: %d bytes allocated for %d of data: the holes were filled", alloc, len(data))
	}

	// Data at both ends and in the middle; empty content.
	src = newSparseSource(size, nil, sparseSeg{0, []byte("head")}, sparseSeg{1 << 20, data}, sparseSeg{size - 3, []byte("end")})
	if err := tr.WriteFileAtomic(ctx, "sparse", src, a); err != nil {
		t.Fatalf("WriteFileAtomic(sparse, again): %v", err)
	}
	mustContent(t, dir, "sparse", string(src.content()))
	if err := tr.WriteFileAtomic(ctx, "empty", newSparseSource(0, nil), a); err != nil {
		t.Fatalf("WriteFileAtomic(empty): %v", err)
	}
	mustContent(t, dir, "empty", "")

	// An error at the end (the source changed): nothing changes.
	changed := errors.New("source changed")
	src = newSparseSource(size, changed, sparseSeg{0, []byte("new")})
	if err := tr.WriteFileAtomic(ctx, "empty", src, a); !errors.Is(err, changed) {
		t.Fatalf("WriteFileAtomic with a failing SparseReader = %v, want %v", err, changed)
	}
	mustContent(t, dir, "empty", "")
	noTemps(t, dir)
}
