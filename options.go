package herd

import (
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"syscall"
	"time"

	"github.com/herd-sh/herd/internal/ipc"
)

// Balance is how connections are spread over the workers.
type Balance string

const (
	// BalanceReuseport opens one SO_REUSEPORT socket per worker slot on the
	// same address, so the kernel spreads new connections evenly; sockets
	// of slots whose worker is down are steered around (Linux only; the
	// default there).
	BalanceReuseport Balance = "reuseport"
	// BalanceShared gives every worker the same listening socket; the
	// worker that accepts first wins (the default off Linux).
	BalanceShared Balance = "shared"
)

// DefaultBalance is the balancing mode used when Options.Balance is empty.
func DefaultBalance() Balance {
	if runtime.GOOS == "linux" {
		return BalanceReuseport
	}
	return BalanceShared
}

// Options configure a Supervisor. The zero value of every field is useful.
type Options struct {
	// Command is the worker program and its arguments, run without a
	// shell. Empty means this program again, with the arguments it was
	// started with (a self-fork, like Node's cluster.fork()): the program
	// tells the two roles apart with worker.IsWorker.
	Command []string
	// Env is the workers' environment; nil means the primary's own. herd
	// adds LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID, HERD_WORKER_ID and
	// HERD_WORKERS, replacing any inherited value of those.
	Env []string
	// Dir is the workers' working directory; empty means the primary's.
	Dir string
	// Workers is the number of worker slots; 0 means runtime.NumCPU().
	Workers int
	// Listen lists the sockets to open, each "[NAME=]ADDR" with ADDR
	// "host:port" or "unix:/path". Names default to listen0, listen1, ...
	Listen []string
	// Balance says how connections reach workers; empty means
	// DefaultBalance().
	Balance Balance
	// StopTimeout is how long workers get to exit after StopSignal before
	// their process group is killed; 0 means 10s.
	StopTimeout time.Duration
	// StopSignal asks a worker to stop; 0 means SIGTERM.
	StopSignal syscall.Signal
	// Restart is the restart policy for workers that exit unexpectedly.
	Restart RestartPolicy
	// Stdout and Stderr receive the workers' output, a line at a time,
	// tagged with the slot and pid; nil means the primary's own.
	Stdout, Stderr io.Writer
	// LogFormat is "text" (default: "w1 12345 | line") or "json".
	LogFormat string
	// Logger receives the supervisor's own messages; nil means a slog
	// handler (text or JSON, after LogFormat) on Stderr.
	Logger *slog.Logger
	// MaxMessage is the longest message, in bytes, either side of a
	// worker's channel may send; 0 means 1 MiB.
	MaxMessage int
	// OnEvent, if set, is called for every event of every worker: started,
	// ready, message, exited, restart. It is called from several
	// goroutines, but never concurrently for one worker, and one worker's
	// events arrive in order. A handler that blocks holds up only that
	// worker: while it handles a message the worker's channel is not read,
	// so the worker's sends slow down instead of piling up in the primary.
	OnEvent func(Event)
}

// RestartPolicy says when a slot whose worker exited unexpectedly starts
// the next one. The first exit restarts at once; later exits in a row wait
// BackoffInitial, doubling up to BackoffMax, with ±20% jitter. A worker
// that stays up for BackoffReset clears the count.
type RestartPolicy struct {
	// BackoffInitial is the first non-zero delay; 0 means 100ms.
	BackoffInitial time.Duration
	// BackoffMax caps the delay; 0 means 30s.
	BackoffMax time.Duration
	// BackoffReset is the uptime after which a worker counts as healthy;
	// 0 means 10s.
	BackoffReset time.Duration
	// MaxRestarts, when positive, stops the whole cluster with
	// ErrCrashLoop once one slot restarts more than MaxRestarts times
	// within Window.
	MaxRestarts int
	// Window is the span MaxRestarts counts over; 0 means one minute.
	Window time.Duration
}

// withDefaults returns o with every zero field given its default.
func (o Options) withDefaults() Options {
	if o.Workers == 0 {
		o.Workers = runtime.NumCPU()
	}
	if o.Balance == "" {
		o.Balance = DefaultBalance()
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 10 * time.Second
	}
	if o.MaxMessage == 0 {
		o.MaxMessage = ipc.DefaultMaxMessage
	}
	if o.StopSignal == 0 {
		o.StopSignal = syscall.SIGTERM
	}
	r := &o.Restart
	if r.BackoffInitial == 0 {
		r.BackoffInitial = 100 * time.Millisecond
	}
	if r.BackoffMax == 0 {
		r.BackoffMax = 30 * time.Second
	}
	if r.BackoffReset == 0 {
		r.BackoffReset = 10 * time.Second
	}
	if r.Window == 0 {
		r.Window = time.Minute
	}
	return o
}

func (o Options) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadOptions, fmt.Sprintf(format, args...))
	}
	switch {
	case len(o.Command) > 0 && o.Command[0] == "":
		return bad("empty worker command")
	case o.Workers < 1:
		return bad("workers must be at least 1, got %d", o.Workers)
	case o.Workers > 4096:
		return bad("workers must be at most 4096, got %d", o.Workers)
	case o.Balance != BalanceReuseport && o.Balance != BalanceShared:
		return bad("unknown balance mode %q (want reuseport or shared)", o.Balance)
	case o.StopTimeout < 0:
		return bad("stop timeout must not be negative")
	case o.Restart.BackoffInitial < 0 || o.Restart.BackoffMax < o.Restart.BackoffInitial:
		return bad("backoff must satisfy 0 < initial <= max")
	case o.Restart.MaxRestarts < 0:
		return bad("max restarts must not be negative")
	case o.Restart.Window < 0:
		return bad("restart window must not be negative")
	case o.MaxMessage < 0 || o.MaxMessage > 1<<30:
		return bad("message size limit must be between 0 and 1 GiB, got %d", o.MaxMessage)
	}
	return nil
}
