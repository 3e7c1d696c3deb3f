// Package procstat reads what a worker costs — resident memory, CPU time,
// process count — from /proc, for `herd status` and `--max-memory`.
//
// A worker is a process group: herd starts each worker as the leader of a
// new group (pgid = the worker's pid), and the children it starts stay in
// that group unless they move out. So a worker's figures are the sums over
// every live process whose process group is the worker's pid.
//
// Only Linux is supported; elsewhere every reading fails with an error
// wrapping errors.ErrUnsupported.
package procstat

import (
	"errors"
	"fmt"
	"time"
)

// ErrNoProcess means a process group has no live member: the worker has
// exited (zombies waiting to be reaped do not count).
var ErrNoProcess = errors.New("no live process in the group")

// Sample is one reading of a process group.
type Sample struct {
	// RSS is the resident memory of every process in the group, in bytes.
	// Each process's resident set is counted whole, so pages the processes
	// share (the code of a forked server, copy-on-write memory) are counted
	// once per process, as PM2's memory figure does: the sum can exceed what
	// the group really takes, never fall short of it.
	RSS uint64
	// CPU is the user+system CPU time consumed so far by the group's live
	// processes. It goes down when a member exits, since its time leaves
	// with it.
	CPU time.Duration
	// Procs is how many live processes the group has.
	Procs int
	// At is when the reading was taken.
	At time.Time
}

// Group reads one process group now. A group with no live member gives an
// error wrapping ErrNoProcess.
func Group(pgid int) (Sample, error) {
	m, err := Groups([]int{pgid})
	if err != nil {
		return Sample{}, err
	}
	s, ok := m[pgid]
	if !ok {
		return Sample{}, fmt.Errorf("process group %d: %w", pgid, ErrNoProcess)
	}
	return s, nil
}

// Groups reads several process groups with one scan of /proc: finding a
// group's members means reading every process's stat, so sampling 64
// workers one by one would read /proc 64 times per tick.
//
// Groups with no live member (and pgids <= 0, which are no group a worker
// can have) are absent from the map. The error is for a /proc that cannot
// be read at all.
func Groups(pgids []int) (map[int]Sample, error) {
	want := make(map[int]bool, len(pgids))
	for _, g := range pgids {
		if g > 0 { // kernel threads report process group 0
			want[g] = true
		}
	}
	if len(want) == 0 {
		return map[int]Sample{}, nil
	}
	return scan(want)
}

// CPUPercent is the share of one CPU the group used between two samples of
// it (100 = one full core, 200 = two). It is 0 when the interval is empty
// or the CPU time went down (a member exited, taking its time with it), as
// no honest figure can be given then.
func CPUPercent(prev, cur Sample) float64 {
	interval := cur.At.Sub(prev.At)
	if interval <= 0 || cur.CPU < prev.CPU {
		return 0
	}
	return 100 * float64(cur.CPU-prev.CPU) / float64(interval)
}
