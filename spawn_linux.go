package herd

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// sigKill is the signal no process can catch or ignore: what is left of a
// worker's process group at the stop deadline, or after its leader died,
// gets it.
const sigKill = syscall.SIGKILL

// workerAttr puts each worker in a process group of its own and asks the
// kernel to kill it if the primary's spawning thread dies.
func workerAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// spawner starts processes from one OS thread that lives as long as the
// supervisor. The parent-death signal fires when the thread that forked the
// child exits, not the process (golang/go#27505), and the Go runtime may end
// an ordinary thread at any time; a locked thread it does not end.
type spawner struct {
	reqs chan spawnReq
	done chan struct{}
}

type spawnReq struct {
	cmd   *exec.Cmd
	reply chan error
}

func newSpawner() *spawner {
	sp := &spawner{reqs: make(chan spawnReq), done: make(chan struct{})}
	go sp.loop()
	return sp
}

func (sp *spawner) loop() {
	runtime.LockOSThread()
	defer close(sp.done)
	// Unlocking returns the thread to the pool; by then every worker has
	// been reaped.
	defer runtime.UnlockOSThread()
	for req := range sp.reqs {
		req.reply <- req.cmd.Start()
	}
}

func (sp *spawner) start(cmd *exec.Cmd) error {
	reply := make(chan error, 1)
	sp.reqs <- spawnReq{cmd, reply}
	return <-reply
}

// close ends the spawner; call it after every worker has been reaped.
func (sp *spawner) close() {
	close(sp.reqs)
	<-sp.done
}

func killGroup(pgid int, sig os.Signal) error {
	return syscall.Kill(-pgid, sig.(syscall.Signal))
}

// groupAlive reports whether process group pgid has a member that is not
// a zombie. kill(-pgid, 0) cannot tell: it succeeds while the group's only
// member is its zombie leader, which we keep unreaped on purpose.
func groupAlive(pgid int) bool {
	procs, err := procfs.AllProcs()
	if err != nil {
		return !errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH)
	}
	for _, p := range procs {
		if st, err := p.Stat(); err == nil && st.PGRP == pgid && st.State != "Z" {
			return true
		}
	}
	return false
}

// waitLeaderExit blocks until pid exits, without reaping it.
func waitLeaderExit(pid int) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// socketpair makes a close-on-exec Unix stream socket pair.
func socketpair() ([2]int, error) {
	return unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
}
