//go:build !linux

package sockets

const reuseportSupported = false

// Steer does nothing off Linux: only Shared mode exists there.
func (s *Set) Steer(live []int) error { return nil }
