package sockets

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Accept takes one connection from the listening socket fd, close-on-exec
// and, with nonblock, non-blocking, and returns it with the peer's IP (the
// zero Addr for a peer that has none, as on a unix: socket). fd must be
// non-blocking: this never parks in the kernel.
//
// It is accept4 and nothing else. unix.Accept4 also asks the kernel for
// the socket's protocol (a getsockopt per connection, to tell L2TP from
// TCP) and allocates the peer's address: a call and an allocation for
// every connection a front that accepts them all does not need.
func Accept(fd int, nonblock bool) (int, netip.Addr, error) {
	var rsa unix.RawSockaddrAny
	size := uint32(unix.SizeofSockaddrAny)
	flags := unix.SOCK_CLOEXEC
	if nonblock {
		flags |= unix.SOCK_NONBLOCK
	}
	r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&size)), uintptr(flags), 0, 0)
	if e != 0 {
		return -1, netip.Addr{}, e
	}
	return int(r), peerIP(&rsa), nil
}

// peerIP is the IP of an AF_INET or AF_INET6 address, unmapped.
func peerIP(rsa *unix.RawSockaddrAny) netip.Addr {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		return netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(rsa)).Addr)
	case unix.AF_INET6:
		return netip.AddrFrom16((*unix.RawSockaddrInet6)(unsafe.Pointer(rsa)).Addr).Unmap()
	}
	return netip.Addr{}
}
