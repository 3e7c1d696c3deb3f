//go:build unix

package reexec

import (
	"os/signal"
	"syscall"
)

func watchdogAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

// ignoreStopSignals keeps a terminal's Ctrl-C or a hang-up from ending the
// watchdog before it has done its one job.
func ignoreStopSignals() { signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP) }

func killGroup(pgid int) { _ = syscall.Kill(-pgid, syscall.SIGKILL) }
