package herd_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/internal/herdtest"
)

// detachedHog is a Python program run under `sleep | python3 … FILE`: it
// moves to a session (and process group) of its own, as a child started
// with setsid or Node's detached: true does; the first one (FILE absent)
// writes its pid and its parent's (the worker's) to FILE and holds 160 MiB.
// It ends when its stdin closes, that is when the worker's group is
// stopped and sleep with it.
const detachedHog = `
import os, sys
os.setsid()
hog = None
if not os.path.exists(sys.argv[1]):
    hog = b"x" * (160 << 20)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write("%d %d" % (os.getpid(), os.getppid()))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
sys.stdin.read()
`

// --max-memory counts the worker's whole process tree: a worker whose
// detached child (out of its process group) grows over the limit is
// replaced.
func TestMaxMemoryCountsDetachedChildren(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 is not installed")
	}
	file := filepath.Join(t.TempDir(), "hog")
	s, _ := start(t, herd.Options{
		Command:   []string{"sh", "-c", `sleep 3600 | exec python3 -c "$1" "$2"`, "sh", detachedHog, file},
		Workers:   1,
		MaxMemory: 100 << 20,
		Ready:     herd.Readiness{Mode: herd.ReadyDelay, Delay: 100 * time.Millisecond},
	})
	var hog, first int
	if !herdtest.Eventually(20*time.Second, func() bool {
		b, err := os.ReadFile(file)
		f := strings.Fields(string(b))
		if err != nil || len(f) != 2 {
			return false
		}
		hog, _ = strconv.Atoi(f[0])
		first, _ = strconv.Atoi(f[1])
		return true
	}) {
		t.Fatalf("the first worker's child did not start: %+v", s.Workers())
	}
	t.Cleanup(func() {
		if herdtest.Alive(hog) { // it should have ended with its worker
			syscall.Kill(hog, syscall.SIGKILL)
		}
	})
	if !herdtest.Eventually(20*time.Second, func() bool {
		w := s.Workers()[0]
		return w.PID != first && w.PID != 0 && w.Ready
	}) {
		t.Fatalf("worker %d, whose detached child holds 160 MiB, was not replaced under a 100 MiB limit: %+v", first, s.Workers())
	}
	// The replacement's child holds nothing: its figure, once sampled, is
	// its own tree's, under the limit, and it stays. (Until then the slot
	// may still show the old worker's figure.)
	second := s.Workers()[0].PID
	var w herd.WorkerInfo
	if !herdtest.Eventually(10*time.Second, func() bool { w = s.Workers()[0]; return w.RSS > 0 && w.RSS < 100<<20 }) {
		t.Fatalf("the replacement %d, whose child holds nothing, is not seen under the limit: %+v", second, w)
	}
	if w.PID != second {
		t.Errorf("the replacement %d was replaced too: %+v", second, w)
	}
	if !herdtest.Eventually(10*time.Second, func() bool { return !herdtest.Alive(hog) }) {
		t.Errorf("the old worker's detached child %d outlived it", hog)
	}
}
