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
	if int(s) < len(stateNames) {
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
	// Restarts counts the slot's unexpected exits that were restarted.
	Restarts int
	// LastExit describes how the previous worker ended ("exit status 1",
	// "signal: killed"), empty if none has.
	LastExit string
	// Ready says the worker passed its readiness rule (Options.Ready).
	Ready bool
	// NextPID is the replacement being started (a reload, a restart, an
	// unhealthy worker), 0 when none is.
	NextPID int
	// RSS is the resident memory of the worker's process group in bytes,
	// and CPU its CPU use in percent of one core, as last sampled (every
	// two seconds).
	RSS uint64
	CPU float64
	// Conns is the number of connections the primary handed to this
	// worker (or proxies to it) that are open, in the hand-over and proxy
	// modes; 0 in the others, where the primary does not see them.
	Conns int
}

// Uptime is how long the current worker has run; 0 when there is none.
func (w WorkerInfo) Uptime() time.Duration {
	if w.PID == 0 || w.Started.IsZero() {
		return 0
	}
	return time.Since(w.Started)
}
