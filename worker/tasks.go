package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

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
	for {
		select {
		case <-ctx.Done():
			return nil
		case t := <-w.tasks:
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
			if err := w.ch.Send(context.Background(), m); err != nil {
				if errors.Is(err, ErrPrimaryGone) {
					return nil
				}
				return err
			}
		}
	}
}
