//go:build unix

package herd

import (
	"syscall"

	"golang.org/x/sys/unix"
)

func unixSignalName(sig syscall.Signal) string { return unix.SignalName(sig) }
