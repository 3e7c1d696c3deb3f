//go:build !linux

package probe

import (
	"context"
	"fmt"
	"net/netip"
)

// Supported says whether Accepting can tell anything on this system: it
// cannot without Linux's /proc.
const Supported = false

// accepting needs Linux's /proc; see the package comment.
func accepting(pgid int, _ []uint64) (bool, error) {
	return false, fmt.Errorf("probe: process group %d: %w", pgid, ErrUnsupported)
}

// takenBy needs Linux's sock_diag and /proc.
func takenBy(_ context.Context, pgid int, server, _ netip.AddrPort) (bool, error) {
	return false, fmt.Errorf("probe: connection to %s, process group %d: %w", server, pgid, ErrUnsupported)
}
