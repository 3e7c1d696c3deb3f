//go:build unix && !linux

package herd

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
)

// sigKill is the signal no process can catch or ignore: what is left of a
// worker's process group at the stop deadline, or after its leader died,
// gets it.
const sigKill = syscall.SIGKILL

// workerAttr puts each worker in a process group of its own. There is no
// parent-death signal here; the watchdog process covers a killed primary.
func workerAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

type spawner struct{}

func newSpawner() *spawner                    { return &spawner{} }
func (sp *spawner) start(cmd *exec.Cmd) error { return cmd.Start() }
func (sp *spawner) close()                    {}

func killGroup(pgid int, sig os.Signal) error {
	return syscall.Kill(-pgid, sig.(syscall.Signal))
}

func groupAlive(pgid int) bool {
	return !errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH)
}

// waitLeaderExit is unavailable: the process is reaped first and the rest
// of its group killed right after.
func waitLeaderExit(pid int) error { return errNoWaitid }

// socketpair makes a close-on-exec Unix stream socket pair. The fork lock
// keeps a concurrent fork from inheriting the fds before they are marked.
func socketpair() ([2]int, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		return fds, err
	}
	syscall.CloseOnExec(fds[0])
	syscall.CloseOnExec(fds[1])
	return fds, nil
}
