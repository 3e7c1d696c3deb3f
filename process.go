package herd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/herd-sh/herd/internal/channel"
	"github.com/herd-sh/herd/internal/procstat"
	"github.com/herd-sh/herd/internal/reexec"
)

// process is one worker process: the leader of its own process group.
type process struct {
	cmd     *exec.Cmd
	pid     int
	sl      *slot
	slot    int
	started time.Time
	// port is the loopback port it was given to listen on in proxy mode
	// (PORT), its own (Supervisor.newPort); 0 in the other modes.
	port int

	// ch is the primary's end of the worker's message channel.
	ch *channel.Conn
	// gate is closed by the slot once it has reported the worker started;
	// only then are the worker's messages read, so that handlers see a
	// worker start before they see it speak.
	gate chan struct{}
	// gone is closed when the leader has exited; the watchers of this
	// process (readiness, health) end then.
	gone chan struct{}
	// speaks is set once the worker said herd.hello: it is asked to stop
	// with herd.shutdown instead of the stop signal.
	speaks atomic.Bool
	// heard counts the messages the worker sent: the heartbeat watch
	// notes when it last changed (a clock read per message would cost
	// more than the rest of handling a small one).
	heard atomic.Uint64
	// eventMu keeps this worker's events from overlapping.
	eventMu sync.Mutex
	// bad rate-limits log lines about what the worker sends wrong, and
	// dropped counts those lines.
	bad     logLimiter
	dropped atomic.Int64
	// inputEnded is set when Map closes the worker's stdin at the end of
	// its tasks: the worker's exit is then its work done, not a crash.
	inputEnded atomic.Bool
	// overMemory is set once the worker was reported over MaxMemory.
	overMemory atomic.Bool
	// node says the channel speaks Node's framing for handed connections.
	node bool
	// handoff tracks the connections handed to this worker.
	handoff handoffState
	// stuck is set once the worker was killed for not taking connections.
	stuck atomic.Bool
	// stdin feeds the worker its tasks (herd map); closed when it exits.
	stdin io.Closer

	// Owned by the slot's goroutine.
	reason     string // why it was started, when it replaces another
	running    bool   // the worker command runs (exec succeeded)
	ready      bool   // it said or showed it serves
	asked      bool   // it was asked to stop
	exited     bool   // reaped
	dying      bool   // it died: the kernel's early notice, or its leader's exit
	execErr    error  // the trampoline could not exec the command
	notReady   error  // why it was killed before it was ready
	stopTimer  *time.Timer
	askTimer   *time.Timer // proxy mode: asks it to stop after the handover grace
	readyTimer *time.Timer

	// draining makes the waiter give the rest of the group time to finish
	// after the leader exits, until killed closes.
	draining atomic.Bool
	killOnce sync.Once
	killed   chan struct{}

	mu     sync.Mutex
	reaped bool // after this the pgid may belong to someone else
}

func (p *process) stopReadyTimer() {
	if p.readyTimer != nil {
		p.readyTimer.Stop()
	}
}

// signalGroup sends sig to the worker's whole process tree: its process
// group, and the descendants that left the group (setsid, Node's
// detached: true), as PM2's tree kill does. Nothing once the leader has
// been reaped (its pgid could then be reused).
func (p *process) signalGroup(sig os.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reaped {
		return nil
	}
	// The tree is read before the group is signalled: once the worker
	// exits, its children are re-parented and no longer its descendants.
	var escaped []int
	if procstat.Supported {
		escaped, _ = procstat.Escaped(p.pid)
	}
	err := killGroup(p.pid, sig)
	for _, pid := range escaped {
		syscall.Kill(pid, sig.(syscall.Signal))
	}
	return err
}

// kill kills the whole group now.
func (p *process) kill() {
	p.killOnce.Do(func() { close(p.killed) })
	p.signalGroup(sigKill)
}

// workerEnv builds a worker's environment: base without any inherited
// socket-activation or herd variables, plus this slot's. files are the
// sockets it gets (fds 3..), named names; handed are the names of the
// listeners whose connections it is handed instead; port is its own port
// in proxy mode (0: none); node gives it Node's IPC channel.
func workerEnv(base []string, slot, workers int, names, handed []string, port int, node bool) []string {
	env := make([]string, 0, len(base)+8)
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "HERD_WORKER_ID", "HERD_WORKERS", "HERD_IPC_FD",
			"HERD_HANDOFF", "NODE_CHANNEL_FD", "NODE_CHANNEL_SERIALIZATION_MODE":
			continue
		case "PORT", "HOST":
			if port != 0 {
				continue
			}
		}
		env = append(env, kv)
	}
	if len(names) > 0 {
		// LISTEN_PID is set by the exec trampoline, in the worker itself.
		env = append(env, "LISTEN_FDS="+strconv.Itoa(len(names)), "LISTEN_FDNAMES="+strings.Join(names, ":"))
	}
	if len(handed) > 0 {
		env = append(env, "HERD_HANDOFF="+strings.Join(handed, ":"))
	}
	if port != 0 {
		env = append(env, "PORT="+strconv.Itoa(port), "HOST=127.0.0.1")
	}
	ipcFD := strconv.Itoa(3 + len(names)) // the channel follows the sockets
	if node {
		env = append(env, "NODE_CHANNEL_FD="+ipcFD, "NODE_CHANNEL_SERIALIZATION_MODE=json")
	}
	return append(env,
		"HERD_WORKER_ID="+strconv.Itoa(slot),
		"HERD_WORKERS="+strconv.Itoa(workers),
		"HERD_IPC_FD="+ipcFD)
}

// startProcess starts a worker for sl through the exec trampoline.
func (s *Supervisor) startProcess(sl *slot) (_ *process, err error) {
	slot := sl.id
	files, names := s.sockets.Files(slot)
	var handed []string
	port := 0
	if s.opts.Balance.primaryAccepts() {
		// The primary accepts; the workers get connections, or a port.
		if s.opts.Balance.handsOff() {
			handed = names
		}
		files, names = nil, nil
	}
	if s.opts.Balance == BalanceProxy {
		if port, err = s.newPort(); err != nil {
			return nil, fmt.Errorf("start worker %d: %w", slot, err)
		}
		// Held until the process is reaped (waitProcess), or given back
		// now if it does not start.
		defer func() {
			if err != nil {
				s.releasePort(port)
			}
		}()
	}
	node := s.nodeIPC()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start worker %d: %w", slot, err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		closeAll(statusR, statusW)
		return nil, fmt.Errorf("start worker %d: %w", slot, err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		closeAll(statusR, statusW, outR, outW)
		return nil, fmt.Errorf("start worker %d: %w", slot, err)
	}
	ch, ipcW, err := s.newChannel(slot)
	if err != nil {
		closeAll(statusR, statusW, outR, outW, errR, errW)
		return nil, fmt.Errorf("start worker %d: %w", slot, err)
	}
	var inR, inW *os.File // herd map: tasks go to the worker's stdin
	if s.opts.lines != nil {
		if inR, inW, err = os.Pipe(); err != nil {
			closeAll(statusR, statusW, outR, outW, errR, errW, ipcW)
			ch.Close()
			return nil, fmt.Errorf("start worker %d: %w", slot, err)
		}
	}
	extra := append(files[:len(files):len(files)], ipcW, statusW)
	base := s.opts.Env
	if base == nil {
		base = os.Environ()
	}
	env := workerEnv(base, slot, s.target(), names, handed, port, node)
	cmd, err := s.launcher.Command(s.path, s.argv, env, 3+len(extra)-1)
	if err != nil {
		closeAll(statusR, statusW, outR, outW, errR, errW, ipcW)
		if inR != nil {
			closeAll(inR, inW)
		}
		ch.Close()
		return nil, err
	}
	cmd.Dir = s.opts.Dir
	cmd.Stdout, cmd.Stderr = outW, errW
	if inR != nil {
		cmd.Stdin = inR
	}
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = workerAttr()

	s.ownMu.Lock()
	cmd, err = s.launcher.Start(cmd, s.spawner.start)
	if err == nil {
		s.own[cmd.Process.Pid] = true
	}
	s.ownMu.Unlock()
	closeAll(statusW, outW, errW, ipcW) // the child has its own copies
	if inR != nil {
		inR.Close()
	}
	if err != nil {
		closeAll(statusR, outR, errR)
		if inW != nil {
			inW.Close()
		}
		ch.Close()
		return nil, fmt.Errorf("start worker %d: %w", slot, err)
	}
	p := &process{
		cmd:     cmd,
		pid:     cmd.Process.Pid,
		sl:      sl,
		slot:    slot,
		port:    port,
		started: time.Now(),
		ch:      ch,
		node:    node,
		gate:    make(chan struct{}),
		gone:    make(chan struct{}),
		killed:  make(chan struct{}),
	}
	if s.watchdog != nil {
		if err := s.watchdog.Watch(p.pid); err != nil {
			s.log.Warn("the watchdog is gone; workers of a killed primary rely on the parent-death signal alone", "err", err)
		}
	}
	// The waiter is owned by the slot, which does not end before it has
	// received the process's evExited.
	if inW != nil {
		p.stdin = s.opts.lines.attach(p, inW)
	}
	if node {
		ch.OneFDPerWrite()
	}
	s.watchDying(p)
	go s.waitProcess(p, slot, statusR, outR, errR)
	return p, nil
}

// watchDying has the slot told as soon as the kernel begins to tear p's
// leader down, where the host allows early exit notices (see
// internal/exits): milliseconds before its exit can be waited for.
func (s *Supervisor) watchDying(p *process) {
	if s.exits == nil {
		return
	}
	dying := s.exits.Watch(p.pid)
	p.sl.watch(p, func() {
		defer s.exits.Forget(p.pid)
		select {
		case <-dying:
			p.sl.post(procEvent{p: p, kind: evDying})
		case <-p.gone:
		}
	})
}

// waitProcess reports the exec status, waits for the leader to exit,
// deals with the rest of its group, reaps it and drains its output.
func (s *Supervisor) waitProcess(p *process, slot int, statusR, outR, errR *os.File) {
	var pumps sync.WaitGroup
	if s.opts.lines != nil {
		// herd map: the worker's stdout lines are its answers.
		pumps.Go(func() { s.opts.lines.read(p, outR) })
	} else {
		pumps.Go(func() { s.stdout.Pump(outR, slot, p.pid) })
	}
	pumps.Go(func() { s.stderr.Pump(errR, slot, p.pid) })

	execErr := reexec.ReadExecStatus(statusR, s.path)
	statusR.Close()
	p.sl.post(procEvent{p: p, kind: evExec, err: execErr})
	reading := make(chan struct{})
	if execErr == nil {
		go func() {
			defer close(reading)
			select {
			case <-p.gate:
			case <-p.killed:
				return
			}
			if err := p.ch.ReadLoop(nil, &primaryEnd{s: s, p: p}); err != nil && !p.draining.Load() {
				s.log.Warn("channel", "worker", slot, "pid", p.pid, "err", err)
			}
		}()
	} else {
		close(reading)
	}

	// Where it can, the waiter sees the leader exit before reaping it: the
	// zombie keeps its pgid from being reused while the rest of the group
	// is dealt with.
	settled := waitLeaderExit(p.pid) == nil
	if settled {
		close(p.gone)
		p.sl.post(procEvent{p: p, kind: evLeftGroup})
		s.settleGroup(p)
	}
	p.mu.Lock()
	p.cmd.Wait() // the status is in ProcessState either way
	p.reaped = true
	p.mu.Unlock()
	if !settled {
		close(p.gone)
		killGroup(p.pid, sigKill) // what the leader left behind
	}
	s.ownMu.Lock()
	delete(s.own, p.pid)
	s.ownMu.Unlock()
	if s.watchdog != nil {
		s.watchdog.Unwatch(p.pid)
	}

	// Output and messages still buffered are read to the end; a descendant
	// that escaped the group could hold the pipes or the channel open
	// forever, so the reads stop after a grace period.
	deadline := time.Now().Add(time.Second)
	outR.SetReadDeadline(deadline)
	errR.SetReadDeadline(deadline)
	p.ch.SetReadDeadline(deadline)
	pumps.Wait()
	<-reading
	if p.stdin != nil {
		p.stdin.Close()
	}
	p.ch.Close()
	if s.handover != nil {
		s.handover.reclaim(p)
	}
	closeAll(outR, errR)
	// The group is gone, so nothing listens on the port any more.
	s.releasePort(p.port)
	p.sl.post(procEvent{p: p, kind: evExited, st: p.cmd.ProcessState})
}

// settleGroup runs once the leader has exited. During a stop the rest of
// the group keeps its grace period (a shell's children, npm's node) until
// it is empty or the slot kills it at the deadline; otherwise whatever the
// worker left behind dies with it.
func (s *Supervisor) settleGroup(p *process) {
	if !p.draining.Load() {
		killGroup(p.pid, sigKill)
		return
	}
	// No kernel event says a process group became empty, so look.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for groupAlive(p.pid) {
		select {
		case <-p.killed:
			killGroup(p.pid, sigKill)
			return
		case <-tick.C:
		}
	}
}

func closeAll(files ...*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// describeExit renders a process's end for logs and WorkerInfo.
func describeExit(st *os.ProcessState) string {
	if st == nil {
		return "unknown"
	}
	return st.String()
}

var errNoWaitid = errors.New("waitid WNOWAIT not available")
