package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/herd-sh/herd/internal/sockets"
)

// The event loops of ServeSocket: a few goroutines, each with an epoll set
// of its own, that relay every connection with non-blocking system calls,
// as nginx's workers do. A connection costs no goroutine, no buffer while
// it is idle, and per request only the calls the relaying needs (accept,
// socket, connect, a read and a write each way, a shutdown each way,
// close): the goroutine-per-direction relay of Serve also pays for Go's
// network poller and scheduler on every connection, about a third more
// CPU per short connection.
//
// Every loop has the listening sockets in its epoll set, with
// EPOLLEXCLUSIVE: a new connection wakes one loop, which accepts what is
// waiting and relays it itself, with no hand-over between threads.

// eventsPerWait bounds the events one epoll_wait returns.
const eventsPerWait = 128

// loopTick is how often a loop with connections still connecting wakes up
// to time them out (sooner when a paused listening socket is due back).
const loopTick = 100 * time.Millisecond

// engine is a Proxy's event loops, started by the first ServeSocket and
// stopped when the last one returns.
type engine struct {
	loops []*loop
	wg    sync.WaitGroup
	users int // ServeSocket calls running (under Proxy.emu)
}

// acceptor is one ServeSocket call: its listening socket, and the
// connections it accepted, so that its end can reset them and wait for
// them.
type acceptor struct {
	fd      int // a non-blocking copy of the listening socket
	name    string
	errc    chan error // capacity 1: an accept error that ends it
	open    atomic.Int64
	drained chan struct{} // closed when open is back to 0 after stopping
	stopped atomic.Bool
}

func (a *acceptor) release() {
	if a.open.Add(-1) == 0 && a.stopped.Load() {
		close(a.drained)
	}
}

// ServeSocket relays the connections of the listening socket f, as Serve
// does for a net.Listener, with event loops instead of goroutines (Linux;
// elsewhere it is Serve over net.FileListener). f stays the caller's: the
// proxy accepts on a copy. ServeSocket returns when ctx ends, after the
// connections it accepted are reset and closed, or when accepting fails
// for good (the connections open are then reset too).
func (p *Proxy) ServeSocket(ctx context.Context, f *os.File) error {
	lfd, err := listenCopy(f)
	if err != nil {
		return fmt.Errorf("proxy %s: %w", f.Name(), err)
	}
	e, err := p.startEngine()
	if err != nil {
		unix.Close(lfd)
		return fmt.Errorf("proxy %s: %w", f.Name(), err)
	}
	defer p.stopEngine()
	a := &acceptor{fd: lfd, name: f.Name(), errc: make(chan error, 1), drained: make(chan struct{})}
	for _, l := range e.loops {
		l.post(command{listen: a})
	}
	var acceptErr error
	select {
	case <-ctx.Done():
	case acceptErr = <-a.errc:
	}
	// Every loop lets go of the socket and resets what it relays for a;
	// the count (held up by one per loop, and one here, while stopped is
	// set) reaches 0, and drained is closed, once all have and every
	// connection is closed.
	a.open.Add(int64(len(e.loops)) + 1)
	a.stopped.Store(true)
	for _, l := range e.loops {
		l.post(command{reset: a})
	}
	a.release()
	<-a.drained
	unix.Close(lfd)
	return acceptErr
}

// listenCopy returns a non-blocking copy of the listening socket f, for
// the loops to accept on.
func listenCopy(f *os.File) (int, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", derr)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("fcntl O_NONBLOCK", err)
	}
	// Options set on a listening TCP socket are inherited by the
	// connections it accepts, at no cost per connection: no Nagle delay,
	// and keep-alive probes as Go's net package sets them (15 s idle, 15 s
	// apart, 9 of them), so that a client that vanished does not hold its
	// backend connection forever. (On a Unix socket they fail harmlessly.)
	for _, o := range [][3]int{
		{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 15},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 15},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 9},
	} {
		unix.SetsockoptInt(fd, o[0], o[1], o[2])
	}
	return fd, nil
}

func (p *Proxy) startEngine() (*engine, error) {
	p.emu.Lock()
	defer p.emu.Unlock()
	if p.engine != nil {
		p.engine.users++
		return p.engine, nil
	}
	e := &engine{users: 1}
	for range max(1, runtime.GOMAXPROCS(0)) {
		l, err := newLoop(p)
		if err != nil {
			for _, l := range e.loops {
				l.post(command{stop: true})
			}
			e.wg.Wait()
			return nil, err
		}
		e.loops = append(e.loops, l)
		e.wg.Go(l.run)
	}
	p.engine = e
	return e, nil
}

func (p *Proxy) stopEngine() {
	p.emu.Lock()
	e := p.engine
	e.users--
	last := e.users == 0
	if last {
		p.engine = nil
	}
	p.emu.Unlock()
	if last {
		for _, l := range e.loops {
			l.post(command{stop: true})
		}
		e.wg.Wait()
	}
}

// command is what a loop is sent: a listening socket to accept on, the
// end of an acceptor (the loop lets go of its socket and resets its
// connections), or the end of the loop.
type command struct {
	listen *acceptor
	reset  *acceptor
	stop   bool
}

// loop is one event loop.
type loop struct {
	p      *Proxy
	epfd   int
	wakefd int // an eventfd: the inbox has commands

	mu    sync.Mutex
	inbox []command

	// Owned by the loop's goroutine.
	conns map[int]*pconn // by fd: a connection is there under both of its fds
	gen   uint32         // tags each registration (see add); listeners have 0
	// listening is the acceptors whose socket is in the epoll set, by
	// fd; paused, those taken out for a while after an accept error (out
	// of descriptors), with when to put them back; backoff, the next
	// pause of an acceptor whose accepts have failed since one worked.
	listening map[int]*acceptor
	paused    map[*acceptor]time.Time
	backoff   map[*acceptor]time.Duration
	dialing   map[*pconn]struct{}
	// kept is the connections that went idle holding bytes kept for a
	// replay, with the tick they did; ticks counts the loop's wake-ups
	// on its deadline (loopTick apart, or sooner for a paused socket).
	kept    map[*pconn]uint64
	ticks   uint64
	events  []unix.EpollEvent
	closing []int // fds to close after this batch of events
}

func newLoop(p *Proxy) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil { // for Go's poller (see run)
		unix.Close(epfd)
		return nil, os.NewSyscallError("fcntl O_NONBLOCK", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	return &loop{
		p: p, epfd: epfd, wakefd: wakefd,
		conns:     map[int]*pconn{},
		listening: map[int]*acceptor{},
		paused:    map[*acceptor]time.Time{},
		backoff:   map[*acceptor]time.Duration{},
		dialing:   map[*pconn]struct{}{},
		kept:      map[*pconn]uint64{},
		events:    make([]unix.EpollEvent, eventsPerWait),
	}, nil
}

// post queues c for the loop and wakes it if it was not already due to
// look at its inbox.
func (l *loop) post(c command) {
	l.mu.Lock()
	l.inbox = append(l.inbox, c)
	first := len(l.inbox) == 1
	l.mu.Unlock()
	if first {
		var one = [8]byte{1}
		unix.Write(l.wakefd, one[:])
	}
}

// run waits for events and handles them until told to stop with no
// connection left.
//
// The loop does not block in epoll_wait: a goroutine blocked in a system
// call makes the Go runtime hand its P to another thread and keeps sysmon
// polling every 20 us (tens of nanosleeps per connection). Instead the
// epoll fd is itself in Go's poller, which parks the goroutine until it
// is readable (some event is ready), and epoll_wait only collects the
// events, without waiting.
func (l *loop) run() {
	ef := os.NewFile(uintptr(l.epfd), "proxy epoll") // non-blocking: in the poller
	defer func() {
		ef.Close()
		unix.Close(l.wakefd)
	}()
	raw, err := ef.SyscallConn()
	if err != nil {
		l.p.log.Error("proxy: event loop", "err", err)
		return
	}
	var inbox []command
	stopping := false
	ticking := false // a read deadline is set, for dials to time out
	for {
		if len(l.paused) > 0 {
			wake := time.Now().Add(loopTick)
			for _, until := range l.paused {
				if until.Before(wake) {
					wake = until
				}
			}
			ef.SetReadDeadline(wake)
			ticking = true
		} else if (len(l.dialing) > 0 || len(l.kept) > 0) && !ticking {
			ef.SetReadDeadline(time.Now().Add(loopTick))
			ticking = true
		}
		n := 0
		var werr error
		rerr := raw.Read(func(fd uintptr) bool {
			n, werr = unix.EpollWait(int(fd), l.events, 0)
			return n > 0 || werr != nil && werr != unix.EINTR
		})
		ticked := false
		if errors.Is(rerr, os.ErrDeadlineExceeded) {
			ef.SetReadDeadline(time.Time{})
			ticking = false
			ticked = true
			l.ticks++
		} else if rerr != nil || werr != nil {
			// Cannot happen with a valid epoll fd and buffer; if it
			// does, the loop must not spin.
			l.p.log.Error("proxy: epoll_wait failed", "err", errors.Join(rerr, werr))
			time.Sleep(10 * time.Millisecond)
			n = 0
		}
		for i := range max(n, 0) {
			ev := &l.events[i]
			fd := int(ev.Fd)
			if fd == l.wakefd {
				var b [8]byte
				unix.Read(l.wakefd, b[:])
				l.mu.Lock()
				inbox, l.inbox = l.inbox, inbox[:0]
				l.mu.Unlock()
				for _, c := range inbox {
					switch {
					case c.stop:
						stopping = true
					case c.listen != nil:
						l.listen(c.listen)
					case c.reset != nil:
						l.unlisten(c.reset)
						l.resetServer(c.reset)
						c.reset.release() // this loop is done with it
					}
				}
				clear(inbox)
				continue
			}
			if ev.Pad == 0 {
				if a := l.listening[fd]; a != nil {
					l.accept(a)
				}
				continue
			}
			if c := l.conns[fd]; c != nil && c.tagOf(fd) == uint32(ev.Pad) {
				c.event(fd, ev.Events)
			}
		}
		if len(l.dialing) > 0 {
			l.expireDials()
		}
		if len(l.paused) > 0 {
			l.resume()
		}
		if ticked && len(l.kept) > 0 {
			l.compactKept()
		}
		for _, fd := range l.closing {
			rawClose(fd)
		}
		clear(l.closing)
		l.closing = l.closing[:0]
		if stopping && len(l.conns) == 0 {
			return
		}
	}
}

// listen puts a's socket in the epoll set. EPOLLEXCLUSIVE: one loop is
// woken per connection, not all.
func (l *loop) listen(a *acceptor) {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(a.fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, a.fd, &ev); err != nil {
		select {
		case a.errc <- fmt.Errorf("proxy %s: %w", a.name, os.NewSyscallError("epoll_ctl", err)):
		default:
		}
		return
	}
	l.listening[a.fd] = a
}

// unlisten takes a's socket out of the epoll set.
func (l *loop) unlisten(a *acceptor) {
	delete(l.paused, a)
	delete(l.backoff, a)
	if l.listening[a.fd] == a {
		delete(l.listening, a.fd)
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, a.fd, nil)
	}
}

// accept takes the connections waiting on a's socket and starts relaying
// them. An error that may pass (out of descriptors) takes the socket out
// of this loop for a pause, 5 ms doubling to 1 s, as net/http does: the
// connections wait in the backlog meanwhile, and the loop does not spin
// on a socket that stays readable. Any other error ends the acceptor.
func (l *loop) accept(a *acceptor) {
	for range eventsPerWait {
		nfd, ip, err := sockets.Accept(a.fd, true)
		switch {
		case err == nil:
			a.open.Add(1)
			l.start(nfd, ip, a)
			continue
		case err == unix.EAGAIN:
			delete(l.backoff, a) // it works again: the next pause starts short
			return
		case err == unix.EINTR, err == unix.ECONNABORTED:
			continue
		case temporary(err):
			d := l.backoff[a]
			if d == 0 {
				d = 5 * time.Millisecond
			}
			l.backoff[a] = min(2*d, time.Second)
			if l.listening[a.fd] == a {
				delete(l.listening, a.fd)
				unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, a.fd, nil)
			}
			l.paused[a] = time.Now().Add(d)
			if ok, held := l.p.acceptLog.allow(); ok {
				l.p.log.Warn("proxy: accept failed; retrying", "addr", a.name, "err", err, "pause", d, "suppressed", held)
			}
			return
		default:
			l.unlisten(a)
			select {
			case a.errc <- fmt.Errorf("proxy %s: accept: %w", a.name, os.NewSyscallError("accept4", err)):
			default:
			}
			return
		}
	}
}

// resume puts back the sockets whose pause is over.
func (l *loop) resume() {
	now := time.Now()
	for a, until := range l.paused {
		if now.After(until) {
			delete(l.paused, a)
			l.listen(a)
		}
	}
}

// resetServer resets every connection of srv.
func (l *loop) resetServer(srv *acceptor) {
	var gone []*pconn
	for _, c := range l.conns {
		if c.srv == srv && !c.closed {
			gone = append(gone, c)
		}
	}
	for _, c := range gone {
		c.abort()
	}
}

// expireDials gives up on connects that took longer than dialTimeout: the
// backend stopped accepting with a full backlog; the next one is tried.
func (l *loop) expireDials() {
	now := time.Now()
	for c := range l.dialing {
		if now.Sub(c.dialStart) > dialTimeout {
			c.dialFailed(errDialTimeout)
		}
	}
}

var errDialTimeout = errors.New("connect timed out")

// add registers fd of c, edge-triggered, and returns the registration's
// tag. Events carry it beside the fd: a closed socket stays in the epoll
// set for as long as another process holds a copy (a worker being
// spawned has one between fork and exec), and the tag tells its stale
// events from those of a new connection that got the same fd number.
func (l *loop) add(fd int, c *pconn) (uint32, error) {
	l.gen++
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd), Pad: int32(l.gen)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return 0, os.NewSyscallError("epoll_ctl", err)
	}
	l.conns[fd] = c
	return l.gen, nil
}

// forget drops fd, which is about to be closed (closing removes it from
// the epoll set: no other process holds a copy).
func (l *loop) forget(fd int) {
	delete(l.conns, fd)
}

// closeLater closes fd once the events of this epoll_wait are handled:
// until then its number cannot be reused by a new connection, which an
// event of the old one still in the batch would otherwise reach.
func (l *loop) closeLater(fd int) {
	l.closing = append(l.closing, fd)
}

// start takes a new client, the connection fd from ip accepted on a's
// socket: it picks its backends and connects to the first.
func (l *loop) start(fd int, ip netip.Addr, a *acceptor) {
	c := &pconn{l: l, srv: a, client: fd, backend: -1, slot: -1}
	c.up.src, c.down.dst = &c.client, &c.client
	c.up.dst, c.down.src = &c.backend, &c.backend
	c.down.dry = true // until the backend connects and sends
	c.up.keep = true  // until the backend answers
	tag, err := l.add(fd, c)
	if err != nil {
		l.closeLater(fd)
		a.release()
		return
	}
	c.clientTag = tag
	c.pick = l.p.newPicker(ip)
	if len(c.pick.bs) == 0 {
		c.fail(errNoBackend)
		return
	}
	c.dial()
}

// pconn is one proxied connection.
type pconn struct {
	l               *loop
	srv             *acceptor
	client, backend int // fds; backend is -1 between connects
	clientTag       uint32
	backendTag      uint32
	slot            int // the backend's slot while counted, else -1
	pick            picker
	b               Backend // the backend being connected to, or relayed to
	errs            []error
	dialStart       time.Time
	connected       bool
	closed          bool
	up, down        direction // client → backend, backend → client
}

// tagOf returns the tag of the registration of fd, one of c's.
func (c *pconn) tagOf(fd int) uint32 {
	if fd == c.client {
		return c.clientTag
	}
	return c.backendTag
}

// event handles what epoll said about fd.
func (c *pconn) event(fd int, ev uint32) {
	if c.closed {
		return
	}
	from, to := &c.up, &c.down // what fd is the source of, and the destination of
	if fd == c.backend {
		from, to = &c.down, &c.up
	}
	from.readable(ev)
	if !c.connected {
		// A client's bytes or hang-up wait until the backend answers
		// (readable noted them): the relay reads them then.
		if fd == c.backend && ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			c.connectDone(ev)
		}
		return
	}
	if !from.dry {
		c.pump(from)
	}
	// (A replay leaves the connection connecting to the next backend.)
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 && !c.closed && c.connected {
		c.pump(to)
	}
}

// dial connects to the next backend of the policy's choice, counted
// against its slot.
func (c *pconn) dial() {
	for {
		b, ok := c.pick.next(c.l.p)
		if !ok {
			break
		}
		c.b, c.slot = b, b.Slot
		fd, err := connectTo(b.Addr)
		if err == nil {
			var tag uint32
			if tag, err = c.l.add(fd, c); err == nil {
				c.backend, c.backendTag = fd, tag
				c.down.dry, c.down.hup = true, false
				c.dialStart = time.Now()
				c.l.dialing[c] = struct{}{}
				return
			}
			unix.Close(fd)
		}
		c.refused(b, err)
	}
	c.fail(errors.Join(c.errs...))
}

// connectTo starts a non-blocking connect to addr.
func connectTo(addr string) (int, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return -1, err
	}
	return rawConnect(ap)
}

// refused records that the backend b did not take the connection.
func (c *pconn) refused(b Backend, err error) {
	c.l.p.release(b.Slot)
	c.slot = -1
	c.errs = append(c.errs, fmt.Errorf("slot %d: %w", b.Slot, err))
	if c.pick.more() {
		if ok, held := c.l.p.refusedLog.allow(); ok {
			c.l.p.log.Warn("proxy: a backend failed to connect; trying the next",
				"slot", b.Slot, "err", err, "suppressed", held)
		}
	}
}

// connectDone looks at how the connect ended.
// A writable event without an error or hang-up is a connect that
// succeeded; with one, SO_ERROR says why it failed.
func (c *pconn) connectDone(ev uint32) {
	delete(c.l.dialing, c)
	if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		err := rawSoError(c.backend)
		if err == nil {
			err = errors.New("connection closed")
		}
		c.dialFailed(os.NewSyscallError("connect", err))
		return
	}
	c.connected = true
	// The client's request (and hang-up) may be there already: its
	// events came while the backend was connecting; after a replay the
	// kept bytes wait to go again.
	c.pump(&c.up)
	if !c.down.dry && !c.closed && c.connected {
		c.pump(&c.down)
	}
}

// replay moves the connection to the next backend when its backend failed
// with err before sending a byte, in a way that says it did not read all
// we sent it (see replayable): the client's bytes kept so far go to the
// next backend of the policy's choice, and so does its half-close if it
// came, so the client sees nothing. It reports false when the connection
// cannot move (the client sent more than keepMax, or every backend was
// tried): the caller then resets it, as any failure.
func (c *pconn) replay(err error) bool {
	if !c.up.keep || !replayable(err) || !c.pick.more() {
		return false
	}
	c.l.forget(c.backend)
	c.l.closeLater(c.backend)
	c.backend = -1
	c.connected = false
	c.l.p.release(c.b.Slot)
	c.slot = -1
	c.errs = append(c.errs, fmt.Errorf("slot %d: %w", c.b.Slot, err))
	if ok, held := c.l.p.refusedLog.allow(); ok {
		c.l.p.log.Warn("proxy: a backend reset a connection before answering; replaying it to the next",
			"slot", c.b.Slot, "err", err, "suppressed", held)
	}
	if c.down.buf != nil { // its failed read's
		putBuf(c.down.buf)
		c.down.buf = nil
	}
	c.up.off = 0      // all that was kept goes again,
	c.up.shut = false // and the half-close after it
	c.dial()
	return true
}

// answered ends the keeping of the client's bytes: the backend sent its
// first byte, or ended; a failure from now on is passed on to the client.
func (c *pconn) answered() {
	d := &c.up
	d.keep = false
	delete(c.l.kept, c)
	if d.buf != nil && !d.pending() {
		putBuf(d.buf)
		d.buf = nil
		d.off, d.end = 0, 0
	}
}

// idle lets go of d's buffer when it waits for its source with nothing
// to write: an idle connection holds no buffer. Bytes kept for a replay
// stay; a connection holding some is listed, for compactKept.
func (c *pconn) idle(d *direction) {
	if d.buf == nil {
		return
	}
	if !d.keep {
		putBuf(d.buf)
		d.buf = nil
		return
	}
	if _, ok := c.l.kept[c]; !ok {
		c.l.kept[c] = c.l.ticks
	}
}

// compactKept moves the kept bytes of connections that have waited a
// tick or more for their backend's first byte (a long poll, a slow
// request) from the pooled buffer into one of their own size: they hold a
// request's few hundred bytes, not 16 KiB.
func (l *loop) compactKept() {
	for c, since := range l.kept {
		d := &c.up
		switch {
		case c.closed || !d.keep || d.buf == nil:
			delete(l.kept, c)
		case d.pending() || l.ticks-since < 2:
			// Writing, or not idle for a whole tick yet.
		default:
			delete(l.kept, c)
			old := d.buf
			if d.end == 0 {
				d.buf = nil
			} else {
				b := make([]byte, d.end)
				copy(b, (*old)[:d.end])
				d.buf = &b
			}
			putBuf(old)
		}
	}
}

// dialFailed gives up on the backend being connected to, and tries the
// next.
func (c *pconn) dialFailed(err error) {
	delete(c.l.dialing, c)
	c.l.forget(c.backend)
	c.l.closeLater(c.backend)
	c.backend = -1
	c.refused(c.b, err)
	c.dial()
}

// fail closes a client no backend took, with a reset: it gets an error at
// once, not an empty answer it might take for a complete one.
func (c *pconn) fail(err error) {
	if !c.srv.stopped.Load() {
		if ok, held := c.l.p.failedLog.allow(); ok {
			c.l.p.log.Warn("proxy: no backend took a connection; closed it", "err", err, "suppressed", held)
		}
	}
	c.abort()
}

// abort resets both connections (SO_LINGER 0: the peers see a reset,
// not an orderly end) and closes them.
func (c *pconn) abort() {
	if c.closed {
		return
	}
	linger := unix.Linger{Onoff: 1, Linger: 0}
	unix.SetsockoptLinger(c.client, unix.SOL_SOCKET, unix.SO_LINGER, &linger)
	if c.backend >= 0 {
		unix.SetsockoptLinger(c.backend, unix.SOL_SOCKET, unix.SO_LINGER, &linger)
	}
	c.close()
}

// close closes both connections and what the relay holds.
func (c *pconn) close() {
	c.closed = true
	delete(c.l.dialing, c)
	delete(c.l.kept, c)
	c.l.forget(c.client)
	c.l.closeLater(c.client)
	if c.backend >= 0 {
		c.l.forget(c.backend)
		c.l.closeLater(c.backend)
	}
	c.up.free()
	c.down.free()
	if c.slot >= 0 {
		c.l.p.release(c.slot)
		c.slot = -1
	}
	c.srv.release()
}

// direction is one way of a relay: from *src to *dst.
type direction struct {
	src, dst *int
	buf      *[]byte // held while bytes wait in it, else nil
	off, end int     // buf[off:end] is not written yet
	pipe     [2]int  // the splice pipe, once the direction is a bulk transfer
	inPipe   int     // bytes in the pipe, not written yet
	copied   int     // bytes read so far
	eof      bool    // src ended
	shut     bool    // dst was shut down for writing
	// dry says src had nothing more when last read (EAGAIN, or a read
	// that did not fill the buffer), until its next event: edge-triggered
	// epoll reports each arrival, so a read that would only say EAGAIN is
	// saved. hup says src's peer hung up (or failed): then src is read to
	// its end, since no new arrival will report what is left.
	dry, hup bool
	// keep says the bytes read are kept in buf (buf[:off] written, and
	// buf[off:end] not yet) for a replay to another backend: from the
	// start of a client → backend direction until the backend's first
	// byte or end, or keepMax bytes.
	keep bool
}

// readable notes what an event of src says.
func (d *direction) readable(ev uint32) {
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		d.dry = false
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		d.hup = true
	}
}

func (d *direction) pending() bool { return d.end > d.off || d.inPipe > 0 }

func (d *direction) free() {
	if d.buf != nil {
		putBuf(d.buf)
		d.buf = nil
	}
	if d.pipe != [2]int{} {
		unix.Close(d.pipe[0])
		unix.Close(d.pipe[1])
		d.pipe = [2]int{}
	}
}

// pump moves what it can of d: the bytes waiting, then what src has,
// until src has nothing more (EAGAIN) or dst takes no more (its EPOLLOUT
// brings it back). An error on either side resets both connections,
// unless the backend failed before answering in a way that allows a
// replay; the end of both directions closes them.
func (c *pconn) pump(d *direction) {
	for {
		if d.pending() {
			if err := d.flush(); err != nil {
				if err == unix.EAGAIN {
					return
				}
				if d == &c.up && c.replay(err) {
					return
				}
				c.abort()
				return
			}
			continue
		}
		if d.eof {
			if !d.shut {
				d.shut = true
				if c.up.shut && c.down.shut {
					c.close() // closing sends the FIN a shutdown would
					return
				}
				if err := rawShutdown(*d.dst, unix.SHUT_WR); err != nil && err != unix.ENOTCONN {
					c.abort()
				}
			}
			return
		}
		if d.dry {
			c.idle(d)
			return
		}
		n, full, err := d.fill()
		switch {
		case err == unix.EAGAIN:
			d.dry = true
			c.idle(d)
			return
		case err == unix.EINTR:
		case err != nil:
			if d == &c.down && c.replay(err) {
				return
			}
			c.abort()
			return
		case n == 0:
			d.eof = true
		case !full && !d.hup:
			d.dry = true // flushed on the next turn, then wait for an event
		}
		if d == &c.down && c.up.keep && (n > 0 || d.eof) {
			c.answered()
		}
	}
}

// fill reads what src has: into the buffer for the first spliceAfter
// bytes, then by splice into the pipe. full says the read took all the
// room it had (src may have more). While d keeps what it read, it reads
// after the bytes kept, into a bigger buffer when they fill theirs.
func (d *direction) fill() (n int, full bool, err error) {
	if d.keep && d.buf != nil && d.end == len(*d.buf) {
		d.grow()
	}
	if d.copied >= spliceAfter && d.pipe == [2]int{} && !d.keep {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err == nil {
			d.pipe = p
			if d.buf != nil {
				putBuf(d.buf)
				d.buf = nil
			}
		}
		// Without a pipe (out of descriptors), the buffer goes on.
	}
	if d.pipe != [2]int{} {
		n, err := rawSplice(*d.src, d.pipe[1], spliceChunk)
		if n > 0 {
			d.inPipe += n
			d.copied += n
			return n, n == spliceChunk, nil
		}
		return max(n, 0), false, err
	}
	if d.buf == nil {
		d.buf = smallBufs.Get().(*[]byte)
	}
	at := 0 // fill is called with nothing pending: off == end
	if d.keep {
		at = d.end
	}
	n, err = rawRead(*d.src, (*d.buf)[at:])
	if n > 0 {
		d.off, d.end = at, at+n
		d.copied += n
		return n, d.end == len(*d.buf), nil
	}
	return max(n, 0), false, err
}

// grow makes room after the bytes d keeps, which fill their buffer (and
// are written): a bigger buffer, or, at keepMax, the end of keeping (the
// connection can no longer be replayed).
func (d *direction) grow() {
	var nb *[]byte
	switch {
	case d.end < smallSize:
		nb = smallBufs.Get().(*[]byte)
	case d.end < keepMax:
		nb = keepBufs.Get().(*[]byte)
	default:
		d.keep = false
		d.off, d.end = 0, 0
		return
	}
	copy(*nb, (*d.buf)[:d.end])
	putBuf(d.buf)
	d.buf = nb
}

// spliceChunk is the most one splice moves: a pipe's default capacity.
const spliceChunk = 64 << 10

// flush writes what waits to dst; EAGAIN when dst takes no more now.
func (d *direction) flush() error {
	if d.inPipe > 0 {
		n, err := rawSplice(d.pipe[0], *d.dst, d.inPipe)
		if n > 0 {
			d.inPipe -= int(n)
		}
		if err == unix.EINTR {
			return nil
		}
		return err
	}
	n, err := rawWrite(*d.dst, (*d.buf)[d.off:d.end])
	if n > 0 {
		d.off += n
	}
	if err == unix.EINTR {
		return nil
	}
	return err
}
