// Package proxy is the engine of herd's proxy balancing mode, for apps that
// only know how to bind a port: the primary accepts connections on the
// public listeners and relays each one, byte for byte in both directions, to
// the private loopback port of one worker, chosen by a Policy.
//
// The package knows nothing about workers beyond what a Pool tells it for
// every new connection: which backends may take one now. A backend that
// refuses (its worker just died or is restarting) is skipped, so a client
// never sees an error while some backend accepts. So is one that resets
// the connection before sending a byte, which TCP does when it did not
// read all it was sent (it died with the connection in its listen queue,
// or accepted and unread): the next backend gets the client's bytes again,
// kept until the first byte of the answer (see replayable). A backend
// that read them and then ended the connection may have acted on them:
// that end is passed on, never replayed.
//
// Two engines do the relaying. ServeSocket, which the supervisor uses, runs
// event loops on Linux (loop_linux.go): a few goroutines with an epoll set
// each, non-blocking system calls, no goroutine and no buffer per idle
// connection, as nginx's workers do. Serve, for any net.Listener (and
// ServeSocket off Linux), runs two goroutines per connection blocked in
// reads. Both copy a direction's first 64 KiB through a buffer and the rest
// with splice(2) inside the kernel. There are no idle timeouts: a
// connection lasts as long as both peers keep it; Serve's client
// connections have Go's TCP keep-alive, and ServeSocket's those the
// listening socket gives (its SO_KEEPALIVE).
package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Backend is one worker the proxy may send connections to.
type Backend struct {
	Slot int    // the worker's slot id; unique among the backends of a Pool
	Addr string // where it listens, "127.0.0.1:PORT"
}

// Pool tells the proxy where connections may go. The supervisor implements
// it.
type Pool interface {
	// Backends returns the backends that may take new connections now (the
	// ready workers), in slot order. It is called for every connection, so
	// it must be cheap. The proxy neither keeps nor modifies the slice, but
	// may still be reading it after a later call: return a new slice when
	// the set changes rather than editing the old one.
	Backends() []Backend
}

// PoolFunc is a Pool made of a function.
type PoolFunc func() []Backend

// Backends calls f.
func (f PoolFunc) Backends() []Backend { return f() }

// Policy chooses the backend of a new connection.
type Policy int

const (
	// RoundRobin takes the backends in turn.
	RoundRobin Policy = iota
	// LeastConn takes the backend with the fewest connections this Proxy
	// has open to it; among equals it goes round-robin, so that short
	// connections under light load still spread.
	LeastConn
	// Sticky sends a client IP to the same slot for as long as that slot is
	// among the backends. It ranks the backends by rendezvous (highest
	// random weight) hashing of (client IP, slot), so a slot joining or
	// leaving moves only the clients that rank it first. Clients without an
	// IP (Unix sockets) go round-robin.
	Sticky
)

// String returns the policy's name as ParsePolicy takes it.
func (p Policy) String() string {
	switch p {
	case RoundRobin:
		return "round-robin"
	case LeastConn:
		return "least-conn"
	case Sticky:
		return "sticky"
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}

// ParsePolicy parses "round-robin", "least-conn" or "sticky".
func ParsePolicy(s string) (Policy, error) {
	for _, p := range []Policy{RoundRobin, LeastConn, Sticky} {
		if s == p.String() {
			return p, nil
		}
	}
	return RoundRobin, fmt.Errorf("unknown proxy policy %q (want round-robin, least-conn or sticky)", s)
}

// dialTimeout bounds a connect to a backend. Refusals on loopback are
// immediate; this only matters for a worker that stopped accepting with a
// full backlog, whose clients should move on to the next backend soon.
const dialTimeout = time.Second

// errNoBackend is why a client is closed when the Pool has no backend.
var errNoBackend = errors.New("no backend is ready")

// Proxy relays connections to the backends of a Pool. One Proxy may Serve
// several listeners at once; they then share its policy state and counts.
type Proxy struct {
	pool   Pool
	policy Policy
	log    *slog.Logger
	dialer net.Dialer
	seed   maphash.Seed  // Sticky's hash key: random, so clients cannot aim at one slot
	next   atomic.Uint64 // round-robin position; also rotates LeastConn's ties

	mu   sync.Mutex
	open map[int]int // slot → connections open or being dialed; no zero entries

	// emu guards engine, the event loops of ServeSocket (Linux), which
	// run while any ServeSocket does.
	emu    sync.Mutex
	engine *engine

	// Rate limits for the three kinds of trouble that can come in storms,
	// apart so that one kind does not hide another.
	acceptLog, refusedLog, failedLog limiter
}

// New returns a Proxy that sends connections to pool's backends as policy
// says and logs trouble to log (nil: nowhere).
func New(pool Pool, policy Policy, log *slog.Logger) *Proxy {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Proxy{
		pool: pool, policy: policy, log: log,
		// No keep-alive probes to a backend: it is on this host (a
		// worker that dies resets its connections), and setting them up
		// costs four system calls per connection.
		dialer: net.Dialer{Timeout: dialTimeout, KeepAliveConfig: net.KeepAliveConfig{Enable: false}, KeepAlive: -1},
		seed:   maphash.MakeSeed(),
		open:   map[int]int{},
	}
}

// Open returns the number of proxied connections open per slot (including
// those still connecting); slots with none are absent.
func (p *Proxy) Open() map[int]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := make(map[int]int, len(p.open))
	for s, n := range p.open {
		m[s] = n
	}
	return m
}

// Serve accepts on l, proxying every connection, until ctx ends or l is
// closed, and closes l. It returns after every connection it started has
// ended. When ctx ends, the connections still open are reset; when l is
// closed by someone else they may finish (a drain), unless ctx ends
// meanwhile.
//
// Temporary accept errors (out of file descriptors, an aborted connection)
// are logged and retried after a short, growing pause. Serve returns nil
// when ctx ended or l was closed, else the accept error that stopped it
// (after the connections already open have ended, as above).
func (p *Proxy) Serve(ctx context.Context, l net.Listener) error {
	closed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { l.Close(); close(closed) })
	var wg sync.WaitGroup
	defer func() {
		l.Close()
		wg.Wait()
		if !stop() {
			<-closed // own the AfterFunc's goroutine too
		}
	}()

	var pause time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			if !temporary(err) {
				return fmt.Errorf("proxy %s: %w", l.Addr(), err)
			}
			// Doubling from 5 ms to 1 s, as net/http does: fds come back
			// as connections end, and a busy loop would only burn CPU.
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			if ok, held := p.acceptLog.allow(); ok {
				p.log.Warn("proxy: accept failed; retrying", "addr", addrString(l.Addr()),
					"err", err, "pause", pause, "suppressed", held)
			}
			t := time.NewTimer(pause)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil
			}
			continue
		}
		pause = 0
		wg.Go(func() { p.handle(ctx, c) })
	}
}

// temporary reports whether an accept error may go away by itself.
func temporary(err error) bool {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		// Temporary covers EINTR, EMFILE, ENFILE, ECONNRESET, ECONNABORTED,
		// EAGAIN and ETIMEDOUT; the kernel can also run short of memory.
		return errno.Temporary() || errno == syscall.ENOBUFS || errno == syscall.ENOMEM
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// handle proxies one client connection to the end.
func (p *Proxy) handle(ctx context.Context, client net.Conn) {
	s := &session{p: p, ctx: ctx, client: client, slot: -1}
	backend, slot, err := p.connect(ctx, client, &s.pick)
	if err != nil {
		// Reset rather than close: the client gets an error at once, not an
		// empty answer it might take for a complete one.
		reset(client)
		if ctx.Err() == nil {
			if ok, held := p.failedLog.allow(); ok {
				p.log.Warn("proxy: no backend took a connection; closed it",
					"client", addrString(client.RemoteAddr()), "err", err, "suppressed", held)
			}
		}
		return
	}
	s.slot = slot
	s.cur.Store(&backendConn{backend})
	s.keeping.Store(true)
	err = s.relay()
	if s.slot >= 0 { // (a replay that found no backend left none)
		p.release(s.slot)
	}
	if err != nil && p.log.Enabled(ctx, slog.LevelDebug) {
		p.log.Debug("proxy: connection ended with an error", "slot", s.slot,
			"client", addrString(client.RemoteAddr()), "err", err)
	}
}

// addrString is a.String(), also for the nil address of an unnamed Unix
// socket.
func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// connect dials a backend for client, trying them in the policy's order
// (pk, which a replay goes on with) until one accepts. It returns the
// connection and the slot it counted.
func (p *Proxy) connect(ctx context.Context, client net.Conn, pk *picker) (net.Conn, int, error) {
	var ip netip.Addr
	if ta, ok := client.RemoteAddr().(*net.TCPAddr); ok {
		ip, _ = netip.AddrFromSlice(ta.IP)
	}
	*pk = p.newPicker(ip)
	if len(pk.bs) == 0 {
		return nil, 0, errNoBackend
	}
	return p.dialNext(ctx, pk, nil)
}

// dialNext dials the backends pk gives until one accepts; the error, when
// none does, joins errs (the failures before) and theirs.
func (p *Proxy) dialNext(ctx context.Context, pk *picker, errs []error) (net.Conn, int, error) {
	for {
		b, ok := pk.next(p)
		if !ok {
			break
		}
		c, err := p.dialer.DialContext(ctx, "tcp", b.Addr)
		if err == nil {
			return c, b.Slot, nil
		}
		p.release(b.Slot)
		errs = append(errs, fmt.Errorf("slot %d: %w", b.Slot, err))
		if ctx.Err() != nil {
			break
		}
		if pk.more() {
			if ok, held := p.refusedLog.allow(); ok {
				p.log.Warn("proxy: a backend failed to connect; trying the next",
					"slot", b.Slot, "err", err, "suppressed", held)
			}
		}
	}
	return nil, 0, errors.Join(errs...)
}

// picker gives the backends one new connection tries, in the policy's
// order, each counted (acquire) as it is given: the first choice, and the
// next ones only as backends refuse.
type picker struct {
	bs     []Backend
	sticky bool
	r      rendezvous
	first  int // round-robin and least-conn: where the turn starts
	given  int
}

// newPicker starts the choice for a client at ip (invalid for a client
// with no IP: a Unix socket's). Least-conn chooses and counts its first
// backend at once, under the lock that keeps a burst of connections from
// all choosing the same one.
func (p *Proxy) newPicker(ip netip.Addr) picker {
	pk := picker{bs: p.pool.Backends()}
	if len(pk.bs) == 0 {
		return pk
	}
	switch {
	case p.policy == Sticky && ip.IsValid():
		pk.sticky = true
		pk.r.init(p.seed, ip)
	case p.policy == LeastConn:
		pk.first = p.leastConn(pk.bs)
	default:
		pk.first = int(p.next.Add(1)-1) % len(pk.bs)
	}
	return pk
}

// next returns the next backend to try, counted; false when all have
// been tried.
func (pk *picker) next(p *Proxy) (Backend, bool) {
	if pk.given >= len(pk.bs) {
		return Backend{}, false
	}
	var b Backend
	if pk.sticky {
		b = pk.bs[pk.r.next(pk.bs)]
	} else {
		b = pk.bs[(pk.first+pk.given)%len(pk.bs)]
	}
	if pk.given > 0 || p.policy != LeastConn || pk.sticky {
		p.acquire(b.Slot) // least-conn counted its first choice already
	}
	pk.given++
	return b, true
}

// more reports whether next has backends left to give.
func (pk *picker) more() bool { return pk.given < len(pk.bs) }

// leastConn returns the index in bs of the backend with the fewest open
// connections, ties going round-robin, and counts one more connection to
// it. Choosing and counting under one lock keeps a burst of connections
// from all choosing the same backend.
func (p *Proxy) leastConn(bs []Backend) int {
	start := int(p.next.Add(1)-1) % len(bs)
	p.mu.Lock()
	defer p.mu.Unlock()
	best, fewest := start, p.open[bs[start].Slot]
	for k := 1; k < len(bs); k++ {
		i := (start + k) % len(bs)
		if n := p.open[bs[i].Slot]; n < fewest {
			best, fewest = i, n
		}
	}
	p.open[bs[best].Slot]++
	return best
}

func (p *Proxy) acquire(slot int) {
	p.mu.Lock()
	p.open[slot]++
	p.mu.Unlock()
}

func (p *Proxy) release(slot int) {
	p.mu.Lock()
	if p.open[slot]--; p.open[slot] <= 0 {
		delete(p.open, slot) // slots come and go; keep the map small
	}
	p.mu.Unlock()
}

// rendezvous ranks backends for one client by highest random weight: the
// weight of a slot is a keyed hash of (client IP, slot), so each slot's
// rank for a client is independent of which other slots exist.
type rendezvous struct {
	seed maphash.Seed
	buf  [24]byte // the client's IPv6 (or IPv4-mapped) address, then the slot
	// The previous pick, when there was one: next returns the best below it.
	picked bool
	w      uint64
	slot   int
}

// init keys r to the client at ip.
func (r *rendezvous) init(seed maphash.Seed, ip netip.Addr) {
	r.seed = seed
	ip16 := ip.Unmap().As16() // the same key on IPv4 and dual-stack listeners
	copy(r.buf[:16], ip16[:])
}

func (r *rendezvous) weight(slot int) uint64 {
	binary.LittleEndian.PutUint64(r.buf[16:], uint64(slot))
	return maphash.Bytes(r.seed, r.buf[:])
}

// next returns the index in bs of the best-ranked backend not yet returned.
// Recomputing the weights on each call keeps it free of allocations; a
// second call only happens when a backend refused.
func (r *rendezvous) next(bs []Backend) int {
	best, bw := -1, uint64(0)
	for i, b := range bs {
		w := r.weight(b.Slot)
		if r.picked && !ranksBelow(w, b.Slot, r.w, r.slot) {
			continue
		}
		if best < 0 || ranksBelow(bw, bs[best].Slot, w, b.Slot) {
			best, bw = i, w
		}
	}
	r.picked, r.w, r.slot = true, bw, bs[best].Slot
	return best
}

// ranksBelow orders by weight, highest first; equal weights (rare) by slot,
// lowest first.
func ranksBelow(w1 uint64, s1 int, w2 uint64, s2 int) bool {
	return w1 < w2 || w1 == w2 && s1 > s2
}

// limiter lets a log message through at most once a second and counts the
// ones it held back, so a storm of failures costs a line a second.
type limiter struct {
	mu   sync.Mutex
	last time.Time
	held int
}

// allow reports whether to log now, and how many were held back since.
func (l *limiter) allow() (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := time.Now(); l.last.IsZero() || now.Sub(l.last) >= time.Second {
		held := l.held
		l.last, l.held = now, 0
		return true, held
	}
	l.held++
	return false, 0
}
