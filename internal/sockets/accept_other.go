//go:build unix && !linux

package sockets

import (
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// Accept takes one connection from the listening socket fd, close-on-exec
// and, with nonblock, non-blocking, and returns it with the peer's IP (the
// zero Addr for a peer that has none, as on a unix: socket). Without
// accept4 it runs under the fork lock, so that no child inherits the
// descriptor before it is marked close-on-exec.
func Accept(fd int, nonblock bool) (int, netip.Addr, error) {
	syscall.ForkLock.RLock()
	nfd, sa, err := unix.Accept(fd)
	if err == nil {
		unix.CloseOnExec(nfd)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return -1, netip.Addr{}, err
	}
	if nonblock {
		if err := unix.SetNonblock(nfd, true); err != nil {
			unix.Close(nfd)
			return -1, netip.Addr{}, err
		}
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return nfd, netip.AddrFrom4(a.Addr), nil
	case *unix.SockaddrInet6:
		return nfd, netip.AddrFrom16(a.Addr).Unmap(), nil
	}
	return nfd, netip.Addr{}, nil
}
