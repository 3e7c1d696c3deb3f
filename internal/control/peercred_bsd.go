//go:build darwin || freebsd

package control

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// peerCredSupported says whether peerUID works here; Listen refuses to
// start where it does not.
const peerCredSupported = true

// peerUID returns the uid of the process at the other end of c, as it was
// when that process connected (or listened, seen from the client).
func peerUID(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *unix.Xucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptXucred(int(fd), unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if serr != nil {
		return -1, os.NewSyscallError("getsockopt LOCAL_PEERCRED", serr)
	}
	return int(cred.Uid), nil
}
