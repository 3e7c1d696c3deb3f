//go:build !unix

package reexec

import "syscall"

func watchdogAttr() *syscall.SysProcAttr { return nil }
func ignoreStopSignals()                 {}
func killGroup(pgid int)                 {}
