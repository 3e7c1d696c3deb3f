//go:build unix

package probe

import (
	"fmt"
	"io/fs"
	"syscall"
)

// inodeOf returns the inode number fstat(2) gave for fi.
func inodeOf(fi fs.FileInfo) (uint64, error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("probe: no inode for %s", fi.Name())
	}
	return uint64(st.Ino), nil // the conversion is for systems with a narrower Ino
}
