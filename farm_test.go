package herd

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// farmRig runs a farm over n tasks ("0".."n-1") with workers that are
// only records of what they were given: the bookkeeping alone, without
// processes (the process tests are in cmd/herd/map_test.go and
// pool_test.go).
type farmRig struct {
	f       *farm
	given   map[*process][]int // task ids given to each process, in order
	results map[int]string     // by input position
	errs    map[int]string
	done    chan error
}

func newFarmRig(t *testing.T, inflight, retries, n int) *farmRig {
	t.Helper()
	return newGatedFarmRig(t, inflight, retries, n, nil)
}

// newGatedFarmRig is newFarmRig with a producer that, when gate is not
// nil, takes a value from it before each task after the first.
func newGatedFarmRig(t *testing.T, inflight, retries, n int, gate chan struct{}) *farmRig {
	t.Helper()
	r := &farmRig{
		f:       newFarm(inflight, retries, 0, true),
		given:   map[*process][]int{},
		results: map[int]string{},
		errs:    map[int]string{},
		done:    make(chan error, 1),
	}
	r.f.send = func(w *farmWorker, id int, _ []byte) bool {
		r.given[w.p] = append(r.given[w.p], id)
		return true
	}
	r.f.flush = func(*farmWorker) {}
	r.f.kill = func(*process) {}
	i := 0
	next := func() ([]byte, string, bool, error) {
		if i == n {
			return nil, "", false, nil
		}
		if i > 0 && gate != nil {
			<-gate
		}
		i++
		return []byte(strconv.Itoa(i - 1)), "", true, nil
	}
	emit := func(t *farmTask) error {
		if t.err != "" {
			r.errs[t.seq] = t.err
		} else {
			r.results[t.seq] = string(t.result)
		}
		return nil
	}
	go func() { r.done <- r.f.run(context.Background(), 2, next, emit, nil) }()
	return r
}

// holding waits until p holds n tasks and returns their ids.
func (r *farmRig) holding(t *testing.T, p *process, n int) []int {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		r.f.mu.Lock()
		var fifo []int
		if w := r.f.find(p); w != nil {
			fifo = slices.Clone(w.fifo)
		}
		r.f.mu.Unlock()
		if len(fifo) == n {
			return fifo
		}
	}
	t.Fatalf("process %d does not hold %d tasks", p.pid, n)
	return nil
}

// answer answers p's oldest task as a worker would: its input, doubled.
func (r *farmRig) answer(p *process, id int) {
	r.f.mu.Lock()
	in := string(r.f.task(id).input)
	r.f.mu.Unlock()
	n, _ := strconv.Atoi(in)
	r.f.answered(p, []byte(strconv.Itoa(2*n)), "")
}

// The replacement of a worker that died can start before the farm hears
// of the death: tasks given meanwhile are the new process's, and the old
// one's loss sends back only its own.
func TestFarmKeepsProcessesApart(t *testing.T) {
	r := newFarmRig(t, 4, 2, 8)
	old, repl := &process{pid: 1}, &process{pid: 2}
	r.f.up(old)
	oldHeld := r.holding(t, old, 4)
	r.f.up(repl) // before old's loss: it gets tasks of its own
	replHeld := r.holding(t, repl, 4)
	r.f.lost(old, "killed")
	// old's four go to repl, alone one at a time (any of them may have
	// killed old), once repl has answered its own.
	for _, id := range replHeld {
		r.answer(repl, id)
	}
	for range oldHeld {
		ids := r.holding(t, repl, 1)
		r.answer(repl, ids[0])
	}
	if err := <-r.done; err != nil {
		t.Fatal(err)
	}
	want := map[int]string{}
	for i := range 8 {
		want[i] = strconv.Itoa(2 * i)
	}
	if diff := cmp.Diff(want, r.results); diff != "" || len(r.errs) > 0 {
		t.Errorf("results (-want +got):\n%s\nerrors %v", diff, r.errs)
	}
	if got := r.given[repl]; len(got) != 8 {
		t.Errorf("repl was given %v, want its own four then old's four", got)
	}
}

// The tasks held by a worker that died are not blamed: each runs alone,
// and only a death with one task held uses up a try.
func TestFarmBlamesOnlyATaskThatDiesAlone(t *testing.T) {
	r := newFarmRig(t, 3, 1, 3)
	p1 := &process{pid: 1}
	r.f.up(p1)
	r.holding(t, p1, 3)
	r.f.lost(p1, "crashed") // all three are suspects, none has used a try
	// Task 0 kills every worker it runs on: its first death alone uses
	// its one retry, its second fails it. 1 and 2 are answered.
	for pid := 2; pid <= 5; pid++ {
		p := &process{pid: pid}
		r.f.up(p)
		ids := r.holding(t, p, 1) // alone
		r.f.mu.Lock()
		poison := string(r.f.task(ids[0]).input) == "0"
		r.f.mu.Unlock()
		if poison {
			r.f.lost(p, "crashed")
			continue
		}
		r.answer(p, ids[0])
		r.f.lost(p, "stopped")
	}
	if err := <-r.done; err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[int]string{1: "2", 2: "4"}, r.results); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[int]string{0: "crashed"}, r.errs); diff != "" {
		t.Errorf("failures (-want +got):\n%s", diff)
	}
}

// A task goes to an idle worker at once, even while the producer of the
// next one takes its time.
func TestFarmDoesNotHoldTasksForASlowProducer(t *testing.T) {
	gate := make(chan struct{})
	r := newGatedFarmRig(t, 64, 2, 2, gate)
	p := &process{pid: 1}
	r.f.up(p)
	ids := r.holding(t, p, 1) // while the producer waits at the gate
	r.answer(p, ids[0])
	gate <- struct{}{}
	ids = r.holding(t, p, 1)
	r.answer(p, ids[0])
	if err := <-r.done; err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[int]string{0: "0", 1: "2"}, r.results); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
}
