//go:build linux

package probe

import "golang.org/x/sys/unix"

// waitOf tells what a thread blocked in syscall nr (x86-64 numbering, as
// /proc/PID/task/TID/syscall shows it) may be waiting for: accept 43,
// accept4 288, poll 7, ppoll 271, select 23, pselect6 270.
func waitOf(nr int64) wait {
	switch nr {
	case unix.SYS_ACCEPT, unix.SYS_ACCEPT4:
		return waitAccept
	case unix.SYS_POLL, unix.SYS_PPOLL:
		return waitPoll
	case unix.SYS_SELECT, unix.SYS_PSELECT6:
		return waitSelect
	}
	return waitNone
}
