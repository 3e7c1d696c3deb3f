//go:build !unix

package reexec

import (
	"fmt"
	"os"
)

func trampoline(args []string) int {
	fmt.Fprintln(os.Stderr, "herd: the exec trampoline needs a Unix system")
	return ExitExecFailed
}
