package herd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"

	"github.com/herd-sh/herd/internal/logpump"
	"github.com/herd-sh/herd/internal/reaper"
	"github.com/herd-sh/herd/internal/reexec"
	"github.com/herd-sh/herd/internal/sockets"
)

// Supervisor runs a cluster of worker processes. Make one with New, then
// call Run once.
type Supervisor struct {
	opts    Options
	path    string   // the resolved worker command
	argv    []string // its arguments, argv[0] included
	log     *slog.Logger
	sockets *sockets.Set
	stdout  *logpump.Sink
	stderr  *logpump.Sink
	slots   []*slot

	ran      atomic.Bool
	closeMu  sync.Mutex
	closed   bool
	killOnce sync.Once
	killCh   chan struct{} // closed by Kill

	spawner  *spawner
	watchdog *reexec.Watchdog

	// ownMu guards own, the pids of this supervisor's children, so that
	// the PID 1 orphan reaper never reaps a worker (see internal/reaper).
	ownMu sync.Mutex
	own   map[int]bool

	steerMu sync.Mutex
	live    []bool // per slot: new connections may be steered to it
}

// ListenerInfo describes one listener the primary holds.
type ListenerInfo struct {
	// Name is the listener's name in LISTEN_FDNAMES.
	Name string
	// Addr is the bound address (with the port resolved when 0 was asked).
	Addr net.Addr
	// Sockets is how many sockets back it: one per slot in reuseport mode.
	Sockets int
}

// New validates opts, resolves the worker command and opens every
// listening socket, so that a bad address or a missing command is an error
// here, before any worker starts. Call Run next, or Close to give the
// sockets back.
func New(opts Options) (*Supervisor, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	specs, err := sockets.ParseSpecs(opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadOptions, err)
	}
	format, err := logpump.ParseFormat(opts.LogFormat)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadOptions, err)
	}
	path, argv, err := resolveCommand(opts.Command)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCannotStart, err)
	}
	mode := sockets.Shared
	if opts.Balance == BalanceReuseport {
		mode = sockets.Reuseport
	}
	set, err := sockets.Open(specs, mode, opts.Workers)
	if err != nil {
		return nil, err
	}
	s := &Supervisor{
		opts:    opts,
		path:    path,
		argv:    argv,
		sockets: set,
		killCh:  make(chan struct{}),
		own:     make(map[int]bool),
		live:    make([]bool, opts.Workers),
	}
	s.stdout = logpump.NewSink(orDefault(opts.Stdout, os.Stdout), format, "stdout", 0)
	s.stderr = logpump.NewSink(orDefault(opts.Stderr, os.Stderr), format, "stderr", 0)
	s.log = opts.Logger
	if s.log == nil {
		if format == logpump.JSON {
			s.log = slog.New(slog.NewJSONHandler(s.stderr, nil))
		} else {
			s.log = slog.New(slog.NewTextHandler(s.stderr, nil))
		}
	}
	for i := range opts.Workers {
		s.slots = append(s.slots, newSlot(s, i))
	}
	return s, nil
}

// resolveCommand finds the program to run: command's first word on PATH,
// or, for an empty command, this program with its own arguments.
func resolveCommand(command []string) (string, []string, error) {
	if len(command) == 0 {
		self, err := reexec.Self()
		if err != nil {
			return "", nil, err
		}
		return self, os.Args, nil
	}
	path, err := exec.LookPath(command[0])
	return path, command, err
}

func orDefault(w io.Writer, def io.Writer) io.Writer {
	if w == nil {
		return def
	}
	return w
}

// Logger is where the supervisor logs (Options.Logger, or its default).
func (s *Supervisor) Logger() *slog.Logger { return s.log }

// Listeners describes the listening sockets, in LISTEN_FDS order.
func (s *Supervisor) Listeners() []ListenerInfo {
	var out []ListenerInfo
	for _, g := range s.sockets.Groups {
		out = append(out, ListenerInfo{Name: g.Spec.Name, Addr: g.Addr, Sockets: g.Sockets()})
	}
	return out
}

// Workers returns a snapshot of every worker slot.
func (s *Supervisor) Workers() []WorkerInfo {
	out := make([]WorkerInfo, len(s.slots))
	for i, sl := range s.slots {
		out[i] = sl.snapshot()
	}
	return out
}

// Restart replaces worker id gracefully: the worker is asked to stop
// (herd.shutdown, or the stop signal), then a new one starts in its slot.
// It returns once the slot has the request; Workers shows the progress.
func (s *Supervisor) Restart(id int) error {
	if id < 0 || id >= len(s.slots) {
		return fmt.Errorf("%w %d: the cluster has workers 0 to %d", ErrNoWorker, id, len(s.slots)-1)
	}
	select {
	case s.slots[id].restartReq <- struct{}{}:
	default: // one is pending already
	}
	return nil
}

// Kill makes a stop in progress (or the next one) kill the workers' process
// groups at once instead of waiting for StopTimeout. It does not itself
// start a stop: cancel Run's context for that.
func (s *Supervisor) Kill() {
	s.killOnce.Do(func() { close(s.killCh) })
}

// Run starts the workers and supervises them until ctx is done, then stops
// them: StopSignal to each worker's process group, SIGKILL to what is left
// after StopTimeout. It returns nil after a stop asked for by ctx, or the
// error that ended the cluster (ErrCannotStart, ErrCrashLoop, wrapped).
// The listening sockets are closed when Run returns.
func (s *Supervisor) Run(ctx context.Context) error {
	if !s.ran.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer s.Close()
	for _, l := range s.Listeners() {
		s.log.Info("listening", "name", l.Name, "addr", l.Addr.String(), "balance", string(s.opts.Balance), "sockets", l.Sockets)
	}

	s.spawner = newSpawner()
	defer s.spawner.close()
	s.ownMu.Lock()
	wd, err := reexec.StartWatchdog()
	if err == nil {
		s.own[wd.Pid()] = true
	}
	s.ownMu.Unlock()
	if err != nil {
		return err
	}
	s.watchdog = wd
	defer func() {
		if err := wd.Close(); err != nil {
			s.log.Warn("watchdog", "err", err)
		}
	}()

	var reaping sync.WaitGroup
	reapCtx, stopReaping := context.WithCancel(context.Background())
	defer reaping.Wait()
	defer stopReaping()
	if os.Getpid() == 1 {
		r := reaper.New(s.isOwn)
		reaping.Go(func() { r.Run(reapCtx) })
	}

	stop := make(chan struct{})
	results := make(chan error, len(s.slots))
	var slots sync.WaitGroup
	for _, sl := range s.slots {
		slots.Go(func() { results <- sl.run(stop, s.killCh) })
	}
	var first error
	stopping := false
	stopAll := func() {
		if !stopping {
			stopping = true
			close(stop)
		}
	}
	done := ctx.Done()
	for remaining := len(s.slots); remaining > 0; {
		select {
		case <-done:
			done = nil
			if !stopping {
				s.log.Info("stopping", "signal", signalName(s.opts.StopSignal), "timeout", s.opts.StopTimeout.String())
			}
			stopAll()
		case err := <-results:
			remaining--
			if err != nil && first == nil {
				// The caller reports err; logging it too would say it twice.
				first = err
				stopAll()
			}
		}
	}
	slots.Wait()
	s.log.Info("stopped")
	return first
}

func (s *Supervisor) isOwn(pid int) bool {
	s.ownMu.Lock()
	defer s.ownMu.Unlock()
	return s.own[pid]
}

// setLive records whether slot may receive new connections and re-steers
// the reuseport sockets.
func (s *Supervisor) setLive(slot int, live bool) {
	s.steerMu.Lock()
	defer s.steerMu.Unlock()
	if s.live[slot] == live {
		return
	}
	s.live[slot] = live
	var ids []int
	for i, l := range s.live {
		if l {
			ids = append(ids, i)
		}
	}
	if err := s.sockets.Steer(ids); err != nil {
		s.log.Warn("cannot steer new connections away from stopped workers", "err", err)
	}
}

// Close gives back the listening sockets and stops the output pumps. Run
// calls it; call it yourself only if you never call Run.
func (s *Supervisor) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	err := s.sockets.Close()
	s.stdout.Close()
	s.stderr.Close()
	return err
}
