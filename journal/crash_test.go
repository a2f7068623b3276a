package journal

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// These tests run a second process, this test binary re-executed into
// TestHelperProcess, because what they check is between processes: Badger's
// directory lock, and what survives the kill -9 of the process that
// acknowledged an append.
const (
	helperEnv    = "MIRRORFS_JOURNAL_HELPER" // "append" or "hold"
	helperDirEnv = "MIRRORFS_JOURNAL_HELPER_DIR"
)

// TestHelperProcess is not a test: it is the child process of the tests
// below, and returns at once when run normally.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return
	}
	j, err := Open(os.Getenv(helperDirEnv), Options{})
	if err != nil {
		fmt.Printf("error %v\n", err)
		os.Exit(2)
	}
	switch mode {
	case "hold":
		fmt.Printf("ready %d\n", os.Getpid())
		_, _ = io.Copy(io.Discard, os.Stdin) // until the parent goes away
	case "append":
		// Several writers, so acknowledgements come from group commits,
		// each printed only once the append has returned. Half of them
		// do not wait for the sync: their ops must survive the kill too.
		var out sync.Mutex
		var wg sync.WaitGroup
		for w := range 8 {
			appendOp := j.Append
			if w%2 == 1 {
				appendOp = j.AppendUnsynced
			}
			wg.Go(func() {
				for i := 0; ; i++ {
					seq, err := appendOp(context.Background(), helperOp(w, i))
					if err != nil {
						fmt.Printf("error %v\n", err)
						os.Exit(2)
					}
					out.Lock()
					fmt.Printf("ack %d %d %d\n", seq, w, i)
					out.Unlock()
				}
			})
		}
		wg.Wait()
	}
	os.Exit(0)
}

// helperDurable tells whether the helper appended op with Append (its even
// writers) rather than AppendUnsynced.
func helperDurable(op Op) bool { return (op.File>>32)%2 == 0 }

func helperOp(w, i int) Op {
	return Op{Kind: KindWrite, File: uint64(w)<<32 | uint64(i), Path: fmt.Sprintf("worker-%d/file-%d.html", w, i),
		Offset: int64(i) * 512, Length: 512, Time: int64(i + 1)}
}

// startHelper runs TestHelperProcess in mode on dir and returns its stdout
// lines; the process is killed when the test ends.
func startHelper(t *testing.T, mode, dir string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperDirEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd, bufio.NewScanner(stdout)
}

// crashedJournal has a child append to a journal in parallel and kills it
// with SIGKILL mid-stream. It returns the directory and every acknowledged
// seq with the op the child appended under it.
func crashedJournal(t *testing.T) (string, map[uint64]Op) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "journal")
	return dir, crash(t, dir)
}

// crash is crashedJournal on the journal in dir, which may exist.
func crash(t *testing.T, dir string) map[uint64]Op {
	t.Helper()
	cmd, lines := startHelper(t, "append", dir)
	acked := map[uint64]Op{}
	killed := false
	timeout := time.AfterFunc(10*time.Second, func() { _ = cmd.Process.Kill() })
	defer timeout.Stop()
	for lines.Scan() {
		var seq uint64
		var w, i int
		if _, err := fmt.Sscanf(lines.Text(), "ack %d %d %d", &seq, &w, &i); err != nil {
			if strings.HasPrefix(lines.Text(), "error") {
				t.Fatalf("helper: %s", lines.Text())
			}
			continue // test framework output
		}
		op := helperOp(w, i)
		op.Seq = seq
		acked[seq] = op
		if len(acked) == 2000 && !killed {
			// Acks already in the pipe are read below: they count too.
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	err := cmd.Wait()
	if !killed {
		t.Fatalf("helper stopped after %d acks before being killed: %v", len(acked), err)
	}
	t.Logf("killed the appending process after %d acknowledged appends", len(acked))
	return acked
}

// TestKillDurability: every append acknowledged before a kill -9, by Append
// or AppendUnsynced, is in the journal after a restart, with its content, and seqs go on from there.
func TestKillDurability(t *testing.T) {
	dir, acked := crashedJournal(t)
	j := openTest(t, dir, Options{})
	if !j.Recovered() {
		t.Error("Recovered() = false after the writer was killed")
	}
	var maxAcked uint64
	for seq := range acked {
		maxAcked = max(maxAcked, seq)
	}
	if j.LastSeq() < maxAcked {
		t.Fatalf("LastSeq %d after the crash, but seq %d was acknowledged", j.LastSeq(), maxAcked)
	}
	ops := readAll(t, j, 1)
	if uint64(len(ops)) != j.LastSeq() {
		t.Fatalf("%d ops stored, LastSeq %d: seqs have gaps", len(ops), j.LastSeq())
	}
	for i, op := range ops {
		if op.Seq != uint64(i+1) {
			t.Fatalf("op #%d has seq %d", i, op.Seq)
		}
		if want, ok := acked[op.Seq]; ok && !opsEqual(op, want) {
			t.Fatalf("seq %d holds %v, %v was acknowledged", op.Seq, op, want)
		}
	}
	// The unacknowledged tail, if any, is complete ops of the helper too.
	seq, err := j.Append(t.Context(), writeOp(0))
	if err != nil || seq != j.LastSeq() || seq != uint64(len(ops))+1 {
		t.Fatalf("Append after the crash = %d, %v; want %d", seq, err, len(ops)+1)
	}
}

func opsEqual(a, b Op) bool {
	return a.Seq == b.Seq && a.Kind == b.Kind && a.File == b.File && a.Path == b.Path &&
		a.Offset == b.Offset && a.Length == b.Length && a.Time == b.Time
}

// TestReadOnlyAfterCrash: the journal of a killed daemon opens read-only,
// shows every acknowledged op, and is left byte for byte as it was, so that
// the daemon's own restart still does the recovery.
func TestReadOnlyAfterCrash(t *testing.T) {
	dir, acked := crashedJournal(t)
	before := fingerprint(t, dir)

	ro, err := Open(dir, Options{ReadOnly: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("read-only Open after a crash: %v", err)
	}
	if !ro.snapshot {
		t.Log("Badger opened the crashed journal read-only in place")
	}
	ops := readAll(t, ro, 1)
	found := 0
	for _, op := range ops {
		if want, ok := acked[op.Seq]; ok {
			if !opsEqual(op, want) {
				t.Fatalf("seq %d holds %v, %v was acknowledged", op.Seq, op, want)
			}
			found++
		}
	}
	if found != len(acked) {
		t.Fatalf("read-only view shows %d of %d acknowledged ops", found, len(acked))
	}
	if _, err := ro.Append(t.Context(), writeOp(0)); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only Append: %v, want ErrReadOnly", err)
	}
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("read-write Open during a read-only inspection: %v, want ErrLocked", err)
	}
	snapshot := ro.dbDir
	if err := ro.Close(); err != nil {
		t.Fatal(err)
	}
	if after := fingerprint(t, dir); !maps.Equal(before, after) {
		t.Fatalf("read-only open changed the crashed journal:\nbefore %v\nafter  %v", before, after)
	}
	if snapshot != dir {
		if _, err := os.Stat(snapshot); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("private copy %s left behind: %v", snapshot, err)
		}
	}

	// The daemon's restart recovers the same ops.
	j := openTest(t, dir, Options{})
	if got := readAll(t, j, 1); len(got) != len(ops) {
		t.Fatalf("after recovery %d ops, read-only view had %d", len(got), len(ops))
	}
}

// TestLockedByOtherProcess: while a daemon holds the journal, Open fails at
// once with ErrLocked, naming the directory and the holder.
func TestLockedByOtherProcess(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "journal")
	_, lines := startHelper(t, "hold", dir)
	var pid int
	for lines.Scan() {
		if _, err := fmt.Sscanf(lines.Text(), "ready %d", &pid); err == nil {
			break
		}
		if strings.HasPrefix(lines.Text(), "error") {
			t.Fatalf("helper: %s", lines.Text())
		}
	}
	if pid == 0 {
		t.Fatal("helper never got the journal")
	}
	for _, ro := range []bool{false, true} {
		start := time.Now()
		_, err := Open(dir, Options{ReadOnly: ro})
		if !errors.Is(err, ErrLocked) {
			t.Fatalf("Open(ReadOnly: %v) of a held journal: %v, want ErrLocked", ro, err)
		}
		if took := time.Since(start); took > 5*time.Second { // at once; a wait for the lock is what this catches
			t.Errorf("Open(ReadOnly: %v) took %v to fail", ro, took)
		}
		if msg := err.Error(); !strings.Contains(msg, dir) || (!ro && !strings.Contains(msg, fmt.Sprint(pid))) {
			t.Errorf("error %q should name %s and pid %d", msg, dir, pid)
		}
	}
}

// TestDamagedWALAfterCrashRefused: after a kill -9, the write-ahead log is
// damaged in the middle of what it holds. Badger would replay it up to the
// damage and cut the rest, acknowledged ops included; Open refuses instead
// (ErrCorrupt naming the log and the ops at stake), for a writer and a
// reader, and leaves every byte as it was.
func TestDamagedWALAfterCrashRefused(t *testing.T) {
	dir, acked := crashedJournal(t)
	// Only an Append answers after the sync that sets the DURABLE mark; an
	// AppendUnsynced of a later op may be answered before the mark names it.
	var maxDurable uint64
	for seq, op := range acked {
		if helperDurable(op) {
			maxDurable = max(maxDurable, seq)
		}
	}
	if maxDurable == 0 {
		t.Fatal("no durable Append was acknowledged before the kill")
	}
	mems, _ := filepath.Glob(filepath.Join(dir, "*.mem"))
	if len(mems) == 0 {
		t.Fatal("no write-ahead log after the crash")
	}
	slices.Sort(mems)
	wal := mems[len(mems)-1] // the live log, holding the latest ops
	data, err := os.ReadFile(wal)
	if err != nil {
		t.Fatal(err)
	}
	end := len(data)
	for end > 0 && data[end-1] == 0 {
		end--
	}
	if end < 4096 {
		t.Fatalf("%s holds only %d bytes of entries", wal, end)
	}
	f, err := os.OpenFile(wal, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("\xde\xad\xbe\xef damaged entry \x00\xff\x13\x37"), int64(end/2)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	before := fingerprint(t, dir)
	for _, ro := range []bool{false, true} {
		_, err := Open(dir, Options{ReadOnly: ro, Logger: testLogger(t)})
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "write-ahead log") {
			t.Fatalf("Open(ReadOnly: %v) with a damaged log: %v, want ErrCorrupt naming the log", ro, err)
		}
		// The mark is set before a durable Append is answered: it names
		// the last such op or a later one, and recovery keeps fewer.
		var kept, named uint64
		if _, serr := fmt.Sscanf(err.Error()[strings.Index(err.Error(), "up to #"):], "up to #%d, but #%d", &kept, &named); serr != nil || named < maxDurable || kept >= named {
			t.Fatalf("error names ops up to #%d and #%d (%v), want a mark of at least the last durable Append #%d and fewer kept", kept, named, serr, maxDurable)
		}
		t.Logf("refused: %v", err)
	}
	if after := fingerprint(t, dir); !maps.Equal(before, after) {
		t.Fatalf("refused journal changed:\n%v\n%v", before, after)
	}
}

// After a crash, opening the journal (the daemon's trial of Badger's
// recovery, or a read-only inspection) copies it to $TMPDIR first: when
// that fails, the error says where the copy goes and what to do, rather
// than looking like a fault of the journal.
func TestRecoveryCopyNamesTmpdir(t *testing.T) {
	dir, _ := crashedJournal(t)
	noRoom := filepath.Join(t.TempDir(), "missing")
	t.Setenv("TMPDIR", noRoom)
	for _, opts := range []Options{{}, {ReadOnly: true}} {
		j, err := Open(dir, opts)
		if err == nil {
			j.Close()
			t.Fatalf("Open(ReadOnly %v) with TMPDIR %s missing: no error", opts.ReadOnly, noRoom)
		}
		for _, want := range []string{noRoom, "set TMPDIR"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Open(ReadOnly %v): error %q does not mention %q", opts.ReadOnly, err, want)
			}
		}
		if errors.Is(err, ErrCorrupt) {
			t.Errorf("Open(ReadOnly %v): the journal reported damaged: %v", opts.ReadOnly, err)
		}
	}
}

// Read after a crash (no daemon runs), the journal says that every worker
// gets a full comparison with the store, which the daemon's next start
// does; not only the workers that lack ops.
func TestInspectAfterCrashShowsFullCopy(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "journal")
	j := openTest(t, dir, Options{})
	appendN(t, j, 1)
	if err := j.SetCursor("w1", Cursor{Applied: 1}); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	crash(t, dir)

	j = openTest(t, dir, Options{ReadOnly: true})
	if !j.Recovered() {
		t.Fatal("read-only open after a crash: Recovered false")
	}
	st, err := Inspect(j, []string{"w1"}, InspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if w := st.Workers[0]; !w.NeedsFullCopy || !strings.Contains(w.FullCopyReason, "did not stop cleanly") {
		t.Errorf("after a crash: w1 NeedsFullCopy %v (%q), want true, saying the daemon did not stop cleanly", w.NeedsFullCopy, w.FullCopyReason)
	}
}
