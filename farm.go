package herd

import (
	"context"
	"encoding/json"
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
// while twice as many tasks as the workers may hold are outstanding (given
// out, read ahead or waiting to be retried, or done and waiting to be
// written in order).
//
// Which task killed a worker is known only if it held one: answers are
// written in batches (a Go worker's every 100 µs or so, a Python worker's
// when its stdout buffer fills), so the oldest unanswered task of a worker
// that died may have been done already. The tasks of a worker that died
// holding several are suspects: they go back without using up a try, and
// from then on each runs alone on a worker that holds nothing else, where
// a death can only be its own (it uses up a try).
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
	timeout  time.Duration // a worker this long on one task is hung; 0: never
	ordered  bool
	send     func(w *farmWorker, id int, task []byte) bool // gives a task to a worker; false: it cannot take it now
	flush    func(w *farmWorker)                           // sends what send queued for w
	kill     func(p *process)                              // kills a hung worker

	mu          sync.Mutex
	ring        []farmTask // outstanding tasks, by id % len(ring)
	free        []int      // free entries of ring, oldest freed first
	outstanding int
	retry       []int         // ids of tasks to give out (again), oldest first
	workers     []*farmWorker // the running worker processes
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
	suspect  bool   // it was held by a worker that died: it runs alone
	result   []byte // the answer, or nil
	err      string // why it failed for good, or ""
	finished bool   // it has its result or error, and waits to be written
}

// farmWorker is a worker process as the farm sees it: up (it can take
// tasks) and the tasks it holds, oldest first. A process, not a slot: the
// replacement of a worker that died may start before the farm hears of
// the death, and the two must not share a queue.
type farmWorker struct {
	p    *process
	up   bool
	fifo []int // ids
	// headSince is when the worker is taken to have started on fifo[0]:
	// when it was given, or when the task before it was answered (with
	// a timeout; a task's time waiting behind others does not count).
	headSince time.Time
	alone     bool // it holds a suspect, and gets nothing else meanwhile
	killed    bool // the farm killed it for holding a task too long
	// batch is the tasks send encoded for it and flush has not passed
	// on (herd.Pool; under the farm's lock).
	batch []byte
}

// popped says the worker's oldest task was answered: the next one, if
// any, is under way from now. f.mu is held.
func (f *farm) popped(w *farmWorker) {
	if len(w.fifo) == 0 {
		w.alone = false
	} else if f.timeout > 0 {
		w.headSince = time.Now()
	}
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

// up says worker process p runs and can take tasks; it gets those read
// already at once (the farm may be waiting for its producer).
func (f *farm) up(p *process) {
	f.mu.Lock()
	if f.find(p) == nil {
		f.workers = append(f.workers, &farmWorker{p: p, up: true})
	}
	f.dispatch()
	f.mu.Unlock()
	f.poke()
}

// idleWorker reports whether a worker that can take tasks holds none.
// f.mu is held.
func (f *farm) idleWorker() bool {
	for _, w := range f.workers {
		if w.up && !w.alone && len(w.fifo) == 0 {
			return true
		}
	}
	return false
}

// find returns p's state, nil if p is not a running worker (any more).
// f.mu is held.
func (f *farm) find(p *process) *farmWorker {
	for _, w := range f.workers {
		if w.p == p {
			return w
		}
	}
	return nil
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
}

// answered records the answer of p's oldest task (nil result and a
// reason: the worker said it failed).
func (f *farm) answered(p *process, result []byte, failed string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.find(p)
	if w == nil || len(w.fifo) == 0 {
		return // an answer to nothing: ignored (the worker is confused)
	}
	id := w.fifo[0]
	w.fifo = w.fifo[1:]
	f.popped(w)
	if t := f.task(id); t != nil && !t.finished {
		f.finish(t, result, failed)
		f.poke()
	}
}

// answeredIDs records the answers of tasks held by p, each whatever its
// place in p's queue (workers that speak the protocol name the task they
// answer): those of one read of the worker's channel, with one lock and
// one wake-up of the farm. An answer to a task p does not hold (any more)
// is ignored.
func (f *farm) answeredIDs(p *process, answers []taskAnswer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.find(p)
	if w == nil {
		return
	}
	for _, a := range answers {
		i := 0
		if len(w.fifo) == 0 || w.fifo[0] != a.id { // answers mostly come in order
			if i = slices.Index(w.fifo, a.id); i < 0 {
				continue
			}
		}
		if i == 0 {
			w.fifo = w.fifo[1:]
			f.popped(w)
		} else {
			w.fifo = slices.Delete(w.fifo, i, i+1)
		}
		t := f.task(a.id)
		if t == nil || t.finished {
			continue
		}
		if a.failed {
			var why string
			if json.Unmarshal(a.data, &why) != nil || why == "" {
				why = string(a.data)
			}
			f.finish(t, nil, why)
		} else {
			f.finish(t, a.data, "")
		}
	}
	f.dispatch() // tasks read ahead go out at once, not after the farm wakes
	f.poke()
}

// lost says worker process p is gone: the tasks it held go back to the
// queue, ahead of those not given out yet. If it held one, that one killed
// it, and uses up a try: it fails with why once it has had them all. If it
// held several, any of them may have (see farm): they become suspects.
func (f *farm) lost(p *process, why string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.IndexFunc(f.workers, func(w *farmWorker) bool { return w.p == p })
	if i < 0 {
		return
	}
	w := f.workers[i]
	f.workers = slices.Delete(f.workers, i, i+1)
	if w.killed {
		why = fmt.Sprintf("it took longer than %v (its worker was killed)", f.timeout)
	}
	w.up, w.killed, w.alone = false, false, false
	var back []int
	for _, id := range w.fifo {
		t := f.task(id)
		if t == nil || t.finished {
			continue
		}
		if len(w.fifo) == 1 {
			t.tries++
			if t.tries > f.retries {
				f.finish(t, nil, why)
				continue
			}
		}
		f.stats.Retries++
		t.suspect = true
		back = append(back, id)
	}
	f.retry = append(back, f.retry...)
	f.dispatch()
	f.poke()
}

// run feeds next's tasks to the workers and hands every result to emit,
// in input order if ordered, until the input ends and every task has a
// result, ctx ends (what is done is emitted first), or emit fails. next
// returns the next task, ok false at the end of the input, or a reason
// the task fails without being run; idle is called whenever the farm is
// about to wait.
func (f *farm) run(ctx context.Context, workers int, next func() ([]byte, string, bool, error), emit func(*farmTask) error, idle func()) error {
	// Room for twice what the workers may hold: the tasks that refill a
	// worker are read ahead, and go out as soon as its answers come in
	// (from the read loop that takes them), not once the farm has woken,
	// written out the answers and read the input that replaces them.
	capacity := 2 * max(workers, 1) * f.inflight
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
	emitReady := func() error {
		for i := range ready {
			if ready[i].err != "" {
				f.stats.Failed++
			}
			f.stats.Done++
			if err := emit(&ready[i]); err != nil {
				return err
			}
		}
		return nil
	}
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
				if f.idleWorker() {
					// Do not let a worker wait for the rest of a
					// batch: the input may be slow to come.
					f.dispatch()
				}
			}
			seq++
		}
		f.dispatch()
		ready = f.takeReady(ready[:0])
		f.mu.Unlock()
		if err := emitReady(); err != nil {
			return err
		}
		freed := len(ready) > 0
		clear(ready)
		f.mu.Lock()
		finished := inputDone && f.outstanding == 0
		f.mu.Unlock()
		if finished {
			return inputErr
		}
		if freed && !inputDone && ctx.Err() == nil {
			continue // what was taken out made room for more input
		}
		if idle != nil {
			idle()
		}
		select {
		case <-ctx.Done():
			// Stopped (Ctrl-C): what came back meanwhile is a result
			// produced, and goes out before the end.
			f.mu.Lock()
			ready = f.takeReady(ready[:0])
			f.mu.Unlock()
			if err := emitReady(); err != nil {
				return err
			}
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

// dispatch gives queued tasks to workers with room, least loaded first,
// and passes them on (flush). A worker is refilled only once it has worked
// through half of what it may hold, and then filled up: tasks go out in
// large batches (a write each way per batch, not per task) while the
// worker always has some to work on. A suspect goes only to a worker that
// holds nothing, alone. f.mu is held.
func (f *farm) dispatch() {
	if len(f.retry) == 0 {
		return
	}
	var refill, sent []*farmWorker
	for _, w := range f.workers {
		if w.up && !w.alone && len(w.fifo) <= f.inflight/2 {
			refill = append(refill, w)
		}
	}
	give := func(w *farmWorker, t *farmTask) bool {
		if !f.send(w, t.id, t.input) {
			w.up = false // it cannot take tasks now; its loss or a new start says more
			return false
		}
		if len(w.fifo) == 0 && f.timeout > 0 {
			w.headSince = time.Now()
		}
		w.fifo = append(w.fifo, t.id)
		if !slices.Contains(sent, w) {
			sent = append(sent, w)
		}
		return true
	}
	// Tasks that cannot go now keep their place, in order.
	kept := f.retry[:0]
	for i, id := range f.retry {
		t := f.task(id)
		if t == nil || t.finished {
			continue
		}
		if t.suspect {
			j := slices.IndexFunc(f.workers, func(w *farmWorker) bool { return w.up && len(w.fifo) == 0 })
			if j >= 0 && give(f.workers[j], t) {
				f.workers[j].alone = true
				continue
			}
			kept = append(kept, id)
			continue
		}
		var best *farmWorker
		for _, w := range refill {
			if w.up && !w.alone && len(w.fifo) < f.inflight && (best == nil || len(w.fifo) < len(best.fifo)) {
				best = w
			}
		}
		if best == nil {
			// Nobody takes more now; suspects further on would need
			// an idle worker, and there is none.
			kept = append(kept, f.retry[i:]...)
			break
		}
		if !give(best, t) {
			kept = append(kept, id)
		}
	}
	f.retry = kept
	for _, w := range sent {
		f.flush(w)
	}
}

// checkHung kills the workers that have held a task longer than the
// timeout; their loss puts the task back (or fails it).
func (f *farm) checkHung() {
	if f.timeout <= 0 {
		return
	}
	f.mu.Lock()
	var hung []*process
	for _, w := range f.workers {
		if w.up && len(w.fifo) > 0 && time.Since(w.headSince) > f.timeout {
			w.up, w.killed = false, true
			hung = append(hung, w.p)
		}
	}
	f.mu.Unlock()
	for _, p := range hung {
		f.kill(p)
	}
}
