package herd

import "golang.org/x/sys/unix"

// accept takes one connection from listening socket fd, close-on-exec.
func accept(fd int) (int, unix.Sockaddr, error) { return unix.Accept4(fd, unix.SOCK_CLOEXEC) }
