package herd

// PostDying tells slot that its serving worker is dying, as the kernel's
// early exit notice does (internal/exits), and returns that worker's pid,
// or 0 when the slot has none.
func PostDying(s *Supervisor, slot int) int {
	for _, sl := range s.slotList() {
		if p := sl.current.Load(); sl.id == slot && p != nil {
			sl.post(procEvent{p: p, kind: evDying})
			return p.pid
		}
	}
	return 0
}
