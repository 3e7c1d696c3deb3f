package herd

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/herd-sh/herd/internal/ipc"
	"github.com/herd-sh/herd/internal/restart"
)

// probation is how long a worker of a crash-looping slot must stay up
// before new connections are steered to it again, so that a slot that
// keeps dying does not keep collecting connections it will not serve.
const probation = time.Second

// Errors a replacement (Restart, Reload) can end with.
var (
	// ErrBusy means the slot or the cluster is already doing what was
	// asked (a replacement, a reload, a scale-down in progress).
	ErrBusy = errors.New("busy")
	// ErrStopping means the slot is stopping or being retired.
	ErrStopping = errors.New("stopping")
	// ErrNotReady means a new worker did not become ready: it exited, or
	// Readiness.Timeout passed.
	ErrNotReady = errors.New("new worker did not become ready")
)

// slot is one worker position, 0..N-1. Its run method owns the slot's
// processes — the one serving (cur), a replacement being started (next),
// and old ones being drained — and is the only place that changes their
// state. Other goroutines send it commands and events, and read snapshots.
type slot struct {
	id      int
	sup     *Supervisor
	log     *slog.Logger
	backoff *restart.Backoff
	limit   *restart.Limit

	// current is the slot's serving worker process, for messages to it;
	// nil while the slot has none.
	current atomic.Pointer[process]
	// live says new connections may go to the slot (Supervisor.setLive).
	live atomic.Bool

	cmds     chan slotCmd
	events   chan procEvent
	quit     chan struct{}  // closed when run returns
	watchers sync.WaitGroup // readiness and health probes of its processes

	mu   sync.Mutex
	info WorkerInfo
}

type cmdKind int

const (
	cmdReplace cmdKind = iota // start a new worker, then drain the old
	cmdRetire                 // stop for good (scale down)
)

// slotCmd asks a slot to do something; done (buffered) receives the
// outcome.
type slotCmd struct {
	kind   cmdKind
	reason string
	done   chan error
}

type evKind int

const (
	evExec      evKind = iota // the trampoline exec'd the command, or failed (err)
	evDying                   // the kernel began to tear the leader down (early notice)
	evLeftGroup               // the leader exited; reaping and draining follow
	evReady                   // the worker is serving
	evNotReady                // it did not become ready in time (err)
	evExited                  // reaped, output drained (st)
	evDeadline                // its stop timeout passed
	evAskStop                 // the proxy's grace passed: ask it to stop now
	evUnhealthy               // health check, heartbeat or memory (err)
	evRecycle                 // its lifetime is over
)

// procEvent is something that happened to one of the slot's processes.
type procEvent struct {
	p    *process
	kind evKind
	err  error
	st   *os.ProcessState
	done chan error // evRecycle: the outcome of the replacement
}

func newSlot(s *Supervisor, id int) *slot {
	r := s.opts.Restart
	return &slot{
		id:      id,
		sup:     s,
		log:     s.log.With("worker", id),
		backoff: restart.NewBackoff(r.BackoffInitial, r.BackoffMax, r.BackoffReset),
		limit:   restart.NewLimit(r.MaxRestarts, r.Window),
		info:    WorkerInfo{ID: id, State: StateExited},
		cmds:    make(chan slotCmd),
		events:  make(chan procEvent, 16),
		quit:    make(chan struct{}),
	}
}

func (sl *slot) snapshot() WorkerInfo {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	return sl.info
}

func (sl *slot) publish(f func(*WorkerInfo)) {
	sl.mu.Lock()
	f(&sl.info)
	sl.mu.Unlock()
}

// post hands the slot an event; after the slot has ended it is dropped.
func (sl *slot) post(e procEvent) {
	select {
	case sl.events <- e:
	case <-sl.quit:
	}
}

// ask sends the slot a command and returns the channel its outcome
// arrives on.
func (sl *slot) ask(kind cmdKind, reason string) <-chan error {
	done := make(chan error, 1)
	select {
	case sl.cmds <- slotCmd{kind: kind, reason: reason, done: done}:
	case <-sl.quit:
		done <- fmt.Errorf("worker %d: %w", sl.id, ErrStopping)
	}
	return done
}

// run is the slot's state machine. It returns nil after a stop or a
// retirement, or the error that must end the whole cluster.
func (sl *slot) run(stop, kill <-chan struct{}) error {
	// Watchers end with their process; quit closes first so that none is
	// stuck posting to a slot that no longer listens.
	defer sl.watchers.Wait()
	defer close(sl.quit)
	m := &machine{slot: sl}
	if err := m.startCur(); err != nil {
		return fmt.Errorf("worker %d: %w", sl.id, err)
	}
	for {
		select {
		case <-stop:
			stop = nil
			m.stop(ErrStopping)
		case <-kill:
			kill = nil
			if m.stopping {
				m.killAll()
			}
		case cmd := <-sl.cmds:
			m.command(cmd)
		case e := <-sl.events:
			if err := m.event(e); err != nil {
				return err
			}
		case <-m.restartAt:
			m.restartAt = nil
			m.restart()
		case <-m.joinAt:
			m.joinAt = nil
			sl.sup.setLive(sl.id, true)
		case <-m.retryAt:
			m.retryAt = nil
			m.retrySick()
		}
		if m.stopping && m.empty() {
			sl.publish(func(i *WorkerInfo) { i.PID, i.NextPID, i.State = 0, 0, StateExited })
			if m.retired != nil {
				m.retired.done <- nil
			}
			return m.fatal
		}
	}
}

// machine is the state run keeps; only run's goroutine touches it.
type machine struct {
	*slot
	cur, next *process
	old       []*process // asked to stop, not yet exited

	pending   []slotCmd // the commands waiting for next (or a new cur) to be ready
	restartAt <-chan time.Time
	joinAt    <-chan time.Time
	stopping  bool  // stopping or retiring: no new worker starts
	fatal     error // what ends the cluster once the slot's processes are gone
	retired   *slotCmd
	everRan   bool // some worker of this slot ran the command

	// sick is the serving worker when a health check, its heartbeat or
	// its memory said it must be replaced (sickWhy says which); it stays
	// set while that has not been done, so that a replacement that fails
	// is tried again (at retryAt) instead of leaving the sick worker in
	// place unwatched.
	sick    *process
	sickWhy string
	retryAt <-chan time.Time
}

func (m *machine) empty() bool { return m.cur == nil && m.next == nil && len(m.old) == 0 }

// startCur starts the slot's worker when it has none.
func (m *machine) startCur() error {
	p, err := m.sup.startProcess(m.slot)
	if err != nil {
		return err
	}
	m.cur = p
	m.current.Store(p)
	m.publish(func(i *WorkerInfo) {
		i.PID, i.State, i.Started, i.Ready = p.pid, StateStarting, p.started, false
	})
	return nil
}

// restart starts the next worker after an exit. A failure to spawn (out
// of processes or file descriptors) is usually passing, so it is retried
// after a backoff delay rather than ending the cluster.
func (m *machine) restart() {
	if m.stopping || m.cur != nil {
		return
	}
	if err := m.startCur(); err != nil {
		delay := max(m.backoff.Next(0), m.sup.opts.Restart.BackoffInitial)
		m.log.Error("cannot start worker", "err", err, "next_start_in", delay.Round(time.Millisecond).String())
		m.restartAt = time.After(delay)
	}
}

func (m *machine) command(cmd slotCmd) {
	switch {
	case m.stopping:
		cmd.reply(fmt.Errorf("worker %d: %w", m.id, ErrStopping))
	case cmd.kind == cmdRetire:
		m.retired = &cmd
		m.stop(fmt.Errorf("worker %d is being retired: %w", m.id, ErrStopping))
	case len(m.pending) > 0 || m.next != nil:
		// A replacement is starting already: the fresh worker it brings
		// is what this command asks for too.
		m.pending = append(m.pending, cmd)
	case m.cur == nil:
		// Waiting out a backoff: start now; the new worker being ready
		// completes the command.
		m.restartAt = nil
		m.pending = append(m.pending, cmd)
		m.restart()
		if m.cur == nil {
			m.finish(fmt.Errorf("worker %d: cannot start a worker now", m.id))
		}
	default:
		p, err := m.sup.startProcess(m.slot)
		if err != nil {
			m.log.Error("cannot start a replacement", "reason", cmd.reason, "err", err)
			cmd.reply(fmt.Errorf("worker %d: %w", m.id, err))
			return
		}
		p.reason = cmd.reason
		m.log.Info("starting a replacement", "reason", cmd.reason, "pid", p.pid, "old_pid", m.cur.pid)
		m.next, m.pending = p, append(m.pending, cmd)
		m.publish(func(i *WorkerInfo) { i.NextPID = p.pid })
	}
}

// finish ends the pending commands with err (nil: done).
func (m *machine) finish(err error) {
	for _, cmd := range m.pending {
		cmd.reply(err)
	}
	m.pending = nil
}

// reply sends a command's outcome to whoever waits for it, if anyone does
// (a replacement the slot decided on itself has no one).
func (cmd slotCmd) reply(err error) {
	if cmd.done != nil {
		cmd.done <- err
	}
}

// retrySick tries again to replace the sick worker, once the delay after
// a failed replacement has passed, unless it is gone or being replaced.
func (m *machine) retrySick() {
	p := m.sick
	if p == nil || p != m.cur || p.asked || m.stopping || m.next != nil {
		return
	}
	m.log.Warn("trying again to replace the unhealthy worker", "pid", p.pid, "reason", m.sickWhy)
	m.command(slotCmd{kind: cmdReplace, reason: m.sickWhy})
	if m.next == nil && len(m.pending) == 0 {
		m.sickFailed(m.backoff.Next(0)) // it could not even be started
	}
}

// sickFailed schedules the next attempt to replace the sick worker after
// a failed one, after delay, the slot's backoff delay (at least its first
// step, so that a replacement that fails at once is not retried in a
// loop).
func (m *machine) sickFailed(delay time.Duration) {
	p := m.sick
	if p == nil || p != m.cur || p.asked || m.stopping {
		return
	}
	delay = max(delay, m.sup.opts.Restart.BackoffInitial)
	m.log.Warn("the unhealthy worker keeps serving until a replacement is ready", "pid", p.pid, "reason", m.sickWhy, "next_attempt_in", delay.Round(time.Millisecond).String())
	m.retryAt = time.After(delay)
}

// stop drains every process of the slot; the slot ends when they are gone.
func (m *machine) stop(why error) {
	m.stopping = true
	m.restartAt, m.joinAt, m.retryAt = nil, nil, nil
	m.finish(why)
	for _, p := range []*process{m.next, m.cur} {
		if p != nil {
			m.drain(p)
		}
	}
}

func (m *machine) killAll() {
	for _, p := range append([]*process{m.cur, m.next}, m.old...) {
		if p != nil {
			m.log.Warn("killing worker", "pid", p.pid)
			p.kill()
		}
	}
}

// proxyHandoverGrace is how long, in proxy mode, a worker the proxy no
// longer sends new connections to keeps running before it is asked to
// stop. A connection the proxy began to dial just before it switched
// backends still reaches the worker's port; were the worker asked to stop
// at once, that connection could land in its listening socket's queue as
// the app closes it unaccepted, which resets it (Python's socketserver and
// Node do that). A loopback connect takes microseconds; the grace covers a
// dialing goroutine that was descheduled meanwhile.
const proxyHandoverGrace = 100 * time.Millisecond

// drain asks p to stop: with herd.shutdown if it speaks the protocol,
// else with the stop signal to its whole process group. It is killed when
// the stop timeout passes.
func (m *machine) drain(p *process) {
	if p.asked {
		return
	}
	p.asked = true
	if p == m.cur {
		m.sup.setLive(m.id, false)
		m.publish(func(i *WorkerInfo) { i.State = StateDraining })
	}
	p.draining.Store(true)
	grace := time.Duration(0)
	if m.sup.proxy != nil && p.ready {
		grace = proxyHandoverGrace // it may have been a backend until now
	}
	if grace > 0 {
		p.askTimer = time.AfterFunc(grace, func() { m.post(procEvent{p: p, kind: evAskStop}) })
	} else {
		m.askStop(p)
	}
	p.stopTimer = time.AfterFunc(grace+m.sup.opts.StopTimeout, func() { m.post(procEvent{p: p, kind: evDeadline}) })
	select {
	case <-m.sup.killCh:
		p.kill()
	default:
	}
}

// askStop sends p herd.shutdown, or the stop signal.
func (m *machine) askStop(p *process) {
	asked := p.speaks.Load() && p.ch.TrySend(ipc.Message{Type: ipc.TypeShutdown}) == nil
	if !asked {
		if err := p.signalGroup(m.sup.opts.StopSignal); err != nil && !errors.Is(err, syscall.ESRCH) {
			m.log.Warn("cannot signal worker", "pid", p.pid, "err", err)
		}
	}
}

// event handles what happened to one of the slot's processes. It returns
// an error only when the whole cluster must end.
func (m *machine) event(e procEvent) error {
	p := e.p
	switch e.kind {
	case evExec:
		if e.err != nil {
			p.execErr = e.err
			if m.everRan {
				m.log.Error("cannot run worker command", "pid", p.pid, "err", e.err)
			}
			return nil
		}
		m.everRan, p.running = true, true
		m.log.Info("worker started", "pid", p.pid)
		m.sup.emit(p, Event{Kind: EventStarted})
		close(p.gate) // its messages may be read now
		if !p.asked {
			m.sup.watchReadiness(p)
		}

	case evReady:
		if p.ready || p.asked {
			return nil
		}
		p.ready = true
		p.stopReadyTimer()
		m.log.Info("worker ready", "pid", p.pid, "after", time.Since(p.started).Round(time.Millisecond).String())
		m.sup.emit(p, Event{Kind: EventReady})
		m.sup.watchHealth(p)
		if p == m.next {
			if m.cur != nil && m.cur.dying {
				// It replaces a worker that died and whose exit is not
				// handled yet: it takes over then (exited), counted as
				// the restart it is, not as a reload that drained it.
				return nil
			}
			m.promote()
			return nil
		}
		if p == m.cur {
			m.curReady()
		}

	case evNotReady:
		if p.ready || p.asked {
			return nil
		}
		m.log.Error("worker did not become ready; killing it", "pid", p.pid, "err", e.err)
		p.notReady = e.err
		p.kill()

	case evUnhealthy, evRecycle:
		if p != m.cur || p.asked || m.stopping {
			return nil
		}
		reason := "lifetime"
		if e.kind == evUnhealthy {
			reason = e.err.Error()
			m.log.Warn("worker is unhealthy; replacing it", "pid", p.pid, "reason", reason)
			// Its watchers have stopped: from here the slot sees to it
			// that it is replaced, trying again if a replacement fails.
			m.sick, m.sickWhy = p, reason
		}
		m.command(slotCmd{kind: cmdReplace, reason: reason, done: e.done})

	case evDying, evLeftGroup:
		m.died(p)

	case evAskStop:
		if !p.exited {
			m.askStop(p)
		}

	case evDeadline:
		if !p.exited {
			m.log.Warn("worker did not stop in time; killing its process group", "pid", p.pid, "timeout", m.sup.opts.StopTimeout.String())
			p.kill()
		}

	case evExited:
		return m.exited(p, e.st)
	}
	return nil
}

// curReady completes the slot's worker becoming ready: it gets new
// connections (after a probation when the slot has been crash-looping)
// and completes what waited for it.
func (m *machine) curReady() {
	m.publish(func(i *WorkerInfo) { i.State, i.Ready, i.LastError = StateReady, true, "" })
	if m.backoff.Failures() >= 2 {
		m.joinAt = time.After(probation)
	} else {
		m.sup.setLive(m.id, true)
	}
	if m.next == nil {
		// A replacement asked while the slot had no worker. One asked
		// while this worker was starting waits for its own replacement
		// (m.next), which promote completes.
		m.finish(nil)
	}
}

// died handles the first sign that p is gone for good: the kernel's early
// notice (evDying) or its leader's exit (evLeftGroup), whichever comes
// first. A serving worker that died on its own gets no new connections
// from here, and, if it is to be restarted at once, its replacement now,
// not after its exit has been reported and its output and channel
// drained: every millisecond here is one its clients wait.
func (m *machine) died(p *process) {
	if p.dying {
		return
	}
	p.dying = true
	if p != m.cur || !p.running || p.asked || m.stopping {
		return
	}
	m.joinAt = nil // a probation that ends now must not make it live again
	m.sup.setLive(m.id, false)
	// A worker that ends with its input (Map) is done, not to be replaced.
	if m.next == nil && !p.inputEnded.Load() && m.backoff.AtOnce(stayedUp(p, time.Since(p.started))) {
		if np, err := m.sup.startProcess(m.slot); err == nil {
			np.reason = "its worker exited"
			m.next = np
			m.publish(func(i *WorkerInfo) { i.NextPID = np.pid })
		}
	}
}

// promote makes the ready replacement the slot's worker and drains the
// one it replaces.
func (m *machine) promote() {
	old := m.cur
	m.cur, m.next = m.next, nil
	m.sick, m.retryAt = nil, nil
	m.current.Store(m.cur)
	m.publish(func(i *WorkerInfo) {
		i.PID, i.NextPID, i.State, i.Started, i.Ready, i.LastError = m.cur.pid, 0, StateReady, m.cur.started, true, ""
		i.RSS, i.CPU = 0, 0 // the old worker's; the next sample gives the new one's
	})
	m.sup.setLive(m.id, true)
	if old != nil {
		m.old = append(m.old, old)
		m.drain(old)
	}
	m.finish(nil)
}

func (m *machine) exited(p *process, st *os.ProcessState) error {
	p.exited = true
	if p.stopTimer != nil {
		p.stopTimer.Stop()
	}
	if p.askTimer != nil {
		p.askTimer.Stop()
	}
	p.stopReadyTimer()
	uptime := time.Since(p.started)
	status := describeExit(st)
	expected := p.asked
	if p.running {
		m.sup.emit(p, Event{Kind: EventExited, Status: status, Code: st.ExitCode(), Expected: expected, Uptime: uptime})
	}
	logExit := func(msg string) {
		m.log.Info(msg, "pid", p.pid, "status", status, "uptime", uptime.Round(time.Millisecond).String())
	}
	switch {
	case m.removeOld(p):
		logExit("worker stopped")
		return nil

	case p == m.next:
		m.next = nil
		m.publish(func(i *WorkerInfo) { i.NextPID = 0 })
		why := notReadyWhy(p, status)
		if expected {
			// Stopped with the slot: nothing failed.
			logExit("replacement stopped")
			m.finish(fmt.Errorf("worker %d: %w: %w", m.id, ErrNotReady, why))
			return nil
		}
		m.log.Error("replacement failed; the old worker keeps serving", "pid", p.pid, "reason", p.reason, "err", why,
			"status", status, "uptime", uptime.Round(time.Millisecond).String())
		// A failed start, as if it had been the slot's only worker: it is
		// counted, and it moves the slot's backoff on (it never stayed
		// up), which delays the next attempt the slot makes by itself. It
		// does not count towards --max-restarts: the old worker serves.
		delay := m.backoff.Next(0)
		m.publish(func(i *WorkerInfo) {
			i.Restarts++
			i.LastError = fmt.Sprintf("replacement pid %d (%s) did not become ready: %v", p.pid, p.reason, why)
		})
		m.finish(fmt.Errorf("worker %d: %w: %w", m.id, ErrNotReady, why))
		m.sickFailed(delay)
		return nil
	}

	// p is the slot's worker.
	m.cur = nil
	m.sick, m.retryAt = nil, nil
	m.current.CompareAndSwap(p, nil)
	m.sup.setLive(m.id, false)
	m.joinAt = nil
	m.publish(func(i *WorkerInfo) {
		i.PID, i.State, i.LastExit, i.Ready = 0, StateExited, status, false
	})
	if p.execErr != nil && !m.everRan {
		// Reported once, by the error Run returns; there is no worker
		// exit to speak of.
		if m.stopping {
			return nil
		}
		return fmt.Errorf("worker %d: %w: %w", m.id, ErrCannotStart, p.execErr)
	}
	if m.stopping {
		logExit("worker stopped")
		return nil
	}
	if p.inputEnded.Load() {
		// Map's tasks are over and it closed the worker's input: its
		// exit is the end of its work, and the supervisor is about to
		// stop; nothing to restart.
		if st.Success() {
			logExit("worker finished")
		} else {
			m.log.Warn("worker failed at the end of its input", "pid", p.pid, "status", status)
		}
		return nil
	}
	m.log.Warn("worker exited", "pid", p.pid, "status", status, "code", st.ExitCode(), "uptime", uptime.Round(time.Millisecond).String())
	if !m.limit.Allow(time.Now()) {
		r := m.sup.opts.Restart
		err := fmt.Errorf("worker %d: %w: more than %d restarts within %v (last: %s)",
			m.id, ErrCrashLoop, r.MaxRestarts, r.Window, status)
		if m.next == nil {
			return err
		}
		// The replacement started the moment its predecessor died goes
		// at once, before the slot ends with err: the cluster is ending,
		// and the slot cannot end while a process of it runs.
		m.fatal = err
		m.stop(err)
		m.killAll()
		return nil
	}
	why := notReadyWhy(p, status)
	m.publish(func(i *WorkerInfo) {
		i.Restarts++
		if !p.ready {
			i.LastError = fmt.Sprintf("worker pid %d did not become ready: %v", p.pid, why)
		}
	})
	delay := m.backoff.Next(stayedUp(p, uptime))
	if m.next != nil {
		// A replacement is starting already (a reload, or started when
		// the leader died): it takes over.
		m.sup.emit(p, Event{Kind: EventRestart})
		m.cur, m.next = m.next, nil
		m.current.Store(m.cur)
		m.publish(func(i *WorkerInfo) {
			i.PID, i.NextPID, i.State, i.Started = m.cur.pid, 0, StateStarting, m.cur.started
			i.RSS, i.CPU = 0, 0
		})
		if m.cur.ready {
			m.curReady() // it became ready before this exit was handled
		}
		return nil
	}
	m.sup.emit(p, Event{Kind: EventRestart, Delay: delay})
	m.finish(fmt.Errorf("worker %d: %w: %w", m.id, ErrNotReady, why))
	if delay > 0 {
		m.log.Warn("worker is crash-looping", "exits_in_a_row", m.backoff.Failures(), "next_start_in", delay.Round(time.Millisecond).String())
		m.restartAt = time.After(delay)
		m.sup.rescue(m.id)
		return nil
	}
	m.restart()
	return nil
}

// notReadyWhy says why p, which exited with status, was not (or is no
// longer) ready.
func notReadyWhy(p *process, status string) error {
	switch {
	case p.notReady != nil:
		return p.notReady
	case p.execErr != nil:
		return fmt.Errorf("cannot run the worker command: %w", p.execErr)
	}
	return fmt.Errorf("it exited first (%s)", status)
}

// stayedUp is how long p counts as having been up for the backoff: its
// uptime once it was ready, nothing if it never was (a worker killed at
// --ready-timeout has run long, but never served).
func stayedUp(p *process, uptime time.Duration) time.Duration {
	if !p.ready {
		return 0
	}
	return uptime
}

func (m *machine) removeOld(p *process) bool {
	for i, q := range m.old {
		if q == p {
			m.old = append(m.old[:i], m.old[i+1:]...)
			return true
		}
	}
	return false
}

func signalName(sig syscall.Signal) string {
	if name := unixSignalName(sig); name != "" {
		return name
	}
	return sig.String()
}
