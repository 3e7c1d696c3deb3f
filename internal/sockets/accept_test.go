package sockets

import (
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Accept returns the connection close-on-exec (and non-blocking when
// asked) with the peer's IP, IPv4, IPv6 or none.
func TestAccept(t *testing.T) {
	for _, tc := range []struct {
		network, listen, from string
		want                  netip.Addr
	}{
		{"tcp", "127.0.0.1:0", "127.0.0.7", netip.MustParseAddr("127.0.0.7")},
		{"tcp", "[::]:0", "127.0.0.9", netip.MustParseAddr("127.0.0.9")}, // IPv4-mapped on a dual-stack socket
		{"tcp", "[::1]:0", "::1", netip.MustParseAddr("::1")},
		{"unix", filepath.Join(t.TempDir(), "s"), "", netip.Addr{}},
	} {
		for _, nonblock := range []bool{false, true} {
			l, err := net.Listen(tc.network, tc.listen)
			if err != nil {
				t.Skipf("listen %s %s: %v", tc.network, tc.listen, err)
			}
			f, err := fileOf(l)
			if err != nil {
				t.Fatal(err)
			}
			fd := int(f.Fd())
			unix.SetNonblock(fd, true)
			if _, _, err := Accept(fd, nonblock); !errors.Is(err, unix.EAGAIN) {
				t.Errorf("%s: Accept with nothing waiting: %v, want EAGAIN", tc.listen, err)
			}
			d := net.Dialer{Timeout: 2 * time.Second}
			if tc.from != "" {
				d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(tc.from)}
			}
			c, err := d.Dial(tc.network, l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			var nfd int
			var ip netip.Addr
			for deadline := time.Now().Add(2 * time.Second); ; {
				nfd, ip, err = Accept(fd, nonblock)
				if !errors.Is(err, unix.EAGAIN) || time.Now().After(deadline) {
					break
				}
				time.Sleep(time.Millisecond)
			}
			if err != nil {
				t.Fatalf("%s: Accept: %v", tc.listen, err)
			}
			if ip != tc.want {
				t.Errorf("%s: peer %v, want %v", tc.listen, ip, tc.want)
			}
			flags, _ := unix.FcntlInt(uintptr(nfd), unix.F_GETFL, 0)
			if got := flags&unix.O_NONBLOCK != 0; got != nonblock {
				t.Errorf("%s: non-blocking %v, want %v", tc.listen, got, nonblock)
			}
			if fdFlags, _ := unix.FcntlInt(uintptr(nfd), unix.F_GETFD, 0); fdFlags&unix.FD_CLOEXEC == 0 {
				t.Errorf("%s: accepted descriptor is not close-on-exec", tc.listen)
			}
			unix.Close(nfd)
			c.Close()
			f.Close()
			l.Close()
		}
	}
}

func fileOf(l net.Listener) (interface {
	Fd() uintptr
	Close() error
}, error) {
	switch l := l.(type) {
	case *net.TCPListener:
		return l.File()
	case *net.UnixListener:
		return l.File()
	}
	return nil, errors.ErrUnsupported
}
