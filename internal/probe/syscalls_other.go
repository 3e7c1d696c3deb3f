//go:build linux && !amd64 && !arm64

package probe

// waitOf knows no syscall numbers on this architecture (some, like 386,
// even reach accept through socketcall), so only the epoll test applies.
func waitOf(int64) wait { return waitNone }
