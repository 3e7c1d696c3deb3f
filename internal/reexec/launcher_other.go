//go:build !linux

package reexec

import (
	"fmt"
	"runtime"
)

func (l *Launcher) loadTiny() error {
	return fmt.Errorf("no tiny exec trampoline for %s/%s", runtime.GOOS, runtime.GOARCH)
}
