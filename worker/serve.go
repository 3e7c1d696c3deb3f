package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
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
	// The Serve loops on the worker's own sockets, and on the listeners of
	// connections the primary hands over.
	var own, handed sync.WaitGroup
	for _, l := range ls {
		loops := &own
		if _, ok := l.(*handoffListener); ok {
			loops = &handed
		}
		loops.Go(func() { errc <- srv.Serve(l) })
	}
	if err := w.Ready(); err != nil && !errors.Is(err, ErrNoChannel) {
		return errors.Join(err, w.drainNow(srv, ls, &own, &handed))
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
	deadline := time.Now().Add(w.opts.DrainGrace)
	// Stop accepting on the sockets; connections handed over are still
	// taken during the grace period: the primary stopped handing this
	// worker new ones when it asked it to stop, but some may be on the way.
	//
	// Each Serve loop is waited for after its listener is closed, before
	// the drain looks at what is open: a connection accepted just as the
	// listener closed is counted only once its loop has passed it on, and
	// http.Server.Shutdown drops a connection whose request it reads after
	// shutdown began (net/http closes it unanswered: the client sees EOF).
	for _, l := range ls {
		if _, ok := l.(*handoffListener); !ok {
			l.Close()
		}
	}
	own.Wait()
	d.waitUntil(deadline)
	for _, l := range ls {
		l.Close()
	}
	handed.Wait()
	d.waitUntil(deadline)
	return errors.Join(serveErr, srv.Shutdown(context.Background()))
}

func (w *Worker) drainNow(srv *http.Server, ls []net.Listener, loops ...*sync.WaitGroup) error {
	for _, l := range ls {
		l.Close()
	}
	err := srv.Shutdown(context.Background())
	for _, wg := range loops {
		wg.Wait()
	}
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

// checkEmpty keeps empty closed exactly while a drain has begun and
// nothing is open (a connection accepted late opens it again). d.mu is
// held.
func (d *drain) checkEmpty() {
	closed := false
	select {
	case <-d.empty:
		closed = true
	default:
	}
	switch nothing := d.draining.Load() && d.open == 0; {
	case nothing && !closed:
		close(d.empty)
	case !nothing && closed:
		d.empty = make(chan struct{})
	}
}

func (d *drain) begin() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.draining.Store(true)
	d.checkEmpty()
}

// waitUntil waits until every connection has closed or deadline has
// passed.
func (d *drain) waitUntil(deadline time.Time) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	for {
		d.mu.Lock()
		empty, done := d.empty, d.draining.Load() && d.open == 0
		d.mu.Unlock()
		if done {
			return
		}
		select {
		case <-empty:
		case <-t.C:
			return
		}
	}
}

// encode turns a message payload into JSON.
func encode(data any) (json.RawMessage, error) {
	// The commonest payloads without reflection: numbers are what small
	// results mostly are, and encoding/json was a fifth of a worker's
	// work per trivial task.
	switch v := data.(type) {
	case json.RawMessage:
		return v, nil
	case int:
		return strconv.AppendInt(nil, int64(v), 10), nil
	case int64:
		return strconv.AppendInt(nil, v, 10), nil
	case int32:
		return strconv.AppendInt(nil, int64(v), 10), nil
	case uint64:
		return strconv.AppendUint(nil, v, 10), nil
	case bool:
		return strconv.AppendBool(nil, v), nil
	case nil:
		return json.RawMessage("null"), nil
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
