package reexec

import "golang.org/x/sys/unix"

// closeFrom marks every fd from first on close-on-exec.
func closeFrom(first int) {
	if unix.CloseRange(uint(first), ^uint(0), unix.CLOSE_RANGE_CLOEXEC) == nil {
		return
	}
	closeFromSlow(first) // kernels before 5.11
}
