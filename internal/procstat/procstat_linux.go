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

// scan reads /proc once and sums the live members of the wanted groups.
func scan(want map[int]bool) (map[int]Sample, error) {
	procs, err := procfs.AllProcs()
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	page := uint64(os.Getpagesize())
	out := make(map[int]Sample, len(want))
	for _, p := range procs {
		st, err := p.Stat()
		if err != nil {
			continue // it exited since /proc was listed: that is normal
		}
		if !want[st.PGRP] || st.State == "Z" || st.State == "X" {
			continue // zombies hold no memory and their time is final
		}
		s := out[st.PGRP]
		s.RSS += uint64(max(st.RSS, 0)) * page
		// CPUTime is in seconds, from clock ticks (10 ms): rounding undoes
		// the float's error so that sums stay exact.
		s.CPU += time.Duration(st.CPUTime() * float64(time.Second)).Round(time.Microsecond)
		s.Procs++
		out[st.PGRP] = s
	}
	now := time.Now()
	for g, s := range out {
		s.At = now
		out[g] = s
	}
	return out, nil
}
