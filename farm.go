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
//
// Outstanding tasks live in a table of capacity entries. A task is known
// to the workers by an id, not by its place in the input: the id of a task
// in entry i is i plus a multiple of capacity, a new one each time the
// entry is reused, so an answer finds its entry at once and a stale answer
// (to a task that was given out again, or is gone) finds nothing. Entries
// are reused oldest freed first, so when results are taken in input order
// a task's entry is its sequence number modulo capacity.
type farm struct {
	inflight int           // tasks a worker may hold
	retries  int           // retries of a task after its first try
	timeout  time.Duration // a worker holding a task this long is hung; 0: never
	ordered  bool
	send     func(slot, id int, task []byte) bool // gives a task to a worker; false: it cannot take it now
	flush    func(slot int)                       // sends what send queued for slot
	kill     func(slot int)                       // kills a hung worker

	mu          sync.Mutex
	ring        []farmTask // outstanding tasks, by id % len(ring)
	free        []int      // free entries of ring, oldest freed first
	outstanding int
	retry       []int         // ids of tasks to give out (again), oldest first
	workers     []*farmWorker // by slot; nil for a slot never seen
	done        []int         // ids of finished tasks, in finishing order
	wake        chan struct{}

	// Owned by the goroutine that runs the farm.
	nextEmit int // ordered: the next sequence number to write
	stats    MapStats
}

type farmTask struct {
	id       int  // how workers know it
	used     bool // the entry holds an outstanding task
	seq      int  // its place in the input
	input    []byte
	tries    int
	result   []byte // the answer, or nil
	err      string // why it failed for good, or ""
	finished bool   // it has its result or error, and waits to be written
}

// farmWorker is a worker slot as the farm sees it: up (its current
// process can take tasks) and the tasks its process holds, oldest first.
type farmWorker struct {
	up     bool
	fifo   []int       // ids
	since  []time.Time // when each task of fifo was given (with a timeout)
	killed bool        // the farm killed it for holding a task too long
}

func newFarm(inflight, retries int, timeout time.Duration, ordered bool) *farm {
	return &farm{
		inflight: inflight, retries: retries, timeout: timeout, ordered: ordered,
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
	f.worker(slot).up = true
	f.mu.Unlock()
	f.poke()
}

// worker returns slot's state, made when first needed. f.mu is held.
func (f *farm) worker(slot int) *farmWorker {
	for len(f.workers) <= slot {
		f.workers = append(f.workers, nil)
	}
	if f.workers[slot] == nil {
		f.workers[slot] = &farmWorker{}
	}
	return f.workers[slot]
}

// task returns outstanding task id, or nil. f.mu is held.
func (f *farm) task(id int) *farmTask {
	if len(f.ring) == 0 || id < 0 {
		return nil
	}
	t := &f.ring[id%len(f.ring)]
	if !t.used || t.id != id {
		return nil
	}
	return t
}

// finish records t's answer (or failure). f.mu is held.
func (f *farm) finish(t *farmTask, result []byte, failed string) {
	if failed != "" {
		t.err = failed
	} else {
		t.result = result
	}
	t.finished = true
	f.done = append(f.done, t.id)
	f.poke()
}

// answered records the answer of slot's oldest task (nil result and a
// reason: the worker said it failed).
func (f *farm) answered(slot int, result []byte, failed string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if slot >= len(f.workers) || f.workers[slot] == nil || len(f.workers[slot].fifo) == 0 {
		return // an answer to nothing: ignored (the worker is confused)
	}
	w := f.workers[slot]
	id := w.fifo[0]
	w.fifo = w.fifo[1:]
	if len(w.since) > 0 {
		w.since = w.since[1:]
	}
	if t := f.task(id); t != nil && !t.finished {
		f.finish(t, result, failed)
	}
}

// answeredID records the answer of task id held by slot, whatever its
// place in slot's queue (workers that speak the protocol name the task
// they answer).
func (f *farm) answeredID(slot, id int, result []byte, failed string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if slot >= len(f.workers) || f.workers[slot] == nil {
		return
	}
	w := f.workers[slot]
	i := 0
	if len(w.fifo) == 0 || w.fifo[0] != id { // answers mostly come in order
		if i = slices.Index(w.fifo, id); i < 0 {
			return // not one of its tasks (any more): ignored
		}
	}
	if i == 0 {
		w.fifo = w.fifo[1:]
	} else {
		w.fifo = slices.Delete(w.fifo, i, i+1)
	}
	if len(w.since) > i {
		w.since = slices.Delete(w.since, i, i+1)
	}
	if t := f.task(id); t != nil && !t.finished {
		f.finish(t, result, failed)
	}
}

// lost says slot's process is gone: the tasks it held go back to the
// queue. The oldest is the one it was working on, and takes the blame: it
// uses up a try, and fails with why once it has had them all; the others
// were only waiting, and go back as they were.
func (f *farm) lost(slot int, why string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if slot >= len(f.workers) || f.workers[slot] == nil {
		return
	}
	w := f.workers[slot]
	if w.killed {
		why = fmt.Sprintf("it took longer than %v (its worker was killed)", f.timeout)
	}
	w.up, w.killed = false, false
	for i, id := range w.fifo {
		t := f.task(id)
		if t == nil || t.finished {
			continue
		}
		if i == 0 {
			t.tries++
			if t.tries > f.retries {
				f.finish(t, nil, why)
				continue
			}
			f.stats.Retries++
		}
		f.retry = append(f.retry, id)
	}
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
	capacity := max(workers, 1) * f.inflight
	f.mu.Lock()
	f.ring = make([]farmTask, capacity)
	f.free = make([]int, capacity)
	for i := range f.ring {
		f.ring[i].id = i - capacity
		f.free[i] = i
	}
	f.mu.Unlock()
	seq := 0
	inputDone := false
	var inputErr error
	var ready []farmTask // finished tasks taken out of the ring, to emit
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		f.mu.Lock()
		// Read as much input as there is room for.
		for !inputDone && f.outstanding < capacity {
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
			e := f.free[0]
			f.free = f.free[1:]
			t := &f.ring[e]
			*t = farmTask{id: t.id + capacity, used: true, seq: seq, input: task}
			f.outstanding++
			f.stats.Tasks++
			if fails != "" {
				f.finish(t, nil, fails)
			} else {
				f.retry = append(f.retry, t.id)
			}
			seq++
		}
		sent := f.dispatch()
		ready = f.takeReady(ready[:0])
		f.mu.Unlock()
		for _, slot := range sent {
			f.flush(slot)
		}
		for i := range ready {
			if ready[i].err != "" {
				f.stats.Failed++
			}
			f.stats.Done++
			if err := emit(&ready[i]); err != nil {
				return err
			}
		}
		clear(ready)
		f.mu.Lock()
		finished := inputDone && f.outstanding == 0
		f.mu.Unlock()
		if finished {
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

// takeReady moves the finished tasks whose turn it is out of the ring:
// all of them, or in input order. f.mu is held.
func (f *farm) takeReady(out []farmTask) []farmTask {
	take := func(t *farmTask) {
		out = append(out, *t)
		*t = farmTask{id: t.id}
		f.free = append(f.free, t.id%len(f.ring))
		f.outstanding--
	}
	if !f.ordered {
		for _, id := range f.done {
			if t := f.task(id); t != nil {
				take(t)
			}
		}
		f.done = f.done[:0]
		return out
	}
	f.done = f.done[:0]
	for {
		t := &f.ring[f.nextEmit%len(f.ring)]
		if !t.used || t.seq != f.nextEmit || !t.finished {
			return out
		}
		take(t)
		f.nextEmit++
	}
}

// dispatch gives queued tasks to workers with room, least loaded first;
// it returns the slots that got some. A worker is refilled only once it
// has worked through half of what it may hold, and then filled up: tasks
// go out in large batches (a write each way per batch, not per task) while
// the worker always has some to work on. f.mu is held.
func (f *farm) dispatch() []int {
	if len(f.retry) == 0 {
		return nil
	}
	var refill []int
	for slot, w := range f.workers {
		if w != nil && w.up && len(w.fifo) <= f.inflight/2 {
			refill = append(refill, slot)
		}
	}
	var sent []int
	for len(f.retry) > 0 {
		bestSlot := -1
		for _, slot := range refill {
			w := f.workers[slot]
			if w.up && len(w.fifo) < f.inflight && (bestSlot < 0 || len(w.fifo) < len(f.workers[bestSlot].fifo)) {
				bestSlot = slot
			}
		}
		if bestSlot < 0 {
			break
		}
		best := f.workers[bestSlot]
		id := f.retry[0]
		t := f.task(id)
		if t == nil || t.finished {
			f.retry = f.retry[1:]
			continue
		}
		if !f.send(bestSlot, id, t.input) {
			best.up = false // it cannot take tasks now; its loss or a new start says more
			continue
		}
		f.retry = f.retry[1:]
		best.fifo = append(best.fifo, id)
		if f.timeout > 0 {
			best.since = append(best.since, time.Now())
		}
		if len(sent) == 0 || sent[len(sent)-1] != bestSlot {
			sent = append(sent, bestSlot)
		}
	}
	return sent
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
		if w != nil && len(w.since) > 0 && time.Since(w.since[0]) > f.timeout && w.up {
			w.up, w.killed = false, true
			hung = append(hung, slot)
		}
	}
	f.mu.Unlock()
	for _, slot := range hung {
		f.kill(slot)
	}
}
