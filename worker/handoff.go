package worker

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/herd-sh/herd/internal/ipc"
)

// handoffListener is a listener whose connections the primary accepted and
// handed over on the channel (--balance round-robin, least-conn, sticky).
//
// A connection is taken in two steps, so that none is ever both told
// taken and left unserved: the read loop reserves it (which fails once
// the listener is closed: the connection is then left to the primary),
// writes herd.took, and only then releases it to Accept, which returns
// every connection released or reserved before it reports the listener
// closed.
type handoffListener struct {
	name string
	addr net.Addr

	mu      sync.Mutex
	ready   []net.Conn // taken, their herd.took written: for Accept
	pending int        // reserved, their herd.took not written yet
	closed  bool
	changed chan struct{} // closed and replaced when any of the above changes
}

func newHandoffListener(name string) *handoffListener {
	return &handoffListener{
		name:    name,
		addr:    handoffAddr(name),
		changed: make(chan struct{}),
	}
}

// Accept returns the next connection handed over.
func (l *handoffListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	for {
		if len(l.ready) > 0 {
			c := l.ready[0]
			l.ready[0] = nil
			l.ready = l.ready[1:]
			if len(l.ready) == 0 {
				l.signal() // the read loop waits for the app to take them
			}
			l.mu.Unlock()
			return c, nil
		}
		if l.closed && l.pending == 0 {
			l.mu.Unlock()
			return nil, fmt.Errorf("accept %s: %w", l.name, net.ErrClosed)
		}
		changed := l.changed
		l.mu.Unlock()
		<-changed
		l.mu.Lock()
	}
}

// Close makes the worker stop taking connections. Those the primary hands
// over afterwards are left to it, untaken, and it gives them to another
// worker; since herd.took counts the oldest connections handed over, the
// worker then takes no more on any listener. Accept still returns the
// connections taken before, then fails.
func (l *handoffListener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		l.signal()
	}
	return nil
}

// Addr names the listener; the real address is the primary's.
func (l *handoffListener) Addr() net.Addr { return l.addr }

// signal wakes whoever waits for a change. l.mu is held.
func (l *handoffListener) signal() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// reserve promises Accept a connection whose herd.took is on its way;
// false once the listener is closed.
func (l *handoffListener) reserve() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.pending++
	return true
}

// release gives Accept a reserved connection (nil: none after all).
func (l *handoffListener) release(c net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pending--
	if c != nil {
		l.ready = append(l.ready, c)
	}
	l.signal()
}

// waitTaken waits until the app has taken every connection released (or
// closed the listener): a busy app slows the read loop down, and so the
// primary's hand-over to this worker.
func (l *handoffListener) waitTaken() {
	l.mu.Lock()
	for len(l.ready) > 0 && !l.closed {
		changed := l.changed
		l.mu.Unlock()
		<-changed
		l.mu.Lock()
	}
	l.mu.Unlock()
}

type handoffAddr string

func (a handoffAddr) Network() string { return "herd" }
func (a handoffAddr) String() string  { return "herd-handoff:" + string(a) }

// handedConn reports its close to the primary, which counts open
// connections per worker for --balance least-conn.
type handedConn struct {
	net.Conn
	w    *Worker
	once sync.Once
}

func (c *handedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.w.reportClosed() })
	return err
}

// handedTCPConn is a handed TCP connection. It keeps what *net.TCPConn
// offers beyond net.Conn that the standard library looks for: CloseWrite
// (net/http half-closes a connection it answers with an error, so that
// the client reads the answer rather than a reset), ReadFrom (sendfile
// and splice) and WriteTo.
type handedTCPConn struct{ handedConn }

func (c *handedTCPConn) tcp() *net.TCPConn                    { return c.Conn.(*net.TCPConn) }
func (c *handedTCPConn) CloseWrite() error                    { return c.tcp().CloseWrite() }
func (c *handedTCPConn) CloseRead() error                     { return c.tcp().CloseRead() }
func (c *handedTCPConn) ReadFrom(r io.Reader) (int64, error)  { return c.tcp().ReadFrom(r) }
func (c *handedTCPConn) WriteTo(dst io.Writer) (int64, error) { return c.tcp().WriteTo(dst) }

// handedUnixConn is a handed connection of a Unix socket listener.
type handedUnixConn struct{ handedConn }

func (c *handedUnixConn) CloseWrite() error { return c.Conn.(*net.UnixConn).CloseWrite() }
func (c *handedUnixConn) CloseRead() error  { return c.Conn.(*net.UnixConn).CloseRead() }

// handed wraps a connection handed over for Accept.
func (w *Worker) handed(c net.Conn) net.Conn {
	switch c.(type) {
	case *net.TCPConn:
		return &handedTCPConn{handedConn{Conn: c, w: w}}
	case *net.UnixConn:
		return &handedUnixConn{handedConn{Conn: c, w: w}}
	}
	return &handedConn{Conn: c, w: w}
}

// handoffRead is the read loop's part of the hand-over (in Worker).
type handoffRead struct {
	taking int         // connections taken since herd.took was last sent
	taken  []takenConn // of those, the ones for Accept
	// declining counts the connections left untaken since herd.declined
	// was last sent.
	declining int
	// untaking: a connection was left untaken, and so are all later ones.
	untaking bool
}

// takenConn is a connection taken in the read at hand, not yet released
// to its listener.
type takenConn struct {
	l *handoffListener
	c net.Conn
}

// takeConn turns the descriptor of a herd.conn into a connection for its
// listener. It is released to Accept at the end of the read (passConns),
// once herd.took has been written for it: the primary keeps its copy
// until then, and gives the connection to another worker if this one
// dies, so no byte may be read from it before.
//
// A connection for a closed listener is left untaken (its descriptor
// closed, no herd.took, a herd.declined instead, so that the primary
// gives it to another worker at once), and so is every one after it:
// herd.took and herd.declined count the oldest connections handed over.
func (w *Worker) takeConn(m ipc.Message) {
	fd, ok := w.ch.TakeFD()
	if !ok {
		fmt.Fprintf(os.Stderr, "herd worker: a connection for %q came without its descriptor\n", m.Listener)
		return
	}
	l := w.handoff[m.Listener]
	if w.hand.untaking || l != nil && !l.reserve() {
		w.hand.untaking = true
		w.hand.declining++
		unix.Close(fd)
		return
	}
	w.hand.taking++
	f := os.NewFile(uintptr(fd), "handed")
	c, err := net.FileConn(f)
	f.Close()
	switch {
	case err != nil:
		fmt.Fprintf(os.Stderr, "herd worker: a connection for %q: %v\n", m.Listener, err)
	case l == nil:
		fmt.Fprintf(os.Stderr, "herd worker: a connection for %q, which is not a listener handed over (HERD_HANDOFF)\n", m.Listener)
		c.Close()
	default:
		w.hand.taken = append(w.hand.taken, takenConn{l, w.handed(c)})
		return
	}
	// Taken and closed at once.
	if l != nil {
		l.release(nil)
	}
	w.reportClosed()
}

// passConns writes one herd.took for the connections taken since the
// last call, ahead of whatever else waits in the channel, and once it is
// written gives them to Accept. It runs on the read loop, at the end of
// each read and before a message goes to the app.
func (w *Worker) passConns() {
	// The taken ones are older than the declined ones (once this worker
	// declines one, it declines every later one): took first.
	defer w.declineConns()
	if w.hand.taking == 0 {
		return
	}
	m := countMessage(ipc.TypeTook, w.hand.taking)
	w.hand.taking = 0
	// It fails only once the channel is closed: the primary is gone (and
	// no other worker will get these connections), or this worker is
	// closing. Either way they are this worker's to serve, and the read
	// loop has no reason to wait for them.
	err := w.ch.SendUrgent(context.Background(), m)
	taken := w.hand.taken
	for _, t := range taken {
		t.l.release(t.c)
	}
	for i, t := range taken {
		if err == nil && (i == 0 || t.l != taken[i-1].l) {
			t.l.waitTaken()
		}
	}
	clear(taken)
	w.hand.taken = taken[:0]
}

// declineConns says herd.declined for the connections left untaken since
// the last call, ahead of the queue as herd.took.
func (w *Worker) declineConns() {
	if w.hand.declining == 0 {
		return
	}
	m := countMessage(ipc.TypeDeclined, w.hand.declining)
	w.hand.declining = 0
	// Lost only with the channel: the primary is gone, or gives what this
	// worker held to the others when it exits.
	w.ch.SendUrgent(context.Background(), m)
}

// countMessage is a herd.took or herd.declined for n connections: its
// data is the count, left out for one.
func countMessage(typ string, n int) ipc.Message {
	m := ipc.Message{Type: typ}
	if n > 1 {
		m.Data = strconv.AppendInt(nil, int64(n), 10)
	}
	return m
}

// reportClosed says a handed connection ended; reports that cannot go out
// at once (a full channel) go with the next.
//
// Closes race each other: each takes the whole count (Swap) so that every
// close is reported exactly once; one that finds it already taken by
// another has nothing to send.
func (w *Worker) reportClosed() {
	w.unreported.Add(1)
	n := w.unreported.Swap(0)
	if n == 0 {
		return
	}
	if w.ch.TrySend(ipc.Message{Type: ipc.TypeClosed, Data: []byte(fmt.Sprint(n))}) != nil {
		w.unreported.Add(n)
	}
}

// unreportedCount is embedded in Worker.
type unreportedCount = atomic.Int64
