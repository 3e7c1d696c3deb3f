//go:build !linux

package procstat

import (
	"errors"
	"os"
	"syscall"
	"testing"
)

func TestUnsupported(t *testing.T) {
	if _, err := Group(os.Getpid()); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Group off Linux: %v, want ErrUnsupported", err)
	}
	if Supported {
		t.Error("Supported is true where Groups always fails")
	}
}

// sessionAttr is for the Linux tests' helpers, which never run here.
func sessionAttr() *syscall.SysProcAttr { return nil }
