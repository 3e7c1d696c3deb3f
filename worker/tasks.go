package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/herd-sh/herd/internal/channel"
	"github.com/herd-sh/herd/internal/ipc"
)

// task is a herd.task the primary sent (herd.Pool).
type task struct {
	id   int
	data json.RawMessage
}

// ServeTasks runs the tasks a herd.Pool sends this worker, one at a time
// in the order they come, with handler, and sends each result back (a
// returned error fails the task, with its text as the reason; a panic in
// handler is not recovered). ctx, given to handler, ends when the worker is
// asked to stop. ServeTasks returns then, once the task at hand is done.
//
// Results go back in batches: those of tasks that take less than
// resultDelay (100 µs) together go in one write, and no result waits
// longer than that, however long the task after it runs. A panic sends the
// results before it on its way; if the worker dies otherwise (killed, or
// os.Exit), the primary runs the tasks it had not heard back about again,
// each on its own, to find the one to blame.
func (w *Worker) ServeTasks(handler func(ctx context.Context, task json.RawMessage) (any, error)) error {
	if w.ch == nil {
		return ErrNoChannel
	}
	w.Ready()
	ctx := w.Context()
	r := &resultBatch{w: w}
	r.timer = time.AfterFunc(time.Hour, r.flushLate)
	r.timer.Stop()
	defer func() {
		// On the way out, a panic included: what is done goes out first.
		if r.close() {
			fctx, cancel := context.WithTimeout(context.Background(), time.Second)
			w.ch.Flush(fctx)
			cancel()
		}
	}()
	var batch []task
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.taskWake:
		}
		// Everything that came meanwhile, in one go: one wake-up per
		// batch of tasks, not per task.
		w.taskMu.Lock()
		batch, w.taskQ = w.taskQ, batch[:0]
		w.taskMu.Unlock()
		for _, t := range batch {
			if ctx.Err() != nil {
				break
			}
			result, err := handler(ctx, t.data)
			if err := r.add(t.id, result, err); err != nil {
				return err
			}
		}
		if err := r.flush(); err != nil {
			return err
		}
		clear(batch)
	}
}

// resultBatch is the results of ServeTasks not sent yet. The task loop
// adds to it and sends it at the end of each batch of tasks, or once its
// oldest result has waited resultDelay; the timer sends it when the task
// that follows takes longer than that, so that a slow task does not hold
// the results of the quick ones before it.
type resultBatch struct {
	w      *Worker
	timer  *time.Timer
	mu     sync.Mutex
	out    []byte    // encoded results
	oldest time.Time // when the first of out was added
	closed bool
}

// add encodes the result of task id, and sends what waits if its oldest
// has waited long enough.
func (r *resultBatch) add(id int, result any, err error) error {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.out) == 0 {
		r.oldest = now
		r.timer.Reset(resultDelay)
	}
	r.out = appendResult(r.out, id, result, err, r.w.ch.Max())
	if now.Sub(r.oldest) >= resultDelay {
		return r.sendLocked()
	}
	return nil
}

// flush sends what waits.
func (r *resultBatch) flush() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sendLocked()
}

// flushLate is the timer's: a task is taking long, the results before it
// go now. An error is the task loop's to find on its next send.
func (r *resultBatch) flushLate() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.sendLocked()
	}
}

// close sends what waits and stops the timer; it reports whether there
// was something to send and it went.
func (r *resultBatch) close() bool {
	r.timer.Stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	had := len(r.out) > 0
	return r.sendLocked() == nil && had
}

func (r *resultBatch) sendLocked() error {
	if len(r.out) == 0 {
		return nil
	}
	r.timer.Stop()
	err := r.w.sendResults(r.out)
	r.out = r.out[:0]
	return err
}

// resultDelay bounds how long a result may wait to go out with others:
// short beside any task timeout, long beside a trivial task.
const resultDelay = 100 * time.Microsecond

// appendResult appends the answer to task id: herd.result with result,
// or herd.failed with why it failed, or why result cannot be sent.
func appendResult(out []byte, id int, result any, err error, limit int) []byte {
	mark := len(out)
	if err == nil {
		var num [24]byte
		var data []byte // compact JSON, or nil to go through ipc.Append
		switch v := result.(type) {
		case int:
			data = strconv.AppendInt(num[:0], int64(v), 10)
		case int64:
			data = strconv.AppendInt(num[:0], v, 10)
		case json.RawMessage:
			// checked and compacted by Append below
		default:
			// What encoding/json writes is compact.
			data, err = encode(result)
		}
		switch {
		case err != nil:
		case data != nil:
			out = ipc.AppendIDData(out, ipc.TypeResult, id, data)
		default:
			out, err = ipc.Append(out, ipc.Message{Type: ipc.TypeResult, ID: &id, Data: result.(json.RawMessage)})
		}
		if err == nil && len(out)-mark-1 <= limit {
			return out
		}
		out = out[:mark]
		if err != nil {
			err = fmt.Errorf("the result cannot be sent: %w", err)
		} else {
			err = errors.New("the result is too long to send")
		}
	}
	why, _ := json.Marshal(err.Error())
	m := ipc.Message{Type: ipc.TypeFailed, ID: &id, Data: why}
	if b, aerr := ipc.Append(out, m); aerr == nil && len(b)-mark-1 <= limit {
		return b
	}
	m.Data = json.RawMessage(`"the reason it failed is too long to send"`)
	b, _ := ipc.Append(out, m)
	return b
}

// sendResults sends encoded results; a gone primary ends ServeTasks
// quietly.
func (w *Worker) sendResults(out []byte) error {
	if len(out) == 0 {
		return nil
	}
	err := w.ch.SendLines(out)
	if errors.Is(err, channel.ErrClosed) {
		return nil
	}
	return err
}

// readTask keeps a task the read loop has read, until the end of the
// read (queueTasks): the tasks of one read reach ServeTasks together, with
// one lock and one wake-up. Their data is copied into one block per read,
// not one allocation per task.
func (w *Worker) readTask(id int, data json.RawMessage) {
	if len(data) > cap(w.readArena)-len(w.readArena) {
		w.readArena = make([]byte, 0, max(len(data), 16<<10))
	}
	start := len(w.readArena)
	w.readArena = append(w.readArena, data...)
	w.readQ = append(w.readQ, task{id: id, data: w.readArena[start:len(w.readArena):len(w.readArena)]})
}

// queueTasks hands the tasks read so far to ServeTasks (the primary sends
// a worker at most as many as its Pool's Inflight).
func (w *Worker) queueTasks() {
	if len(w.readQ) == 0 {
		return
	}
	w.taskMu.Lock()
	first := len(w.taskQ) == 0
	w.taskQ = append(w.taskQ, w.readQ...)
	w.taskMu.Unlock()
	clear(w.readQ)
	w.readQ = w.readQ[:0]
	if first {
		select {
		case w.taskWake <- struct{}{}:
		default:
		}
	}
}
