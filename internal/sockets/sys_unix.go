//go:build unix

package sockets

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Ino)
	}
	return 0
}

func setReuseport(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	return os.NewSyscallError("setsockopt SO_REUSEPORT", serr)
}

// listener is what detach needs of a *net.TCPListener or *net.UnixListener.
type listener interface {
	SyscallConn() (syscall.RawConn, error)
	Close() error
}

// detach turns l into a plain blocking file that is not in the Go
// netpoller, and closes l. The primary never accepts on its sockets; if
// its copy stayed registered (as the *os.File from File() does), every
// incoming connection would wake the idle primary, costing a share of a
// core under load. Blocking mode is also what systemd hands to workers.
func detach(l listener, name string) (*os.File, error) {
	raw, err := l.SyscallConn()
	if err != nil {
		l.Close()
		return nil, err
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		derr = err
	}
	l.Close() // the original leaves the poller and closes
	if derr != nil {
		return nil, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", derr)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl O_NONBLOCK", err)
	}
	// A blocking fd makes os.NewFile return a file outside the poller.
	return os.NewFile(uintptr(fd), name), nil
}
