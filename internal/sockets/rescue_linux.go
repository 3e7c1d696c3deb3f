package sockets

import (
	"errors"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// acceptWaiting accepts one connection if one is waiting on f, without
// blocking (f is a blocking socket shared with workers, so its mode is not
// ours to change): poll first, and accept only what poll saw. Nobody else
// accepts on f meanwhile (see TakeQueued). It returns nil when none waits.
func acceptWaiting(f *os.File) (net.Conn, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var (
		nfd  = -1
		serr error
	)
	err = raw.Control(func(fd uintptr) {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(pfd, 0)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || n == 0 || pfd[0].Revents&unix.POLLIN == 0 {
				serr = err
				return
			}
			break
		}
		nfd, _, serr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC)
	})
	if err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, os.NewSyscallError("accept", serr)
	}
	if nfd < 0 {
		return nil, nil
	}
	return fileConn(nfd)
}
