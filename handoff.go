package herd

import (
	"context"
	"encoding/json"
	"errors"
	"hash/maphash"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/herd-sh/herd/internal/ipc"
	"github.com/herd-sh/herd/internal/sockets"
)

// Hand-over of connections (BalanceRoundRobin, BalanceLeastConn,
// BalanceSticky): the primary accepts, picks a worker, and passes the
// connection's descriptor on the worker's channel with a herd.conn message
// (or Node's NODE_HANDLE). The primary keeps its descriptor until the
// worker says it has it (herd.took, or Node's NODE_HANDLE_ACK), so that a
// connection given to a worker that dies first is given to another one.
//
// A worker that is stopping gets no new connections, but one can still be
// handed to it in the instant it is asked to stop, after the stop request
// on its channel; a worker that stops taking connections then (as
// examples/python/handoff.py does) leaves it untaken. Such connections are
// given to another worker: at once when the worker says herd.declined (the
// Go library and the Python example do), after takeWithin when it says
// nothing; never kept until it exits (see takeBack).

const (
	// handoffQueue is how many bytes may wait in a worker's channel before
	// it is skipped: a worker slow to read its channel gets no more
	// connections while others can take them.
	handoffQueue = 64 << 10
	// parkFor bounds how long a connection waits when no worker can take
	// it (all are starting, or all are full); then it is closed.
	parkFor = 10 * time.Second
	// takeWithin is how long a worker has to take a connection handed to
	// it. One that does not is hung: it is killed, and what it holds goes
	// to the others.
	takeWithin = 5 * time.Second
	// acceptBatch bounds the connections taken from one wake-up.
	acceptBatch = 64
	// A worker that has not taken maxUntaken connections, or one for
	// longer than slowTake, is skipped while others can take them: it is
	// not keeping up (or is stuck), and a connection waiting on it is a
	// client waiting.
	maxUntaken = 128
	slowTake   = 200 * time.Millisecond
)

// giveHook, when set (by tests), runs in give once p was found able to
// take a connection and before it is sent (p's hand-over lock held): a
// test makes a stop request land in that window, otherwise a matter of
// chance.
var giveHook atomic.Pointer[func(slot, pid int)]

// handed is a connection given to a worker and not yet taken.
type handed struct {
	fd       int
	listener string
	ip       netip.Addr
	accepted time.Time // when the primary accepted it
	given    time.Time // when it was last given to a worker
}

// handover is the state of the hand-over modes.
type handover struct {
	s      *Supervisor
	rr     atomic.Uint64
	seed   maphash.Seed
	mu     sync.Mutex
	parked []handed
	// holders are the processes that have been handed connections, until
	// they exit: the slot's worker, and ones that are stopping (under mu).
	holders map[*process]struct{}
	kick    chan struct{} // capacity 1: try the parked connections again
	// lines holds, per listener name, the herd.conn line and Node's
	// NODE_HANDLE line (map[string][2][]byte, replaced, never changed).
	lines atomic.Value
}

func newHandover(s *Supervisor) *handover {
	return &handover{s: s, seed: maphash.MakeSeed(), holders: map[*process]struct{}{}, kick: make(chan struct{}, 1)}
}

// handoffState is a worker process's part of the hand-over.
type handoffState struct {
	mu      sync.Mutex
	unacked []handed // given, not yet taken, oldest first
	held    bool     // it is among the handover's holders
	gone    bool     // it has exited: reclaim took what it held
	open    atomic.Int64
}

// serve accepts on l until it is closed, handing every connection over.
func (h *handover) serve(l *os.File, name string) {
	raw, err := l.SyscallConn()
	if err != nil {
		h.s.log.Error("cannot accept", "listener", name, "err", err)
		return
	}
	batch := make([]handed, 0, acceptBatch)
	for {
		batch = batch[:0]
		var aerr error
		err := raw.Read(func(fd uintptr) bool {
			for len(batch) < acceptBatch {
				// Raw accept4: the descriptor goes to a worker, so it
				// is not worth registering with the poller here.
				nfd, ip, err := sockets.Accept(int(fd), false)
				switch {
				case err == nil:
					batch = append(batch, handed{fd: nfd, listener: name, ip: ip})
				case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
				case errors.Is(err, unix.EAGAIN):
					return len(batch) > 0
				default:
					aerr = err
					return true
				}
			}
			return true
		})
		for _, c := range batch {
			h.dispatch(c)
		}
		if err != nil {
			return // the listener was closed
		}
		if aerr != nil {
			// Out of descriptors, most likely: wait a little rather than
			// spin; the connections wait in the backlog meanwhile.
			h.s.log.Warn("accept", "listener", name, "err", aerr)
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// dispatch gives c to a worker, or parks it if none can take it now.
func (h *handover) dispatch(c handed) {
	if c.accepted.IsZero() {
		c.accepted = time.Now()
	}
	for _, p := range h.candidates(c.ip) {
		if h.give(p, c) {
			return
		}
	}
	h.mu.Lock()
	h.parked = append(h.parked, c)
	h.mu.Unlock()
}

// give passes c to p; false if p cannot take it now.
func (h *handover) give(p *process, c handed) bool {
	p.handoff.mu.Lock()
	defer p.handoff.mu.Unlock()
	if p.handoff.gone || p.draining.Load() {
		// It is stopping: a stop request may already be on its channel,
		// after which it need not take anything.
		return false
	}
	if u := p.handoff.unacked; len(u) >= maxUntaken || len(u) > 0 && time.Since(u[0].given) > slowTake {
		return false
	}
	if f := giveHook.Load(); f != nil {
		(*f)(p.slot, p.pid)
	}
	c.given = time.Now()
	// Counted before it is sent: the worker can serve and close it, and
	// its herd.closed arrive, before SendConn returns (closed does not
	// take mu), and a count that went below zero there would stay one high.
	p.handoff.open.Add(1)
	if err := p.ch.SendConn(h.connLine(p, c.listener), c.fd, handoffQueue); err != nil {
		p.handoff.open.Add(-1)
		return false
	}
	p.handoff.unacked = append(p.handoff.unacked, c)
	if !p.handoff.held {
		p.handoff.held = true
		h.mu.Lock()
		h.holders[p] = struct{}{}
		h.mu.Unlock()
	}
	return true
}

// candidates are the live workers, in the order the policy prefers them:
// sticky ranks them by the client's IP, and a client without one (a Unix
// socket's) goes round-robin, as in proxy mode.
func (h *handover) candidates(ip netip.Addr) []*process {
	var ps []*process
	for _, sl := range h.s.slotList() {
		if p := sl.current.Load(); p != nil && sl.live.Load() {
			ps = append(ps, p)
		}
	}
	if len(ps) < 2 {
		return ps
	}
	switch h.s.opts.Balance {
	case BalanceLeastConn:
		start := int(h.rr.Add(1)) % len(ps) // ties go round
		ps = append(ps[start:], ps[:start]...)
		slices.SortStableFunc(ps, func(a, b *process) int {
			return int(a.handoff.open.Load() - b.handoff.open.Load())
		})
	case BalanceSticky:
		if ip.IsValid() {
			h.byAffinity(ps, ip)
			break
		}
		fallthrough
	default:
		start := int(h.rr.Add(1)-1) % len(ps)
		ps = append(ps[start:], ps[:start]...)
	}
	return ps
}

// byAffinity orders ps by rendezvous hashing of (ip, slot): a client goes
// to its highest-scoring live slot, so a slot that leaves or joins moves
// only its own clients.
func (h *handover) byAffinity(ps []*process, ip netip.Addr) {
	key := ip.As16()
	score := func(p *process) uint64 {
		var m maphash.Hash
		m.SetSeed(h.seed)
		m.Write(key[:])
		m.WriteByte(byte(p.slot))
		m.WriteByte(byte(p.slot >> 8))
		return m.Sum64()
	}
	slices.SortFunc(ps, func(a, b *process) int {
		sa, sb := score(a), score(b)
		switch {
		case sa > sb:
			return -1
		case sa < sb:
			return 1
		}
		return 0
	})
}

// took records that p has taken n of the connections handed to it: the
// primary's descriptors of them can go.
func (h *handover) took(p *process, n int) {
	p.handoff.mu.Lock()
	n = min(n, len(p.handoff.unacked))
	done := p.handoff.unacked[:n]
	p.handoff.unacked = p.handoff.unacked[n:]
	p.handoff.mu.Unlock()
	for _, c := range done {
		unix.Close(c.fd)
	}
	if n > 0 && h.hasParked() {
		h.poke()
	}
}

// nack gives p's oldest connection to another worker: p could not take
// it (herd.declined, or Node's NODE_HANDLE_NACK).
func (h *handover) nack(p *process) {
	p.handoff.mu.Lock()
	if len(p.handoff.unacked) == 0 {
		p.handoff.mu.Unlock()
		return
	}
	c := p.handoff.unacked[0]
	p.handoff.unacked = p.handoff.unacked[1:]
	p.handoff.mu.Unlock()
	h.closed(p, 1)
	h.dispatch(c)
}

// closed records that n connections p took have ended (least-conn).
func (h *handover) closed(p *process, n int) {
	if p.handoff.open.Add(int64(-n)) < 0 {
		p.handoff.open.Store(0)
	}
}

// reclaim hands the connections p did not take to other workers: p is gone.
func (h *handover) reclaim(p *process) {
	p.handoff.mu.Lock()
	left := p.handoff.unacked
	p.handoff.unacked = nil
	p.handoff.gone = true
	if p.handoff.held {
		p.handoff.held = false
		h.mu.Lock()
		delete(h.holders, p)
		h.mu.Unlock()
	}
	p.handoff.mu.Unlock()
	if len(left) > 0 {
		h.s.log.Info("handing the connections a stopped worker did not take to the others", "worker", p.slot, "pid", p.pid, "connections", len(left))
	}
	for _, c := range left {
		h.dispatch(c)
	}
}

func (h *handover) hasParked() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.parked) > 0
}

// poke makes the retry loop look at the parked connections now.
func (h *handover) poke() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// retry gives parked connections to workers as they become able to take
// them, closes those parked too long, and kills workers that do not take
// what they were given. It runs until ctx ends, then closes what is left.
func (h *handover) retry(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			h.mu.Lock()
			for _, c := range h.parked {
				unix.Close(c.fd)
			}
			h.parked = nil
			h.mu.Unlock()
			return
		case <-h.kick:
		case <-t.C:
			h.checkTakes()
		}
		h.mu.Lock()
		parked := h.parked
		h.parked = nil
		h.mu.Unlock()
		dropped := 0
		for _, c := range parked {
			if time.Since(c.accepted) > parkFor {
				unix.Close(c.fd)
				dropped++
				continue
			}
			h.dispatch(c) // parks it again if still nobody can
		}
		if dropped > 0 {
			h.s.log.Warn("closed connections no worker could take", "connections", dropped, "waited", parkFor.String())
		}
	}
}

// checkTakes looks at every worker holding connections it has not taken
// (its slot's worker, or one that is stopping). A stopping worker may take
// nothing once asked to stop: what it lets go goes to the other workers
// (takeBack). One that is not stopping and has held a connection for
// longer than takeWithin cannot be serving: it is killed, and what it
// holds goes to the others once it is gone.
func (h *handover) checkTakes() {
	h.mu.Lock()
	holders := make([]*process, 0, len(h.holders))
	for p := range h.holders {
		holders = append(holders, p)
	}
	h.mu.Unlock()
	now := time.Now()
	for _, p := range holders {
		if p.draining.Load() {
			h.takeBack(p, now)
			continue
		}
		p.handoff.mu.Lock()
		stuck := len(p.handoff.unacked) > 0 && now.Sub(p.handoff.unacked[0].given) > takeWithin
		p.handoff.mu.Unlock()
		if stuck && p.stuck.CompareAndSwap(false, true) {
			h.s.log.Error("worker does not take the connections handed to it; killing it", "worker", p.slot, "pid", p.pid, "waited", takeWithin.String())
			p.kill()
		}
	}
}

// takeBack gives the connections that p, a stopping worker, has held
// untaken for takeWithin to the other workers. A worker that declines
// what it will not take (herd.declined) has them moved at once; this is
// for one that says nothing, and waits as long as the hung-worker check
// does, since a worker that did take one but was held up before saying so
// must not share its client with another. p is not killed for it: it may
// be finishing requests. A herd.took that p would still send for one of
// them would count the next connection it holds instead (herd.took counts
// the oldest): a worker silent for takeWithin is not expected to.
func (h *handover) takeBack(p *process, now time.Time) {
	p.handoff.mu.Lock()
	u := p.handoff.unacked
	n := 0
	for n < len(u) && now.Sub(u[n].given) >= takeWithin {
		n++
	}
	back := slices.Clone(u[:n])
	p.handoff.unacked = u[n:]
	p.handoff.mu.Unlock()
	if n == 0 {
		return
	}
	h.closed(p, n)
	h.s.log.Info("handing the connections a stopping worker did not take to the others", "worker", p.slot, "pid", p.pid, "connections", n)
	for _, c := range back {
		h.dispatch(c)
	}
}

// connLine is the message that carries a connection of listener to p.
// The lines are made once per listener (SendConn copies them): a hand-over
// costs no encoding.
func (h *handover) connLine(p *process, listener string) []byte {
	lines, _ := h.lines.Load().(map[string][2][]byte)
	l, ok := lines[listener]
	if !ok {
		// Node's own framing: process.on('message', (msg, socket)) gets
		// msg and a net.Socket, and Node answers NODE_HANDLE_ACK.
		node, _ := json.Marshal(map[string]any{
			"cmd": "NODE_HANDLE", "type": "net.Socket",
			"msg": map[string]string{"type": ipc.TypeConn, "listener": listener},
		})
		ours, _ := ipc.Append(nil, ipc.Message{Type: ipc.TypeConn, Listener: listener})
		l = [2][]byte{ours, append(node, '\n')}
		next := make(map[string][2][]byte, len(lines)+1)
		for k, v := range lines {
			next[k] = v
		}
		next[listener] = l
		h.lines.Store(next)
	}
	if p.node {
		return l[1]
	}
	return l[0]
}

// pollable returns a non-blocking copy of socket f that the runtime's
// poller watches, for accepting with raw accept4 (the RawConn of a
// net.Listener supports only Control).
func pollable(f *os.File) (*os.File, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", derr)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl O_NONBLOCK", err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil // non-blocking: polled
}

// nodeIPC reports whether workers get Node's IPC channel too.
func (s *Supervisor) nodeIPC() bool {
	switch s.opts.NodeIPC {
	case "on":
		return true
	case "off":
		return false
	}
	base := filepath.Base(s.path)
	return s.opts.Balance.handsOff() && (base == "node" || base == "nodejs")
}
