//go:build !linux

package sockets

// probeFree is only needed for reuseport groups, which need Linux.
func probeFree(address string) error { return nil }
