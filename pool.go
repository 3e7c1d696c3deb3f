package herd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strconv"
	"sync"
	"time"

	"github.com/herd-sh/herd/internal/ipc"
)

// PoolOptions configure NewPool. The zero value is useful: a worker per
// CPU, each a copy of this program (its workers call worker.ServeTasks).
type PoolOptions struct {
	// Options are the cluster's; an empty Command forks this program.
	Options
	// Inflight is how many tasks a worker may hold; 0 means 64. It bounds
	// the primary's memory: at most Workers×Inflight tasks (each within
	// MaxMessage) are outstanding, and tasks are taken from the sequence
	// given to Map only as room is made.
	Inflight int
	// Retries is how many times a task whose worker died or hung is given
	// to another worker before it fails; 0 means 2, negative none.
	Retries int
	// TaskTimeout, when positive, kills a worker that holds a task longer
	// (its tasks go to other workers).
	TaskTimeout time.Duration
	// Unordered yields results as they come instead of in task order: a
	// slow task holds up none of the others. A result then says which
	// task it answers only if the handler puts that in it (a *TaskError
	// still carries the task's Index).
	Unordered bool
}

// TaskError is the error a failed task's result carries: the worker's
// handler returned an error, or the task's tries ran out.
type TaskError struct {
	// Index is the task's place in the sequence given to Map.
	Index int
	// Reason says why.
	Reason string
}

func (e *TaskError) Error() string { return fmt.Sprintf("task %d: %s", e.Index, e.Reason) }

// Pool runs tasks on a cluster of persistent worker processes: the
// primary splits the work, the workers run it on every core, the primary
// gathers the results. Tasks and results are JSON values and travel on the
// workers' channel (their stdout stays free for logs). Make one with
// NewPool; Close it.
type Pool struct {
	opts PoolOptions
	sup  *Supervisor
	stop context.CancelFunc
	done chan error

	mu   sync.Mutex // one Map at a time
	farm *farm

	// batch holds, per slot, the tasks the farm is giving out, encoded.
	// Only the farm's goroutine uses it.
	batch map[int][]byte

	closeOnce sync.Once
	closeErr  error
}

// NewPool starts the workers. It returns once the cluster runs; tasks
// wait for workers to be ready.
func NewPool(opts PoolOptions) (*Pool, error) {
	if opts.Inflight <= 0 {
		opts.Inflight = 64
	}
	switch {
	case opts.Retries == 0:
		opts.Retries = 2
	case opts.Retries < 0:
		opts.Retries = 0
	}
	p := &Pool{opts: opts, done: make(chan error, 1), batch: map[int][]byte{}}
	sopts := opts.Options
	user := sopts.OnEvent
	sopts.OnEvent = func(ev Event) {
		p.mu.Lock()
		f := p.farm
		p.mu.Unlock()
		if f != nil {
			switch ev.Kind {
			case EventStarted:
				f.up(ev.Worker)
			case EventExited:
				f.lost(ev.Worker, "its worker exited ("+ev.Status+")")
			}
		}
		if user != nil {
			user(ev)
		}
	}
	sup, err := New(sopts)
	if err != nil {
		return nil, err
	}
	p.sup = sup
	sup.tasks = p.result
	ctx, stop := context.WithCancel(context.Background())
	p.stop = stop
	go func() { p.done <- sup.Run(ctx) }()
	return p, nil
}

// result takes a worker's answer (on its read loop).
func (p *Pool) result(slot int, m ipc.Message) {
	p.mu.Lock()
	f := p.farm
	p.mu.Unlock()
	if f == nil || m.ID == nil {
		return
	}
	if m.Type == ipc.TypeFailed {
		var why string
		if json.Unmarshal(m.Data, &why) != nil || why == "" {
			why = string(m.Data)
		}
		f.answeredID(slot, *m.ID, nil, why)
		return
	}
	f.answeredID(slot, *m.ID, append([]byte(nil), m.Data...), "")
}

// Map runs every task of tasks (each encoded as JSON; a json.RawMessage
// as it is) and yields each result in task order (or as they come, with
// Unordered). A failed task yields a *TaskError. Map stops early when the
// loop over it does, or ctx ends: then it yields the context's cause as
// its last error. Memory stays bounded: tasks are taken from tasks only as
// fast as results are consumed.
func (p *Pool) Map(ctx context.Context, tasks iter.Seq[any]) iter.Seq2[json.RawMessage, error] {
	return func(yield func(json.RawMessage, error) bool) {
		p.mu.Lock()
		if p.farm != nil {
			p.mu.Unlock()
			yield(nil, fmt.Errorf("%w: a Map of this pool is running", ErrBusy))
			return
		}
		f := newFarm(p.opts.Inflight, p.opts.Retries, p.opts.TaskTimeout, !p.opts.Unordered)
		f.send, f.flush, f.kill = p.send, p.flush, p.kill
		for _, w := range p.sup.Workers() {
			if w.State == StateReady || w.State == StateStarting && w.PID != 0 {
				f.worker(w.ID).up = w.PID != 0
			}
		}
		p.farm = f
		p.mu.Unlock()
		defer func() {
			p.mu.Lock()
			p.farm = nil
			p.mu.Unlock()
		}()

		next, stop := iter.Pull(tasks)
		defer stop()
		stopped := errors.New("stopped by the consumer")
		// Room for the rest of a task message: {"herd":"task","id":N,"data":…}
		maxTask := p.sup.opts.MaxMessage - 64
		pull := func() ([]byte, string, bool, error) {
			v, ok := next()
			if !ok {
				return nil, "", false, nil
			}
			b, err := encodeTask(v)
			switch {
			case err != nil:
				return b, err.Error(), true, nil
			case len(b) > maxTask:
				return nil, fmt.Sprintf("the task is %d bytes, more than the message limit allows (%d)", len(b), maxTask), true, nil
			}
			return b, "", true, nil
		}
		emit := func(t *farmTask) error {
			var ok bool
			if t.err != "" {
				ok = yield(nil, &TaskError{Index: t.seq, Reason: t.err})
			} else {
				ok = yield(t.result, nil)
			}
			if !ok {
				return stopped
			}
			return nil
		}
		err := f.run(ctx, len(p.sup.Workers()), pull, emit, nil)
		if err != nil && !errors.Is(err, stopped) {
			yield(nil, err)
		}
	}
}

// send adds a task to slot's batch; flush queues the batch on the slot's
// channel, one write for the lot. The farm gives a worker at most Inflight
// tasks, which bounds the batch. (A message per task, each written or
// queued on its own, measured 10-15% slower.)
func (p *Pool) send(slot, id int, task []byte) bool {
	buf, err := ipc.Append(p.batch[slot], ipc.Message{Type: ipc.TypeTask, ID: &id, Data: task})
	if err != nil {
		return false
	}
	p.batch[slot] = buf
	return true
}

// flush queues slot's batch. A worker gone meanwhile has the tasks back
// through the farm when its exit is seen.
func (p *Pool) flush(slot int) {
	buf := p.batch[slot]
	if len(buf) == 0 {
		return
	}
	p.batch[slot] = buf[:0]
	sl, err := p.sup.slotByID(slot)
	if err != nil {
		return
	}
	if proc := sl.current.Load(); proc != nil {
		proc.ch.Queue(buf)
	}
}

func (p *Pool) kill(slot int) {
	if sl, err := p.sup.slotByID(slot); err == nil {
		if proc := sl.current.Load(); proc != nil {
			p.sup.log.Warn("task took too long; killing its worker", "worker", slot, "pid", proc.pid, "timeout", p.opts.TaskTimeout.String())
			proc.kill()
		}
	}
}

// Workers returns a snapshot of the pool's workers.
func (p *Pool) Workers() []WorkerInfo { return p.sup.Workers() }

// Close stops the workers and waits for them. It may be called more than
// once.
func (p *Pool) Close() error {
	p.closeOnce.Do(func() {
		p.stop()
		p.closeErr = <-p.done
	})
	return p.closeErr
}

// encodeTask is json.Marshal, with the commonest tasks (ints, and JSON
// already encoded) done without reflection: encoding was a tenth of the
// primary's work per trivial task.
func encodeTask(v any) ([]byte, error) {
	switch v := v.(type) {
	case json.RawMessage:
		if !json.Valid(v) {
			return v, errors.New("the task is not one JSON value")
		}
		return v, nil
	case int:
		return strconv.AppendInt(make([]byte, 0, 8), int64(v), 10), nil
	case int64:
		return strconv.AppendInt(make([]byte, 0, 8), v, 10), nil
	}
	return json.Marshal(v)
}
