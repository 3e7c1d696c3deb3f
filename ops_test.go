package herd_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/internal/herdtest"
	"github.com/herd-sh/herd/internal/testworker"
)

// pids returns the current worker pids, by slot.
func pids(s *herd.Supervisor) []int {
	var out []int
	for _, w := range s.Workers() {
		out = append(out, w.PID)
	}
	return out
}

// waitAllReady waits until n workers are ready and none is being replaced.
func waitAllReady(t *testing.T, s *herd.Supervisor, n int) []herd.WorkerInfo {
	t.Helper()
	var ws []herd.WorkerInfo
	ok := herdtest.Eventually(30*time.Second, func() bool {
		ws = s.Workers()
		if len(ws) != n {
			return false
		}
		for _, w := range ws {
			if !w.Ready || w.State != herd.StateReady || w.NextPID != 0 {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("want %d ready workers, have %+v", n, ws)
	}
	return ws
}

// Under keep-alive and new-connection load, three rolling reloads, a scale
// up and down, and a health-triggered replacement fail no request and
// refuse no connection.
func TestOperationsUnderLoadFailNothing(t *testing.T) {
	s, stop := start(t, herd.Options{
		Command: testworker.Command("lib"),
		Workers: 2,
		Listen:  []string{"127.0.0.1:0"},
		Health:  herd.HealthCheck{Kind: herd.HealthHTTP, Path: "/health", Interval: 100 * time.Millisecond, Timeout: time.Second, Failures: 2},
	})
	waitAllReady(t, s, 2)
	addr := s.Listeners()[0].Addr.String()
	keep := herdtest.StartLoad(addr, 8, true)
	fresh := herdtest.StartLoad(addr, 4, false)
	ctx := context.Background()
	seen := map[int]bool{}
	note := func() {
		for _, pid := range pids(s) {
			seen[pid] = true
		}
	}
	note()

	for round := range 3 {
		before := pids(s)
		if err := s.Reload(ctx); err != nil {
			t.Fatalf("reload %d: %v", round, err)
		}
		after := waitAllReady(t, s, 2)
		for i, w := range after {
			if w.PID == before[i] {
				t.Errorf("reload %d left worker %d on pid %d", round, i, w.PID)
			}
		}
		note()
	}
	if err := s.Scale(ctx, 3); err != nil {
		t.Fatal(err)
	}
	waitAllReady(t, s, 3)
	note()
	if err := s.Scale(ctx, 2); err != nil {
		t.Fatal(err)
	}
	waitAllReady(t, s, 2)

	// Worker 1 starts failing its health checks: it is replaced.
	sick := s.Workers()[1].PID
	if err := s.Send(ctx, 1, "sick", nil); err != nil {
		t.Fatal(err)
	}
	if !herdtest.Eventually(20*time.Second, func() bool { w := s.Workers()[1]; return w.PID != sick && w.Ready }) {
		t.Fatalf("the unhealthy worker %d was not replaced: %+v", sick, s.Workers())
	}
	note()
	time.Sleep(300 * time.Millisecond)

	k, f := keep.Stop(), fresh.Stop()
	if k.Failed+f.Failed != 0 {
		t.Errorf("%d keep-alive and %d new-connection requests failed; first: %v %v", k.Failed, f.Failed, k.Errors, f.Errors)
	}
	if k.OK < 200 || f.OK < 200 {
		t.Errorf("only %d keep-alive and %d new-connection answers: the load did not run", k.OK, f.OK)
	}
	served := 0
	for pid := range seen {
		if k.PIDs[pid]+f.PIDs[pid] > 0 {
			served++
		}
	}
	if served < 6 {
		t.Errorf("only %d of the %d workers that ran served requests", served, len(seen))
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// A reload to workers that never become ready stops at the first one and
// leaves the old workers serving.
func TestReloadToBrokenWorkersKeepsTheOld(t *testing.T) {
	broken := filepath.Join(t.TempDir(), "broken")
	ev := &events{}
	s, stop := start(t, herd.Options{
		Command: testworker.Command("lib"),
		Workers: 2,
		Listen:  []string{"127.0.0.1:0"},
		Env:     append(os.Environ(), "TEST_NOT_READY_IF="+broken),
		Ready:   herd.Readiness{Timeout: 500 * time.Millisecond},
		OnEvent: ev.add,
	})
	before := waitAllReady(t, s, 2)
	os.WriteFile(broken, nil, 0o644)
	err := s.Reload(context.Background())
	if !errors.Is(err, herd.ErrNotReady) {
		t.Fatalf("reload to broken workers: %v, want ErrNotReady", err)
	}
	after := waitAllReady(t, s, 2)
	if !slices.Equal(pids(s), []int{before[0].PID, before[1].PID}) {
		t.Fatalf("workers after the failed reload %+v, want the old ones %+v", after, before)
	}
	// Only one broken worker was tried: the reload stopped there.
	if n := ev.count(herd.EventStarted); n != 3 {
		t.Errorf("%d workers started, want the 2 old ones and 1 broken one", n)
	}
	url := "http://" + s.Listeners()[0].Addr.String() + "/"
	for _, r := range replies(t, url, 20) {
		if r.PID != before[0].PID && r.PID != before[1].PID {
			t.Fatalf("answer from pid %d, not an old worker", r.PID)
		}
	}
	stop()
}

// replies fetches url n times on new connections.
func replies(t *testing.T, url string, n int) []herdtest.Reply {
	t.Helper()
	c := herdtest.NewClient(false)
	defer c.CloseIdleConnections()
	var out []herdtest.Reply
	for range n {
		r, err := herdtest.Get(c, url)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// Plain workers (no protocol) are ready once they accept on their sockets,
// seen from /proc; a worker that never accepts never is.
func TestListenReadiness(t *testing.T) {
	if _, err := os.Stat("/proc/self/fdinfo"); err != nil {
		t.Skip("needs /proc")
	}
	s, stop := start(t, herd.Options{
		Command: testworker.Command("http"), // activation.Listeners + http.Server, no protocol
		Workers: 2,
		Listen:  []string{"127.0.0.1:0"},
		Ready:   herd.Readiness{Mode: herd.ReadyListen},
	})
	waitAllReady(t, s, 2)
	stop()

	s, stop = start(t, herd.Options{
		Command: testworker.Command("sleep"), // holds the socket, never accepts
		Workers: 1,
		Listen:  []string{"127.0.0.1:0"},
		Ready:   herd.Readiness{Timeout: time.Hour},
	})
	time.Sleep(time.Second)
	if w := s.Workers()[0]; w.Ready || w.State != herd.StateStarting || w.PID == 0 {
		t.Errorf("a worker that never accepts: %+v, want running but starting", w)
	}
	stop()
}

// A worker over MaxMemory is replaced; a worker past MaxLifetime too, one
// at a time.
func TestMemoryAndLifetimeRecycling(t *testing.T) {
	s, stop := start(t, herd.Options{
		Command:   testworker.Command("lib"),
		Workers:   2,
		MaxMemory: 200 << 20,
	})
	ws := waitAllReady(t, s, 2)
	if !herdtest.Eventually(10*time.Second, func() bool { return s.Workers()[0].RSS > 0 }) {
		t.Fatal("no memory figure for worker 0")
	}
	if err := s.Send(context.Background(), 0, "grow", map[string]int{"mb": 300}); err != nil {
		t.Fatal(err)
	}
	if !herdtest.Eventually(20*time.Second, func() bool { return s.Workers()[0].PID != ws[0].PID }) {
		t.Fatalf("worker 0 over the memory limit was not replaced: %+v", s.Workers())
	}
	if s.Workers()[1].PID != ws[1].PID {
		t.Error("worker 1, under the limit, was replaced too")
	}
	stop()

	s, stop = start(t, herd.Options{
		Command:     testworker.Command("lib"),
		Workers:     3,
		MaxLifetime: 300 * time.Millisecond,
	})
	// Not waitAllReady: by the time all three are up, one may be being
	// recycled already.
	waitState(t, s, herd.StateReady)
	first := pids(s)
	replaced := map[int]bool{}
	deadline := time.Now().Add(20 * time.Second)
	for len(replaced) < 3 && time.Now().Before(deadline) {
		busy := 0
		for i, w := range s.Workers() {
			if w.NextPID != 0 {
				busy++
			}
			if first[i] != 0 && w.PID != first[i] {
				replaced[i] = true
			}
		}
		if busy > 1 {
			t.Fatalf("%d workers recycled at once: %+v", busy, s.Workers())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(replaced) < 3 {
		t.Errorf("recycled %v within 20s, want all 3", replaced)
	}
	stop()
}

// A worker that speaks the protocol and stops sending heartbeats (here:
// frozen by SIGSTOP) is taken for hung and replaced.
func TestHungWorkerIsReplaced(t *testing.T) {
	s, stop := start(t, herd.Options{
		Command:     testworker.Command("lib"),
		Workers:     1,
		Health:      herd.HealthCheck{Heartbeat: 600 * time.Millisecond},
		StopTimeout: 500 * time.Millisecond,
	})
	hung := waitAllReady(t, s, 1)[0].PID
	// A worker that beats is left alone, however long it runs.
	time.Sleep(2 * time.Second)
	if w := s.Workers()[0]; w.PID != hung {
		t.Fatalf("a beating worker was replaced: %+v", w)
	}
	herdtest.Freeze(t, hung)
	if !herdtest.Eventually(20*time.Second, func() bool { w := s.Workers()[0]; return w.PID != hung && w.Ready }) {
		t.Fatalf("the hung worker %d was not replaced: %+v", hung, s.Workers())
	}
	if !herdtest.Eventually(10*time.Second, func() bool { return !herdtest.Alive(hung) }) {
		t.Errorf("the hung worker %d is still alive", hung)
	}
	stop()
}

// Scaling adds and removes the highest slots; new workers learn the new
// size.
func TestScale(t *testing.T) {
	s, stop := start(t, herd.Options{
		Command: testworker.Command("lib"),
		Workers: 2,
		Listen:  []string{"127.0.0.1:0"},
	})
	waitAllReady(t, s, 2)
	ctx := context.Background()
	if err := s.Scale(ctx, 4); err != nil {
		t.Fatal(err)
	}
	ws := waitAllReady(t, s, 4)
	url := "http://" + s.Listeners()[0].Addr.String() + "/"
	seen := map[int]int{}
	for _, r := range replies(t, url, 200) {
		seen[r.ID] = r.Workers
	}
	if seen[3] != 4 {
		t.Errorf("worker 3 answered with HERD_WORKERS=%d (seen %v), want 4", seen[3], seen)
	}
	if err := s.Scale(ctx, 1); err != nil {
		t.Fatal(err)
	}
	waitAllReady(t, s, 1)
	for _, w := range ws[1:] {
		if !herdtest.Eventually(10*time.Second, func() bool { return !herdtest.Alive(w.PID) }) {
			t.Errorf("worker %d (pid %d) still runs after scaling down to 1", w.ID, w.PID)
		}
	}
	for _, r := range replies(t, url, 50) {
		if r.ID != 0 {
			t.Fatalf("answer from worker %d after scaling down to 1", r.ID)
		}
	}
	if err := s.Scale(ctx, 0); !errors.Is(err, herd.ErrBadOptions) {
		t.Errorf("Scale(0): %v, want ErrBadOptions", err)
	}
	stop()
}

// A worker killed for not becoming ready is a failed start: however long
// --ready-timeout let it run, it never served, so it does not clear the
// slot's backoff as a worker that stayed up would. Here the readiness
// timeout is longer than BackoffReset; the slot must still back off.
func TestNeverReadyWorkerBacksOff(t *testing.T) {
	ev := &events{}
	s, stop := start(t, herd.Options{
		Command: testworker.Command("sleep"), // holds its socket, never accepts
		Workers: 1,
		Listen:  []string{"127.0.0.1:0"},
		Ready:   herd.Readiness{Timeout: 300 * time.Millisecond},
		Restart: herd.RestartPolicy{BackoffReset: 100 * time.Millisecond},
		OnEvent: ev.add,
	})
	var delays []time.Duration
	herdtest.Eventually(20*time.Second, func() bool {
		delays = ev.restartDelays()
		return len(delays) >= 3
	})
	if len(delays) < 3 || delays[2] == 0 {
		t.Fatalf("restart delays %v: want the third failed start in a row to wait", delays)
	}
	if w := s.Workers()[0]; w.Restarts < 3 || !strings.Contains(w.LastError, "did not become ready: not ready within 300ms") {
		t.Errorf("status after 3 failed starts: restarts %d, last error %q", w.Restarts, w.LastError)
	}
	stop()
}

// restartDelays returns the Delay of every EventRestart, in order.
func (e *events) restartDelays() []time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []time.Duration
	for _, ev := range e.all {
		if ev.Kind == herd.EventRestart {
			out = append(out, ev.Delay)
		}
	}
	return out
}

// Options that could only make workers fail forever are refused by New.
func TestOptionsThatCannotWorkAreRefused(t *testing.T) {
	lib := testworker.Command("lib")
	for _, tc := range []struct {
		name string
		opts herd.Options
		want string
	}{
		{"jitter as long as the lifetime", herd.Options{MaxLifetime: time.Minute, LifetimeJitter: time.Minute}, "lifetime jitter 1m0s must be less than the max lifetime 1m0s"},
		{"jitter without a lifetime", herd.Options{LifetimeJitter: time.Second}, "without a max lifetime"},
		{"listen readiness without sockets", herd.Options{Ready: herd.Readiness{Mode: herd.ReadyListen}}, "there are none"},
		{"listen readiness in a hand-over mode", herd.Options{Ready: herd.Readiness{Mode: herd.ReadyListen}, Listen: []string{"127.0.0.1:0"}, Balance: herd.BalanceLeastConn}, "in --balance least-conn workers get none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Command, tc.opts.Workers = lib, 1
			s, err := herd.New(tc.opts)
			if err == nil {
				s.Close()
			}
			if !errors.Is(err, herd.ErrBadOptions) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want ErrBadOptions saying %q", err, tc.want)
			}
		})
	}
	// In proxy mode each worker has a port to watch.
	s, err := herd.New(herd.Options{Command: lib, Workers: 1, Balance: herd.BalanceProxy, Ready: herd.Readiness{Mode: herd.ReadyListen}, MaxLifetime: time.Minute, LifetimeJitter: 59 * time.Second})
	if err != nil {
		t.Fatalf("listen readiness in proxy mode, jitter under the lifetime: %v", err)
	}
	s.Close()
}

// --ready listen and MaxMemory read /proc: on Linux New takes them; off
// Linux it refuses them, saying so, rather than run workers that are
// never ready or a limit that never applies.
func TestLinuxOnlyOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts herd.Options
		want string
	}{
		{"listen readiness", herd.Options{Ready: herd.Readiness{Mode: herd.ReadyListen}, Listen: []string{"127.0.0.1:0"}, Balance: herd.BalanceShared}, "only Linux has"},
		{"max memory", herd.Options{MaxMemory: 100 << 20}, "only Linux has"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Command, tc.opts.Workers = testworker.Command("lib"), 1
			s, err := herd.New(tc.opts)
			if err == nil {
				s.Close()
			}
			if runtime.GOOS == "linux" {
				if err != nil {
					t.Errorf("New on Linux: %v", err)
				}
				return
			}
			if !errors.Is(err, herd.ErrBadOptions) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), runtime.GOOS) {
				t.Errorf("New on %s: %v, want ErrBadOptions saying %q", runtime.GOOS, err, tc.want)
			}
		})
	}
}

// Restart of a slot whose worker is still starting waits for the
// replacement it starts, not for that worker: when the starting worker
// becomes ready first and the replacement never does, Restart says so.
func TestRestartOfAStartingWorkerWaitsForItsReplacement(t *testing.T) {
	// A worker is ready once the test opens its gate (gate.PID); the
	// replacement's never opens, so it never is.
	gate := filepath.Join(t.TempDir(), "gate")
	s, stop := start(t, herd.Options{
		Command: testworker.Command("lib"),
		Workers: 1,
		Listen:  []string{"127.0.0.1:0"},
		Env:     append(os.Environ(), "TEST_READY_GATE="+gate),
		Ready:   herd.Readiness{Timeout: 3 * time.Second},
	})
	var first herd.WorkerInfo
	if !herdtest.Eventually(15*time.Second, func() bool { first = s.Workers()[0]; return first.PID != 0 }) {
		t.Fatalf("no first worker: %+v", first)
	}
	if first.Ready || first.State != herd.StateStarting {
		t.Fatalf("the first worker, held at its gate: %+v, want it starting", first)
	}
	restarted := make(chan error, 1)
	go func() { restarted <- s.Restart(context.Background(), 0) }()
	var w herd.WorkerInfo
	if !herdtest.Eventually(15*time.Second, func() bool { w = s.Workers()[0]; return w.NextPID != 0 }) {
		t.Fatalf("no replacement started: %+v", w)
	}
	// The first worker becomes ready while its replacement starts.
	herdtest.OpenGate(fmt.Sprintf("%s.%d", gate, first.PID))
	if !herdtest.Eventually(15*time.Second, func() bool { w = s.Workers()[0]; return w.Ready }) {
		t.Fatalf("the first worker did not become ready: %+v", w)
	}
	if w.PID != first.PID || w.NextPID == 0 {
		t.Fatalf("slot 0 when its first worker became ready: %+v; want pid %d, its replacement still starting", w, first.PID)
	}
	select {
	case err := <-restarted:
		if !errors.Is(err, herd.ErrNotReady) {
			t.Fatalf("Restart: %v, want ErrNotReady: the replacement never became ready", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Restart did not return")
	}
	if w := waitAllReady(t, s, 1)[0]; w.PID != first.PID {
		t.Errorf("slot 0 after the failed restart: %+v, want the first worker (pid %d) serving", w, first.PID)
	}
	stop()
}

// A reload replacing a slot that a scale-down retires meanwhile leaves
// that slot be: the reload succeeds.
func TestReloadSkipsASlotRetiredMeanwhile(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "gate")
	herdtest.OpenGate(gate) // open for the first workers
	s, stop := start(t, herd.Options{
		Command:     testworker.Command("lib"),
		Workers:     2,
		Listen:      []string{"127.0.0.1:0"},
		Env:         append(os.Environ(), "TEST_READY_GATE="+gate),
		ReloadBatch: 2,
	})
	before := waitAllReady(t, s, 2)
	// Both replacements wait at the gate while worker 1 is retired.
	os.Remove(gate)
	ctx := context.Background()
	reloaded := make(chan error, 1)
	go func() { reloaded <- s.Reload(ctx) }()
	var ws []herd.WorkerInfo
	if !herdtest.Eventually(15*time.Second, func() bool {
		ws = s.Workers()
		return ws[0].NextPID != 0 && ws[1].NextPID != 0
	}) {
		t.Fatalf("the reload did not start both replacements: %+v", ws)
	}
	if err := s.Scale(ctx, 1); err != nil {
		t.Fatal(err)
	}
	herdtest.OpenGate(gate)
	select {
	case err := <-reloaded:
		if err != nil {
			t.Fatalf("Reload with worker 1 retired meanwhile: %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Reload did not return")
	}
	if w := waitAllReady(t, s, 1)[0]; w.PID == before[0].PID {
		t.Errorf("worker 0 kept pid %d through the reload", w.PID)
	}
	stop()
}
