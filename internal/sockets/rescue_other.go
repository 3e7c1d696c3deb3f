//go:build !linux

package sockets

import (
	"net"
	"os"
)

// acceptWaiting is never needed off Linux: TakeQueued works on reuseport
// sockets only, which need Linux.
func acceptWaiting(*os.File) (net.Conn, error) { return nil, nil }
