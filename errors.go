package herd

import "errors"

var (
	// ErrCannotStart means the worker command could not be run at all (not
	// found, not executable). Retrying would not help, so the cluster stops.
	ErrCannotStart = errors.New("cannot start worker command")
	// ErrCrashLoop means a slot restarted more often than
	// Restart.MaxRestarts allows within Restart.Window.
	ErrCrashLoop = errors.New("worker restarted too often")
	// ErrRunning is returned by a second call of Run.
	ErrRunning = errors.New("supervisor already ran")
	// ErrNotRunning is returned by what needs a running cluster (Reload,
	// Scale, Restart) before Run or after it returned.
	ErrNotRunning = errors.New("the cluster is not running")
	// ErrBadOptions is wrapped by every validation error of New.
	ErrBadOptions = errors.New("invalid options")
	// ErrNoWorker means a message was addressed to a slot that does not
	// exist or has no running worker.
	ErrNoWorker = errors.New("no such worker")
	// ErrBadMessage means a message cannot be sent as it is: a reserved or
	// empty type, data that is not JSON, or too long.
	ErrBadMessage = errors.New("bad message")
)
