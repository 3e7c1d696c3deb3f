package herd

import "time"

// WorkerState is where a worker slot is in its worker's life.
type WorkerState int

const (
	// StateStarting: the process exists but is not yet running the
	// worker command.
	StateStarting WorkerState = iota
	// StateReady: the worker command is running; its sockets were open
	// before it started, so connections that arrive meanwhile queue for it.
	StateReady
	// StateDraining: the worker was asked to stop and has not exited yet.
	StateDraining
	// StateExited: the slot has no process (waiting to restart, or done).
	StateExited
)

var stateNames = [...]string{"starting", "ready", "draining", "exited"}

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
}
