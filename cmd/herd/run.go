package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/internal/control"
)

type runFlags struct {
	workers       int
	listen        []string
	balance       string
	stopTimeout   time.Duration
	stopSignal    string
	maxRestarts   int
	restartWindow time.Duration
	maxBackoff    time.Duration
	logFormat     string
	maxMessage    string
	control       controlFlags
	noControl     bool

	ready            string
	readyTimeout     time.Duration
	health           string
	healthInterval   time.Duration
	healthTimeout    time.Duration
	healthFailures   int
	heartbeatTimeout time.Duration
	maxMemory        string
	maxLifetime      time.Duration
	lifetimeJitter   time.Duration
	reloadBatch      int
	proxyPolicy      string
	nodeIPC          string
}

func newRunCmd() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run [flags] -- command [args...]",
		Short: "Start a cluster of workers running command",
		Long: `Start a cluster of workers running command, hand them the listening sockets
(fds 3.. with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID, as systemd socket
activation does), restart the ones that exit, and stop them all on SIGTERM
or SIGINT (a second SIGINT kills at once).`,
		Example: `  herd run -w 4 -l 127.0.0.1:8080 -- node server.js
  herd run -l http=:8080 -l admin=unix:/run/app.sock -- ./myserver --flag`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCluster(cmd, f, args)
		},
	}
	fl := cmd.Flags()
	// Everything after the worker command belongs to it.
	fl.SetInterspersed(false)
	fl.IntVarP(&f.workers, "workers", "w", 0, "number of workers (default: number of CPUs)")
	fl.StringArrayVarP(&f.listen, "listen", "l", nil, "listen on `[NAME=]ADDR`: host:port, [ipv6]:port or unix:/path (repeatable)")
	fl.StringVar(&f.balance, "balance", string(herd.DefaultBalance()), "how connections reach workers: reuseport, shared, round-robin, least-conn, sticky or proxy")
	fl.StringVar(&f.proxyPolicy, "proxy-policy", "round-robin", "which worker a connection goes to in --balance proxy: round-robin, least-conn or sticky")
	fl.StringVar(&f.nodeIPC, "node-ipc", "auto", "make the channel Node's own IPC channel too (NODE_CHANNEL_FD): auto (for node in the hand-over modes), on or off")
	fl.DurationVar(&f.stopTimeout, "stop-timeout", 10*time.Second, "time workers get to exit after the stop signal before they are killed")
	fl.StringVar(&f.stopSignal, "stop-signal", "SIGTERM", "signal that asks a worker to stop")
	fl.IntVar(&f.maxRestarts, "max-restarts", 0, "stop herd with an error when one worker restarts more than this many times within --restart-window (0: never)")
	fl.DurationVar(&f.restartWindow, "restart-window", time.Minute, "the window --max-restarts counts over")
	fl.DurationVar(&f.maxBackoff, "max-backoff", 30*time.Second, "longest wait before restarting a crash-looping worker")
	fl.StringVar(&f.logFormat, "log-format", "text", "format of worker output and herd's own log: text or json")
	fl.StringVar(&f.maxMessage, "max-message", "1MiB", "longest message on a worker's channel (bytes, or with KiB, MiB, GiB)")
	fl.BoolVar(&f.noControl, "no-control", false, "do not open a control socket (herd send, status, ... will not reach this cluster)")
	fl.StringVar(&f.ready, "ready", "auto", "when a new worker counts as serving: auto, message, listen, http:/PATH or delay:DURATION")
	fl.DurationVar(&f.readyTimeout, "ready-timeout", time.Minute, "a new worker not ready this long after it started is killed (a failed start)")
	fl.StringVar(&f.health, "health", "", "health check of running workers: http:/PATH or tcp (default: none)")
	fl.DurationVar(&f.healthInterval, "health-interval", 10*time.Second, "time between health checks")
	fl.DurationVar(&f.healthTimeout, "health-timeout", 2*time.Second, "time one health check may take")
	fl.IntVar(&f.healthFailures, "health-failures", 3, "failed health checks in a row that get a worker replaced")
	fl.DurationVar(&f.heartbeatTimeout, "heartbeat-timeout", 0, "replace a worker that speaks the protocol and sent no heartbeat for this long (0: off)")
	fl.StringVar(&f.maxMemory, "max-memory", "", "replace a worker whose processes use more resident memory than this, like 512MiB (default: no limit)")
	fl.DurationVar(&f.maxLifetime, "max-lifetime", 0, "replace each worker after it has run this long, one at a time (0: never)")
	fl.DurationVar(&f.lifetimeJitter, "lifetime-jitter", 0, "randomly shorten or lengthen each worker's --max-lifetime by up to this much")
	fl.IntVar(&f.reloadBatch, "reload-batch", 1, "how many workers a reload replaces at once")
	f.control.register(cmd)
	return cmd
}

func runCluster(cmd *cobra.Command, f runFlags, args []string) error {
	if len(args) == 0 {
		return usageError{errors.New("missing worker command (usage: herd run [flags] -- command [args...])")}
	}
	fl := cmd.Flags()
	if fl.Changed("workers") && f.workers < 1 {
		return usageError{fmt.Errorf("--workers must be at least 1, got %d", f.workers)}
	}
	sig, err := parseSignal(f.stopSignal)
	if err != nil {
		return usageError{fmt.Errorf("--stop-signal: %w", err)}
	}
	for name, d := range map[string]time.Duration{"--stop-timeout": f.stopTimeout, "--restart-window": f.restartWindow, "--max-backoff": f.maxBackoff} {
		if d <= 0 {
			return usageError{fmt.Errorf("%s must be positive, got %v", name, d)}
		}
	}
	if f.maxRestarts < 0 {
		return usageError{fmt.Errorf("--max-restarts must not be negative, got %d", f.maxRestarts)}
	}
	if f.logFormat != "text" && f.logFormat != "json" {
		return usageError{fmt.Errorf("--log-format must be text or json, got %q", f.logFormat)}
	}
	if !slices.Contains(herd.Balances, herd.Balance(f.balance)) {
		return usageError{fmt.Errorf("--balance must be reuseport, shared, round-robin, least-conn, sticky or proxy, got %q", f.balance)}
	}
	switch herd.Balance(f.proxyPolicy) {
	case herd.BalanceRoundRobin, herd.BalanceLeastConn, herd.BalanceSticky:
	default:
		return usageError{fmt.Errorf("--proxy-policy must be round-robin, least-conn or sticky, got %q", f.proxyPolicy)}
	}
	if f.nodeIPC != "auto" && f.nodeIPC != "on" && f.nodeIPC != "off" {
		return usageError{fmt.Errorf("--node-ipc must be auto, on or off, got %q", f.nodeIPC)}
	}
	maxMessage, err := parseSize(f.maxMessage)
	if err != nil || maxMessage < 64 || maxMessage > 1<<30 {
		return usageError{fmt.Errorf("--max-message must be a size from 64 bytes to 1GiB, like 1MiB, got %q", f.maxMessage)}
	}
	ready, err := herd.ParseReadiness(f.ready)
	if err != nil {
		return usageError{fmt.Errorf("--ready: %w", err)}
	}
	ready.Timeout = f.readyTimeout
	var health herd.HealthCheck
	if f.health != "" {
		if health, err = herd.ParseHealth(f.health); err != nil {
			return usageError{fmt.Errorf("--health: %w", err)}
		}
	}
	health.Interval, health.Timeout, health.Failures, health.Heartbeat = f.healthInterval, f.healthTimeout, f.healthFailures, f.heartbeatTimeout
	for name, d := range map[string]time.Duration{"--ready-timeout": f.readyTimeout, "--health-interval": f.healthInterval, "--health-timeout": f.healthTimeout} {
		if d <= 0 {
			return usageError{fmt.Errorf("%s must be positive, got %v", name, d)}
		}
	}
	if f.healthFailures < 1 {
		return usageError{fmt.Errorf("--health-failures must be at least 1, got %d", f.healthFailures)}
	}
	switch {
	case f.maxLifetime < 0 || f.lifetimeJitter < 0:
		return usageError{fmt.Errorf("--max-lifetime and --lifetime-jitter must not be negative")}
	case f.lifetimeJitter > 0 && f.maxLifetime == 0:
		return usageError{fmt.Errorf("--lifetime-jitter %v needs --max-lifetime: it varies the lifetime, which is off", f.lifetimeJitter)}
	case f.lifetimeJitter > 0 && f.lifetimeJitter >= f.maxLifetime:
		// The jitter takes up to itself off the lifetime: workers could be
		// recycled as soon as they are ready.
		return usageError{fmt.Errorf("--lifetime-jitter %v must be less than --max-lifetime %v", f.lifetimeJitter, f.maxLifetime)}
	}
	if f.reloadBatch < 1 {
		return usageError{fmt.Errorf("--reload-batch must be at least 1, got %d", f.reloadBatch)}
	}
	var maxMemory int64
	if f.maxMemory != "" {
		if maxMemory, err = parseSize(f.maxMemory); err != nil || maxMemory < 1<<20 {
			return usageError{fmt.Errorf("--max-memory must be a size of at least 1MiB, like 512MiB, got %q", f.maxMemory)}
		}
	}
	logMessages := &messageLog{}
	opts := herd.Options{
		Command:     args,
		Workers:     f.workers,
		Listen:      f.listen,
		Balance:     herd.Balance(f.balance),
		StopTimeout: f.stopTimeout,
		StopSignal:  sig,
		Restart: herd.RestartPolicy{
			BackoffMax:  f.maxBackoff,
			MaxRestarts: f.maxRestarts,
			Window:      f.restartWindow,
		},
		LogFormat:      f.logFormat,
		MaxMessage:     int(maxMessage),
		OnEvent:        logMessages.event,
		Ready:          ready,
		Health:         health,
		MaxMemory:      uint64(maxMemory),
		MaxLifetime:    f.maxLifetime,
		LifetimeJitter: f.lifetimeJitter,
		ReloadBatch:    f.reloadBatch,
		ProxyPolicy:    herd.Balance(f.proxyPolicy),
		NodeIPC:        f.nodeIPC,
	}
	if opts.Restart.BackoffMax < 100*time.Millisecond {
		opts.Restart.BackoffInitial = opts.Restart.BackoffMax
	}
	// The control socket comes before the listening sockets: a second herd
	// of the same name most likely wants the same port too, and "already
	// running" says more than "address in use".
	var ctl *control.Server
	if !f.noControl {
		path, err := f.control.socket(args)
		if err != nil {
			return err
		}
		if ctl, err = control.Listen(path); err != nil {
			if errors.Is(err, control.ErrAlreadyRunning) {
				return fmt.Errorf("%w (give this cluster another --name)", err)
			}
			return err
		}
		defer ctl.Close()
	}
	sup, err := herd.New(opts)
	if errors.Is(err, herd.ErrBadOptions) {
		return usageError{err}
	}
	if err != nil {
		return err
	}
	logMessages.log = sup.Logger()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGTTIN, syscall.SIGTTOU)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	var watcher sync.WaitGroup
	log := sup.Logger()
	// SIGTTIN/SIGTTOU are applied in turn by a goroutine of their own: a
	// scale can wait (for a retired worker to drain), and the signal loop
	// must stay free for a stop meanwhile.
	scales := make(chan int, 16)
	watcher.Go(func() {
		for {
			select {
			case <-done:
				return
			case delta := <-scales:
				if n := len(sup.Workers()) + delta; n >= 1 && ctx.Err() == nil {
					if err := sup.Scale(ctx, n); err != nil && ctx.Err() == nil {
						log.Warn("cannot scale", "workers", n, "err", err)
					}
				}
			}
		}
	})
	watcher.Go(func() {
		stopping := false
		for {
			select {
			case <-done:
				return
			case s := <-sigs:
				switch s {
				case syscall.SIGHUP:
					// Like nginx and gunicorn: a rolling reload. A reload
					// that fails logs why; the old workers keep serving.
					watcher.Go(func() {
						if err := sup.Reload(ctx); errors.Is(err, herd.ErrBusy) {
							log.Warn("SIGHUP ignored", "err", err)
						}
					})
				case syscall.SIGTTIN, syscall.SIGTTOU:
					delta := 1
					if s == syscall.SIGTTOU {
						delta = -1
					}
					select {
					case scales <- delta:
					default:
						log.Warn("signal ignored: too many scale signals waiting", "signal", signalName(s))
					}
				default:
					if stopping && s == syscall.SIGINT {
						sup.Kill() // a second Ctrl-C: no more waiting
					}
					stopping = true
					cancel()
				}
			}
		}
	})
	if ctl != nil {
		log.Info("control socket", "path", ctl.Path())
		ctl.OnPanic = func(cmd string, v any, stack []byte) {
			log.Error("control command panicked (please report this)", "cmd", cmd, "panic", fmt.Sprint(v), "stack", string(stack))
		}
		watcher.Go(func() { ctl.Serve(ctx, serveControl(sup, cancel)) })
	}
	err = sup.Run(ctx)
	cancel()
	close(done)
	watcher.Wait()
	return err
}

// messageLog logs the messages workers send the primary, a few a second
// per worker at most: under herd run nothing else consumes them.
type messageLog struct {
	log     *slog.Logger
	mu      sync.Mutex
	limits  map[int]*rate.Sometimes
	missing map[int]int
}

// maxLoggedData bounds how much of a message's data goes into the log.
const maxLoggedData = 512

func (l *messageLog) event(ev herd.Event) {
	if ev.Kind != herd.EventMessage || l.log == nil {
		return
	}
	l.mu.Lock()
	if l.limits == nil {
		l.limits, l.missing = map[int]*rate.Sometimes{}, map[int]int{}
	}
	lim := l.limits[ev.Worker]
	if lim == nil {
		lim = &rate.Sometimes{First: 10, Interval: 100 * time.Millisecond}
		l.limits[ev.Worker] = lim
	}
	logged := false
	lim.Do(func() { logged = true })
	missed := l.missing[ev.Worker]
	if logged {
		l.missing[ev.Worker] = 0
	} else {
		l.missing[ev.Worker]++
	}
	l.mu.Unlock()
	if !logged {
		return
	}
	data := string(ev.Message.Data)
	if len(data) > maxLoggedData {
		data = data[:maxLoggedData] + "…"
	}
	l.log.Info("message from worker", "worker", ev.Worker, "pid", ev.PID, "type", ev.Message.Type, "data", data, "not_logged", missed)
}

// parseSize parses a byte count: "1048576", "512KiB", "1MiB", "1GiB" (also
// K, M, G, KB, MB, GB, all powers of 1024).
func parseSize(s string) (int64, error) {
	num := strings.TrimRightFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	unit := strings.ToLower(strings.TrimSpace(s[len(num):]))
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: not a number", s)
	}
	shift := map[string]int{"": 0, "b": 0, "k": 10, "kb": 10, "kib": 10, "m": 20, "mb": 20, "mib": 20, "g": 30, "gb": 30, "gib": 30}
	sh, ok := shift[unit]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit %q", s, unit)
	}
	if n < 0 || n > (1<<62)>>sh {
		return 0, fmt.Errorf("size %q: out of range", s)
	}
	return n << sh, nil
}

func signalName(s os.Signal) string {
	if sig, ok := s.(syscall.Signal); ok {
		if name := unix.SignalName(sig); name != "" {
			return name
		}
	}
	return s.String()
}

// parseSignal accepts "SIGTERM", "TERM", "term" or "15".
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n >= 65 {
			return 0, fmt.Errorf("no signal number %d", n)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q", s)
}
