// Package probe tells, from outside and without connecting, whether a
// worker is accepting connections on the listening sockets it was given.
//
// A TCP connect cannot answer that: in reuseport mode the primary cannot
// choose which socket of the group its connection lands on, and the app
// would see the probe as a real client. Instead the primary looks in /proc
// at what the worker's processes wait on. A worker is "accepting" on a
// listening socket when some process in its process group (the worker
// leads its own group) does one of:
//
//   - watches the socket for input (EPOLLIN) in an epoll instance it holds
//     (/proc/PID/fdinfo of its eventpoll fds): Go's netpoller, Node
//     (libuv), Python asyncio, nginx and most event loops;
//   - has a thread blocked in accept(2) or accept4(2) on it
//     (/proc/PID/task/TID/syscall): plain blocking servers;
//   - has a thread blocked in poll, ppoll, select or pselect6 asking for
//     input on it (the fd array or set is read from the thread's memory
//     with process_vm_readv): Python's socketserver, and select loops.
//
// Accepting reports true when every socket asked about passes one of these
// tests. That is readiness, not health, and it has limits:
//
//   - An app that registered the socket and then hung, or whose loop is
//     busy, still looks accepting: the socket is registered. Go registers
//     a listener with its netpoller when the listener is created
//     (net.FileListener, net.Listen), before the first Accept.
//   - A thread in poll/select is seen only while it is blocked there; one
//     that is busy between two waits (serving a request) is not, so a
//     poll-based server may read "not accepting" for a moment.
//   - Not detected: accepting in a loop on a non-blocking socket without
//     epoll or poll, io_uring accepts, a socket watched only through a
//     nested epoll instance, 32-bit (compat) processes on a 64-bit kernel,
//     and threads that unshared their fd table.
//   - Reading another process's fds, syscall state and memory needs
//     ptrace access: the same uid, a dumpable process (not setuid, no
//     PR_SET_DUMPABLE 0) and, under Yama's ptrace_scope 1, being its
//     ancestor, as the primary is of its workers and (unless they were
//     reparented) of their children. A process that refuses simply does not count (the error is
//     returned when nothing else proved readiness).
//   - Watched files are matched by inode number only, not device.
//     Sockets and pipes take their numbers from one kernel counter, so a
//     false match needs another kind of file (a tty, say) with the very
//     number of the socket in a worker's epoll set.
//
// Only Linux has the /proc files this needs. Elsewhere Accepting fails
// with an error wrapping ErrUnsupported. The epoll test works on every
// Linux architecture; the syscall tests need the syscall numbers, known
// for amd64 and arm64.
package probe

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
)

// ErrUnsupported is wrapped by Accepting's error on systems without the
// /proc files it needs (anything but Linux).
var ErrUnsupported = errors.New("probe: not supported on this system")

// Accepting reports whether some process in process group pgid waits for
// connections on every listening socket whose inode is in inodes (see the
// package comment for what waiting means). It is cheap enough to poll
// every few milliseconds: it looks at the group leader first, and stops as
// soon as every socket is found.
//
// With no inodes it reports true without looking. A group that no longer
// exists is not accepting (false, nil). Processes that exit during the
// scan are skipped. An error (a permission denied, say) is returned only
// with false, when it may have hidden the answer; the caller can log it
// and poll again.
func Accepting(pgid int, inodes []uint64) (bool, error) {
	if len(inodes) == 0 {
		return true, nil
	}
	if pgid <= 0 {
		return false, fmt.Errorf("probe: invalid process group %d", pgid)
	}
	return accepting(pgid, inodes)
}

// TakenBy waits, until ctx ends, for a TCP connection the caller made to
// a worker's listening socket to be accepted, and reports whether a
// process of group pgid took it. server is the address the caller
// connected to and client the connection's local address.
//
// It tells a probe answered by the worker being probed from one answered
// by another process accepting on the same socket: in reuseport mode the
// worker a new one replaces shares the slot's socket until the new one is
// ready, and in shared mode every worker does. The kernel names the
// socket that accepted the connection (sock_diag); the group's fds are
// looked in as Accepting does, with the same access rules. Linux only;
// elsewhere it fails with an error wrapping ErrUnsupported.
func TakenBy(ctx context.Context, pgid int, server, client netip.AddrPort) (bool, error) {
	return takenBy(ctx, pgid, server, client)
}

// SocketInode returns the inode number of an open socket file, the number
// /proc/PID/fd shows as "socket:[N]". The primary takes it from its own
// copy of each listening socket and passes it to Accepting.
func SocketInode(f *os.File) (uint64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("probe: %w", err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return 0, fmt.Errorf("probe: %s is not a socket", f.Name())
	}
	return inodeOf(fi)
}
