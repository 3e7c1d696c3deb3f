// Package herd runs a program as a cluster of worker processes, the
// master/worker model of Node's cluster module, PM2, gunicorn and nginx,
// for programs written in any language.
//
// A [Supervisor] opens the listening sockets, starts N workers, hands each
// its sockets the way systemd socket activation does (fds 3.. with
// LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID), restarts the workers that die,
// and stops them all cleanly when its context ends. Each worker slot is
// owned by one goroutine that runs the worker's life as a state machine:
// starting, ready, draining, exited.
//
// Programs that link this package can be re-executed by it in helper roles
// (the exec trampoline that sets LISTEN_PID, and the watchdog that kills the
// workers of a primary that was killed); the package's init takes over
// before main only when herd's own role variable is set.
package herd
