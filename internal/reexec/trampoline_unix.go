//go:build unix

package reexec

import (
	"fmt"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// trampoline is the exec role: args are the resolved path and argv.
func trampoline(args []string) int {
	fd, err := strconv.Atoi(os.Getenv(statusFDEnv))
	if err != nil || len(args) < 2 {
		fmt.Fprintln(os.Stderr, "herd: exec trampoline started without its arguments")
		return 2
	}
	// Close-on-exec makes a successful execve close the pipe, which the
	// primary reads as "started".
	unix.CloseOnExec(fd)
	// The worker gets 0-2 and the fds before the status pipe, nothing
	// else: descriptors the primary inherited without close-on-exec (from
	// a shell, a CI runner) must not leak into every worker.
	closeFrom(fd + 1)
	os.Unsetenv(roleEnv)
	os.Unsetenv(statusFDEnv)
	if os.Getenv("LISTEN_FDS") != "" {
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	}
	path, argv := args[0], args[1:]
	err = syscall.Exec(path, argv, os.Environ())
	msg := fmt.Sprintf("exec %s: %v", path, err)
	unix.Write(fd, []byte(msg))
	return ExitExecFailed
}
