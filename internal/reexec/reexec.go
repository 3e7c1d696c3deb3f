// Package reexec runs the current binary again in one of herd's helper
// roles. Any program that links herd (the herd CLI, or a Go program using the
// library) can play them, because this package's init function takes over
// before main when the role variable is set:
//
//   - the exec trampoline: a worker is started as this binary, which sets
//     LISTEN_PID to its own pid (os/exec cannot: the pid is only known after
//     fork) and then replaces itself with the worker command by execve, so
//     the worker keeps that pid. An exec failure is reported to the primary
//     through a close-on-exec pipe, as os/exec itself does. On Linux amd64
//     and arm64 a Launcher runs a tiny assembly trampoline (tramp/) that
//     does the same without a Go runtime to start, and falls back to this
//     one where that cannot run.
//   - the watchdog: a small process that outlives a primary killed by
//     SIGKILL just long enough to kill the process groups of its workers,
//     covering what the parent-death signal cannot (a worker's descendants,
//     and systems without it).
package reexec

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

const (
	// roleEnv selects a role; it is removed before the worker command runs.
	roleEnv = "HERD_REEXEC_ROLE"
	// statusFDEnv names the fd of the trampoline's exec-status pipe.
	statusFDEnv = "HERD_REEXEC_STATUS_FD"

	roleExec     = "exec"
	roleWatchdog = "watchdog"
)

// ExitExecFailed is the trampoline's exit status when execve failed.
const ExitExecFailed = 127

func init() {
	switch os.Getenv(roleEnv) {
	case "":
		return
	case roleExec:
		os.Exit(trampoline(os.Args[1:]))
	case roleWatchdog:
		os.Exit(watchdogMain(os.Stdin))
	default:
		fmt.Fprintf(os.Stderr, "herd: unknown %s=%q\n", roleEnv, os.Getenv(roleEnv))
		os.Exit(2)
	}
}

// Self returns the path that runs this binary again.
func Self() (string, error) {
	if _, err := os.Stat("/proc/self/exe"); err == nil {
		// Stays valid when the file on disk is replaced during a deploy.
		return "/proc/self/exe", nil
	}
	p, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own executable for re-exec: %w", err)
	}
	return p, nil
}

// Command returns a command that starts path with argv (argv[0] included)
// through the exec trampoline. statusFD is the fd number the child will
// have for the write end of the exec-status pipe (the caller puts it in
// ExtraFiles at that position). env must not contain roleEnv.
func Command(path string, argv []string, env []string, statusFD int) (*exec.Cmd, error) {
	me, err := Self()
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{
		Path: me,
		Args: append([]string{"herd-exec", path}, argv...),
		Env:  append(env, roleEnv+"="+roleExec, statusFDEnv+"="+strconv.Itoa(statusFD)),
	}
	return cmd, nil
}

// ReadExecStatus reads the trampoline's exec-status pipe until it closes.
// It returns nil when the worker command was exec'ed, or the error execve
// returned. path is the worker command's, which the tiny trampoline's
// report leaves out.
func ReadExecStatus(r *os.File, path string) error {
	buf := make([]byte, 512)
	n, _ := readFull(r, buf)
	if n == 0 {
		return nil
	}
	return &ExecError{Msg: execMessage(string(buf[:n]), path)}
}

// execMessage words the tiny trampoline's reports, "errno N" and
// "close_range errno N", as the Go trampoline does.
func execMessage(msg, path string) string {
	if v, ok := strings.CutPrefix(msg, "errno "); ok {
		if n, err := strconv.Atoi(v); err == nil {
			return fmt.Sprintf("exec %s: %v", path, syscall.Errno(n))
		}
	}
	if v, ok := strings.CutPrefix(msg, "close_range errno "); ok {
		if n, err := strconv.Atoi(v); err == nil {
			return fmt.Sprintf("exec %s: herd's exec trampoline: close_range: %v", path, syscall.Errno(n))
		}
	}
	return msg
}

func readFull(r *os.File, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// ExecError is a failure of execve in the trampoline.
type ExecError struct{ Msg string }

func (e *ExecError) Error() string { return e.Msg }
