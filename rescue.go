package herd

import (
	"io"
	"net"
	"sync"
	"time"
)

// rescuer hands on the connections left waiting on the socket of a slot
// that has no worker to accept them (reuseport mode): the kernel queued
// them there before new connections were steered away. Each is proxied to
// the listener's address, where steering gives it to a live worker, so it
// is served now instead of waiting for a restart that may be a backoff away
// (or never come, for a slot removed by a scale-down).
type rescuer struct {
	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
	wg     sync.WaitGroup
}

// rescue takes what waits on slot's sockets and proxies it.
func (s *Supervisor) rescue(slot int) {
	queued, err := s.sockets.TakeQueued(slot)
	if err != nil {
		s.log.Warn("cannot take the connections waiting for a stopped worker", "worker", slot, "err", err)
	}
	if len(queued) == 0 {
		return
	}
	s.log.Info("handing connections that waited for a stopped worker to the others", "worker", slot, "connections", len(queued))
	for _, q := range queued {
		remote, _, _ := s.sockets.ProbeTarget(q.Group, 0)
		if remote == nil {
			q.Conn.Close()
			continue
		}
		s.rescues.proxy(q.Conn, remote.String())
	}
}

func (r *rescuer) proxy(client net.Conn, addr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		client.Close()
		return
	}
	if r.conns == nil {
		r.conns = map[net.Conn]bool{}
	}
	r.conns[client] = true
	r.wg.Go(func() {
		defer r.forget(client)
		server, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			client.Close()
			return
		}
		r.mu.Lock()
		r.conns[server] = true
		r.mu.Unlock()
		defer r.forget(server)
		var both sync.WaitGroup
		both.Go(func() { pipe(server, client) })
		pipe(client, server)
		both.Wait()
	})
}

// pipe copies src to dst, then passes the end of src on as a half-close.
func pipe(dst, src net.Conn) {
	io.Copy(dst, src)
	if tc, ok := dst.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
	} else {
		dst.Close()
	}
}

func (r *rescuer) forget(c net.Conn) {
	c.Close()
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

// close ends every proxied connection and waits for the proxies.
func (r *rescuer) close() {
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
