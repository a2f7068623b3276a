package control

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

func TestServeAndFetch(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, sock, func() Status {
			return Status{LastSeq: 7, Workers: []WorkerStatus{{Name: "w1", Pending: 3, Applied: 4}}}
		})
	}()
	var st Status
	var err error
	for range 100 {
		if st, err = Fetch(t.Context(), sock); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if st.LastSeq != 7 || len(st.Workers) != 1 || st.Workers[0].Name != "w1" || st.Workers[0].Pending != 3 {
		t.Fatalf("status = %+v", st)
	}
	if err := Serve(t.Context(), sock, func() Status { return Status{} }); err == nil {
		t.Fatal("a second daemon took over a live control socket")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := Fetch(t.Context(), sock); !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("fetch with no daemon: %v, want ErrNoDaemon", err)
	}
}
