// Package procstat reads what a worker costs — resident memory, CPU time,
// process count — from /proc, for `herd status` and `--max-memory`.
//
// A worker is its process tree: herd starts each worker as the leader of a
// new process group (pgid = the worker's pid), and a worker's figures are
// the sums over every live process of that group and every descendant of
// those processes (by parent pid, at any depth), including children that
// moved to a group or session of their own (setsid, setpgid, Node's
// detached: true). Both are read from the same pass over /proc/*/stat, and
// no process is counted twice, nor for two workers.
//
// What the tree cannot follow: a process whose parent exited is
// re-parented by the kernel to init or to the nearest child subreaper
// (herd itself when it runs as PID 1), so it is nobody's descendant any
// more. It still counts for the worker whose process group it is in; one
// that also left the group (a daemon's double fork with setsid) counts for
// no worker.
//
// Only Linux is supported; elsewhere every reading fails with an error
// wrapping errors.ErrUnsupported.
package procstat

import (
	"errors"
	"fmt"
	"time"
)

// ErrNoProcess means a worker has no live process left, in its process
// group or below it: the worker has exited, and so has every process still
// counted for it (zombies waiting to be reaped do not count).
var ErrNoProcess = errors.New("no live process in the worker's group or tree")

// Sample is one reading of a worker: its process group and the descendants
// of its processes (see the package comment).
type Sample struct {
	// RSS is the resident memory of every process of the worker, in bytes.
	// Each process's resident set is counted whole, so pages the processes
	// share (the code of a forked server, copy-on-write memory) are counted
	// once per process, as PM2's memory figure does: the sum can exceed what
	// those processes really take, never fall short of it.
	RSS uint64
	// CPU is the user+system CPU time consumed so far by the worker's live
	// processes. It goes down when one of them exits, since its time leaves
	// with it.
	CPU time.Duration
	// Procs is how many live processes the worker has.
	Procs int
	// At is when the reading was taken.
	At time.Time
}

// Group reads one worker now: pgid is the worker's pid, which is also its
// process group ID. The sample covers the group and the descendants of its
// processes (see the package comment). A worker with no live process gives
// an error wrapping ErrNoProcess.
func Group(pgid int) (Sample, error) {
	m, err := Groups([]int{pgid})
	if err != nil {
		return Sample{}, err
	}
	s, ok := m[pgid]
	if !ok {
		return Sample{}, fmt.Errorf("worker %d: %w", pgid, ErrNoProcess)
	}
	return s, nil
}

// Groups reads several workers, as Group does, with one scan of /proc:
// finding a worker's processes means reading every process's stat, so
// sampling 64 workers one by one would read /proc 64 times per tick.
//
// Each process counts for one worker at most: the one it is, else the one
// whose group it is in, else the nearest one among its ancestors. So a
// worker whose tree holds another wanted worker (herd's never do) does not
// count that worker's processes.
//
// Workers with no live process (and pgids <= 0, which are no group a worker
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

// Escaped returns the processes of worker pgid's tree that left its
// process group: descendants of the worker or of its group's processes
// that moved to a group or session of their own (setsid, setpgid, Node's
// detached: true). Signalling the group misses them; whoever stops the
// worker signals them one by one too. Descendants of a process that has
// exited were re-parented and are no longer found (see Group). Linux only;
// elsewhere the error wraps errors.ErrUnsupported.
func Escaped(pgid int) ([]int, error) { return escaped(pgid) }

// CPUPercent is the share of one CPU the worker used between two samples
// of it (100 = one full core, 200 = two). It is 0 when the interval is
// empty or the CPU time went down (a process exited, taking its time with
// it), as no honest figure can be given then.
func CPUPercent(prev, cur Sample) float64 {
	interval := cur.At.Sub(prev.At)
	if interval <= 0 || cur.CPU < prev.CPU {
		return 0
	}
	return 100 * float64(cur.CPU-prev.CPU) / float64(interval)
}
