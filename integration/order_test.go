package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// orderSlots is how many paths TestKillKeepsPathOrder rewrites in turn.
const orderSlots = 8

// slotObserver polls the slot files on one worker and records, per slot,
// every version it saw, in the order it saw them. It reads the files as a
// web server would (open, read), so it sees what the worker serves.
type slotObserver struct {
	root string
	mu   sync.Mutex
	seen [orderSlots][]int // distinct versions in order of appearance
	bad  []string          // versions that went backwards, or torn content
}

func (o *slotObserver) poll() {
	for s := range orderSlots {
		data, err := os.ReadFile(filepath.Join(o.root, "order", fmt.Sprintf("slot%d.html", s)))
		if err != nil {
			continue // not there yet
		}
		v, ok := parseSlotVersion(s, string(data))
		o.mu.Lock()
		switch {
		case !ok:
			o.bad = append(o.bad, fmt.Sprintf("slot%d: torn or foreign content %q", s, data))
		case len(o.seen[s]) > 0 && v < o.seen[s][len(o.seen[s])-1]:
			o.bad = append(o.bad, fmt.Sprintf("slot%d: version %d after %d", s, v, o.seen[s][len(o.seen[s])-1]))
			o.seen[s] = append(o.seen[s], v)
		case len(o.seen[s]) == 0 || v != o.seen[s][len(o.seen[s])-1]:
			o.seen[s] = append(o.seen[s], v)
		}
		o.mu.Unlock()
	}
}

// slotContent is version v of slot s: it names both, padded to 2 KiB so a
// mix of two versions would not parse.
func slotContent(s, v int) string {
	head := fmt.Sprintf("slot %d version %d\n", s, v)
	return head + strings.Repeat(strconv.Itoa(v%10), 2048) + "\n" + head
}

func parseSlotVersion(s int, data string) (int, bool) {
	var gs, v int
	if _, err := fmt.Sscanf(data, "slot %d version %d\n", &gs, &v); err != nil || gs != s {
		return 0, false
	}
	return v, data == slotContent(s, v)
}

// TestKillKeepsPathOrder: promise 5 across a kill -9. A writer saves eight
// pages over and over by save-by-rename (temp file, rename over), each save
// returning before the next; the daemon is SIGKILLed in the middle of that
// and restarted. Observers on both workers poll the pages the whole time:
// a page's version never goes backwards on a worker (not while batches are
// replayed after the restart either), no page is ever torn, and each ends
// at the version the store holds, at least the last acknowledged one.
func TestKillKeepsPathOrder(t *testing.T) {
	c := newCluster(t, clusterOptions{Workers: 2})
	mkdirAll(t, c.Mount+"/order")
	c.waitConverged(t, converge)

	observers := make([]*slotObserver, len(c.Workers))
	stopObserving := make(chan struct{})
	var observing sync.WaitGroup
	for i, w := range c.Workers {
		o := &slotObserver{root: w.Root}
		observers[i] = o
		observing.Go(func() {
			for {
				select {
				case <-stopObserving:
					return
				default:
				}
				o.poll()
				time.Sleep(500 * time.Microsecond)
			}
		})
	}
	defer func() {
		select {
		case <-stopObserving:
		default:
			close(stopObserving)
		}
		observing.Wait()
	}()

	var acked [orderSlots]atomic.Int64
	var saves atomic.Int64
	stopWriting := make(chan struct{})
	var writing sync.WaitGroup
	writing.Go(func() {
		for v := 1; ; v++ {
			for s := range orderSlots {
				select {
				case <-stopWriting:
					return
				default:
				}
				dir := c.Mount + "/order"
				tmp := fmt.Sprintf("%s/.slot%d.html.swp", dir, s)
				if err := os.WriteFile(tmp, []byte(slotContent(s, v)), 0o644); err != nil {
					return // the daemon is gone
				}
				if err := os.Rename(tmp, fmt.Sprintf("%s/slot%d.html", dir, s)); err != nil {
					return
				}
				acked[s].Store(int64(v))
				saves.Add(1)
			}
			time.Sleep(2 * time.Millisecond) // let batches ship between rounds
		}
	})
	waitFor(t, converge, "the saves to get going and reach the workers", func() error {
		for _, o := range observers {
			o.mu.Lock()
			n := len(o.seen[0])
			o.mu.Unlock()
			if n < 5 || saves.Load() < 800 {
				return fmt.Errorf("%d saves, a worker saw %d versions of slot0", saves.Load(), n)
			}
		}
		return nil
	})
	c.Kill(t)
	close(stopWriting)
	writing.Wait()
	t.Logf("killed the daemon after %d acknowledged saves", saves.Load())

	c.Start(t)
	c.waitConverged(t, converge)
	c.verify(t)
	close(stopObserving)
	observing.Wait()
	for _, o := range observers {
		o.poll() // the final state
	}

	for i, w := range c.Workers {
		o := observers[i]
		for _, b := range o.bad {
			t.Errorf("%s: %s", w.Name, b)
		}
		versions := 0
		for s := range orderSlots {
			store, ok := parseSlotVersion(s, readFile(t, fmt.Sprintf("%s/order/slot%d.html", c.Store, s)))
			if !ok || int64(store) < acked[s].Load() {
				t.Errorf("store: slot%d at version %d, acknowledged %d", s, store, acked[s].Load())
			}
			seen := o.seen[s]
			if len(seen) == 0 || seen[len(seen)-1] != store {
				t.Errorf("%s: slot%d ends at %v, the store at %d", w.Name, s, seen[max(0, len(seen)-3):], store)
			}
			versions += len(seen)
		}
		t.Logf("%s: saw %d distinct versions over %d slots", w.Name, versions, orderSlots)
		// Non-vacuous: the worker was watched while versions arrived one
		// batch after another, not only at the end.
		if versions < 5*orderSlots {
			t.Errorf("%s: only %d versions seen: the observer did not watch the arrival", w.Name, versions)
		}
	}
	c.Stop(t)
}
