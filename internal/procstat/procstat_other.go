//go:build !linux

package procstat

import (
	"errors"
	"fmt"
	"runtime"
)

// Supported says whether Groups can read anything on this system: not
// without Linux's /proc.
const Supported = false

// scan fails: there is no /proc to read off Linux.
func scan(map[int]bool) (map[int]Sample, error) {
	return nil, fmt.Errorf("process statistics on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

// escaped fails: there is no /proc to read off Linux.
func escaped(pgid int) ([]int, error) {
	return nil, fmt.Errorf("process tree on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}
