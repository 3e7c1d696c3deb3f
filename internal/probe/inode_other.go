//go:build !unix

package probe

import (
	"fmt"
	"io/fs"
)

// inodeOf fails: sockets have no inode numbers here.
func inodeOf(fi fs.FileInfo) (uint64, error) {
	return 0, fmt.Errorf("probe: inode of %s: %w", fi.Name(), ErrUnsupported)
}
