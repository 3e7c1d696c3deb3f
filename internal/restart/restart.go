// Package restart decides when a worker slot starts its next worker after
// an unexpected exit: at once the first time, then after a jittered,
// doubling delay, and never more often than a limit allows.
package restart

import (
	"math/rand/v2"
	"time"
)

// Backoff computes restart delays for one slot. The zero value is not
// usable; make one with NewBackoff.
type Backoff struct {
	initial, max, resetAfter time.Duration
	failures                 int // exits in a row of workers that did not stay up
	jitter                   func() float64
}

// NewBackoff returns a Backoff that waits initial after the second quick
// exit in a row, doubles up to max, and starts over once a worker has
// stayed up for resetAfter.
func NewBackoff(initial, max, resetAfter time.Duration) *Backoff {
	return &Backoff{initial: initial, max: max, resetAfter: resetAfter, jitter: rand.Float64}
}

// Next records a worker exit after uptime and returns the delay before the
// next start.
func (b *Backoff) Next(uptime time.Duration) time.Duration {
	if uptime >= b.resetAfter {
		b.failures = 0
	}
	b.failures++
	if b.failures == 1 {
		return 0
	}
	d := b.initial
	for i := 2; i < b.failures && d < b.max; i++ {
		d *= 2
	}
	// ±20% spreads the restarts of slots that crash together.
	d = time.Duration(float64(d) * (0.8 + 0.4*b.jitter()))
	return min(d, b.max)
}

// AtOnce reports whether an exit after uptime would be restarted at once
// (Next would return 0), without recording it.
func (b *Backoff) AtOnce(uptime time.Duration) bool {
	return uptime >= b.resetAfter || b.failures == 0
}

// Failures is the number of quick exits in a row so far.
func (b *Backoff) Failures() int { return b.failures }

// Limit counts restarts inside a sliding window.
type Limit struct {
	max    int
	window time.Duration
	times  []time.Time
}

// NewLimit allows at most max restarts within window; max <= 0 means no
// limit.
func NewLimit(max int, window time.Duration) *Limit {
	return &Limit{max: max, window: window}
}

// Allow records a restart at now and reports whether it is within the
// limit.
func (l *Limit) Allow(now time.Time) bool {
	if l.max <= 0 {
		return true
	}
	cut := now.Add(-l.window)
	kept := l.times[:0]
	for _, t := range l.times {
		if t.After(cut) {
			kept = append(kept, t)
		}
	}
	l.times = append(kept, now)
	return len(l.times) <= l.max
}
