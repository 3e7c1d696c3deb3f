package channel

import "golang.org/x/sys/unix"

// Pending is how many bytes the other side has sent that the read loop
// has not read yet (0 when unknown).
func (c *Conn) Pending() int {
	if c.raw == nil {
		return 0
	}
	n := 0
	c.raw.Control(func(fd uintptr) {
		n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	})
	return n
}
