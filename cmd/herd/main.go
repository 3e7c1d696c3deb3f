// Command herd runs any program as a supervised cluster of worker
// processes that share listening sockets.
//
//	herd run -w 4 -l 127.0.0.1:8080 -- node server.js
//
// See the README and docs/ for the flags and the worker contract.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1 // the cluster could not start or had to stop
	exitUsage = 2 // bad flags or arguments
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// usageError marks errors in how herd was called.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// run is main without os.Exit, so tests can call it in-process.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "herd: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitError
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "herd",
		Short:         "Run any program as a supervised cluster of worker processes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newRunCmd(), newSendCmd(), newStatusCmd(), newReloadCmd(), newRestartCmd(), newScaleCmd(), newStopCmd(), newLogsCmd(), newMapCmd())
	root.CompletionOptions.DisableDefaultCmd = true
	return root
}
