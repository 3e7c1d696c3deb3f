// Package reaper reaps orphaned processes when herd runs as PID 1 (in a
// container), where the kernel re-parents every orphan to it.
package reaper

import "context"

// Reaper reaps zombie children that are not the caller's own.
//
// It must not steal the exit status of a child that another part of the
// program waits for (os/exec waits by pid), so it only reaps zombies for
// which isOwn reports false. The caller holds the lock behind isOwn while
// it starts a child and records its pid, so that a child cannot exit
// between the two unseen.
type Reaper struct {
	isOwn func(pid int) bool
}

// New returns a Reaper that leaves alone the children isOwn claims.
func New(isOwn func(pid int) bool) *Reaper { return &Reaper{isOwn: isOwn} }

// Run reaps orphans whenever a child changes state, until ctx is done.
func (r *Reaper) Run(ctx context.Context) { r.run(ctx) }
