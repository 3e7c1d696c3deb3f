package sockets

import (
	"fmt"
	"net"
	"os"
)

// Queued is a connection taken from a slot's socket by TakeQueued.
type Queued struct {
	// Group is the listener it came to, an index into Set.Groups.
	Group int
	Conn  net.Conn
}

// TakeQueued accepts the connections waiting in the accept queues of
// slot's own sockets (reuseport mode) and returns them. Call it only when
// no worker accepts on those sockets — the slot was scaled away, or its
// worker is down for a while — so that the primary can hand them to a live
// worker instead of leaving them to wait. Shared sockets are left alone:
// any worker takes what waits there.
func (s *Set) TakeQueued(slot int) ([]Queued, error) {
	if s.mode != Reuseport {
		return nil, nil
	}
	var out []Queued
	for i, g := range s.Groups {
		if g.Sockets() < 2 || slot >= g.Sockets() {
			continue
		}
		f := g.file(slot)
		for {
			c, err := acceptWaiting(f)
			if err != nil {
				return out, fmt.Errorf("listener %s: %w", g.Spec.Name, err)
			}
			if c == nil {
				break
			}
			out = append(out, Queued{Group: i, Conn: c})
		}
	}
	return out, nil
}

// fileConn makes a net.Conn of an accepted socket fd, closing the fd.
func fileConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "rescued")
	defer f.Close()
	return net.FileConn(f)
}
