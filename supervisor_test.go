package herd_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/internal/herdtest"
	"github.com/herd-sh/herd/internal/testworker"
	"github.com/herd-sh/herd/worker"
)

func TestMain(m *testing.M) {
	testworker.Main()
	floodMain() // TestFloodIsHeldBackByASlowHandler's primary and worker
	// A self-forked copy of this test binary (TestSelfFork) is a worker.
	if os.Getenv("HERD_TEST_SELF_FORK") == "1" && worker.IsWorker() {
		if err := testworker.Lib(); err != nil {
			fmt.Fprintln(os.Stderr, "self-forked worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0") // race-built workers exit at once
	}
	goleak.VerifyTestMain(m)
}

// start runs a supervisor in the background; the returned function stops
// it and returns Run's error.
func start(t *testing.T, opts herd.Options) (*herd.Supervisor, func() error) {
	t.Helper()
	if opts.Stdout == nil {
		opts.Stdout = io.Discard
	}
	if opts.Stderr == nil {
		opts.Stderr = io.Discard
	}
	s, err := herd.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	var runErr error
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return after its context ended")
			}
		}
		return runErr
	}
	t.Cleanup(func() { stop() })
	return s, stop
}

func waitState(t *testing.T, s *herd.Supervisor, want herd.WorkerState) []herd.WorkerInfo {
	t.Helper()
	var ws []herd.WorkerInfo
	ok := herdtest.Eventually(15*time.Second, func() bool {
		ws = s.Workers()
		for _, w := range ws {
			if w.State != want || w.PID == 0 {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("workers not all %v: %+v", want, ws)
	}
	return ws
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count fds: %v", err)
	}
	return len(ents)
}

// Restarts must give back every fd they take: pipes, pidfds, sockets.
func TestNoFDLeakAcrossRestarts(t *testing.T) {
	before := openFDs(t)
	s, stop := start(t, herd.Options{
		Command: testworker.Command("http"),
		Workers: 2,
		Listen:  []string{"127.0.0.1:0"},
	})
	waitState(t, s, herd.StateReady)
	during := openFDs(t)
	for round := range 5 {
		ws := waitState(t, s, herd.StateReady)
		for _, w := range ws {
			syscall.Kill(w.PID, syscall.SIGKILL)
		}
		herdtest.Eventually(10*time.Second, func() bool {
			now := s.Workers()
			return now[0].Restarts > round && now[1].Restarts > round
		})
	}
	waitState(t, s, herd.StateReady)
	if n := openFDs(t); n != during {
		t.Errorf("fds after 10 restarts: %d, with the first workers: %d", n, during)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := openFDs(t); n != before {
		t.Errorf("fds after Run returned: %d, before New: %d", n, before)
	}
}

func TestWorkersReportIDsStatesAndRestarts(t *testing.T) {
	s, stop := start(t, herd.Options{
		Command: testworker.Command("http"),
		Workers: 3,
		Listen:  []string{"web=127.0.0.1:0"},
	})
	ws := waitState(t, s, herd.StateReady)
	for i, w := range ws {
		if w.ID != i || w.Started.IsZero() || w.Restarts != 0 || w.LastExit != "" {
			t.Errorf("worker %d: %+v", i, w)
		}
	}
	syscall.Kill(ws[2].PID, syscall.SIGKILL)
	var w2 herd.WorkerInfo
	herdtest.Eventually(10*time.Second, func() bool {
		w2 = s.Workers()[2]
		return w2.Restarts == 1 && w2.State == herd.StateReady
	})
	if w2.Restarts != 1 || w2.PID == ws[2].PID || w2.LastExit != "signal: killed" {
		t.Fatalf("slot 2 after kill -9: %+v", w2)
	}
	ls := s.Listeners()
	if len(ls) != 1 || ls[0].Name != "web" || ls[0].Sockets != 3 {
		t.Fatalf("listeners %+v", ls)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for _, w := range s.Workers() {
		if w.State != herd.StateExited || w.PID != 0 {
			t.Errorf("after stop: %+v", w)
		}
	}
	// The sockets are given back when Run returns.
	if c, err := net.DialTimeout("tcp", ls[0].Addr.String(), time.Second); err == nil {
		c.Close()
		t.Error("listener still accepts after Run returned")
	}
}

func TestRunErrorsCanBeToldApart(t *testing.T) {
	s, err := herd.New(herd.Options{
		Command: testworker.Command("exit", "1"),
		Workers: 1,
		Restart: herd.RestartPolicy{MaxRestarts: 2, BackoffInitial: time.Millisecond},
		Stdout:  io.Discard,
		Stderr:  io.Discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Run(context.Background()) // ends by itself
	if !errors.Is(err, herd.ErrCrashLoop) {
		t.Fatalf("Run: %v, want ErrCrashLoop", err)
	}

	_, err = herd.New(herd.Options{Command: []string{"/no/such/binary"}})
	if !errors.Is(err, herd.ErrCannotStart) {
		t.Fatalf("New with a missing command: %v, want ErrCannotStart", err)
	}
	_, err = herd.New(herd.Options{Command: []string{"true"}, Workers: -1})
	if !errors.Is(err, herd.ErrBadOptions) {
		t.Fatalf("New with -1 workers: %v, want ErrBadOptions", err)
	}
	_, err = herd.New(herd.Options{Command: []string{"true"}, Listen: []string{"nope"}})
	if !errors.Is(err, herd.ErrBadOptions) || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("New with a bad address: %v, want ErrBadOptions naming it", err)
	}
}

func TestKillEndsTheStopAtOnce(t *testing.T) {
	s, stop := start(t, herd.Options{
		Command:     testworker.Command("sleep"), // ignores SIGTERM
		Workers:     2,
		StopTimeout: time.Hour,
	})
	waitState(t, s, herd.StateReady)
	s.Kill()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestSecondRunIsRefused(t *testing.T) {
	s, stop := start(t, herd.Options{Command: testworker.Command("sleep"), Workers: 1, StopTimeout: time.Millisecond})
	waitState(t, s, herd.StateReady)
	if err := s.Run(context.Background()); !errors.Is(err, herd.ErrRunning) {
		t.Fatalf("second Run: %v, want ErrRunning", err)
	}
	stop()
}

func TestCloseWithoutRunGivesBackSockets(t *testing.T) {
	before := openFDs(t)
	s, err := herd.New(herd.Options{Command: []string{"true"}, Workers: 4, Listen: []string{"127.0.0.1:0", "127.0.0.1:0"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := openFDs(t); n != before {
		t.Fatalf("fds %d after Close, %d before New", n, before)
	}
}

// A worker's uptime counts from its own start: it grows while the worker
// runs, starts again from zero when the worker is replaced (gracefully or
// after a crash), leaves the other slots' alone, and is 0 once there is no
// worker. The bounds below follow from the order of the calls alone.
func TestUptimeGrowsAndRestartsWithTheWorker(t *testing.T) {
	begin := time.Now()
	s, stop := start(t, herd.Options{Command: testworker.Command("lib"), Workers: 2})
	ws := waitState(t, s, herd.StateReady)
	first := ws[0]
	u1 := first.Uptime()
	if first.Started.Before(begin) || u1 <= 0 || u1 > time.Since(begin) {
		t.Fatalf("worker 0 started %v (test began %v), uptime %v: want a start after the test began and an uptime since then", first.Started, begin, u1)
	}
	const pause = 200 * time.Millisecond
	time.Sleep(pause)
	later := s.Workers()[0]
	if !later.Started.Equal(first.Started) || later.PID != first.PID {
		t.Fatalf("worker 0 changed while nothing happened: %+v, then %+v", first, later)
	}
	if u2 := later.Uptime(); u2 < u1+pause {
		t.Errorf("uptime %v, then %v after a %v pause: it does not grow", u1, u2, pause)
	}

	// A graceful restart: Restart returns once the new worker serves.
	asked := time.Now()
	if err := s.Restart(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	now := s.Workers()
	if now[0].PID == first.PID || now[0].PID == 0 || !now[0].Started.After(asked) || now[0].Uptime() > time.Since(asked) {
		t.Errorf("after Restart(0): %+v, uptime %v; want a new pid started after the restart was asked for (%v)", now[0], now[0].Uptime(), asked)
	}
	if !now[1].Started.Equal(ws[1].Started) || now[1].Uptime() < time.Since(asked) {
		t.Errorf("worker 1 was not restarted, but its start moved: %v, then %v (uptime %v)", ws[1].Started, now[1].Started, now[1].Uptime())
	}

	// A crash: the replacement's uptime counts from its own start.
	killed := time.Now()
	syscall.Kill(now[1].PID, syscall.SIGKILL)
	var w1 herd.WorkerInfo
	herdtest.Eventually(15*time.Second, func() bool {
		w1 = s.Workers()[1]
		return w1.Restarts == 1 && w1.State == herd.StateReady && w1.PID != 0
	})
	if w1.Restarts != 1 || w1.PID == now[1].PID || !w1.Started.After(killed) || w1.Uptime() > time.Since(killed) || w1.Uptime() <= 0 {
		t.Errorf("slot 1 after kill -9: %+v, uptime %v; want a new worker started after the kill (%v)", w1, w1.Uptime(), killed)
	}

	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for _, w := range s.Workers() {
		if w.Uptime() != 0 {
			t.Errorf("worker %d: uptime %v with no process (%+v)", w.ID, w.Uptime(), w)
		}
	}
}

// A worker that had stayed up is replaced the moment it dies; when that
// death is also one restart too many, the replacement started for it must
// go too, at once: Run returns ErrCrashLoop with no process left, even if
// the replacement would never become ready (here it never accepts).
func TestCrashLoopStopsAReplacementStartedEarly(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	count := filepath.Join(dir, "count")
	script := filepath.Join(dir, "worker.sh")
	// Starts 1 and 2 serve and die after 400 ms (past BackoffReset, so each
	// is replaced at once); start 3 holds its socket and never accepts.
	body := fmt.Sprintf(`#!/bin/sh
echo $$ >> %[1]q.pids
n=$(($(cat %[1]q 2>/dev/null || echo 0) + 1))
echo $n > %[1]q
if [ $n -ge 3 ]; then exec %[2]q %[3]s sleep; fi
TEST_EXIT_AFTER=400ms exec %[2]q %[3]s http
`, count, os.Args[0], testworker.Marker)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := herd.New(herd.Options{
		Command:     []string{script},
		Workers:     1,
		Listen:      []string{"127.0.0.1:0"},
		Ready:       herd.Readiness{Mode: herd.ReadyListen},
		Restart:     herd.RestartPolicy{MaxRestarts: 1, Window: time.Minute, BackoffReset: 300 * time.Millisecond},
		StopTimeout: time.Hour, // the replacement ignores SIGTERM: only a kill ends it
		Stdout:      io.Discard,
		Stderr:      io.Discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	select {
	case err := <-done:
		if !errors.Is(err, herd.ErrCrashLoop) {
			t.Fatalf("Run: %v, want ErrCrashLoop", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return within 20s of the crash loop: the replacement started early keeps the slot open")
	}
	b, err := os.ReadFile(count + ".pids")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, _ := strconv.Atoi(f); herdtest.Alive(pid) {
			t.Errorf("worker %d outlived Run", pid)
		}
	}
}

// A reload cut short by the cluster's stop is not a reload that worked.
func TestReloadCutShortByAStopSaysSo(t *testing.T) {
	t.Parallel()
	gate := filepath.Join(t.TempDir(), "gate")
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var log herdtest.SyncBuffer
	s, stop := start(t, herd.Options{
		Command: testworker.Command("lib"),
		Workers: 1,
		Listen:  []string{"127.0.0.1:0"},
		Env:     append(os.Environ(), "TEST_READY_GATE="+gate),
		Stderr:  &log,
	})
	old := waitState(t, s, herd.StateReady)[0].PID
	os.Remove(gate) // the replacement waits at its gate
	reloaded := make(chan error, 1)
	go func() { reloaded <- s.Reload(context.Background()) }()
	if !herdtest.Eventually(15*time.Second, func() bool { return s.Workers()[0].NextPID != 0 }) {
		t.Fatal("the reload started no replacement")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-reloaded:
		if !errors.Is(err, herd.ErrStopping) || !strings.Contains(err.Error(), "reload stopped after 0 of 1 workers: the cluster is stopping") {
			t.Errorf("Reload cut short by a stop: %v, want ErrStopping saying so", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Reload did not return after the stop")
	}
	if herdtest.Alive(old) {
		t.Errorf("worker %d outlived the stop", old)
	}
	// Every worker that started has its end logged, with how it ended and
	// how long it ran: the replacement the stop cut short too.
	lines := strings.Split(log.String(), "\n")
	for i, l := range lines {
		if !strings.Contains(l, `msg="worker started"`) {
			continue
		}
		_, pid, _ := strings.Cut(l, " pid=")
		pid = strings.Fields(pid)[0]
		ended := false
		for _, later := range lines[i+1:] {
			if strings.Contains(later, " pid="+pid+" ") && strings.Contains(later, " status=") && strings.Contains(later, " uptime=") {
				ended = true
			}
		}
		if !ended {
			t.Errorf("worker %s started and its end was never logged; log:\n%s", pid, log.String())
		}
	}
}

// stampedEvents records a supervisor's events with when they came.
type stampedEvents struct {
	mu  sync.Mutex
	all []stampedEvent
}

type stampedEvent struct {
	at time.Time
	herd.Event
}

func (e *stampedEvents) add(ev herd.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, stampedEvent{time.Now(), ev})
}

// find returns the first event that f accepts.
func (e *stampedEvents) find(f func(stampedEvent) bool) (stampedEvent, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range e.all {
		if f(ev) {
			return ev, true
		}
	}
	return stampedEvent{}, false
}

// The restart backoff, end to end: a worker that crashes is replaced at
// once the first time; each further quick crash in a row waits
// BackoffInitial (100ms), doubling, ±20%; and a crash after the worker has
// stayed up for BackoffReset is again replaced at once. Gaps are measured
// from the kill to the replacement's start, which the delay can only
// lengthen; the immediate restarts must come within 1s, below what the
// sixth crash in a row already waits (1.6s ±20%) and far below what a
// seventh would (3.2s ±20%) had the backoff not been reset.
func TestRestartBackoffEndToEnd(t *testing.T) {
	t.Parallel()
	const reset = 3 * time.Second // far above a quick crash's uptime
	ev := &stampedEvents{}
	s, _ := start(t, herd.Options{
		Command: testworker.Command("lib"),
		Workers: 1,
		Restart: herd.RestartPolicy{BackoffReset: reset},
		OnEvent: ev.add,
	})
	// crash kills the first ready worker other than prev after it has been
	// up for at least upFor, and returns its pid and uptime, the delay its
	// restart event gave, and the time from the kill to the next worker's
	// start.
	crash := func(prev int, upFor time.Duration) (pid int, up, delay, gap time.Duration) {
		t.Helper()
		var w herd.WorkerInfo
		if !herdtest.Eventually(30*time.Second, func() bool {
			w = s.Workers()[0]
			return w.Ready && w.PID != 0 && w.PID != prev
		}) {
			t.Fatalf("no new ready worker after pid %d: %+v", prev, w)
		}
		time.Sleep(upFor - w.Uptime())
		killed := time.Now()
		up = killed.Sub(w.Started)
		if err := syscall.Kill(w.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		restart, ok1 := stampedEvent{}, false
		next, ok2 := stampedEvent{}, false
		herdtest.Eventually(30*time.Second, func() bool {
			restart, ok1 = ev.find(func(e stampedEvent) bool { return e.Kind == herd.EventRestart && e.PID == w.PID })
			next, ok2 = ev.find(func(e stampedEvent) bool { return e.Kind == herd.EventStarted && e.at.After(killed) })
			return ok1 && ok2
		})
		if !ok1 || !ok2 {
			t.Fatalf("after the kill of worker %d: restart event %v, next start %v", w.PID, ok1, ok2)
		}
		return w.PID, up, restart.Delay, next.at.Sub(killed)
	}

	prev := 0
	for i, base := range []time.Duration{0, 100, 200, 400, 800, 1600} {
		base *= time.Millisecond
		pid, up, delay, gap := crash(prev, 0)
		prev = pid
		if up >= reset {
			t.Fatalf("crash %d: the worker had been up %v, past the %v reset: the machine is too slow for this test", i+1, up, reset)
		}
		t.Logf("crash %d: delay %v, replacement started %v after the kill", i+1, delay, gap.Round(time.Millisecond))
		if base == 0 {
			if delay != 0 || gap > time.Second {
				t.Errorf("crash 1: restart delay %v, replacement started %v after the kill; want at once", delay, gap)
			}
			continue
		}
		if lo, hi := base*8/10, base*12/10; delay < lo || delay > hi {
			t.Errorf("crash %d in a row: restart delay %v, want %v ±20%%", i+1, delay, base)
		}
		if gap < delay {
			t.Errorf("crash %d in a row: replacement started %v after the kill, before its %v delay", i+1, gap, delay)
		}
	}
	// Up for longer than the reset: the next crash is the first again.
	_, up, delay, gap := crash(prev, reset+500*time.Millisecond)
	t.Logf("crash after %v up: delay %v, replacement started %v after the kill", up.Round(time.Millisecond), delay, gap.Round(time.Millisecond))
	if delay != 0 || gap > time.Second {
		t.Errorf("a crash after %v up (reset %v): restart delay %v, replacement started %v after the kill; want at once", up.Round(time.Millisecond), reset, delay, gap)
	}
}

// The library's stop defaults: with StopSignal and StopTimeout unset,
// workers are asked to stop with SIGTERM, and one that ignores it is
// killed 10s later.
func TestStopDefaultsAreSIGTERMAndTenSeconds(t *testing.T) {
	t.Parallel()
	var out, log herdtest.SyncBuffer
	s, stop := start(t, herd.Options{
		Command: testworker.Command("http"),
		Workers: 1,
		Listen:  []string{"127.0.0.1:0"},
		Env:     append(os.Environ(), "TEST_IGNORE_TERM=1", "TEST_SAY_SIGNAL=1"),
		Stdout:  &out,
		Stderr:  &log,
	})
	pid := waitState(t, s, herd.StateReady)[0].PID
	asked := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	took := time.Since(asked)
	if !strings.Contains(log.String(), "msg=stopping signal=SIGTERM timeout=10s") {
		t.Errorf("no stop line with signal=SIGTERM timeout=10s; log:\n%s", log.String())
	}
	if said := fmt.Sprintf("w0 %d | got signal SIGTERM", pid); !strings.Contains(out.String(), said) {
		t.Errorf("the worker did not say it got SIGTERM; its output:\n%s", out.String())
	}
	if took < 9500*time.Millisecond || took > 25*time.Second {
		t.Errorf("Run returned %v after the stop, want the 10s default stop timeout", took.Round(time.Millisecond))
	}
	if !strings.Contains(log.String(), fmt.Sprintf(`msg="worker did not stop in time; killing its process group" worker=0 pid=%d timeout=10s`, pid)) {
		t.Errorf("the worker was not killed at the 10s default; log:\n%s", log.String())
	}
}
