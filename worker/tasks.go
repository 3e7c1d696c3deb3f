package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

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
func (w *Worker) ServeTasks(handler func(ctx context.Context, task json.RawMessage) (any, error)) error {
	if w.ch == nil {
		return ErrNoChannel
	}
	w.Ready()
	ctx := w.Context()
	var (
		batch []task
		out   []byte // the encoded result at hand
	)
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
		// Each result goes out as soon as it is known (the channel
		// batches what queues up while it writes): the primary gets work
		// back and sends more while the rest are worked on, and if this
		// worker dies, its results so far are in, so the task that killed
		// it is the one that takes the blame.
		for _, t := range batch {
			if ctx.Err() != nil {
				break
			}
			result, err := handler(ctx, t.data)
			id := t.id
			m := ipc.Message{Type: ipc.TypeResult, ID: &id}
			if err != nil {
				m.Type = ipc.TypeFailed
				m.Data, _ = json.Marshal(err.Error())
			} else if m.Data, err = encode(result); err != nil {
				m.Type = ipc.TypeFailed
				m.Data, _ = json.Marshal(fmt.Sprintf("the result cannot be sent: %v", err))
			}
			if out, err = ipc.Append(out[:0], m); err != nil || len(out)-1 > w.ch.Max() {
				m = ipc.Message{Type: ipc.TypeFailed, ID: &id, Data: json.RawMessage(`"the result is too long to send"`)}
				out, _ = ipc.Append(out[:0], m)
			}
			if err := w.sendResults(out); err != nil {
				return err
			}
		}
		clear(batch)
	}
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

// queueTask keeps a task for ServeTasks (the primary sends a worker at
// most as many as its Pool's Inflight).
func (w *Worker) queueTask(t task) {
	w.taskMu.Lock()
	w.taskQ = append(w.taskQ, t)
	first := len(w.taskQ) == 1
	w.taskMu.Unlock()
	if first {
		select {
		case w.taskWake <- struct{}{}:
		default:
		}
	}
}
