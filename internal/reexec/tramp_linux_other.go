//go:build linux && !amd64 && !arm64

package reexec

// tinyTramp is empty: there is no tiny exec trampoline for this
// architecture.
const tinyTramp = ""
