//go:build unix && !linux

package reexec

func closeFrom(first int) { closeFromSlow(first) }
