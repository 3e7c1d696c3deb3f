package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/herd-sh/herd"
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
	fl.StringVar(&f.balance, "balance", string(herd.DefaultBalance()), "how connections reach workers: reuseport or shared")
	fl.DurationVar(&f.stopTimeout, "stop-timeout", 10*time.Second, "time workers get to exit after the stop signal before they are killed")
	fl.StringVar(&f.stopSignal, "stop-signal", "SIGTERM", "signal that asks a worker to stop")
	fl.IntVar(&f.maxRestarts, "max-restarts", 0, "stop herd with an error when one worker restarts more than this many times within --restart-window (0: never)")
	fl.DurationVar(&f.restartWindow, "restart-window", time.Minute, "the window --max-restarts counts over")
	fl.DurationVar(&f.maxBackoff, "max-backoff", 30*time.Second, "longest wait before restarting a crash-looping worker")
	fl.StringVar(&f.logFormat, "log-format", "text", "format of worker output and herd's own log: text or json")
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
	if f.balance != string(herd.BalanceReuseport) && f.balance != string(herd.BalanceShared) {
		return usageError{fmt.Errorf("--balance must be reuseport or shared, got %q", f.balance)}
	}
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
		LogFormat: f.logFormat,
	}
	if opts.Restart.BackoffMax < 100*time.Millisecond {
		opts.Restart.BackoffInitial = opts.Restart.BackoffMax
	}
	sup, err := herd.New(opts)
	if errors.Is(err, herd.ErrBadOptions) {
		return usageError{err}
	}
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	var watcher sync.WaitGroup
	watcher.Go(func() {
		stopping := false
		for {
			select {
			case <-done:
				return
			case s := <-sigs:
				if stopping && s == syscall.SIGINT {
					sup.Kill() // a second Ctrl-C: no more waiting
				}
				stopping = true
				cancel()
			}
		}
	})
	err = sup.Run(ctx)
	close(done)
	watcher.Wait()
	return err
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
