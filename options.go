package herd

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/herd-sh/herd/internal/ipc"
	"github.com/herd-sh/herd/internal/probe"
	"github.com/herd-sh/herd/internal/procstat"
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
	// BalanceRoundRobin, BalanceLeastConn and BalanceSticky make the
	// primary accept each connection and hand it to a worker over the
	// worker's channel (the fd passed with SCM_RIGHTS): in turn; to the
	// worker with the fewest open connections; or by client IP, the same
	// client to the same worker while it lives. Workers receive them with
	// the worker package's listeners, Node's process.on('message'), or by
	// hand (docs/protocol.md).
	BalanceRoundRobin Balance = "round-robin"
	BalanceLeastConn  Balance = "least-conn"
	BalanceSticky     Balance = "sticky"
	// BalanceProxy is for apps that only bind a port: each worker gets a
	// private loopback port in PORT (and HOST=127.0.0.1), and the primary
	// proxies every connection to one of them, picked by ProxyPolicy.
	BalanceProxy Balance = "proxy"
)

// handsOff reports whether the primary accepts and hands connections over.
func (b Balance) handsOff() bool {
	return b == BalanceRoundRobin || b == BalanceLeastConn || b == BalanceSticky
}

// primaryAccepts reports whether the primary, not the workers, accepts.
func (b Balance) primaryAccepts() bool { return b.handsOff() || b == BalanceProxy }

// Balances lists every balancing mode.
var Balances = []Balance{BalanceReuseport, BalanceShared, BalanceRoundRobin, BalanceLeastConn, BalanceSticky, BalanceProxy}

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
	// Ready says when a new worker counts as serving: what a rolling
	// reload waits for before it stops the worker it replaces.
	Ready Readiness
	// ProxyPolicy picks the worker in BalanceProxy mode: BalanceRoundRobin
	// (the default), BalanceLeastConn or BalanceSticky.
	ProxyPolicy Balance
	// NodeIPC makes the workers' channel Node's own IPC channel too
	// (NODE_CHANNEL_FD), so that Node workers get messages with
	// process.on('message') and handed-over connections as net.Socket
	// handles. Empty means "auto": on in the hand-over modes when the
	// command is node; "on" and "off" force it.
	NodeIPC string
	// Health checks running workers; a worker that fails is replaced.
	Health HealthCheck
	// MaxMemory, when positive, replaces a worker whose process tree's
	// resident memory (RSS, summed over its process group and every
	// descendant, see herd status) exceeds it, in bytes. Linux only (it
	// reads /proc): New refuses it elsewhere.
	MaxMemory uint64
	// MaxLifetime, when positive, replaces each worker after it has run
	// that long, give or take a random LifetimeJitter, one worker at a time
	// across the cluster.
	MaxLifetime    time.Duration
	LifetimeJitter time.Duration
	// ReloadBatch is how many workers Reload replaces at once; 0 means 1.
	ReloadBatch int
	// lines, set by Map, gives the workers' stdin and stdout to the task
	// farm instead of the logs.
	lines linesIO
	// OnEvent, if set, is called for every event of every worker: started,
	// ready, message, exited, restart. It is called from several
	// goroutines, but never concurrently for one worker, and one worker's
	// events arrive in order. A handler that blocks holds up only that
	// worker: while it handles a message the worker's channel is not read,
	// so the worker's sends slow down instead of piling up in the primary.
	OnEvent func(Event)
}

// linesIO is how Map talks to workers on their stdin and stdout.
type linesIO interface {
	// attach is given a new worker's stdin; the returned closer is
	// closed when the worker has exited.
	attach(p *process, stdin *os.File) io.Closer
	// read reads worker p's stdout until it ends.
	read(p *process, stdout io.Reader)
}

// ReadyMode is how the primary learns that a new worker is serving.
type ReadyMode string

const (
	// ReadyAuto: ReadyMessage for a worker that speaks the protocol (it
	// said herd.hello, as Go library workers do), else ReadyListen for a
	// worker with sockets on Linux, else (no sockets, or no /proc to
	// watch them in) ready a second after its command started.
	ReadyAuto ReadyMode = "auto"
	// ReadyMessage: when the worker sends herd.ready.
	ReadyMessage ReadyMode = "message"
	// ReadyListen: when the worker's processes wait for connections on
	// every socket the worker was given, as seen in /proc (epoll sets,
	// accept, poll and select); no connection is made (Linux only). In
	// BalanceProxy: when the worker's own port accepts a connection. It
	// needs sockets to watch: New refuses it in the hand-over modes and
	// without listeners.
	ReadyListen ReadyMode = "listen"
	// ReadyHTTP: when GET Path answers 2xx (sent to this worker's own
	// socket, see HealthCheck).
	ReadyHTTP ReadyMode = "http"
	// ReadyDelay: Delay after the command runs.
	ReadyDelay ReadyMode = "delay"
)

// Readiness says when a new worker counts as serving.
type Readiness struct {
	// Mode is the rule; empty means ReadyAuto.
	Mode ReadyMode
	// Path is what ReadyHTTP gets, like "/healthz".
	Path string
	// Delay is ReadyDelay's wait.
	Delay time.Duration
	// Timeout: a worker not ready this long after its command ran is
	// killed and counts as a failed start; 0 means 60s.
	Timeout time.Duration
}

// String gives the rule the way herd run's --ready takes it.
func (r Readiness) String() string {
	switch r.Mode {
	case ReadyHTTP:
		return "http:" + r.Path
	case ReadyDelay:
		return "delay:" + r.Delay.String()
	case "":
		return string(ReadyAuto)
	}
	return string(r.Mode)
}

// ParseReadiness parses a --ready value: auto, message, listen,
// http:/PATH or delay:DURATION.
func ParseReadiness(s string) (Readiness, error) {
	kind, arg, _ := strings.Cut(s, ":")
	switch ReadyMode(kind) {
	case ReadyAuto, ReadyMessage, ReadyListen:
		if arg == "" {
			return Readiness{Mode: ReadyMode(kind)}, nil
		}
	case ReadyHTTP:
		if strings.HasPrefix(arg, "/") {
			return Readiness{Mode: ReadyHTTP, Path: arg}, nil
		}
	case ReadyDelay:
		if d, err := time.ParseDuration(arg); err == nil && d >= 0 {
			return Readiness{Mode: ReadyDelay, Delay: d}, nil
		}
	}
	return Readiness{}, fmt.Errorf("readiness %q: want auto, message, listen, http:/PATH or delay:DURATION", s)
}

// HealthKind is what a health check does.
type HealthKind string

const (
	// HealthHTTP: GET Path on the worker's own socket must answer 2xx.
	HealthHTTP HealthKind = "http"
	// HealthTCP: a connection to the worker's own socket must be
	// established (a weak check: the kernel completes it while the
	// socket's queue has room).
	HealthTCP HealthKind = "tcp"
)

// HealthCheck checks running workers. In reuseport mode each probe
// reaches the checked worker's own socket: probe connections come from
// 127.254.0.0/16, which herd's steering program maps to the slot they
// name. A worker that fails Failures checks in a row is replaced like in a
// reload (a new one is started; once it is ready the old one is stopped).
type HealthCheck struct {
	// Kind is HealthHTTP, HealthTCP or empty for none.
	Kind HealthKind
	// Path is what HealthHTTP gets.
	Path string
	// Interval between checks; 0 means 10s. Timeout of one check; 0
	// means 2s. Failures in a row that make a worker unhealthy; 0 means 3.
	Interval, Timeout time.Duration
	Failures          int
	// Heartbeat, when positive, asks workers that speak the protocol to
	// send herd.heartbeat (every third of it); one silent for longer is
	// taken for hung and replaced, as gunicorn does with its worker
	// timeout.
	Heartbeat time.Duration
}

// ParseHealth parses a --health value: http:/PATH or tcp.
func ParseHealth(s string) (HealthCheck, error) {
	kind, arg, _ := strings.Cut(s, ":")
	switch {
	case kind == string(HealthTCP) && arg == "":
		return HealthCheck{Kind: HealthTCP}, nil
	case kind == string(HealthHTTP) && strings.HasPrefix(arg, "/"):
		return HealthCheck{Kind: HealthHTTP, Path: arg}, nil
	}
	return HealthCheck{}, fmt.Errorf("health check %q: want http:/PATH or tcp", s)
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
	if o.ProxyPolicy == "" {
		o.ProxyPolicy = BalanceRoundRobin
	}
	if o.NodeIPC == "" {
		o.NodeIPC = "auto"
	}
	if o.Ready.Mode == "" {
		o.Ready.Mode = ReadyAuto
	}
	if o.Ready.Timeout == 0 {
		o.Ready.Timeout = time.Minute
	}
	if h := &o.Health; h.Kind != "" {
		if h.Interval == 0 {
			h.Interval = 10 * time.Second
		}
		if h.Timeout == 0 {
			h.Timeout = 2 * time.Second
		}
		if h.Failures == 0 {
			h.Failures = 3
		}
	}
	if o.ReloadBatch == 0 {
		o.ReloadBatch = 1
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
	case o.Workers > maxWorkers:
		return bad("workers must be at most %d, got %d", maxWorkers, o.Workers)
	case !slices.Contains(Balances, o.Balance):
		return bad("unknown balance mode %q (want reuseport, shared, round-robin, least-conn, sticky or proxy)", o.Balance)
	case o.ProxyPolicy != BalanceRoundRobin && o.ProxyPolicy != BalanceLeastConn && o.ProxyPolicy != BalanceSticky:
		return bad("unknown proxy policy %q (want round-robin, least-conn or sticky)", o.ProxyPolicy)
	case o.NodeIPC != "auto" && o.NodeIPC != "on" && o.NodeIPC != "off":
		return bad("node IPC must be auto, on or off, got %q", o.NodeIPC)
	case o.StopTimeout < 0:
		return bad("stop timeout must not be negative")
	case o.Restart.BackoffInitial < 0 || o.Restart.BackoffMax < o.Restart.BackoffInitial:
		return bad("backoff must satisfy 0 < initial <= max")
	case o.Restart.MaxRestarts < 0:
		return bad("max restarts must not be negative")
	case o.Restart.Window < 0:
		return bad("restart window must not be negative")
	case o.Ready.Mode == ReadyHTTP && !strings.HasPrefix(o.Ready.Path, "/"):
		return bad("readiness http needs a path starting with /, got %q", o.Ready.Path)
	case o.Ready.Mode == ReadyListen && o.Balance != BalanceProxy && !probe.Supported:
		// Accepting always fails here: the worker would never be ready.
		return bad("readiness listen looks in /proc for what the worker waits on, which only Linux has (this is %s): use message (herd.ready), http:/PATH or delay:DURATION", runtime.GOOS)
	case o.MaxMemory > 0 && !procstat.Supported:
		// Without samples the limit would silently never apply.
		return bad("--max-memory samples the workers' memory from /proc, which only Linux has (this is %s)", runtime.GOOS)
	case o.Ready.Mode == ReadyListen && o.Balance.handsOff():
		// Watched for nothing, the worker would never be ready and would
		// be killed at the readiness timeout, again and again.
		return bad("readiness listen waits for a worker to accept on its sockets, and in --balance %s workers get none (the primary accepts): use message (herd.ready) or delay:DURATION", o.Balance)
	case o.Ready.Mode == ReadyListen && len(o.Listen) == 0 && o.Balance != BalanceProxy:
		return bad("readiness listen waits for a worker to accept on its sockets, and there are none (no listener, -l): use message (herd.ready) or delay:DURATION")
	case o.Ready.Timeout < 0 || o.Ready.Delay < 0:
		return bad("readiness delay and timeout must not be negative")
	case o.Health.Kind != "" && o.Health.Kind != HealthHTTP && o.Health.Kind != HealthTCP:
		return bad("unknown health check %q (want http or tcp)", o.Health.Kind)
	case o.Health.Kind == HealthHTTP && !strings.HasPrefix(o.Health.Path, "/"):
		return bad("health check http needs a path starting with /, got %q", o.Health.Path)
	case o.Health.Interval < 0 || o.Health.Timeout < 0 || o.Health.Failures < 0 || o.Health.Heartbeat < 0:
		return bad("health check settings must not be negative")
	case o.Health.Heartbeat > 0 && o.Health.Heartbeat < 300*time.Millisecond:
		return bad("heartbeat timeout must be at least 300ms, got %v", o.Health.Heartbeat)
	case o.MaxLifetime < 0 || o.LifetimeJitter < 0:
		return bad("lifetime and jitter must not be negative")
	case o.LifetimeJitter > 0 && o.MaxLifetime == 0:
		return bad("lifetime jitter %v without a max lifetime: it varies the max lifetime, which is off", o.LifetimeJitter)
	case o.LifetimeJitter > 0 && o.LifetimeJitter >= o.MaxLifetime:
		// Jitter can take up to itself off the lifetime: a worker could
		// then be recycled as soon as it is ready, again and again.
		return bad("lifetime jitter %v must be less than the max lifetime %v", o.LifetimeJitter, o.MaxLifetime)
	case o.ReloadBatch < 0:
		return bad("reload batch must be at least 1, got %d", o.ReloadBatch)
	case o.MaxMessage < 0 || o.MaxMessage > 1<<30:
		return bad("message size limit must be between 0 and 1 GiB, got %d", o.MaxMessage)
	}
	return nil
}
