//go:build !linux

package sockets

const reuseportSupported = false

// Steer does nothing off Linux: only Shared mode exists there.
func (s *Set) Steer(live []int) error { return nil }

// roundRobin is Linux's eBPF steering; elsewhere there is none.
type roundRobin struct{}

func (*roundRobin) close() {}
