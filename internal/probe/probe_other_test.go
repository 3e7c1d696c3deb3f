//go:build !linux

package probe

import (
	"errors"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestAcceptingUnsupported(t *testing.T) {
	ok, err := Accepting(1, []uint64{1})
	if ok || !errors.Is(err, ErrUnsupported) {
		t.Errorf("Accepting = %v, %v; want false and ErrUnsupported", ok, err)
	}
	w := NewWatcher(1, []uint64{1})
	defer w.Close()
	if ok, err := w.Accepting(); ok || !errors.Is(err, ErrUnsupported) {
		t.Errorf("Watcher.Accepting = %v, %v; want false and ErrUnsupported", ok, err)
	}
	if Supported {
		t.Error("Supported is true where Accepting always fails")
	}
}
