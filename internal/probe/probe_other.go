//go:build !linux

package probe

import "fmt"

// Supported says whether Accepting can tell anything on this system: it
// cannot without Linux's /proc.
const Supported = false

// accepting needs Linux's /proc; see the package comment.
func accepting(pgid int, _ []uint64) (bool, error) {
	return false, fmt.Errorf("probe: process group %d: %w", pgid, ErrUnsupported)
}
