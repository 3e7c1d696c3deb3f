package herd

import (
	"context"
	"fmt"
	"time"

	"github.com/herd-sh/herd/internal/procstat"
)

// sampleEvery is how often worker memory and CPU are read: often enough
// for status and --max-memory, rarely enough to cost nothing (one scan of
// /proc for every worker).
const sampleEvery = 2 * time.Second

// sample reads every worker's memory and CPU use until ctx ends, for
// Workers and for MaxMemory.
func (s *Supervisor) sample(ctx context.Context) {
	if !procstat.Supported {
		return // no figures here; New refused MaxMemory
	}
	every := sampleEvery
	if s.opts.MaxMemory > 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	prev := map[int]procstat.Sample{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		slots := s.slotList()
		procs := make(map[int]*process, len(slots))
		pids := make([]int, 0, len(slots))
		for _, sl := range slots {
			if p := sl.current.Load(); p != nil {
				procs[p.pid] = p
				pids = append(pids, p.pid)
			}
		}
		now, err := procstat.Groups(pids)
		if err != nil {
			continue // not on this platform, or /proc unreadable: no figures
		}
		for pid, smp := range now {
			p := procs[pid]
			cpu := 0.0
			if before, ok := prev[pid]; ok {
				cpu = procstat.CPUPercent(before, smp)
			}
			p.sl.publish(func(i *WorkerInfo) {
				if i.PID == pid {
					i.RSS, i.CPU = smp.RSS, cpu
				}
			})
			if max := s.opts.MaxMemory; max > 0 && smp.RSS > max && !p.overMemory.Swap(true) {
				p.sl.post(procEvent{p: p, kind: evUnhealthy, err: fmt.Errorf("memory %s over the limit %s", sizeString(smp.RSS), sizeString(max))})
			}
		}
		prev = now
	}
}

// sizeString renders a byte count for logs: "612.0MiB".
func sizeString(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}
