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

// scan would be a Watcher's state, but there is no /proc to look in.
type scan struct{ pgid int }

func newScan(pgid int, _ []uint64) *scan { return &scan{pgid: pgid} }

// accepting needs Linux's /proc; see the package comment.
func (s *scan) accepting() (bool, error) {
	return false, fmt.Errorf("probe: process group %d: %w", s.pgid, ErrUnsupported)
}

func (s *scan) close() {}

// takenBy needs Linux's sock_diag and /proc.
func takenBy(_ context.Context, pgid int, server, _ netip.AddrPort) (bool, error) {
	return false, fmt.Errorf("probe: connection to %s, process group %d: %w", server, pgid, ErrUnsupported)
}
