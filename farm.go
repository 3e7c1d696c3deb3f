package herd

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// farm hands tasks to persistent workers and collects their results: the
// core that Map (tasks on the workers' stdin) and Pool (tasks on their
// channel) share. A worker answers its tasks in the order it got them, so
// each worker's in-flight tasks are a FIFO. Tasks of a worker that dies or
// hangs go back to the queue, up to a number of tries; every task ends as
// exactly one result or one error, and nothing is read from the input
// while as many tasks as the workers may hold are outstanding (given out,
// waiting to be retried, or done and waiting to be written in order).
type farm struct {
	inflight int           // tasks a worker may hold
	retries  int           // retries of a task after its first try
	timeout  time.Duration // a worker holding a task this long is hung; 0: never
	ordered  bool
	send     func(slot, seq int, task []byte) bool // gives a task to a worker; false: it cannot take it now
	flush    func(slot int)                        // sends what send queued for slot
	kill     func(slot int)                        // kills a hung worker

	mu      sync.Mutex
	tasks   map[int]*farmTask // outstanding, by sequence number
	retry   []int             // tasks to give out again, oldest first
	workers map[int]*farmWorker
	done    []*farmTask // finished, in finishing order (unordered) or any order (ordered)
	wake    chan struct{}

	// Owned by the goroutine that runs the farm.
	nextEmit int // ordered: the next sequence number to write
	stats    MapStats
}

type farmTask struct {
	seq    int
	input  []byte
	tries  int
	result []byte // the answer, or nil
	err    string // why it failed for good, or ""
	slot   int    // the worker holding it, -1 if none
}

// farmWorker is a worker slot as the farm sees it: up (its current
// process can take tasks) and the tasks its process holds, oldest first.
type farmWorker struct {
	up     bool
	fifo   []int
	since  []time.Time // when each task of fifo was given
	killed bool        // the farm killed it for holding a task too long
}

func newFarm(inflight, retries int, timeout time.Duration, ordered bool) *farm {
	return &farm{
		inflight: inflight, retries: retries, timeout: timeout, ordered: ordered,
		tasks: map[int]*farmTask{}, workers: map[int]*farmWorker{},
		wake: make(chan struct{}, 1),
	}
}

func (f *farm) poke() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// up says slot's new process can take tasks.
func (f *farm) up(slot int) {
	f.mu.Lock()
	w := f.worker(slot)
	w.up = true
	f.mu.Unlock()
	f.poke()
}

func (f *farm) worker(slot int) *farmWorker {
	w := f.workers[slot]
	if w == nil {
		w = &farmWorker{}
		f.workers[slot] = w
	}
	return w
}

// answered records the answer of slot's oldest task (nil result and a
// reason: the worker said it failed).
func (f *farm) answered(slot int, result []byte, failed string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.workers[slot]
	if w == nil || len(w.fifo) == 0 {
		return // an answer to nothing: ignored (the worker is confused)
	}
	seq := w.fifo[0]
	w.fifo, w.since = w.fifo[1:], w.since[1:]
	t := f.tasks[seq]
	t.slot = -1
	if failed != "" {
		t.err = failed
	} else {
		t.result = result
	}
	f.done = append(f.done, t)
	f.poke()
}

// answeredID records the answer of task seq held by slot, whatever its
// place in slot's queue (workers that speak the protocol name the task
// they answer).
func (f *farm) answeredID(slot, seq int, result []byte, failed string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.workers[slot]
	if w == nil {
		return
	}
	i := slices.Index(w.fifo, seq)
	if i < 0 {
		return // not one of its tasks (any more): ignored
	}
	w.fifo = slices.Delete(w.fifo, i, i+1)
	w.since = slices.Delete(w.since, i, i+1)
	t := f.tasks[seq]
	t.slot = -1
	if failed != "" {
		t.err = failed
	} else {
		t.result = result
	}
	f.done = append(f.done, t)
	f.poke()
}

// lost says slot's process is gone: the tasks it held go back to the
// queue. The oldest is the one it was working on, and takes the blame: it
// uses up a try, and fails with why once it has had them all; the others
// were only waiting, and go back as they were.
func (f *farm) lost(slot int, why string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.workers[slot]
	if w == nil {
		return
	}
	if w.killed {
		why = fmt.Sprintf("it took longer than %v (its worker was killed)", f.timeout)
	}
	w.up, w.killed = false, false
	for i, seq := range w.fifo {
		t := f.tasks[seq]
		t.slot = -1
		if i == 0 {
			t.tries++
			if t.tries > f.retries {
				t.err = why
				f.done = append(f.done, t)
				continue
			}
			f.stats.Retries++
		}
		f.retry = append(f.retry, seq)
	}
	// The blamed task goes first, so that a task that crashes every
	// worker is settled before the others wait on it again.
	w.fifo, w.since = nil, nil
	f.poke()
}

// run feeds next's tasks to the workers and hands every result to emit,
// in input order if ordered, until the input ends and every task has a
// result, ctx ends (what is done is emitted first), or emit fails. next
// returns the next task, ok false at the end of the input, or a reason
// the task fails without being run; idle is called whenever the farm is
// about to wait.
func (f *farm) run(ctx context.Context, workers int, next func() ([]byte, string, bool, error), emit func(*farmTask) error, idle func()) error {
	capacity := workers * f.inflight
	seq := 0
	inputDone := false
	var inputErr error
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		f.mu.Lock()
		// Read as much input as there is room for.
		for !inputDone && len(f.tasks) < capacity {
			f.mu.Unlock()
			task, fails, ok, err := next()
			f.mu.Lock()
			if err != nil {
				inputErr, inputDone = err, true
				break
			}
			if !ok {
				inputDone = true
				break
			}
			t := &farmTask{seq: seq, input: task, slot: -1, err: fails}
			f.tasks[seq] = t
			if fails != "" {
				f.done = append(f.done, t)
			} else {
				f.retry = append(f.retry, seq)
			}
			f.stats.Tasks++
			seq++
		}
		sent := f.dispatch()
		done := f.done
		f.done = nil
		outstanding := len(f.tasks)
		f.mu.Unlock()
		for _, slot := range sent {
			f.flush(slot)
		}
		if err := f.emit(done, emit); err != nil {
			return err
		}
		f.mu.Lock()
		outstanding = len(f.tasks)
		f.mu.Unlock()
		if inputDone && outstanding == 0 {
			return inputErr
		}
		if idle != nil {
			idle()
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-f.wake:
		case <-t.C:
			f.checkHung()
		}
	}
}

// dispatch gives queued tasks to workers with room, least loaded first;
// it returns the slots that got some. f.mu is held.
func (f *farm) dispatch() []int {
	var sent []int
	for len(f.retry) > 0 {
		var best *farmWorker
		bestSlot := -1
		for slot, w := range f.workers {
			if w.up && len(w.fifo) < f.inflight && (best == nil || len(w.fifo) < len(best.fifo) || len(w.fifo) == len(best.fifo) && slot < bestSlot) {
				best, bestSlot = w, slot
			}
		}
		if best == nil {
			break
		}
		seq := f.retry[0]
		t := f.tasks[seq]
		if !f.send(bestSlot, seq, t.input) {
			best.up = false // it cannot take tasks now; its loss or a new start says more
			continue
		}
		f.retry = f.retry[1:]
		t.slot = bestSlot
		best.fifo = append(best.fifo, seq)
		best.since = append(best.since, time.Now())
		if len(sent) == 0 || sent[len(sent)-1] != bestSlot {
			sent = append(sent, bestSlot)
		}
	}
	return sent
}

// emit writes finished tasks: all of them, or in input order, keeping
// the ones whose turn has not come.
func (f *farm) emit(done []*farmTask, emit func(*farmTask) error) error {
	if !f.ordered {
		for _, t := range done {
			if err := f.finish(t, emit); err != nil {
				return err
			}
		}
		return nil
	}
	f.mu.Lock()
	for _, t := range done {
		t.slot = -2 // finished, waiting for its turn
	}
	f.mu.Unlock()
	for {
		f.mu.Lock()
		t := f.tasks[f.nextEmit]
		ready := t != nil && t.slot == -2
		f.mu.Unlock()
		if !ready {
			return nil
		}
		if err := f.finish(t, emit); err != nil {
			return err
		}
		f.nextEmit++
	}
}

func (f *farm) finish(t *farmTask, emit func(*farmTask) error) error {
	if t.err != "" {
		f.stats.Failed++
	}
	f.stats.Done++
	err := emit(t)
	f.mu.Lock()
	delete(f.tasks, t.seq)
	f.mu.Unlock()
	return err
}

// checkHung kills the workers that have held a task longer than the
// timeout; their loss puts the task back (or fails it).
func (f *farm) checkHung() {
	if f.timeout <= 0 {
		return
	}
	f.mu.Lock()
	var hung []int
	for slot, w := range f.workers {
		if len(w.since) > 0 && time.Since(w.since[0]) > f.timeout && w.up {
			w.up, w.killed = false, true
			hung = append(hung, slot)
		}
	}
	f.mu.Unlock()
	for _, slot := range hung {
		f.kill(slot)
	}
}
