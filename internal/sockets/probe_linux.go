package sockets

import (
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// probeFree binds (without listening and without SO_REUSEPORT) to address
// and reports EADDRINUSE the way net.Listen would.
func probeFree(address string) error {
	ta, err := net.ResolveTCPAddr("tcp", address)
	if err != nil {
		return &net.OpError{Op: "listen", Net: "tcp", Err: err}
	}
	fd, sa, err := probeSocket(ta)
	if err != nil {
		return &net.OpError{Op: "listen", Net: "tcp", Addr: ta, Err: os.NewSyscallError("socket", err)}
	}
	defer unix.Close(fd)
	// Go's listeners set SO_REUSEADDR; do the same so that TIME_WAIT
	// connections of an earlier run are not mistaken for a live listener.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, sa); err != nil {
		return &net.OpError{Op: "listen", Net: "tcp", Addr: ta, Err: os.NewSyscallError("bind", err)}
	}
	return nil
}

func probeSocket(ta *net.TCPAddr) (int, unix.Sockaddr, error) {
	if ip4 := ta.IP.To4(); ip4 != nil {
		sa := &unix.SockaddrInet4{Port: ta.Port}
		copy(sa.Addr[:], ip4)
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		return fd, sa, err
	}
	sa := &unix.SockaddrInet6{Port: ta.Port}
	if ta.IP != nil {
		copy(sa.Addr[:], ta.IP.To16())
	}
	if ta.Zone != "" {
		if ifi, err := net.InterfaceByName(ta.Zone); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		}
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil && ta.IP == nil {
		// No IPv6 on this host: the wildcard means IPv4 only.
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		return fd, &unix.SockaddrInet4{Port: ta.Port}, err
	}
	if err == nil && ta.IP == nil {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
	}
	return fd, sa, err
}
