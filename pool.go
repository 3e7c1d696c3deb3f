package herd

import (
	"bytes"
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
	// the primary's memory: at most 2×Workers×Inflight tasks (each within
	// MaxMessage) are outstanding (held by the workers, and as many read
	// ahead), and tasks are taken from the sequence given to Map only as
	// room is made.
	Inflight int
	// Retries is how many times a task whose worker died or hung is given
	// to another worker before it fails; 0 means 2, negative none.
	Retries int
	// TaskTimeout, when positive, kills a worker that has not answered its
	// oldest task this long after it was given it or answered the one
	// before (its tasks go to other workers).
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
	// live is the worker processes that run (exec'd, not exited): a Map
	// starts with them.
	live map[*process]bool

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
	p := &Pool{opts: opts, done: make(chan error, 1), live: map[*process]bool{}}
	sup, err := New(opts.Options)
	if err != nil {
		return nil, err
	}
	p.sup = sup
	sup.tasks, sup.procEvents = p.results, p.procEvent
	ctx, stop := context.WithCancel(context.Background())
	p.stop = stop
	go func() { p.done <- sup.Run(ctx) }()
	return p, nil
}

// procEvent follows the worker processes, for the Map under way and the
// next one.
func (p *Pool) procEvent(proc *process, ev Event) {
	switch ev.Kind {
	case EventStarted, EventExited:
	default:
		return
	}
	p.mu.Lock()
	if ev.Kind == EventStarted {
		p.live[proc] = true
	} else {
		delete(p.live, proc)
	}
	f := p.farm
	p.mu.Unlock()
	switch {
	case f == nil:
	case ev.Kind == EventStarted:
		f.up(proc)
	default:
		f.lost(proc, "its worker exited ("+ev.Status+")")
	}
}

// results takes the answers of one read of a worker's channel (on its
// read loop). The data of each stays valid: it is the read's own copy.
func (p *Pool) results(proc *process, answers []taskAnswer) {
	p.mu.Lock()
	f := p.farm
	p.mu.Unlock()
	if f != nil {
		f.answeredIDs(proc, answers)
	}
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
		for proc := range p.live {
			f.workers = append(f.workers, &farmWorker{p: proc, up: true})
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
		// Tasks are encoded into blocks of memory shared by many, not an
		// allocation each; a block is freed once all of its tasks are
		// done.
		var block []byte
		pull := func() ([]byte, string, bool, error) {
			v, ok := next()
			if !ok {
				return nil, "", false, nil
			}
			if cap(block)-len(block) < 64 {
				block = make([]byte, 0, 16<<10)
			}
			start := len(block)
			b, err := encodeTask(block, v)
			if cap(b) != cap(block) { // it did not fit: b is a new array
				block = block[:0:0]
			} else {
				block = b
			}
			task := b[start:len(b):len(b)]
			switch {
			case err != nil:
				return nil, err.Error(), true, nil
			case len(task) > maxTask:
				return nil, fmt.Sprintf("the task is %d bytes, more than the message limit allows (%d)", len(task), maxTask), true, nil
			}
			return task, "", true, nil
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

// send adds a task to w's batch; flush queues the batch on w's channel,
// one write for the lot. The farm gives a worker at most Inflight tasks,
// which bounds the batch. (A message per task, each written or queued on
// its own, measured 10-15% slower.)
func (p *Pool) send(w *farmWorker, id int, task []byte) bool {
	w.batch = ipc.AppendIDData(w.batch, ipc.TypeTask, id, task) // encodeTask made task compact
	return true
}

// flush queues w's batch. A worker gone meanwhile has the tasks back
// through the farm when its exit is seen. The channel copies the batch,
// so its buffer is w's again at once.
func (p *Pool) flush(w *farmWorker) {
	if len(w.batch) > 0 {
		w.p.ch.Queue(w.batch)
		w.batch = w.batch[:0]
	}
}

func (p *Pool) kill(proc *process) {
	p.sup.log.Warn("task took too long; killing its worker", "worker", proc.slot, "pid", proc.pid, "timeout", p.opts.TaskTimeout.String())
	proc.kill()
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

// encodeTask encodes a task as one compact JSON value, appended to buf:
// json.Marshal, with the commonest tasks (ints, and JSON already encoded)
// done without reflection (encoding was a tenth of the primary's work per
// trivial task). A json.RawMessage is checked, and compacted if it has
// space in it (a newline would end the message).
func encodeTask(buf []byte, v any) ([]byte, error) {
	switch v := v.(type) {
	case json.RawMessage:
		if bytes.ContainsAny(v, " \t\r\n") {
			w := bytes.NewBuffer(buf)
			if err := json.Compact(w, v); err != nil {
				return buf, fmt.Errorf("the task is not one JSON value: %w", err)
			}
			return w.Bytes(), nil
		}
		if !json.Valid(v) {
			return buf, errors.New("the task is not one JSON value")
		}
		return append(buf, v...), nil
	case int:
		return strconv.AppendInt(buf, int64(v), 10), nil
	case int64:
		return strconv.AppendInt(buf, v, 10), nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return buf, err
	}
	return append(buf, b...), nil
}
