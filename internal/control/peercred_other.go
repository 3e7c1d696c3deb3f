//go:build !linux && !darwin && !freebsd

package control

import (
	"fmt"
	"runtime"
	"syscall"
)

// peerCredSupported is false: herd does not know how to ask this system
// who is at the other end of a Unix socket, so Listen refuses to start.
const peerCredSupported = false

func peerUID(c syscall.Conn) (int, error) {
	return -1, fmt.Errorf("peer credentials are not supported on %s", runtime.GOOS)
}
