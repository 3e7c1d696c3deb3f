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
	"slices"
)

// ErrUnsupported is wrapped by Accepting's error (and a Watcher's) on
// systems without the /proc files it needs (anything but Linux).
var ErrUnsupported = errors.New("probe: not supported on this system")

// Accepting reports whether some process in process group pgid waits for
// connections on every listening socket whose inode is in inodes (see the
// package comment for what waiting means). It looks at the group leader
// first, and stops as soon as every socket is found; when they are not all
// found, it asks every process on the system whether it is in the group.
// To ask again and again about one group, a Watcher costs less.
//
// With no inodes it reports true without looking. A group that no longer
// exists is not accepting (false, nil). Processes that exit during the
// scan are skipped. An error (a permission denied, say) is returned only
// with false, when it may have hidden the answer; the caller can log it
// and poll again.
func Accepting(pgid int, inodes []uint64) (bool, error) {
	w := NewWatcher(pgid, inodes)
	defer w.Close()
	return w.Accepting()
}

// A Watcher answers Accepting's question about one process group, call
// after call, at a fraction of Accepting's cost: it is meant to be polled
// every few milliseconds while a worker starts, when the CPU it takes is
// taken from the worker. Between calls it keeps its buffers, what it
// learnt about the group, and open fds (until Close) of the /proc files
// it reads on every call: a few per process of the group, and one per
// thread of a process whose threads it looks at (up to 64 a process).
//
// What counts as accepting is the same, and a true answer is as sure as
// Accepting's. What it learnt can be out of date, which only makes some
// rare true answers come a few calls later than Accepting's would: when
// the waiting process is in the group but was not there on an earlier
// call and is no child of the main thread of a member (only every few
// calls does a Watcher look through every process on the system), or when
// it opened its epoll instance or socket at the number of an fd it closed
// since the previous call, opening or closing nothing else (every few
// calls a Watcher reads what every fd is again).
//
// A Watcher is not safe for concurrent use.
type Watcher struct {
	pgid   int
	inodes []uint64
	s      *scan // nil until the first call, and after Close
}

// NewWatcher returns a Watcher of process group pgid and the listening
// sockets whose inodes are in inodes. It looks at nothing yet.
func NewWatcher(pgid int, inodes []uint64) *Watcher {
	return &Watcher{pgid: pgid, inodes: slices.Clone(inodes)}
}

// Accepting reports whether the group waits for connections on every
// socket of the Watcher, with the meaning, the results and the errors of
// the Accepting function.
func (w *Watcher) Accepting() (bool, error) {
	if len(w.inodes) == 0 {
		return true, nil
	}
	if w.pgid <= 0 {
		return false, fmt.Errorf("probe: invalid process group %d", w.pgid)
	}
	if w.s == nil {
		w.s = newScan(w.pgid, w.inodes)
	}
	return w.s.accepting()
}

// Close releases the fds the Watcher keeps open. A Watcher used again
// after Close starts afresh, as a new one would.
func (w *Watcher) Close() {
	if w.s != nil {
		w.s.close()
		w.s = nil
	}
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
