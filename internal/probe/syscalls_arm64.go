//go:build linux

package probe

import "golang.org/x/sys/unix"

// waitOf tells what a thread blocked in syscall nr (arm64 numbering, as
// /proc/PID/task/TID/syscall shows it) may be waiting for: accept 202,
// accept4 242, ppoll 73, pselect6 72. arm64 has no poll or select: libc
// implements them with ppoll and pselect6.
func waitOf(nr int64) wait {
	switch nr {
	case unix.SYS_ACCEPT, unix.SYS_ACCEPT4:
		return waitAccept
	case unix.SYS_PPOLL:
		return waitPoll
	case unix.SYS_PSELECT6:
		return waitSelect
	}
	return waitNone
}
