package herd_test

import (
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/internal/exits"
	"github.com/herd-sh/herd/internal/herdtest"
	"github.com/herd-sh/herd/internal/testworker"
)

// eventLog records a supervisor's events for a test to look through.
type eventLog struct {
	mu  sync.Mutex
	evs []herd.Event
}

func (l *eventLog) add(e herd.Event) {
	l.mu.Lock()
	l.evs = append(l.evs, e)
	l.mu.Unlock()
}

// find waits (10 s at most) for an event that f accepts and returns it.
func (l *eventLog) find(t *testing.T, what string, f func(herd.Event) bool) herd.Event {
	t.Helper()
	var found herd.Event
	ok := herdtest.Eventually(10*time.Second, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, e := range l.evs {
			if f(e) {
				found = e
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("no %s event; events: %+v", what, l.evs)
	}
	return found
}

// TestDyingWorkerIsReplacedAtOnce drives the kernel's early exit notice by
// hand, so that the order of things is the test's to choose: the notice
// starts the replacement while the old worker still runs, the replacement
// becomes ready before the old worker's exit is reported, and yet the old
// worker is not drained as in a reload (it ignores SIGTERM here, so a
// drain would show as an expected exit): its exit, when it comes, is the
// crash it is, counted as a restart, and the replacement takes the slot.
func TestDyingWorkerIsReplacedAtOnce(t *testing.T) {
	var log eventLog
	s, stop := start(t, herd.Options{
		Command:     testworker.Command("http"),
		Workers:     1,
		Listen:      []string{"127.0.0.1:0"},
		Env:         append(os.Environ(), "TEST_IGNORE_TERM=1"),
		StopTimeout: time.Second,
		OnEvent:     log.add,
	})
	old := waitState(t, s, herd.StateReady)[0].PID
	if got := herd.PostDying(s, 0); got != old {
		t.Fatalf("PostDying: pid %d, want the serving worker %d", got, old)
	}
	next := log.find(t, "replacement ready", func(e herd.Event) bool {
		return e.Kind == herd.EventReady && e.PID != old
	}).PID
	if w := s.Workers()[0]; w.PID != old || w.NextPID != next {
		t.Errorf("with the old worker not gone yet: %+v; want pid %d and next pid %d", w, old, next)
	}
	syscall.Kill(old, syscall.SIGKILL)
	exit := log.find(t, "old worker's exit", func(e herd.Event) bool {
		return e.Kind == herd.EventExited && e.PID == old
	})
	if exit.Expected {
		t.Errorf("the dying worker's exit was taken for an asked stop: it was drained as in a reload")
	}
	var w herd.WorkerInfo
	herdtest.Eventually(10*time.Second, func() bool {
		w = s.Workers()[0]
		return w.PID == next && w.State == herd.StateReady
	})
	if w.PID != next || w.State != herd.StateReady || w.Restarts != 1 || w.LastExit != "signal: killed" || w.NextPID != 0 {
		t.Fatalf("slot 0 after the takeover: %+v; want pid %d ready, 1 restart, last exit signal: killed", w, next)
	}
	resp, err := http.Get("http://" + s.Listeners()[0].Addr.String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "pid="+strconv.Itoa(next)+" ") {
		t.Errorf("answered by %q, want pid %d", body, next)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestKilledWorkerIsReplacedBeforeItsExitIsReported checks that the
// kernel's early exit notice reaches the slot where the host gives it
// (root outside a container): a worker holding 512 MiB takes the kernel
// tens of milliseconds to tear down after kill -9, and its replacement is
// started within that time, before its exit is reported. Without the
// notice the replacement starts only after the exit.
func TestKilledWorkerIsReplacedBeforeItsExitIsReported(t *testing.T) {
	if n, err := exits.Open(); err != nil {
		t.Skipf("no early exit notices here (%v): herd replaces a crashed worker once its exit is reported", err)
	} else {
		n.Close()
	}
	var log eventLog
	s, _ := start(t, herd.Options{
		Command: testworker.Command("http"),
		Workers: 1,
		Listen:  []string{"127.0.0.1:0"},
		Env:     append(os.Environ(), "TEST_HEAP_MB=512"),
		OnEvent: log.add,
	})
	old := waitState(t, s, herd.StateReady)[0].PID
	syscall.Kill(old, syscall.SIGKILL)
	log.find(t, "old worker's exit", func(e herd.Event) bool {
		return e.Kind == herd.EventExited && e.PID == old
	})
	log.mu.Lock()
	defer log.mu.Unlock()
	for _, e := range log.evs {
		if e.Kind == herd.EventExited && e.PID == old {
			t.Fatalf("the killed worker's exit was reported before its replacement started; events: %+v", log.evs)
		}
		if e.Kind == herd.EventStarted && e.PID != old {
			return
		}
	}
}
