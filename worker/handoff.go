package worker

import (
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"github.com/herd-sh/herd/internal/ipc"
)

// handoffListener is a listener whose connections the primary accepted and
// handed over on the channel (--balance round-robin, least-conn, sticky).
type handoffListener struct {
	name  string
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newHandoffListener(name string) *handoffListener {
	return &handoffListener{
		name:  name,
		addr:  handoffAddr(name),
		conns: make(chan net.Conn),
		done:  make(chan struct{}),
	}
}

// Accept returns the next connection handed over.
func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, fmt.Errorf("accept %s: %w", l.name, net.ErrClosed)
	}
}

// Close stops Accept. Connections handed over afterwards are closed.
func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr names the listener; the real address is the primary's.
func (l *handoffListener) Addr() net.Addr { return l.addr }

// deliver gives c to Accept, waiting while the app is busy (which slows
// the read loop down, and so the primary's hand-over to this worker).
func (l *handoffListener) deliver(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		return false
	}
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

// takeConn turns the descriptor of a herd.conn into a connection for its
// listener, and tells the primary it has it (herd.took), which is when
// the primary lets go of its own copy.
func (w *Worker) takeConn(m ipc.Message) {
	fd, ok := w.ch.TakeFD()
	if !ok {
		fmt.Fprintf(os.Stderr, "herd worker: a connection for %q came without its descriptor\n", m.Listener)
		return
	}
	f := os.NewFile(uintptr(fd), "handed")
	c, err := net.FileConn(f)
	f.Close()
	w.ch.TrySend(ipc.Message{Type: ipc.TypeTook})
	if err != nil {
		fmt.Fprintf(os.Stderr, "herd worker: a connection for %q: %v\n", m.Listener, err)
		w.reportClosed()
		return
	}
	l := w.handoff[m.Listener]
	if l == nil || !l.deliver(&handedConn{Conn: c, w: w}) {
		c.Close()
		w.reportClosed()
	}
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
