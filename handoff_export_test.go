package herd

// SetGiveHook makes f run in every hand-over, after a worker was chosen
// and before the connection is sent to it, with the worker's slot and pid;
// nil removes it.
func SetGiveHook(f func(slot, pid int)) {
	if f == nil {
		giveHook.Store(nil)
		return
	}
	giveHook.Store(&f)
}
