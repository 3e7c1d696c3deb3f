package herd

import "time"

// WorkerState is where a worker slot is in its worker's life.
type WorkerState int

const (
	// StateStarting: the worker is not serving yet: its command is not
	// running yet, or it is not ready (Options.Ready). Connections that
	// arrive meanwhile queue for it.
	StateStarting WorkerState = iota
	// StateReady: the worker is serving.
	StateReady
	// StateDraining: the worker was asked to stop and has not exited yet.
	StateDraining
	// StateExited: the slot has no process (waiting to restart, or done).
	StateExited
)

var stateNames = [...]string{"starting", "ready", "draining", "exited"}

// String returns the state's name as herd status shows it: "starting",
// "ready", "draining" or "exited".
func (s WorkerState) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "unknown"
}

// WorkerInfo is a snapshot of one worker slot.
type WorkerInfo struct {
	// ID is the slot, 0..Workers-1, also the worker's HERD_WORKER_ID.
	ID int
	// PID is the current worker's pid, 0 when the slot has none.
	PID int
	// State is the slot's state.
	State WorkerState
	// Started is when the current worker started.
	Started time.Time
	// Restarts counts the slot's failed workers: each worker of the slot
	// that exited without being asked to, or was killed for not becoming
	// ready within Readiness.Timeout, whether it was serving, starting
	// after an exit, or a replacement (a reload, a restart, a health,
	// memory or lifetime replacement) that never became ready. Workers
	// herd stopped on purpose are not counted.
	Restarts int
	// LastExit describes how the slot's previous worker ended ("exit
	// status 1", "signal: killed"), empty if none has. A replacement that
	// failed is not the slot's worker: see LastError.
	LastExit string
	// LastError says why the slot's last new worker failed to start (a
	// replacement or a restarted worker that exited, or was killed, before
	// it was ready), naming its pid and, for a replacement, what asked
	// for it; empty once a worker of the slot has become ready since.
	LastError string
	// Ready says the worker passed its readiness rule (Options.Ready).
	Ready bool
	// NextPID is the replacement being started (a reload, a restart, an
	// unhealthy worker), 0 when none is.
	NextPID int
	// RSS is the resident memory of the worker's process tree in bytes,
	// and CPU its CPU use in percent of one core, as last sampled (every
	// two seconds).
	RSS uint64
	CPU float64
	// Conns is the number of connections the primary handed to this
	// worker (or proxies to it) that are open, in the hand-over and proxy
	// modes; 0 in the others, where the primary does not see them.
	Conns int
	// DroppedMessages counts the lines the current worker sent on its
	// channel that the primary dropped: longer than MaxMessage, or not a
	// message (invalid JSON, no string type).
	DroppedMessages int64
}

// Uptime is how long the current worker has run; 0 when there is none.
func (w WorkerInfo) Uptime() time.Duration {
	if w.PID == 0 || w.Started.IsZero() {
		return 0
	}
	return time.Since(w.Started)
}
