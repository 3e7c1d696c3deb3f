package reaper

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/procfs"

	"golang.org/x/sys/unix"
)

func (r *Reaper) run(ctx context.Context) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	r.ReapOnce() // orphans that arrived before we listened
	for {
		select {
		case <-ctx.Done():
			return
		case <-sigs:
			r.ReapOnce()
		}
	}
}

// ReapOnce reaps every zombie child that is not the caller's own, and
// returns how many it reaped.
func (r *Reaper) ReapOnce() int {
	procs, err := procfs.AllProcs()
	if err != nil {
		return 0
	}
	self := os.Getpid()
	n := 0
	for _, p := range procs {
		st, err := p.Stat()
		if err != nil || st.State != "Z" || st.PPID != self || r.isOwn(p.PID) {
			continue
		}
		var ws unix.WaitStatus
		if got, _ := unix.Wait4(p.PID, &ws, unix.WNOHANG, nil); got == p.PID {
			n++
		}
	}
	return n
}
