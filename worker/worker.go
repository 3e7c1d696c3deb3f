// Package worker is the worker side of a herd cluster, for Go programs:
// the listening sockets by name, the message channel to the primary, and
// the request to stop.
//
// A program run by a herd primary — by `herd run`, or self-forked by a
// herd.Supervisor whose Options.Command is empty — calls Start once:
//
//	w, err := worker.Start(worker.Options{OnMessage: handle})
//	if err != nil { log.Fatal(err) }
//	defer w.Close()
//	srv := &http.Server{Handler: mux}
//	err = w.Serve(srv) // serves every listener, says ready, drains on stop
//
// The worker is asked to stop by the herd.shutdown message, by SIGTERM or
// SIGINT, or by its primary going away; Context ends then, with the reason
// as its cause.
package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/internal/channel"
	"github.com/herd-sh/herd/internal/ipc"
)

// Errors Start returns, and the causes of a stop (context.Cause of
// Context).
var (
	// ErrNotWorker: this process was not started by a herd primary.
	ErrNotWorker = errors.New("not a herd worker (HERD_WORKER_ID is not set)")
	// ErrNoChannel: the primary gave this worker no message channel.
	ErrNoChannel = errors.New("no channel to the primary (HERD_IPC_FD is not set)")
	// ErrShutdown: the primary asked this worker to stop (herd.shutdown).
	ErrShutdown = errors.New("the primary asked this worker to stop")
	// ErrStopSignal: the worker received SIGTERM or SIGINT.
	ErrStopSignal = errors.New("stop signal received")
	// ErrPrimaryGone: the channel to the primary ended; the primary has
	// exited or has let this worker go.
	ErrPrimaryGone = errors.New("the primary is gone")
	// ErrClosed: the worker was closed.
	ErrClosed = errors.New("worker closed")
)

// IsWorker reports whether this process was started by a herd primary.
func IsWorker() bool { return os.Getenv("HERD_WORKER_ID") != "" }

// Options configure Start. The zero value is useful.
type Options struct {
	// OnMessage is called for every message from the primary (From is
	// herd.FromPrimary) or from another worker (Type is herd.TypeRelayed),
	// one at a time, in order. While it runs no other message is read, so
	// a slow handler slows its senders down. nil drops them.
	OnMessage func(herd.Message)
	// DrainGrace is how long Serve lets idle keep-alive connections stay
	// open after a stop request, so that a request already on its way on
	// one of them is answered rather than cut off; 0 means one second.
	DrainGrace time.Duration
}

// Worker is this process's place in a cluster. Make it with Start.
type Worker struct {
	id, workers int
	names       []string // listener names, in LISTEN_FDS order
	listeners   map[string]net.Listener
	// handoff are the listeners whose connections the primary hands over
	// (HERD_HANDOFF); they are in listeners too.
	handoff    map[string]*handoffListener
	unreported unreportedCount // closed handed connections not yet reported
	hand       handoffRead     // the read loop's: connections being taken
	taskMu     sync.Mutex
	taskQ      []task // herd.task messages not yet served, for ServeTasks
	// The read loop's: tasks read and not yet in taskQ, and where their
	// data is copied to.
	readQ     []task
	readArena []byte
	taskWake  chan struct{} // capacity 1: taskQ has tasks
	opts      Options
	ch        *channel.Conn // nil without a channel

	ctx    context.Context
	cancel context.CancelCauseFunc

	wg        sync.WaitGroup // the reader and the signal watcher
	sigs      chan os.Signal
	closeOnce sync.Once
	closed    chan struct{}
}

// Start takes over what the primary handed this process: the listening
// sockets (LISTEN_FDS, LISTEN_FDNAMES, checked against LISTEN_PID) and the
// message channel (HERD_IPC_FD). It removes those variables from the
// environment so that programs this worker starts do not take them for
// their own. Call it once.
func Start(opts Options) (*Worker, error) {
	id, err := strconv.Atoi(os.Getenv("HERD_WORKER_ID"))
	if err != nil || id < 0 {
		return nil, ErrNotWorker
	}
	workers, _ := strconv.Atoi(os.Getenv("HERD_WORKERS"))
	w := &Worker{
		id:        id,
		workers:   workers,
		opts:      opts,
		listeners: make(map[string]net.Listener),
		sigs:      make(chan os.Signal, 1),
		closed:    make(chan struct{}),
		taskWake:  make(chan struct{}, 1),
	}
	if w.opts.DrainGrace <= 0 {
		w.opts.DrainGrace = time.Second
	}
	// The hello goes out before the sockets are taken: a primary that
	// watches for the sockets being accepted on knows by then that this
	// worker will say herd.ready itself.
	if v := os.Getenv("HERD_IPC_FD"); v != "" {
		fd, err := strconv.Atoi(v)
		if err != nil || fd < 3 {
			return nil, fmt.Errorf("HERD_IPC_FD=%q: not a descriptor number", v)
		}
		if w.ch, err = channel.FromFD(fd, 0); err != nil {
			return nil, err
		}
		os.Unsetenv("HERD_IPC_FD")
		w.ch.TrySend(ipc.Message{Type: ipc.TypeHello, V: ipc.Version})
	}
	if err := w.takeListeners(); err != nil {
		if w.ch != nil {
			w.ch.Close()
		}
		return nil, err
	}
	if v := os.Getenv("HERD_HANDOFF"); v != "" && w.ch != nil {
		w.handoff = map[string]*handoffListener{}
		for _, name := range strings.Split(v, ":") {
			if _, taken := w.listeners[name]; name == "" || taken {
				continue
			}
			l := newHandoffListener(name)
			w.handoff[name] = l
			w.names = append(w.names, name)
			w.listeners[name] = l
		}
		os.Unsetenv("HERD_HANDOFF")
	}
	w.ctx, w.cancel = context.WithCancelCause(context.Background())
	signal.Notify(w.sigs, syscall.SIGTERM, syscall.SIGINT)
	w.wg.Go(w.watchSignals)
	if w.ch != nil {
		w.wg.Go(w.read)
	}
	return w, nil
}

// takeListeners turns the inherited sockets into listeners. Like
// sd_listen_fds, it ignores them when LISTEN_PID names another process.
func (w *Worker) takeListeners() error {
	defer func() {
		os.Unsetenv("LISTEN_FDS")
		os.Unsetenv("LISTEN_PID")
		os.Unsetenv("LISTEN_FDNAMES")
	}()
	v := os.Getenv("LISTEN_FDS")
	if v == "" {
		return nil
	}
	if pid := os.Getenv("LISTEN_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 1<<16 {
		return fmt.Errorf("LISTEN_FDS=%q: not a count", v)
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	for i := range n {
		name := "listen" + strconv.Itoa(i)
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		f := os.NewFile(uintptr(3+i), name)
		l, err := net.FileListener(f)
		f.Close() // FileListener made its own close-on-exec copy
		if err != nil {
			w.closeListeners()
			return fmt.Errorf("listener %s (fd %d): %w", name, 3+i, err)
		}
		w.names = append(w.names, name)
		w.listeners[name] = &onceCloseListener{Listener: l}
	}
	return nil
}

func (w *Worker) closeListeners() {
	for _, l := range w.listeners {
		l.Close()
	}
}

// ID is this worker's slot, 0..Workers()-1; a restarted worker keeps it.
func (w *Worker) ID() int { return w.id }

// Workers is the number of worker slots in the cluster.
func (w *Worker) Workers() int { return w.workers }

// Listener returns the listener named name (the NAME of -l NAME=ADDR, or
// listen0, listen1, ...), or nil.
func (w *Worker) Listener(name string) net.Listener { return w.listeners[name] }

// Listeners returns every listener, in the order the primary gave them.
func (w *Worker) Listeners() []net.Listener {
	out := make([]net.Listener, len(w.names))
	for i, n := range w.names {
		out[i] = w.listeners[n]
	}
	return out
}

// Context ends when the worker is asked to stop; context.Cause says why:
// ErrShutdown, ErrStopSignal, ErrPrimaryGone or ErrClosed.
func (w *Worker) Context() context.Context { return w.ctx }

// Send sends a message of type typ with data (encoded as JSON; a
// json.RawMessage is sent as it is) to the primary. It waits while the
// channel's queue is full.
func (w *Worker) Send(typ string, data any) error {
	if typ == "" || ipc.Reserved(typ) {
		return fmt.Errorf("%w: type %q is empty or reserved (herd.*)", herd.ErrBadMessage, typ)
	}
	return w.send(ipc.Message{Type: typ}, data)
}

// Broadcast sends data to every other worker, through the primary; they
// receive it with Type herd.TypeRelayed and From set to this worker's id.
func (w *Worker) Broadcast(data any) error {
	return w.send(ipc.Message{Type: ipc.TypeBroadcast}, data)
}

// SendTo sends data to worker id, through the primary.
func (w *Worker) SendTo(id int, data any) error {
	if id < 0 {
		return fmt.Errorf("%w %d", herd.ErrNoWorker, id)
	}
	return w.send(ipc.Message{Type: ipc.TypeTo, To: &id}, data)
}

// Ready tells the primary that this worker is serving.
func (w *Worker) Ready() error { return w.send(ipc.Message{Type: ipc.TypeReady}, nil) }

func (w *Worker) send(m ipc.Message, data any) error {
	if w.ch == nil {
		return ErrNoChannel
	}
	var scratch [24]byte
	switch d := data.(type) {
	case nil:
	case int: // the common small payloads, without encoding/json's allocations
		m.Data = strconv.AppendInt(scratch[:0], int64(d), 10)
	case int64:
		m.Data = strconv.AppendInt(scratch[:0], d, 10)
	case bool:
		m.Data = strconv.AppendBool(scratch[:0], d)
	default:
		raw, err := encode(data)
		if err != nil {
			return err
		}
		m.Data = raw
	}
	err := w.ch.Send(context.Background(), m)
	switch {
	case errors.Is(err, channel.ErrClosed):
		return ErrPrimaryGone
	case errors.Is(err, channel.ErrTooBig), errors.Is(err, ipc.ErrMalformed):
		return fmt.Errorf("%w: %w", herd.ErrBadMessage, err)
	}
	return err
}

// read is the channel's read loop; its end means the primary is gone.
func (w *Worker) read() {
	w.ch.ReadLoop(nil, (*workerEnd)(w))
	w.cancel(ErrPrimaryGone)
}

// heartbeat tells the primary every so often that this worker is alive,
// as the primary asked in herd.hello (herd run --heartbeat-timeout).
func (w *Worker) heartbeat(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if w.ch.TrySend(ipc.Message{Type: ipc.TypeHeartbeat}) == channel.ErrClosed {
				return
			}
		case <-w.closed:
			return
		}
	}
}

func (w *Worker) watchSignals() {
	select {
	case sig := <-w.sigs:
		w.cancel(fmt.Errorf("%w: %v", ErrStopSignal, sig))
	case <-w.closed:
	}
}

// Close flushes what is queued for the primary (for up to a second),
// closes the channel and the listeners, and stops watching for signals.
func (w *Worker) Close() error {
	w.closeOnce.Do(func() {
		w.cancel(ErrClosed)
		signal.Stop(w.sigs)
		close(w.closed)
		if w.ch != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			w.ch.Flush(ctx)
			cancel()
			w.ch.Close()
		}
		w.closeListeners()
		w.wg.Wait()
	})
	return nil
}

// workerEnd handles what the primary sends; its methods run on the read
// loop.
type workerEnd Worker

// Message handles one message from the primary: the protocol's own, and
// the rest for OnMessage.
func (e *workerEnd) Message(m ipc.Message) {
	w := (*Worker)(e)
	switch m.Type {
	case ipc.TypeHello:
		if m.ID != nil && *m.ID != w.id {
			fmt.Fprintf(os.Stderr, "herd worker: the primary calls this worker %d, HERD_WORKER_ID says %d\n", *m.ID, w.id)
		}
		w.ch.SetMax(m.Max)
		if m.Heartbeat > 0 {
			every := time.Duration(m.Heartbeat) * time.Millisecond
			w.wg.Go(func() { w.heartbeat(every) })
		}
	case ipc.TypeShutdown:
		w.cancel(ErrShutdown)
	case ipc.TypeConn:
		w.takeConn(m)
	case ipc.TypeTask:
		if m.ID != nil {
			w.readTask(*m.ID, m.Data)
		}
	case ipc.TypeMessage:
		from := -1
		if m.From != nil {
			from = *m.From
		}
		w.deliver(herd.Message{Type: herd.TypeRelayed, Data: clone(m.Data), From: from})
	default:
		if !ipc.Reserved(m.Type) {
			w.deliver(herd.Message{Type: m.Type, Data: clone(m.Data), From: herd.FromPrimary})
		}
	}
}

// EndBatch passes on the connections (see takeConn) and the tasks (see
// readTask) of one read of the channel.
func (e *workerEnd) EndBatch() {
	w := (*Worker)(e)
	w.passConns()
	w.queueTasks()
}

// Bad reports a line from the primary that is not a message; the channel
// goes on with the next line.
func (e *workerEnd) Bad(err error) {
	fmt.Fprintf(os.Stderr, "herd worker: dropped a message from the primary: %v\n", err)
}

func (w *Worker) deliver(m herd.Message) {
	if w.opts.OnMessage != nil {
		w.passConns() // the connections handed before it come first
		w.opts.OnMessage(m)
	}
}

// onceCloseListener lets the listener be closed by both Serve and the
// http.Server without the second close reporting an error.
type onceCloseListener struct {
	net.Listener
	once sync.Once
	err  error
}

// Close closes the listener the first time; later calls return the first
// call's result.
func (l *onceCloseListener) Close() error {
	l.once.Do(func() { l.err = l.Listener.Close() })
	return l.err
}
