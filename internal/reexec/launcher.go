package reexec

//go:generate sh tramp/gen.sh

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Launcher starts workers through an exec trampoline: herd's tiny one
// (tramp/*.S) where it can run, else the Go one, this binary again. The
// tiny one is exec'ed from a memfd the Launcher holds, so make one for as
// long as workers are started and Close it after. A nil *Launcher uses the
// Go trampoline.
type Launcher struct {
	mu sync.Mutex
	// why the Go trampoline is used; nil while the tiny one is.
	fallback error
	memfd    *os.File
	// path execs the memfd from a forked child: /proc/<pid>/fd/<memfd>,
	// with the primary's pid, since /proc/self in the child is the child,
	// whose fd table os/exec rearranges before exec.
	path string
	// selfExe is /proc/<pid>/exe: the tiny trampoline's way to what the
	// Go one reaches as /proc/self/exe, which in the tiny one is itself.
	// The kernel lets the child follow it exactly when it lets it follow
	// path.
	selfExe string
}

// pidSlot is the tiny trampoline's LISTEN_PID placeholder, which it
// overwrites with its pid: ten digits hold any pid_t.
const pidSlot = "LISTEN_PID=0000000000"

// NewLauncher loads the tiny trampoline when this system can run it. When
// it cannot, the Launcher uses the Go trampoline; GoFallback says why.
func NewLauncher() *Launcher {
	l := &Launcher{}
	l.fallback = l.loadTiny()
	return l
}

// GoFallback returns why workers start through the Go trampoline, or nil
// while they start through the tiny one.
func (l *Launcher) GoFallback() error {
	if l == nil {
		return errors.New("no launcher")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fallback
}

// tinyPath is the path that execs the tiny trampoline, "" when it is not
// to be used.
func (l *Launcher) tinyPath() string {
	if l == nil {
		return ""
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fallback != nil {
		return ""
	}
	return l.path
}

// Command is like the package's Command, through the tiny trampoline when
// the Launcher has it. The worker gets the same environment either way.
func (l *Launcher) Command(path string, argv []string, env []string, statusFD int) (*exec.Cmd, error) {
	tiny := l.tinyPath()
	if tiny == "" || len(argv) == 0 {
		return Command(path, argv, env, statusFD)
	}
	if path == "/proc/self/exe" {
		path = l.selfExe
	} else if strings.HasPrefix(path, "/proc/self/") || strings.HasPrefix(path, "/proc/thread-self/") {
		// They name the trampoline's own files, which are not the
		// same in the two trampolines.
		return Command(path, argv, env, statusFD)
	}
	env, ok := withPIDSlot(env)
	if !ok {
		return Command(path, argv, env, statusFD)
	}
	return &exec.Cmd{
		Path: tiny,
		Args: append([]string{"herd-exec", strconv.Itoa(statusFD), path}, argv...),
		Env:  env,
	}, nil
}

// withPIDSlot puts the LISTEN_PID placeholder where the Go trampoline's
// os.Setenv would put its pid: only when LISTEN_FDS is set, in place of the
// last LISTEN_PID (the one os/exec keeps), or else at the end. It reports
// false when env has a LISTEN_PID the tiny trampoline would overwrite but
// the Go one passes through.
func withPIDSlot(env []string) ([]string, bool) {
	fds, at := "", -1
	for i, kv := range env {
		if v, ok := strings.CutPrefix(kv, "LISTEN_FDS="); ok {
			fds = v
		} else if strings.HasPrefix(kv, "LISTEN_PID=") {
			at = i
		}
	}
	if fds == "" {
		return env, at < 0
	}
	env = slices.Clone(env)
	if at >= 0 {
		env[at] = pidSlot
	} else {
		env = append(env, pidSlot)
	}
	return env, true
}

// Start starts cmd, made by Command and set up by the caller, by calling
// start (which calls cmd.Start wherever the caller needs it to run), and
// returns the command that started. If the tiny trampoline could not be
// exec'ed (a memfd that may not be executed, a seccomp or LSM policy), it
// starts the same worker through the Go trampoline instead, and if that
// works uses the Go trampoline from then on. An error is never the tiny
// trampoline's own: the worker command's errors come later, from
// ReadExecStatus.
func (l *Launcher) Start(cmd *exec.Cmd, start func(*exec.Cmd) error) (*exec.Cmd, error) {
	err := start(cmd)
	if err == nil || l == nil || l.path == "" || cmd.Path != l.path {
		return cmd, err
	}
	goCmd, gerr := l.viaGo(cmd)
	if gerr != nil {
		return cmd, err
	}
	if gerr := start(goCmd); gerr != nil {
		// Not the tiny trampoline's fault (fork failed, the directory
		// is gone): it stays.
		return goCmd, gerr
	}
	l.mu.Lock()
	if l.fallback == nil {
		l.fallback = fmt.Errorf("the tiny exec trampoline did not start: %w", err)
	}
	l.mu.Unlock()
	return goCmd, nil
}

// viaGo turns a tiny trampoline command into the Go trampoline's. Its
// environment can stay: with LISTEN_FDS set, the Go trampoline overwrites
// the placeholder in place.
func (l *Launcher) viaGo(tiny *exec.Cmd) (*exec.Cmd, error) {
	fd, err := strconv.Atoi(tiny.Args[1])
	if err != nil {
		return nil, err
	}
	path := tiny.Args[2]
	if path == l.selfExe {
		path = "/proc/self/exe"
	}
	cmd, err := Command(path, tiny.Args[3:], tiny.Env, fd)
	if err != nil {
		return nil, err
	}
	cmd.Dir = tiny.Dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tiny.Stdin, tiny.Stdout, tiny.Stderr
	cmd.ExtraFiles = tiny.ExtraFiles
	cmd.SysProcAttr = tiny.SysProcAttr
	cmd.Cancel, cmd.WaitDelay = tiny.Cancel, tiny.WaitDelay
	return cmd, nil
}

// Close gives back the tiny trampoline's memfd; commands made after it use
// the Go trampoline. Call it once no worker is being started.
func (l *Launcher) Close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.memfd == nil {
		return nil
	}
	err := l.memfd.Close()
	l.memfd = nil
	if l.fallback == nil {
		l.fallback = errors.New("the launcher is closed")
	}
	return err
}
