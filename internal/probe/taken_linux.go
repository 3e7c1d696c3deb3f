package probe

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// takenBy waits until the server end of the TCP connection client→server
// is accepted, then reports whether a process of group pgid holds it.
func takenBy(ctx context.Context, pgid int, server, client netip.AddrPort) (bool, error) {
	if pgid <= 0 {
		return false, fmt.Errorf("probe: invalid process group %d", pgid)
	}
	wait := 50 * time.Microsecond
	for {
		ino, err := acceptedInode(server, client)
		if err != nil {
			return false, err
		}
		if ino != 0 {
			s := newScan(pgid, []uint64{ino})
			defer s.close()
			return s.walk((*scan).holds)
		}
		// Still in the listening socket's queue: nobody took it yet.
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, fmt.Errorf("probe: connection to %s not accepted: %w", server, context.Cause(ctx))
		case <-t.C:
		}
		wait = min(2*wait, 2*time.Millisecond)
	}
}

// holds marks the sockets still missing that process p has open.
func (s *scan) holds(p *proc) {
	s.fds(p)
	for _, ino := range s.held {
		delete(s.left, ino)
	}
}

// The sock_diag ABI (linux/inet_diag.h): a request for one socket by its
// addresses, and the message that describes it.
const (
	nlmsgHdrLen      = 16
	diagSockIDLen    = 48 // sport, dport, src[16], dst[16], if, cookie[2]
	diagReqLen       = 8 + diagSockIDLen
	diagMsgInodeOff  = 4 + diagSockIDLen + 16 // after expires, rqueue, wqueue, uid
	diagMsgMinLen    = diagMsgInodeOff + 4
	diagReplyBufSize = 1024
)

// acceptedInode asks the kernel (sock_diag) for the socket whose local
// address is server and peer address is client: the server end of a
// connection. It returns its inode: 0 while the connection waits in the
// listening socket's queue (a socket gets its inode when accept(2) takes
// it). A connection the kernel does not know (closed meanwhile) is an
// error.
func acceptedInode(server, client netip.AddrPort) (uint64, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return 0, fmt.Errorf("probe: sock_diag: %w", err)
	}
	defer unix.Close(fd)

	family := byte(unix.AF_INET6)
	if server.Addr().Unmap().Is4() && client.Addr().Unmap().Is4() {
		family = unix.AF_INET
		server = netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
		client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
	}
	var req [nlmsgHdrLen + diagReqLen]byte
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], 1) // sequence
	r := req[nlmsgHdrLen:]
	r[0], r[1] = family, unix.IPPROTO_TCP
	ne.PutUint32(r[4:], ^uint32(0)) // every state
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], server.Port())
	binary.BigEndian.PutUint16(id[2:], client.Port())
	putAddr(id[4:20], server.Addr())
	putAddr(id[20:36], client.Addr())
	ne.PutUint32(id[40:], ^uint32(0)) // INET_DIAG_NOCOOKIE
	ne.PutUint32(id[44:], ^uint32(0))
	if err := unix.Sendto(fd, req[:], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("probe: sock_diag: %w", err)
	}
	var buf [diagReplyBufSize]byte
	n, _, err := unix.Recvfrom(fd, buf[:], 0)
	if err != nil {
		return 0, fmt.Errorf("probe: sock_diag: %w", err)
	}
	if n < nlmsgHdrLen {
		return 0, fmt.Errorf("probe: sock_diag: short reply (%d bytes)", n)
	}
	body := buf[nlmsgHdrLen:n]
	switch ne.Uint16(buf[4:]) {
	case unix.NLMSG_ERROR:
		if len(body) < 4 {
			return 0, fmt.Errorf("probe: sock_diag: short error reply")
		}
		errno := unix.Errno(-int32(ne.Uint32(body)))
		return 0, fmt.Errorf("probe: connection %s to %s: %w", client, server, errno)
	case unix.SOCK_DIAG_BY_FAMILY:
		if len(body) < diagMsgMinLen {
			return 0, fmt.Errorf("probe: sock_diag: short reply (%d bytes)", n)
		}
		return uint64(ne.Uint32(body[diagMsgInodeOff:])), nil
	default:
		return 0, fmt.Errorf("probe: sock_diag: unexpected reply type %d", ne.Uint16(buf[4:]))
	}
}

// putAddr writes a in network order: 4 bytes for IPv4, 16 for IPv6.
func putAddr(dst []byte, a netip.Addr) {
	if a.Is4() {
		b := a.As4()
		copy(dst, b[:])
		return
	}
	b := a.As16()
	copy(dst, b[:])
}
