package replicate_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/mirrorfs/mirrorfs/replicate"
	"github.com/mirrorfs/mirrorfs/replicate/transporttest"
)

// makeSparse writes a file of size bytes with data at the given offsets
// and holes elsewhere, and returns its content.
func makeSparse(t *testing.T, name string, size int64, data []byte, offs ...int64) []byte {
	t.Helper()
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := make([]byte, size)
	for _, off := range offs {
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], data)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return want
}

func allocated(t *testing.T, name string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(name, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func checkSparseCopy(t *testing.T, name string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: content differs (len %d, want %d)", name, len(got), len(want))
	}
	if a := allocated(t, name); a >= 64<<10 {
		t.Errorf("%s: %d bytes allocated: the holes were filled", name, a)
	}
}

// A 64 MiB store file with 4 KiB of data costs less than 64 KiB on the
// wire, lands sparse, and counts only its data as sent.
func TestSFTPSendsSparseFileHoles(t *testing.T) {
	d := transporttest.StartSSHD(t)
	store, worker := t.TempDir(), t.TempDir()
	data := bytes.Repeat([]byte{0xa5}, 4096)
	want := makeSparse(t, filepath.Join(store, "sparse"), 64<<20, data, 32<<20)
	if a := allocated(t, filepath.Join(store, "sparse")); a >= 64<<10 {
		t.Skipf("the store's file system does not make holes (%d bytes allocated)", a)
	}
	tr, err := replicate.DialSFTP(t.Context(), sftpOptions(t, d, worker))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	st := tr.(replicate.Stats)
	before := st.BytesSent()
	n, err := replicate.SendStoreFile(t, store, "sparse", tr)
	if err != nil {
		t.Fatal(err)
	}
	sent := st.BytesSent() - before
	t.Logf("data bytes %d, bytes on the wire %d", n, sent)
	if sent >= 64<<10 {
		t.Errorf("%d bytes sent for a 64 MiB file with 4 KiB of data", sent)
	}
	if n != int64(len(data)) {
		t.Errorf("sendFile counted %d bytes sent, want %d", n, len(data))
	}
	checkSparseCopy(t, filepath.Join(worker, "sparse"), want)
}

// The local transport keeps holes too, including leading and trailing
// ones, and a file without holes is sent whole.
func TestLocalSendsSparseFile(t *testing.T) {
	store, worker := t.TempDir(), t.TempDir()
	tr, err := replicate.NewLocal(worker)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	data := bytes.Repeat([]byte("data"), 1024)
	want := makeSparse(t, filepath.Join(store, "sparse"), 8<<20, data, 1<<20, 5<<20)
	n, err := replicate.SendStoreFile(t, store, "sparse", tr)
	if err != nil {
		t.Fatal(err)
	}
	if allocated(t, filepath.Join(store, "sparse")) < 64<<10 && n != 2*int64(len(data)) {
		t.Errorf("counted %d bytes sent for %d bytes of data", n, 2*len(data))
	}
	checkSparseCopy(t, filepath.Join(worker, "sparse"), want)

	dense := bytes.Repeat([]byte("0123456789"), 100_000)
	if err := os.WriteFile(filepath.Join(store, "dense"), dense, 0o644); err != nil {
		t.Fatal(err)
	}
	if n, err = replicate.SendStoreFile(t, store, "dense", tr); err != nil || n != int64(len(dense)) {
		t.Fatalf("dense file: %d bytes sent, %v; want %d", n, err, len(dense))
	}
	if got, _ := os.ReadFile(filepath.Join(worker, "dense")); !bytes.Equal(got, dense) {
		t.Fatal("dense file: content differs")
	}
}

// changingTransport writes to the store file while the transport reads it.
type changingTransport struct {
	replicate.Transport
	store string
}

func (c changingTransport) WriteFileAtomic(ctx context.Context, p string, r io.Reader, a replicate.Attrs) error {
	return c.Transport.WriteFileAtomic(ctx, p, changeOnRead{r.(replicate.SparseReader), filepath.Join(c.store, p)}, a)
}

// changeOnRead is a SparseReader that writes into a hole of the file
// once the first segment was handed out.
type changeOnRead struct {
	replicate.SparseReader
	name string
}

func (c changeOnRead) NextData() (int64, io.Reader, error) {
	off, data, err := c.SparseReader.NextData()
	if err == nil && off == 1<<20 {
		f, ferr := os.OpenFile(c.name, os.O_WRONLY, 0)
		if ferr == nil {
			_, _ = f.WriteAt([]byte("late"), 3<<20)
			f.Close()
		}
	}
	return off, data, err
}

// The store file changing while its segments are read fails the send, and
// the worker keeps what it had.
func TestSparseSendDetectsChange(t *testing.T) {
	store, worker := t.TempDir(), t.TempDir()
	l, err := replicate.NewLocal(worker)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	makeSparse(t, filepath.Join(store, "f"), 4<<20, []byte("data"), 1<<20)
	if err := os.WriteFile(filepath.Join(worker, "f"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = replicate.SendStoreFile(t, store, "f", changingTransport{l, store})
	if !errors.Is(err, replicate.ErrSourceChanged) {
		t.Fatalf("sendFile of a file changing during the read = %v, want %v", err, replicate.ErrSourceChanged)
	}
	if got, _ := os.ReadFile(filepath.Join(worker, "f")); string(got) != "old" {
		t.Fatalf("worker file = %q, want it unchanged", got)
	}
}
