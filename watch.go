package herd

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"time"

	"github.com/herd-sh/herd/internal/healthcheck"
	"github.com/herd-sh/herd/internal/probe"
)

// How often the readiness probes look: often while most workers come up
// (a replacement after a crash waits for the probe), less after that.
const (
	listenProbeEvery = 2 * time.Millisecond
	httpProbeEvery   = 20 * time.Millisecond
	slowProbeAfter   = time.Second
	slowProbeEvery   = 50 * time.Millisecond
	// plainGrace is how long a worker without sockets has to say hello
	// before ReadyAuto takes it for one that does not speak the protocol.
	plainGrace = time.Second
)

// watchReadiness starts what tells the slot that p, whose command has just
// started, is ready: a probe for the listen, http and delay rules (the
// message rule needs none: the read loop reports herd.ready), and the
// readiness timeout. Called on the slot's goroutine.
func (s *Supervisor) watchReadiness(p *process) {
	r := s.opts.Ready
	// probeErr is what last kept the listen probe from seeing the worker
	// (a permission denied, say): the timeout names it, or a worker that
	// is accepting would be killed for "not ready" with no reason given.
	var probeErr atomic.Pointer[error]
	p.readyTimer = time.AfterFunc(r.Timeout, func() {
		err := fmt.Errorf("not ready within %v (--ready %s)", r.Timeout, r)
		if e := probeErr.Load(); e != nil {
			err = fmt.Errorf("%w; the readiness probe could not look: %w", err, *e)
		}
		p.sl.post(procEvent{p: p, kind: evNotReady, err: err})
	})
	ready := func() { p.sl.post(procEvent{p: p, kind: evReady}) }
	switch r.Mode {
	case ReadyMessage:
	case ReadyDelay:
		p.sl.watch(p, func() {
			t := time.NewTimer(r.Delay)
			defer t.Stop()
			select {
			case <-t.C:
				ready()
			case <-p.gone:
			}
		})
	case ReadyHTTP:
		remote, local := s.probeTarget(p)
		check := s.takenByCheck(p)
		p.sl.watch(p, func() {
			every(p, httpProbeEvery, func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				if healthcheck.HTTPChecked(ctx, remote, local, r.Path, check) == nil {
					ready()
					return false
				}
				return true
			})
		})
	case ReadyListen, ReadyAuto:
		if s.opts.Balance == BalanceProxy {
			// The worker binds its own port: it is ready once it accepts
			// there (the only connection its app sees from herd). The port
			// is this process's alone (see newPort), so the worker it
			// replaces cannot answer for it.
			remote, _ := s.probeTarget(p)
			p.sl.watch(p, func() {
				every(p, listenProbeEvery, func() bool {
					if r.Mode == ReadyAuto && p.speaks.Load() {
						return false
					}
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					defer cancel()
					if healthcheck.TCP(ctx, remote, nil) == nil {
						ready()
						return false
					}
					return true
				})
			})
			return
		}
		inodes := s.socketInodes(p.slot)
		auto := r.Mode == ReadyAuto
		if !probe.Supported {
			// No /proc to see the sockets waited on in (macOS, the BSDs):
			// auto takes a plain worker for ready plainGrace after it
			// started, as one without sockets. In shared mode, the only
			// one there, nothing is lost if it is not accepting yet: the
			// socket, and what queues on it, stays open in the primary.
			// (New refused an explicit listen.)
			inodes = nil
		}
		p.sl.watch(p, func() {
			// One Watcher for all the ticks: it keeps what it learnt of
			// the worker's processes, at a fraction of a fresh look's CPU,
			// which the starting worker would otherwise compete with.
			w := probe.NewWatcher(p.pid, inodes)
			defer w.Close()
			confirm := false
			every(p, listenProbeEvery, func() bool {
				if auto && p.speaks.Load() {
					return false // it will say herd.ready
				}
				if len(inodes) == 0 {
					// Nothing to accept on: a worker that has not said
					// hello a second after it started is a plain one.
					if auto && time.Since(p.started) >= plainGrace {
						ready()
						return false
					}
					return auto
				}
				ok, err := w.Accepting()
				if err != nil && probeErr.Swap(&err) == nil {
					s.log.Warn("readiness probe cannot see what the worker waits on; it counts as not accepting",
						"worker", p.slot, "pid", p.pid, "err", err)
				}
				if !ok {
					return true
				}
				// A worker that speaks the protocol says hello before it
				// takes its sockets, so its hello is in the channel by
				// now: before taking the worker for a plain one, make sure
				// the read loop has handled all it sent (no timer: Go
				// rounds a short one up to a millisecond, and a
				// replacement's clients wait for this).
				if auto && !confirm {
					if confirm = p.ch.Idle(); !confirm {
						return true
					}
					if p.speaks.Load() {
						return false // it will say herd.ready
					}
				}
				ready()
				return false
			})
		})
	}
}

// watchHealth starts the checks of a ready worker: health probes,
// heartbeats, and its lifetime. Called on the slot's goroutine.
func (s *Supervisor) watchHealth(p *process) {
	h := s.opts.Health
	unhealthy := func(err error) { p.sl.post(procEvent{p: p, kind: evUnhealthy, err: err}) }
	if h.Kind != "" {
		remote, local := s.probeTarget(p)
		p.sl.watch(p, func() {
			failures := 0
			every(p, h.Interval, func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), h.Timeout)
				defer cancel()
				var err error
				if h.Kind == HealthHTTP {
					err = healthcheck.HTTP(ctx, remote, local, h.Path)
				} else {
					err = healthcheck.TCP(ctx, remote, local)
				}
				if err == nil {
					failures = 0
					return true
				}
				failures++
				p.sl.log.Warn("health check failed", "pid", p.pid, "err", err, "failures", failures, "of", h.Failures)
				if failures >= h.Failures {
					unhealthy(fmt.Errorf("failed %d health checks in a row, last: %w", failures, err))
					return false
				}
				return true
			})
		})
	}
	if h.Heartbeat > 0 {
		p.sl.watch(p, func() {
			heard, at := p.heard.Load(), time.Now()
			every(p, h.Heartbeat/4, func() bool {
				if n := p.heard.Load(); n != heard {
					heard, at = n, time.Now()
				}
				if !p.speaks.Load() {
					return true // only workers that speak the protocol beat
				}
				silent := time.Since(at)
				if silent > h.Heartbeat {
					unhealthy(fmt.Errorf("no heartbeat for %v (--heartbeat-timeout %v): hung", silent.Round(time.Millisecond), h.Heartbeat))
					return false
				}
				return true
			})
		})
	}
	if s.opts.MaxLifetime > 0 {
		p.sl.watch(p, func() { s.recycleAfterLifetime(p) })
	}
}

// recycleAfterLifetime replaces p once it has lived MaxLifetime ±
// LifetimeJitter, holding the cluster's recycling token meanwhile so that
// workers are recycled one at a time.
func (s *Supervisor) recycleAfterLifetime(p *process) {
	life := s.opts.MaxLifetime
	if j := s.opts.LifetimeJitter; j > 0 {
		life += time.Duration(rand.Int64N(int64(2*j))) - j
	}
	for {
		t := time.NewTimer(life)
		select {
		case <-t.C:
		case <-p.gone:
			t.Stop()
			return
		}
		select {
		case s.recycling <- struct{}{}:
		case <-p.gone:
			return
		}
		done := make(chan error, 1)
		p.sl.post(procEvent{p: p, kind: evRecycle, done: done})
		var err error
		select {
		case err = <-done:
		case <-p.gone:
		}
		<-s.recycling
		if err == nil {
			return
		}
		p.sl.log.Warn("recycling worker failed; trying again later", "pid", p.pid, "err", err)
		life = max(time.Minute, s.opts.MaxLifetime/10)
	}
}

// every calls f every d until it returns false or p's leader exits; after
// slowProbeAfter it slows down to slowProbeEvery if d was faster.
func every(p *process, d time.Duration, f func() bool) {
	t := time.NewTicker(d)
	defer t.Stop()
	slow := time.After(slowProbeAfter)
	if d >= slowProbeEvery {
		slow = nil
	}
	for {
		select {
		case <-p.gone:
			return
		case <-slow:
			slow = nil
			t.Reset(slowProbeEvery)
		case <-t.C:
			if !f() {
				return
			}
		}
	}
}

// watch runs f on a goroutine the slot waits for before it ends; f must
// return once p's leader has exited.
func (sl *slot) watch(p *process, f func()) { sl.watchers.Go(f) }

// errTakenByAnother is a readiness probe answered by another process than
// the worker being probed.
var errTakenByAnother = errors.New("the connection was taken by another worker sharing the socket")

// takenByCheck returns the check that a readiness probe of p reached p:
// in reuseport mode the worker p replaces accepts on the slot's socket
// until p is ready, and in shared mode every worker accepts on the one
// socket, so a 2xx from whoever took the probe would not say that p
// serves. The probe is sent on only when p's process group took the
// connection; else the connection is closed with nothing sent, and the
// next probe tries again. nil where the socket is p's alone (proxy and
// hand-over modes: herd picks the worker), and off Linux. (Health checks
// go without it: they check ready workers, which have the slot's socket
// to themselves but for the moment a replacement overlaps them.)
func (s *Supervisor) takenByCheck(p *process) func(context.Context, net.Conn) error {
	if !probe.Supported || (s.opts.Balance != BalanceReuseport && s.opts.Balance != BalanceShared) {
		return nil
	}
	return func(ctx context.Context, c net.Conn) error {
		server, _ := c.RemoteAddr().(*net.TCPAddr)
		client, _ := c.LocalAddr().(*net.TCPAddr)
		if server == nil || client == nil {
			return nil
		}
		// Only a sure "another took it" holds the probe back. When it
		// cannot be told (the worker's fds may not be looked at, the
		// connection was closed at once), the answer decides, as before.
		if ok, err := probe.TakenBy(ctx, p.pid, server.AddrPort(), client.AddrPort()); err == nil && !ok {
			return errTakenByAnother
		}
		return nil
	}
}

// probeTarget is where the probes of p go: in proxy mode its own port;
// else the first listener that can be reached per slot, from the source
// address that steers to p's slot.
func (s *Supervisor) probeTarget(p *process) (remote, local *net.TCPAddr) {
	if s.opts.Balance == BalanceProxy {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: p.port}, nil
	}
	remote, local, _ = s.sockets.ProbeTarget(s.probeGroup, p.slot)
	return remote, local
}

// socketInodes are the inodes of the sockets a worker of slot gets.
func (s *Supervisor) socketInodes(slot int) []uint64 {
	if s.opts.Balance.primaryAccepts() {
		return nil // the worker gets no sockets
	}
	files, _ := s.sockets.Files(slot)
	var out []uint64
	for _, f := range files {
		if ino, err := probe.SocketInode(f); err == nil {
			out = append(out, ino)
		}
	}
	return out
}
