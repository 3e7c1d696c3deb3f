//go:build unix && !linux

package herd

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// accept takes one connection from listening socket fd, close-on-exec;
// without accept4, under the fork lock so that no child inherits it.
func accept(fd int) (int, unix.Sockaddr, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	nfd, sa, err := unix.Accept(fd)
	if err == nil {
		unix.CloseOnExec(nfd)
	}
	return nfd, sa, err
}
