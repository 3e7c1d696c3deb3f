package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-sh/herd"
)

// Serve serves srv on every listener, tells the primary the worker is
// ready, and when the worker is asked to stop, drains srv so that no
// request fails:
//
//  1. it stops accepting (the primary keeps the sockets open, so
//     connections that queue meanwhile go to another worker or to this
//     slot's replacement);
//  2. every response from then on carries "Connection: close", so each
//     keep-alive client gets the answer to the request it sent and then
//     reconnects elsewhere;
//  3. connections that stay idle are closed after Options.DrainGrace
//     (closing an idle connection at once, as http.Server.Shutdown does,
//     cuts off a request the client had already sent on it);
//  4. it waits for the requests in flight (http.Server.Shutdown).
//
// Serve takes over srv's Handler and ConnState (wrapping what they were)
// and returns nil after a drain, or the error that stopped a listener.
func (w *Worker) Serve(srv *http.Server) error {
	ls := w.Listeners()
	if len(ls) == 0 {
		return errors.New("worker has no listeners to serve (start it with herd run -l ADDR)")
	}
	d := newDrain(srv)
	errc := make(chan error, len(ls))
	var serving sync.WaitGroup
	for _, l := range ls {
		serving.Go(func() { errc <- srv.Serve(l) })
	}
	if err := w.Ready(); err != nil && !errors.Is(err, ErrNoChannel) {
		return errors.Join(err, w.drainNow(srv, ls, &serving))
	}
	var serveErr error
	select {
	case <-w.ctx.Done():
	case serveErr = <-errc:
		if errors.Is(serveErr, http.ErrServerClosed) || errors.Is(serveErr, net.ErrClosed) {
			serveErr = nil // someone else stopped srv
		} else {
			serveErr = fmt.Errorf("serve: %w", serveErr)
		}
	}
	d.begin()
	// Stop accepting on the sockets; connections handed over are still
	// taken during the grace period: the primary stopped handing this
	// worker new ones when it asked it to stop, but some may be on the way.
	for _, l := range ls {
		if _, handed := l.(*handoffListener); !handed {
			l.Close()
		}
	}
	d.wait(w.opts.DrainGrace)
	for _, l := range ls {
		l.Close()
	}
	err := srv.Shutdown(context.Background())
	serving.Wait()
	return errors.Join(serveErr, err)
}

func (w *Worker) drainNow(srv *http.Server, ls []net.Listener, serving *sync.WaitGroup) error {
	for _, l := range ls {
		l.Close()
	}
	err := srv.Shutdown(context.Background())
	serving.Wait()
	return err
}

// drain tracks srv's connections and, once begun, asks clients to close.
type drain struct {
	draining atomic.Bool
	mu       sync.Mutex
	open     int
	empty    chan struct{} // closed when open reaches 0 during a drain
}

func newDrain(srv *http.Server) *drain {
	d := &drain{empty: make(chan struct{})}
	inner := srv.Handler
	if inner == nil {
		inner = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if d.draining.Load() {
			rw.Header().Set("Connection", "close")
		}
		inner.ServeHTTP(rw, r)
	})
	prev := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			d.add(1)
		case http.StateClosed, http.StateHijacked:
			d.add(-1)
		}
		if prev != nil {
			prev(c, st)
		}
	}
	return d
}

func (d *drain) add(n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.open += n
	d.checkEmpty()
}

// checkEmpty closes empty once a drain has begun and nothing is open.
// d.mu is held.
func (d *drain) checkEmpty() {
	if d.draining.Load() && d.open == 0 {
		select {
		case <-d.empty:
		default:
			close(d.empty)
		}
	}
}

func (d *drain) begin() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.draining.Store(true)
	d.checkEmpty()
}

// wait waits until every connection has closed or grace has passed.
func (d *drain) wait(grace time.Duration) {
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-d.empty:
	case <-t.C:
	}
}

// encode turns a message payload into JSON.
func encode(data any) (json.RawMessage, error) {
	if raw, ok := data.(json.RawMessage); ok {
		return raw, nil
	}
	b, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", herd.ErrBadMessage, err)
	}
	return b, nil
}

func clone(d json.RawMessage) json.RawMessage {
	if d == nil {
		return nil
	}
	return append(json.RawMessage(nil), d...)
}
