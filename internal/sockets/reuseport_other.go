//go:build !unix

package sockets

import (
	"os"
	"syscall"
)

func inode(fi os.FileInfo) uint64 { return 0 }

func setReuseport(network, address string, c syscall.RawConn) error { return ErrUnsupported }
