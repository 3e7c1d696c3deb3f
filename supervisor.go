package herd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-sh/herd/internal/exits"
	"github.com/herd-sh/herd/internal/logpump"
	"github.com/herd-sh/herd/internal/proxy"
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
	history *logpump.Ring // recent worker output, for Output

	// slots is the current slots, in id order; Run's goroutine replaces
	// it when the cluster scales, everyone else reads it.
	slots    atomic.Pointer[[]*slot]
	want     atomic.Int64 // the number of slots asked for: HERD_WORKERS
	running  atomic.Bool
	scaleReq chan scaleReq
	reloadMu sync.Mutex
	// recycling is the token a worker past its lifetime holds while it is
	// replaced, so that workers are recycled one at a time.
	recycling chan struct{}
	// probeGroup is the listener health and readiness probes connect to.
	probeGroup int
	rescues    rescuer
	// handover runs the hand-over modes, proxy the proxy mode; nil in
	// the others.
	handover *handover
	proxy    *proxy.Proxy
	// backends is what the proxy may send connections to: the live
	// slots, rebuilt by setLive.
	backends atomic.Pointer[[]proxy.Backend]
	// tasks takes the answers a worker sends a Pool (herd.result,
	// herd.failed), those of one read of its channel at a time, on its
	// read loop; nil without a Pool.
	tasks func(p *process, answers []taskAnswer)
	// procEvents is told of every event of every worker process before
	// OnEvent is (Map and Pool follow the processes that run with it).
	procEvents func(p *process, ev Event)
	// portMu guards ports: in proxy mode, the private ports given to
	// worker processes that have not been reaped yet.
	portMu sync.Mutex
	ports  map[int]bool

	ran      atomic.Bool
	closeMu  sync.Mutex
	closed   bool
	killOnce sync.Once
	killCh   chan struct{} // closed by Kill

	spawner  *spawner
	watchdog *reexec.Watchdog
	exits    *exits.Notifier // nil where early exit notices are not available
	// launcher makes the workers' trampoline commands; Run owns it.
	launcher *reexec.Launcher

	// ownMu guards own, the pids of this supervisor's children, so that
	// the PID 1 orphan reaper never reaps a worker (see internal/reaper).
	ownMu sync.Mutex
	own   map[int]bool

	steerMu sync.Mutex
	live    []bool // per slot: new connections may be steered to it
}

type scaleReq struct {
	n    int
	done chan error
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
	// In the modes where the primary accepts, each listener is one socket
	// that only the primary uses.
	mode := sockets.Shared
	if opts.Balance == BalanceReuseport {
		mode = sockets.Reuseport
	}
	set, err := sockets.Open(specs, mode, opts.Workers)
	if err != nil {
		return nil, err
	}
	s := &Supervisor{
		opts:      opts,
		path:      path,
		argv:      argv,
		sockets:   set,
		killCh:    make(chan struct{}),
		own:       make(map[int]bool),
		live:      make([]bool, opts.Workers),
		scaleReq:  make(chan scaleReq),
		recycling: make(chan struct{}, 1),
	}
	if err := s.findProbeGroup(); err != nil {
		set.Close()
		return nil, err
	}
	if opts.Balance.handsOff() {
		s.handover = newHandover(s)
	}
	if opts.Balance == BalanceProxy {
		policy, _ := proxy.ParsePolicy(string(opts.ProxyPolicy))
		s.proxy = proxy.New(proxy.PoolFunc(func() []proxy.Backend {
			if b := s.backends.Load(); b != nil {
				return *b
			}
			return nil
		}), policy, s.log)
	}
	s.stdout = logpump.NewSink(orDefault(opts.Stdout, os.Stdout), format, "stdout", 0)
	s.stderr = logpump.NewSink(orDefault(opts.Stderr, os.Stderr), format, "stderr", 0)
	s.history = logpump.NewRing(0, 0)
	s.stdout.SetRing(s.history)
	s.stderr.SetRing(s.history)
	s.log = opts.Logger
	if s.log == nil {
		if format == logpump.JSON {
			s.log = slog.New(slog.NewJSONHandler(s.stderr, nil))
		} else {
			s.log = slog.New(slog.NewTextHandler(s.stderr, nil))
		}
	}
	s.log = withHistory(s.log, s.history)
	slots := make([]*slot, opts.Workers)
	for i := range slots {
		slots[i] = newSlot(s, i)
	}
	s.slots.Store(&slots)
	s.want.Store(int64(opts.Workers))
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

// newPort picks the private port of a new worker process in proxy mode:
// a free loopback port that no process of this herd still holds. Each
// process gets its own, never its slot's previous one: during a reload the
// worker being replaced still listens on its port, and a replacement given
// the same one would fail to bind it while its readiness probe reached the
// old worker instead. releasePort gives it back once the process is gone.
func (s *Supervisor) newPort() (int, error) {
	s.portMu.Lock()
	defer s.portMu.Unlock()
	if s.ports == nil {
		s.ports = map[int]bool{}
	}
	for range 100 {
		// The kernel picks a port nothing is bound to; the map rules out
		// one given to a worker that has not bound it yet, or has closed
		// it while it drains.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("find a free loopback port for a worker: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !s.ports[port] {
			s.ports[port] = true
			return port, nil
		}
	}
	return 0, errors.New("find a free loopback port for a worker: every port the kernel offered is held by another worker")
}

// releasePort gives back a port newPort returned (0: none).
func (s *Supervisor) releasePort(port int) {
	if port == 0 {
		return
	}
	s.portMu.Lock()
	delete(s.ports, port)
	s.portMu.Unlock()
}

// findProbeGroup picks the listener that readiness and health probes
// connect to, when the options need one.
func (s *Supervisor) findProbeGroup() error {
	o := s.opts
	if o.Ready.Mode != ReadyHTTP && o.Health.Kind == "" || o.Balance == BalanceProxy {
		return nil // nothing to probe, or each worker's own port
	}
	if o.Balance.handsOff() {
		return fmt.Errorf("%w: HTTP readiness and health checks cannot reach one worker in --balance %s, where the primary accepts every connection; use heartbeats (--heartbeat-timeout) and herd.ready", ErrBadOptions, o.Balance)
	}
	for g := range s.sockets.Groups {
		if _, _, ok := s.sockets.ProbeTarget(g, 0); ok {
			s.probeGroup = g
			return nil
		}
	}
	return fmt.Errorf("%w: HTTP readiness and health checks need a TCP listener (IPv4 or dual-stack) in --balance reuseport mode, so that each probe reaches the worker it checks", ErrBadOptions)
}

// target is the number of workers asked for, which new workers get as
// HERD_WORKERS.
func (s *Supervisor) target() int { return int(s.want.Load()) }

// slotList is the current slots, in id order.
func (s *Supervisor) slotList() []*slot { return *s.slots.Load() }

// Workers returns a snapshot of every worker slot.
func (s *Supervisor) Workers() []WorkerInfo {
	slots := s.slotList()
	out := make([]WorkerInfo, len(slots))
	var proxied map[int]int
	if s.proxy != nil {
		proxied = s.proxy.Open()
	}
	for i, sl := range slots {
		out[i] = sl.snapshot()
		if p := sl.current.Load(); p != nil {
			out[i].DroppedMessages = p.dropped.Load()
			if s.handover != nil {
				out[i].Conns = int(p.handoff.open.Load())
			}
		}
		if proxied != nil {
			out[i].Conns = proxied[sl.id]
		}
	}
	return out
}

// slotByID returns slot id, or an error wrapping ErrNoWorker.
func (s *Supervisor) slotByID(id int) (*slot, error) {
	slots := s.slotList()
	if id < 0 || id >= len(slots) {
		return nil, fmt.Errorf("%w %d: the cluster has workers 0 to %d", ErrNoWorker, id, len(slots)-1)
	}
	return slots[id], nil
}

// Restart replaces worker id gracefully: a new worker starts in its slot,
// and once it is ready (Options.Ready) the old one is asked to stop
// (herd.shutdown, or the stop signal). It returns when the new worker
// serves, or why it could not (ErrNotReady: the old one keeps serving).
func (s *Supervisor) Restart(ctx context.Context, id int) error {
	if !s.running.Load() {
		return ErrNotRunning
	}
	sl, err := s.slotByID(id)
	if err != nil {
		return err
	}
	select {
	case err := <-sl.ask(cmdReplace, "restart"):
		return err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Reload replaces every worker, Options.ReloadBatch at a time, each as
// Restart does: no request need fail, since a worker stops only once its
// replacement serves. If a new worker does not become ready the reload
// stops there and the workers not yet replaced keep serving (the error
// matches ErrNotReady). A slot retired by a scale-down meanwhile is
// skipped; a reload cut short by the cluster's stop fails with
// ErrStopping. Only one reload runs at a time (ErrBusy).
func (s *Supervisor) Reload(ctx context.Context) error {
	if !s.running.Load() {
		return ErrNotRunning
	}
	if !s.reloadMu.TryLock() {
		return fmt.Errorf("%w: a reload is already running", ErrBusy)
	}
	defer s.reloadMu.Unlock()
	slots := s.slotList()
	batch := s.opts.ReloadBatch
	begin := time.Now()
	s.log.Info("reloading", "workers", len(slots), "batch", batch)
	for i := 0; i < len(slots); i += batch {
		group := slots[i:min(i+batch, len(slots))]
		dones := make([]<-chan error, len(group))
		for j, sl := range group {
			dones[j] = sl.ask(cmdReplace, "reload")
		}
		var errs []error
		stopped := false
		for j, done := range dones {
			select {
			case err := <-done:
				switch {
				case err == nil:
				case errors.Is(err, ErrStopping) && !slices.Contains(s.slotList(), group[j]):
					// Retired by a scale-down meanwhile: nothing to replace.
				case errors.Is(err, ErrStopping):
					stopped = true
				default:
					errs = append(errs, err)
				}
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		}
		if stopped {
			err := fmt.Errorf("reload stopped after %d of %d workers: the cluster is stopping: %w", i, len(slots), ErrStopping)
			s.log.Warn("reload cut short", "err", err)
			return err
		}
		if len(errs) > 0 {
			// One line whatever the batch: the CLI prints it as one.
			args := []any{i, len(slots)}
			for _, e := range errs {
				args = append(args, e)
			}
			err := fmt.Errorf("reload stopped after %d of %d workers; the others keep serving: "+
				strings.TrimSuffix(strings.Repeat("%w; ", len(errs)), "; "), args...)
			s.log.Error("reload failed", "err", err)
			return err
		}
	}
	s.log.Info("reloaded", "workers", len(slots), "took", time.Since(begin).Round(time.Millisecond).String())
	return nil
}

// Scale sets the number of workers to n: new slots start at once, and the
// highest slots above n are drained and removed. It returns when the new
// slots are started and the removed ones asked to stop. A scale-up that
// brings back a slot still draining from a scale-down waits for it.
func (s *Supervisor) Scale(ctx context.Context, n int) error {
	if n < 1 || n > maxWorkers {
		return fmt.Errorf("%w: workers must be between 1 and %d, got %d", ErrBadOptions, maxWorkers, n)
	}
	if !s.running.Load() {
		return ErrNotRunning
	}
	req := scaleReq{n: n, done: make(chan error, 1)}
	select {
	case s.scaleReq <- req:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
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
	for i, l := range s.Listeners() {
		attrs := []any{"name", l.Name, "addr", l.Addr.String(), "balance", string(s.opts.Balance), "sockets", l.Sockets}
		if steering := s.sockets.Groups[i].Steering(); steering != "" {
			attrs = append(attrs, "steering", steering)
			if err := s.sockets.Groups[i].RoundRobinErr(); err != nil {
				// Even, in turn, needs CAP_BPF: say so where it is missing.
				attrs = append(attrs, "round_robin", err.Error())
			}
		}
		s.log.Info("listening", attrs...)
	}

	s.spawner = newSpawner()
	defer s.spawner.close()
	// Closed once every worker has been reaped: Run waits for the slots.
	s.launcher = reexec.NewLauncher()
	defer s.launcher.Close()
	if err := s.launcher.GoFallback(); err != nil {
		// Each start then costs the Go runtime's start-up, ~1.5 ms more.
		s.log.Debug("workers start through the Go exec trampoline", "why", err)
	}
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

	if n, err := exits.Open(); err == nil {
		s.exits = n
		defer func() {
			if err := n.Close(); err != nil {
				s.log.Warn("early exit notices", "err", err)
			}
		}()
	} else {
		// A crashed worker is replaced once its exit is reported, a few
		// milliseconds later.
		s.log.Debug("no early exit notices", "err", err)
	}

	var reaping sync.WaitGroup
	reapCtx, stopReaping := context.WithCancel(context.Background())
	defer reaping.Wait()
	defer stopReaping()
	if os.Getpid() == 1 {
		r := reaper.New(s.isOwn)
		reaping.Go(func() { r.Run(reapCtx) })
	}

	if s.opts.Balance.primaryAccepts() {
		stopAccepting, err := s.accept()
		if err != nil {
			return err
		}
		defer stopAccepting()
	}

	stop := make(chan struct{})
	results := make(chan slotResult)
	var slots sync.WaitGroup
	runSlot := func(sl *slot) {
		slots.Go(func() { results <- slotResult{sl, sl.run(stop, s.killCh)} })
	}
	running := map[*slot]bool{} // every slot whose run has not returned
	retiring := map[int]*slot{} // removed by a scale-down, still draining
	for _, sl := range s.slotList() {
		running[sl] = true
		runSlot(sl)
	}
	s.running.Store(true)
	defer s.running.Store(false)
	defer s.rescues.close()

	var sampling sync.WaitGroup
	sampleCtx, stopSampling := context.WithCancel(context.Background())
	sampling.Go(func() { s.sample(sampleCtx) })
	defer sampling.Wait()
	defer stopSampling()

	var deferred *scaleReq // a scale-up waiting for retiring slots
	startSlot := func(sl *slot) {
		running[sl] = true
		runSlot(sl)
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
	for len(running) > 0 {
		select {
		case <-done:
			done = nil
			if !stopping {
				s.log.Info("stopping", "signal", signalName(s.opts.StopSignal), "timeout", s.opts.StopTimeout.String())
			}
			stopAll()
		case r := <-results:
			delete(running, r.sl)
			if retiring[r.sl.id] == r.sl {
				delete(retiring, r.sl.id)
				s.rescue(r.sl.id)
			} else if r.err != nil && first == nil {
				// The caller reports err; logging it too would say it twice.
				first = r.err
				stopAll()
			}
		case req := <-s.scaleReq:
			if deferred != nil {
				deferred.done <- fmt.Errorf("scale to %d: %w: superseded by a scale to %d", deferred.n, ErrBusy, req.n)
				deferred = nil
			}
			if stopping {
				req.done <- fmt.Errorf("scale: %w", ErrStopping)
				continue
			}
			if waitsForRetiring(req.n, len(s.slotList()), retiring) {
				// A scale-up that brings back a slot still draining from a
				// scale-down waits for it to end.
				deferred = &req
				continue
			}
			req.done <- s.scale(req.n, retiring, startSlot)
		}
		if deferred != nil && (stopping || !waitsForRetiring(deferred.n, len(s.slotList()), retiring)) {
			if stopping {
				deferred.done <- fmt.Errorf("scale: %w", ErrStopping)
			} else {
				deferred.done <- s.scale(deferred.n, retiring, startSlot)
			}
			deferred = nil
		}
	}
	slots.Wait()
	s.log.Info("stopped")
	return first
}

// accept starts the primary's accept loops (hand-over and proxy modes);
// the returned function stops them and waits for them.
func (s *Supervisor) accept() (func(), error) {
	files, names := s.sockets.Files(0)
	var (
		closers []io.Closer
		loops   sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(context.Background())
	stop := func() {
		for _, c := range closers {
			c.Close()
		}
		cancel()
		loops.Wait()
	}
	if s.handover != nil {
		loops.Go(func() { s.handover.retry(ctx) })
	}
	for i, f := range files {
		if s.handover != nil {
			pf, err := pollable(f)
			if err != nil {
				stop()
				return nil, fmt.Errorf("accept on %s: %w", names[i], err)
			}
			closers = append(closers, pf)
			loops.Go(func() { s.handover.serve(pf, names[i]) })
			continue
		}
		// The proxy accepts on a copy of f, until ctx ends.
		loops.Go(func() {
			if err := s.proxy.ServeSocket(ctx, f); err != nil {
				s.log.Error("proxy stopped accepting", "listener", names[i], "err", err)
			}
		})
	}
	return stop, nil
}

type slotResult struct {
	sl  *slot
	err error
}

// waitsForRetiring reports whether scaling from now to n slots would
// bring back a slot that is still draining.
func waitsForRetiring(n, now int, retiring map[int]*slot) bool {
	for id := now; id < n; id++ {
		if retiring[id] != nil {
			return true
		}
	}
	return false
}

// maxWorkers bounds Workers and Scale.
const maxWorkers = 4096

// scale changes the number of slots to n. It runs on Run's goroutine:
// start runs a new slot; retiring holds the slots a scale-down removed
// and that have not ended yet.
func (s *Supervisor) scale(n int, retiring map[int]*slot, start func(*slot)) error {
	old := s.slotList()
	if n == len(old) {
		return nil
	}
	if n > len(old) {
		if err := s.sockets.Grow(n); err != nil {
			return fmt.Errorf("scale to %d: %w", n, err)
		}
		s.steerMu.Lock()
		for len(s.live) < n {
			s.live = append(s.live, false)
		}
		s.steerMu.Unlock()
		s.want.Store(int64(n))
		slots := append(old[:len(old):len(old)], make([]*slot, n-len(old))...)
		for id := len(old); id < n; id++ {
			slots[id] = newSlot(s, id)
		}
		s.slots.Store(&slots)
		for _, sl := range slots[len(old):] {
			start(sl)
		}
		s.log.Info("scaled up", "workers", n, "was", len(old))
		return nil
	}
	s.want.Store(int64(n))
	kept := old[:n:n]
	s.slots.Store(&kept)
	for _, sl := range old[n:] {
		retiring[sl.id] = sl
		s.setLive(sl.id, false)
		sl.ask(cmdRetire, "scale down")
	}
	s.log.Info("scaled down", "workers", n, "was", len(old))
	return nil
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
	if slot >= len(s.live) {
		return
	}
	if s.proxy != nil {
		// A live slot's backend is the port of its serving worker, which a
		// replacement changes while the slot stays live.
		defer s.storeBackends()
	}
	if s.live[slot] == live {
		return
	}
	s.live[slot] = live
	if sl, err := s.slotByID(slot); err == nil {
		sl.live.Store(live)
	}
	if live && s.handover != nil {
		s.handover.poke()
	}
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

// storeBackends rebuilds what the proxy may send connections to: the port
// of each live slot's serving worker. Called with steerMu held.
func (s *Supervisor) storeBackends() {
	var bs []proxy.Backend
	for i, l := range s.live {
		if !l {
			continue
		}
		sl, err := s.slotByID(i)
		if err != nil {
			continue // removed by a scale-down, about to be marked not live
		}
		if p := sl.current.Load(); p != nil && p.port != 0 {
			bs = append(bs, proxy.Backend{Slot: i, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port))})
		}
	}
	s.backends.Store(&bs)
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

// OutputLine is one line a worker wrote on its stdout or stderr, or one
// record of the supervisor's log.
type OutputLine struct {
	Time        time.Time
	Worker, PID int
	// Stream is "stdout" or "stderr" for a worker's line, StreamLog for
	// a record of the supervisor's own log (Worker -1, PID the
	// primary's), "herd" for Output's own notices.
	Stream string
	Text   string
}

// Output calls fn with the last backlog lines the workers wrote and the
// supervisor logged, oldest first (the primary keeps the last 1000 lines
// or 1 MiB), and, with follow,
// with every new line until ctx ends or fn returns an error, which Output
// returns. A follower that falls behind misses lines: fn then gets a
// notice on Stream "herd" saying how many.
func (s *Supervisor) Output(ctx context.Context, backlog int, follow bool, fn func(OutputLine) error) error {
	conv := func(l logpump.Line) OutputLine {
		return OutputLine{Time: l.Time, Worker: l.Worker, PID: l.PID, Stream: l.Stream, Text: l.Text}
	}
	if !follow {
		for _, l := range s.history.Last(backlog) {
			if err := fn(conv(l)); err != nil {
				return err
			}
		}
		return nil
	}
	f := s.history.Follow(backlog)
	for {
		lines, dropped, err := f.Next(ctx)
		if err != nil {
			return nil // ctx ended: the follower is done
		}
		if dropped > 0 {
			if err := fn(OutputLine{Time: time.Now(), Worker: -1, Stream: "herd", Text: fmt.Sprintf("%d lines were dropped: this reader did not keep up", dropped)}); err != nil {
				return err
			}
		}
		for _, l := range lines {
			if err := fn(conv(l)); err != nil {
				return err
			}
		}
	}
}
