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

// slot is one worker position, 0..N-1. Its run method is the only place
// that changes the slot's state; other goroutines read snapshots.
type slot struct {
	id      int
	sup     *Supervisor
	log     *slog.Logger
	backoff *restart.Backoff
	limit   *restart.Limit

	// current is the slot's worker process, for messages to it; nil while
	// the slot has none.
	current atomic.Pointer[process]
	// restartReq asks the slot to replace its worker gracefully.
	restartReq chan struct{}

	mu   sync.Mutex
	info WorkerInfo
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

		restartReq: make(chan struct{}, 1),
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

// run is the slot's state machine. It returns nil after a stop, or the
// error that must end the whole cluster.
func (sl *slot) run(stop, kill <-chan struct{}) error {
	var (
		p         *process
		execDone  <-chan error
		readyMsg  <-chan struct{}
		exited    <-chan *os.ProcessState
		restartAt <-chan time.Time // the backoff before the next start
		deadline  <-chan time.Time // the stop timeout of a draining worker
		joinAt    <-chan time.Time // probation before steering to it
		stopping  bool
		replacing bool  // the worker was asked to stop, to be replaced
		execErr   error // the trampoline could not exec the command
		everRan   bool  // some worker of this slot ran the command
	)
	start := func() error {
		np, err := sl.sup.startProcess(sl.id)
		if err != nil {
			return err
		}
		p, execDone, exited, execErr = np, np.execDone, np.exited, nil
		readyMsg = nil
		sl.current.Store(np)
		sl.publish(func(i *WorkerInfo) {
			i.PID, i.State, i.Started = np.pid, StateStarting, np.started
		})
		return nil
	}
	if err := start(); err != nil {
		return fmt.Errorf("worker %d: %w", sl.id, err)
	}
	for {
		select {
		case <-stop:
			stop = nil
			stopping = true
			restartAt, joinAt = nil, nil
			if p == nil {
				sl.publish(func(i *WorkerInfo) { i.State = StateExited })
				return nil
			}
			sl.drain(p)
			deadline = time.After(sl.sup.opts.StopTimeout)

		case <-sl.restartReq:
			switch {
			case stopping || replacing:
			case p == nil: // waiting out a backoff: start now
				restartAt = sl.restart(start)
			default:
				replacing = true
				joinAt = nil
				sl.log.Info("replacing worker", "pid", p.pid)
				sl.drain(p)
				deadline = time.After(sl.sup.opts.StopTimeout)
			}

		case <-kill:
			kill = nil
			if stopping && p != nil {
				sl.log.Warn("killing worker", "pid", p.pid)
				p.kill()
			}

		case err := <-execDone:
			execDone = nil
			if err != nil {
				execErr = err
				if everRan {
					sl.log.Error("cannot run worker command", "pid", p.pid, "err", err)
				}
				break
			}
			everRan = true
			sl.publish(func(i *WorkerInfo) { i.State = StateReady })
			sl.log.Info("worker started", "pid", p.pid)
			sl.sup.emit(p, Event{Kind: EventStarted})
			close(p.gate) // its messages may be read now
			readyMsg = p.readyMsg
			if stopping {
				break
			}
			if sl.backoff.Failures() >= 2 {
				joinAt = time.After(probation)
			} else {
				sl.sup.setLive(sl.id, true)
			}

		case <-readyMsg:
			readyMsg = nil
			sl.sup.emit(p, Event{Kind: EventReady})

		case <-joinAt:
			joinAt = nil
			sl.sup.setLive(sl.id, true)

		case st := <-exited:
			exited, execDone, readyMsg, joinAt, deadline = nil, nil, nil, nil, nil
			sl.sup.setLive(sl.id, false)
			sl.current.CompareAndSwap(p, nil)
			uptime := time.Since(p.started)
			status := describeExit(st)
			sl.publish(func(i *WorkerInfo) {
				i.PID, i.State, i.LastExit = 0, StateExited, status
			})
			pid, gone := p.pid, p
			p = nil
			if everRan {
				sl.sup.emit(gone, Event{Kind: EventExited, Status: status, Code: st.ExitCode(), Expected: stopping || replacing, Uptime: uptime})
			}
			if execErr != nil && !everRan {
				// Reported once, by the error Run returns; there is no
				// worker exit to speak of.
				if stopping {
					return nil
				}
				return fmt.Errorf("worker %d: %w: %w", sl.id, ErrCannotStart, execErr)
			}
			if stopping {
				sl.log.Info("worker stopped", "pid", pid, "status", status, "uptime", uptime.Round(time.Millisecond).String())
				return nil
			}
			if replacing {
				replacing = false
				sl.log.Info("worker stopped", "pid", pid, "status", status, "uptime", uptime.Round(time.Millisecond).String())
				restartAt = sl.restart(start)
				break
			}
			sl.log.Warn("worker exited", "pid", pid, "status", status, "code", st.ExitCode(), "uptime", uptime.Round(time.Millisecond).String())
			if !sl.limit.Allow(time.Now()) {
				r := sl.sup.opts.Restart
				return fmt.Errorf("worker %d: %w: more than %d restarts within %v (last: %s)",
					sl.id, ErrCrashLoop, r.MaxRestarts, r.Window, status)
			}
			delay := sl.backoff.Next(uptime)
			sl.publish(func(i *WorkerInfo) { i.Restarts++ })
			sl.sup.emit(gone, Event{Kind: EventRestart, Delay: delay})
			if delay > 0 {
				sl.log.Warn("worker is crash-looping", "exits_in_a_row", sl.backoff.Failures(), "next_start_in", delay.Round(time.Millisecond).String())
				restartAt = time.After(delay)
				break
			}
			restartAt = sl.restart(start)

		case <-restartAt:
			restartAt = sl.restart(start)

		case <-deadline:
			deadline = nil
			sl.log.Warn("worker did not stop in time; killing its process group", "pid", p.pid, "timeout", sl.sup.opts.StopTimeout.String())
			p.kill()
		}
	}
}

// restart starts the next worker. A failure to spawn (out of processes or
// file descriptors) is usually passing, so it is retried after a backoff
// delay rather than ending the cluster; the returned channel fires then.
func (sl *slot) restart(start func() error) <-chan time.Time {
	err := start()
	if err == nil {
		return nil
	}
	delay := max(sl.backoff.Next(0), sl.sup.opts.Restart.BackoffInitial)
	sl.log.Error("cannot start worker", "err", err, "next_start_in", delay.Round(time.Millisecond).String())
	return time.After(delay)
}

// drain asks p to stop: with herd.shutdown if it speaks the protocol,
// else with the stop signal to its whole process group.
func (sl *slot) drain(p *process) {
	sl.sup.setLive(sl.id, false)
	p.draining.Store(true)
	sl.publish(func(i *WorkerInfo) { i.State = StateDraining })
	asked := p.speaks.Load() && p.ch.TrySend(ipc.Message{Type: ipc.TypeShutdown}) == nil
	if !asked {
		if err := p.signalGroup(sl.sup.opts.StopSignal); err != nil && !errors.Is(err, syscall.ESRCH) {
			sl.log.Warn("cannot signal worker", "pid", p.pid, "err", err)
		}
	}
	select {
	case <-sl.sup.killCh:
		p.kill()
	default:
	}
}

func signalName(sig syscall.Signal) string {
	if name := unixSignalName(sig); name != "" {
		return name
	}
	return sig.String()
}
