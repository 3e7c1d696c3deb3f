//go:build !linux

package exits

import (
	"fmt"
	"runtime"
)

// Notifier reports processes that have begun to exit; off Linux there is
// none to be had (Open fails).
type Notifier struct{}

// Open fails off Linux: there is no taskstats interface.
func Open() (*Notifier, error) {
	return nil, fmt.Errorf("exits: early exit notices on %s: %w", runtime.GOOS, ErrUnsupported)
}

// Watch returns a channel that is never closed.
func (n *Notifier) Watch(pid int) <-chan struct{} { return make(chan struct{}) }

// Forget does nothing.
func (n *Notifier) Forget(pid int) {}

// Close does nothing.
func (n *Notifier) Close() error { return nil }
