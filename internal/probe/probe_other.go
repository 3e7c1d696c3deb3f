//go:build !linux

package probe

import "fmt"

// accepting needs Linux's /proc; see the package comment.
func accepting(pgid int, _ []uint64) (bool, error) {
	return false, fmt.Errorf("probe: process group %d: %w", pgid, ErrUnsupported)
}
