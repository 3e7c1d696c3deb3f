package procstat

import (
	"fmt"
	"os"
	"time"

	"github.com/prometheus/procfs"
)

// Supported says whether Groups can read anything on this system: it can
// on Linux.
const Supported = true

// proc is what a scan keeps of one process's stat.
type proc struct {
	ppid, pgrp int
	live       bool // neither a zombie nor dead: its figures count
	rss        uint64
	cpu        time.Duration
}

// readAll reads the stat of every process.
func readAll() (map[int]proc, error) {
	procs, err := procfs.AllProcs()
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	page := uint64(os.Getpagesize())
	all := make(map[int]proc, len(procs))
	for _, p := range procs {
		st, err := p.Stat()
		if err != nil {
			continue // it exited since /proc was listed: that is normal
		}
		all[p.PID] = proc{
			ppid: st.PPID,
			pgrp: st.PGRP,
			// Zombies hold no memory and their time is final; they are
			// kept only as links between a process and its parent.
			live: st.State != "Z" && st.State != "X",
			rss:  uint64(max(st.RSS, 0)) * page,
			// CPUTime is in seconds, from clock ticks (10 ms): rounding
			// undoes the float's error so that sums stay exact.
			cpu: time.Duration(st.CPUTime() * float64(time.Second)).Round(time.Microsecond),
		}
	}
	return all, nil
}

// escaped returns the live processes of worker pgid's tree (see owners)
// that are not in its process group.
func escaped(pgid int) ([]int, error) {
	all, err := readAll()
	if err != nil {
		return nil, err
	}
	var out []int
	for pid, w := range owners(all, map[int]bool{pgid: true}) {
		if p := all[pid]; w == pgid && p.live && p.pgrp != pgid {
			out = append(out, pid)
		}
	}
	return out, nil
}

// scan reads /proc once and sums, for each wanted worker, the live
// processes that belong to it (see owners).
func scan(want map[int]bool) (map[int]Sample, error) {
	all, err := readAll()
	if err != nil {
		return nil, err
	}
	out := make(map[int]Sample, len(want))
	for pid, w := range owners(all, want) {
		p := all[pid]
		if w == 0 || !p.live {
			continue
		}
		s := out[w]
		s.RSS += p.rss
		s.CPU += p.cpu
		s.Procs++
		out[w] = s
	}
	now := time.Now()
	for w, s := range out {
		s.At = now
		out[w] = s
	}
	return out, nil
}

// owners maps every process of all to the wanted worker it belongs to, or
// to 0 for none. A process belongs to
//
//   - the worker it is, if its pid is wanted;
//   - else the worker whose process group it is in;
//   - else the worker its parent belongs to, and so on up the tree.
//
// So a worker gets every process of its group and every descendant of
// those, even one that moved to a group or session of its own (setsid,
// setpgid), and each process goes to one worker at most: the nearest one
// up its ancestry, its own group first.
//
// A process whose parent exited was re-parented by the kernel to init or
// to the nearest child subreaper (herd itself when it runs as PID 1): it is
// no longer anyone's descendant and belongs to a worker only by its group.
//
// Each process is looked at once (the answers for a walk up the tree are
// kept for the whole path), so this costs one pass over the processes.
// /proc is not read atomically: a parent can exit and its pid be reused
// during the scan, which could make a loop of parents; a walk that comes
// back on itself stops there and gives 0.
func owners(all map[int]proc, want map[int]bool) map[int]int {
	const walking = -1 // on the path being walked: seeing it again is a loop
	owner := make(map[int]int, len(all))
	var path []int
	for pid := range all {
		path = path[:0]
		w, cur := 0, pid
		for {
			if o, seen := owner[cur]; seen {
				if o != walking {
					w = o
				}
				break
			}
			p, ok := all[cur]
			if !ok {
				break // pid 0 above init and kthreadd, or a process that just exited
			}
			path = append(path, cur)
			owner[cur] = walking
			if want[cur] {
				w = cur
				break
			}
			if p.pgrp > 0 && want[p.pgrp] {
				w = p.pgrp
				break
			}
			cur = p.ppid
		}
		for _, q := range path {
			owner[q] = w
		}
	}
	return owner
}
