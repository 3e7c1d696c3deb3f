package herd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/herd-sh/herd/internal/channel"
	"github.com/herd-sh/herd/internal/ipc"
)

// newChannel makes the socket pair of a new worker's channel: the
// primary's end, with herd.hello already queued, and the file the worker
// inherits.
func (s *Supervisor) newChannel(slot int) (*channel.Conn, *os.File, error) {
	fds, err := socketpair()
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	mine := os.NewFile(uintptr(fds[0]), "herd-ipc")
	theirs := os.NewFile(uintptr(fds[1]), "herd-ipc-worker")
	conn, err := net.FileConn(mine)
	mine.Close() // FileConn made its own copy
	if err != nil {
		theirs.Close()
		return nil, nil, fmt.Errorf("channel: %w", err)
	}
	ch := channel.New(conn, s.opts.MaxMessage)
	id := slot
	hello := ipc.Message{
		Type: ipc.TypeHello, V: ipc.Version, ID: &id, Workers: s.target(), Max: s.opts.MaxMessage,
		Heartbeat: int(s.opts.Health.Heartbeat / 3 / time.Millisecond),
	}
	if err := ch.TrySend(hello); err != nil {
		ch.Close()
		theirs.Close()
		return nil, nil, fmt.Errorf("channel: %w", err)
	}
	return ch, theirs, nil
}

// primaryEnd handles what one worker process sends on its channel. Its
// methods run on that process's read loop.
type primaryEnd struct {
	s *Supervisor
	p *process
	// The answers to a Pool's tasks in the read at hand, passed on
	// together at its end (EndBatch), their data copied into one block.
	answers []taskAnswer
	arena   []byte
}

// taskAnswer is a worker's answer to a task of a Pool: its result, or
// why it failed.
type taskAnswer struct {
	id     int
	data   []byte // the result; with failed, the reason (a JSON string)
	failed bool
}

func (e *primaryEnd) Message(m ipc.Message) {
	s, p := e.s, e.p
	p.heard.Add(1)
	switch m.Type {
	case ipc.TypeHello:
		p.speaks.Store(true)
	case ipc.TypeReady:
		// It counts only where the rule asks for it: under --ready
		// delay, http or listen the rule decides, whatever the worker
		// says of itself.
		if r := s.opts.Ready.Mode; r == ReadyMessage || r == ReadyAuto {
			p.sl.post(procEvent{p: p, kind: evReady})
		}
	case ipc.TypeHeartbeat:
	case ipc.TypeResult, ipc.TypeFailed:
		if s.tasks != nil && m.ID != nil {
			if len(m.Data) > cap(e.arena)-len(e.arena) {
				e.arena = make([]byte, 0, max(len(m.Data), 16<<10))
			}
			start := len(e.arena)
			e.arena = append(e.arena, m.Data...)
			e.answers = append(e.answers, taskAnswer{
				id:     *m.ID,
				data:   e.arena[start:len(e.arena):len(e.arena)],
				failed: m.Type == ipc.TypeFailed,
			})
		}
	case ipc.TypeTook, ipc.TypeClosed, ipc.TypeDeclined:
		if s.handover == nil {
			return
		}
		n := 1
		if len(m.Data) > 0 {
			if err := json.Unmarshal(m.Data, &n); err != nil || n < 0 {
				e.bad(fmt.Errorf("%s with data %s: want a count", m.Type, m.Data))
				return
			}
		}
		switch m.Type {
		case ipc.TypeTook:
			s.handover.took(p, n)
		case ipc.TypeClosed:
			s.handover.closed(p, n)
		default:
			s.log.Info("handing the connections a stopping worker did not take to the others",
				"worker", p.slot, "pid", p.pid, "connections", n, "declined", true)
			for range n {
				s.handover.nack(p)
			}
		}
	case "":
		// Node's own internal messages, when its channel is ours.
		if s.handover != nil {
			switch m.Cmd {
			case "NODE_HANDLE_ACK":
				s.handover.took(p, 1)
			case "NODE_HANDLE_NACK":
				s.handover.nack(p)
			}
		}
	case ipc.TypeBroadcast:
		for _, sl := range s.slotList() {
			if sl.id != p.slot {
				s.relay(p, sl.id, m.Data)
			}
		}
	case ipc.TypeTo:
		s.relay(p, *m.To, m.Data)
	default:
		if ipc.Reserved(m.Type) {
			e.bad(fmt.Errorf("unknown protocol message type %q", m.Type))
			return
		}
		if s.opts.OnEvent != nil {
			s.emit(p, Event{Kind: EventMessage, Message: Message{
				Type: m.Type,
				Data: cloneData(m.Data),
				From: p.slot,
			}})
		}
	}
}

func (e *primaryEnd) Bad(err error) { e.bad(err) }

func (e *primaryEnd) EndBatch() {
	if len(e.answers) > 0 {
		e.s.tasks(e.p, e.answers)
		clear(e.answers)
		e.answers = e.answers[:0]
	}
}

func (e *primaryEnd) bad(err error) {
	e.p.dropped.Add(1)
	if ok, missed := e.p.bad.allow(time.Now()); ok {
		e.s.log.Warn("dropped a message from worker", "worker", e.p.slot, "pid", e.p.pid, "err", err, "not_logged", missed)
	}
}

// relay passes data from worker process from to the current worker of
// slot to, as herd.message.
func (s *Supervisor) relay(from *process, to int, data json.RawMessage) {
	var q *process
	if sl, err := s.slotByID(to); err == nil {
		q = sl.current.Load()
	}
	var err error
	if q == nil {
		err = fmt.Errorf("%w %d", ErrNoWorker, to)
	} else {
		id := from.slot
		err = q.ch.Relay(ipc.Message{Type: ipc.TypeMessage, From: &id, Data: data})
	}
	if err == nil {
		return
	}
	// A stalled receiver is its own fault; it gets the log line.
	lim, who := &from.bad, from
	if q != nil && errors.Is(err, channel.ErrStalled) {
		lim, who = &q.bad, q
	}
	if ok, missed := lim.allow(time.Now()); ok {
		s.log.Warn("dropped a relayed message", "from", from.slot, "to", to, "worker", who.slot, "pid", who.pid, "err", err, "not_logged", missed)
	}
}

// emit calls OnEvent for p, one event of a worker at a time.
func (s *Supervisor) emit(p *process, ev Event) {
	if s.opts.OnEvent == nil && s.procEvents == nil {
		return
	}
	ev.Worker, ev.PID = p.slot, p.pid
	p.eventMu.Lock()
	defer p.eventMu.Unlock()
	if s.procEvents != nil {
		s.procEvents(p, ev)
	}
	if s.opts.OnEvent != nil {
		s.opts.OnEvent(ev)
	}
}

func cloneData(d json.RawMessage) json.RawMessage {
	if d == nil {
		return nil
	}
	return append(json.RawMessage(nil), d...)
}

// Send sends a message of type typ with data (encoded as JSON; a
// json.RawMessage is sent as it is) to worker id. It waits while the
// worker's queue is full, until ctx ends. It returns an error wrapping
// ErrNoWorker when the slot has no running worker, ErrBadMessage for a
// reserved or empty type, data that is not JSON or a message over the size
// limit.
func (s *Supervisor) Send(ctx context.Context, id int, typ string, data any) error {
	m, err := userMessage(typ, data)
	if err != nil {
		return err
	}
	return s.send(ctx, id, m)
}

// Broadcast sends a message to every running worker, as Send does. Slots
// without a running worker are skipped.
func (s *Supervisor) Broadcast(ctx context.Context, typ string, data any) error {
	m, err := userMessage(typ, data)
	if err != nil {
		return err
	}
	var errs []error
	for _, sl := range s.slotList() {
		if err := s.send(ctx, sl.id, m); err != nil && !errors.Is(err, ErrNoWorker) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Supervisor) send(ctx context.Context, id int, m ipc.Message) error {
	sl, err := s.slotByID(id)
	if err != nil {
		return err
	}
	p := sl.current.Load()
	if p == nil {
		return fmt.Errorf("%w %d: no worker is running in that slot", ErrNoWorker, id)
	}
	err = p.ch.Send(ctx, m)
	switch {
	case errors.Is(err, channel.ErrClosed):
		return fmt.Errorf("%w %d: the worker has exited", ErrNoWorker, id)
	case errors.Is(err, channel.ErrTooBig), errors.Is(err, ipc.ErrMalformed):
		return fmt.Errorf("%w: %w", ErrBadMessage, err)
	case err != nil:
		return fmt.Errorf("send to worker %d: %w", id, err)
	}
	return nil
}

// userMessage checks and encodes a message from the primary's user.
func userMessage(typ string, data any) (ipc.Message, error) {
	if typ == "" || ipc.Reserved(typ) {
		return ipc.Message{}, fmt.Errorf("%w: type %q is empty or reserved (herd.*)", ErrBadMessage, typ)
	}
	m := ipc.Message{Type: typ}
	switch d := data.(type) {
	case nil:
	case json.RawMessage:
		m.Data = d
	default:
		b, err := json.Marshal(data)
		if err != nil {
			return m, fmt.Errorf("%w: %w", ErrBadMessage, err)
		}
		m.Data = b
	}
	return m, nil
}

// logLimiter lets a few log lines a second through and counts the rest.
type logLimiter struct {
	mu     sync.Mutex
	window time.Time
	n      int
	missed int
}

const logsPerSecond = 5

// allow reports whether to log now, and how many lines were held back
// since the last one that was.
func (l *logLimiter) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.window) >= time.Second {
		l.window, l.n = now, 0
	}
	if l.n >= logsPerSecond {
		l.missed++
		return false, 0
	}
	l.n++
	missed := l.missed
	l.missed = 0
	return true, missed
}
