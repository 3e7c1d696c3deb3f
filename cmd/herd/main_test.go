package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/herd-sh/herd/internal/herdtest"
	"github.com/herd-sh/herd/internal/testworker"
)

// The test binary plays three parts: the tests; herd itself, when
// HERD_TEST_AS_CLI=1 (the real main code path, run as a child process);
// and the Go workers of internal/testworker.
func TestMain(m *testing.M) {
	testworker.Main()
	// Race-built children otherwise sleep a second at exit.
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	if os.Getenv("HERD_TEST_AS_CLI") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m)
}

// startHerd starts a primary with args.
func startHerd(t *testing.T, env []string, args ...string) *herdtest.Proc {
	t.Helper()
	env = append([]string{"HERD_TEST_AS_CLI=1", "HERD_CONTROL=" + herdtest.ControlPath(t)}, env...)
	return herdtest.Start(t, env, append([]string{os.Args[0], "run"}, args...)...)
}

// worker returns "-- TESTBIN __worker role args...".
func worker(role string, args ...string) []string {
	return append([]string{"--"}, testworker.Command(role, args...)...)
}

func argv(parts ...any) []string {
	var out []string
	for _, p := range parts {
		switch v := p.(type) {
		case string:
			out = append(out, v)
		case []string:
			out = append(out, v...)
		}
	}
	return out
}

// ids fetches url n times on new connections and returns the replies.
func replies(t *testing.T, url string, n, concurrency int) []herdtest.Reply {
	t.Helper()
	c := herdtest.NewClient(false)
	var mu sync.Mutex
	var out []herdtest.Reply
	var errs []error
	var wg sync.WaitGroup
	sem := make(chan struct{}, concurrency)
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			r, err := herdtest.Get(c, url)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			out = append(out, r)
		})
	}
	wg.Wait()
	c.CloseIdleConnections()
	if len(errs) > 0 {
		t.Fatalf("%d of %d requests to %s failed, first: %v", len(errs), n, url, errs[0])
	}
	return out
}

func waitServing(t *testing.T, h *herdtest.Proc, n int) {
	t.Helper()
	if !herdtest.Eventually(15*time.Second, func() bool { return h.Exited() || h.Count("msg=\"worker ready\"") >= n }) || h.Exited() {
		t.Fatalf("fewer than %d workers ready", n)
	}
}

func TestWorkersGetTheirSocketsAndIDs(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, argv("-w", "3", "-l", "a=127.0.0.1:0", "-l", "b=127.0.0.1:0", worker("http"))...)
	waitServing(t, h, 3)
	// Where the kernel takes herd's eBPF program, the slots take new
	// connections in turn: exactly a third each.
	roundRobin := strings.Contains(h.Stderr(), "steering=round-robin")
	if !roundRobin && !strings.Contains(h.Stderr(), "steering=\"flow hash\"") {
		t.Errorf("herd did not say how the kernel spreads connections:\n%s", h.Stderr())
	}
	for _, name := range []string{"a", "b"} {
		seen := map[int]bool{}
		per := map[int]int{}
		for _, r := range replies(t, "http://"+h.Addr(name)+"/", 60, 6) {
			seen[r.ID] = true
			per[r.ID]++
			if r.FDs != 2 || r.Names != "a:b" || r.Workers != 3 {
				t.Errorf("worker %d got LISTEN_FDS=%d LISTEN_FDNAMES=%q HERD_WORKERS=%d, want 2, a:b and 3", r.ID, r.FDs, r.Names, r.Workers)
			}
		}
		for id := range 3 {
			if !seen[id] {
				t.Errorf("listener %s: no reply from worker %d (seen %v)", name, id, seen)
			}
			if roundRobin && per[id] != 20 {
				t.Errorf("listener %s: 60 connections landed %v, want 20 per worker in turn", name, per)
			}
		}
	}
}

func TestEveryBalanceModeReachesEveryWorker(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"reuseport", "shared"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			h := startHerd(t, []string{"TEST_SLOW=20ms"}, argv("-w", "2", "--balance", mode, "-l", "127.0.0.1:0", worker("http"))...)
			waitServing(t, h, 2)
			seen := map[int]int{}
			for _, r := range replies(t, "http://"+h.Addr("listen0")+"/", 80, 8) {
				seen[r.ID]++
			}
			if seen[0] == 0 || seen[1] == 0 {
				t.Fatalf("%s: connections per worker %v, want both workers", mode, seen)
			}
			if !strings.Contains(h.Stderr(), "balance="+mode) {
				t.Errorf("herd did not report balance=%s", mode)
			}
		})
	}
}

func TestUnixAndIPv6Listeners(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "app.sock")
	h := startHerd(t, nil, argv("-w", "2", "-l", "unix:"+sock, "-l", "v6=[::1]:0", worker("http"))...)
	waitServing(t, h, 2)
	unixClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	r, err := herdtest.Get(unixClient, "http://unix/")
	if err != nil || r.Names != "listen0:v6" {
		t.Fatalf("reply over %s: %+v, %v; want names listen0:v6", sock, r, err)
	}
	if addr := h.Addr("v6"); !strings.HasPrefix(addr, "[::1]:") {
		t.Fatalf("v6 listener bound %s", addr)
	}
	replies(t, "http://"+h.Addr("v6")+"/", 10, 2)
	h.Signal(syscall.SIGTERM)
	if code := h.Wait(15 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket file %s left behind after stop (err %v)", sock, err)
	}
}

func TestKilledWorkerIsReplacedInItsSlot(t *testing.T) {
	t.Parallel()
	begin := time.Now()
	h := startHerd(t, nil, argv("-w", "2", "-l", "127.0.0.1:0", worker("http"))...)
	waitServing(t, h, 2)
	url := "http://" + h.Addr("listen0") + "/"
	old := pidsBySlot(t, url, 2)
	if err := syscall.Kill(old[1], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var now map[int]int
	ok := herdtest.Eventually(10*time.Second, func() bool {
		now = pidsBySlot(t, url, 2)
		return now[1] != old[1]
	})
	if !ok {
		t.Fatalf("slot 1 still served by pid %d after kill -9", old[1])
	}
	if now[0] != old[0] {
		t.Errorf("slot 0 changed pid %d -> %d; only slot 1 was killed", old[0], now[0])
	}
	exit := h.WaitLog(fmt.Sprintf(`msg="worker exited" worker=1 pid=%d status="signal: killed"`, old[1]), 5*time.Second)
	// The uptime is the worker's own: more than nothing, less than the
	// test has run.
	m := regexp.MustCompile(` uptime=(\S+)`).FindStringSubmatch(exit)
	if m == nil {
		t.Fatalf("exit line %q has no uptime", exit)
	}
	if up, err := time.ParseDuration(m[1]); err != nil || up <= 0 || up > time.Since(begin) {
		t.Errorf("exit line %q: uptime %q, want a duration between 0 and %v", exit, m[1], time.Since(begin))
	}
}

// When a worker's main process dies, what it started dies with it: a
// stray child must not keep serving (or holding resources) next to the
// replacement.
func TestCrashedWorkerTakesItsChildrenWithIt(t *testing.T) {
	t.Parallel()
	h := startHerd(t, []string{"TEST_CHILD=1"}, argv("-w", "1", "-l", "127.0.0.1:0", worker("http"))...)
	waitServing(t, h, 1)
	url := "http://" + h.Addr("listen0") + "/"
	c := herdtest.NewClient(false)
	defer c.CloseIdleConnections()
	old, err := herdtest.Get(c, url)
	if err != nil {
		t.Fatal(err)
	}
	if old.Child == 0 || !herdtest.Alive(old.Child) {
		t.Fatalf("worker %d has no live child (child=%d)", old.PID, old.Child)
	}
	if err := syscall.Kill(old.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Nothing else ends the child (sleep 3600, which the kill -9 of its
	// parent does not reach): only herd killing the worker's process group.
	if !herdtest.Eventually(5*time.Second, func() bool { return !herdtest.Alive(old.Child) }) {
		t.Errorf("child %d of the crashed worker %d still runs", old.Child, old.PID)
	}
	var now herdtest.Reply
	ok := herdtest.Eventually(10*time.Second, func() bool {
		now, err = herdtest.Get(c, url)
		return err == nil && now.PID != old.PID
	})
	if !ok || now.ID != 0 || now.Child == old.Child || !herdtest.Alive(now.Child) {
		t.Fatalf("after the crash slot 0 answers %+v (%v), want a new worker with a child of its own", now, err)
	}
}

// pidsBySlot asks until it has heard from every slot.
func pidsBySlot(t *testing.T, url string, n int) map[int]int {
	t.Helper()
	c := herdtest.NewClient(false)
	defer c.CloseIdleConnections()
	pids := map[int]int{}
	for i := 0; len(pids) < n && i < 400; i++ {
		if r, err := herdtest.Get(c, url); err == nil {
			pids[r.ID] = r.PID
		}
	}
	if len(pids) < n {
		t.Fatalf("heard from %d slots, want %d", len(pids), n)
	}
	return pids
}

// While a worker is being replaced, connections wait in its socket's
// queue (one worker) or are steered to the others (two): none is refused
// and every one is answered.
func TestNoConnectionRefusedDuringReplacement(t *testing.T) {
	t.Parallel()
	for _, workers := range []int{1, 2} {
		t.Run(strconv.Itoa(workers)+"workers", func(t *testing.T) {
			t.Parallel()
			h := startHerd(t, nil, argv("-w", strconv.Itoa(workers), "-l", "127.0.0.1:0", worker("http"))...)
			waitServing(t, h, workers)
			url := "http://" + h.Addr("listen0") + "/"
			for round := range 5 {
				victims := pidsBySlot(t, url, workers)
				for _, pid := range victims {
					syscall.Kill(pid, syscall.SIGKILL)
				}
				// Wait until the victims are gone, so no request below can
				// be accepted by a dying worker.
				for _, pid := range victims {
					if !herdtest.Eventually(5*time.Second, func() bool { return !herdtest.Alive(pid) }) {
						t.Fatalf("pid %d survived kill -9", pid)
					}
				}
				got := replies(t, url, 30, 30)
				for _, r := range got {
					if slices.Contains(slices.Collect(mapValues(victims)), r.PID) {
						t.Fatalf("round %d: reply from killed pid %d", round, r.PID)
					}
				}
			}
		})
	}
}

func mapValues(m map[int]int) func(func(int) bool) {
	return func(yield func(int) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

// A slot that keeps crashing must not keep a share of new connections
// waiting in its socket's queue: they are steered to the live slots.
func TestCrashLoopingSlotDoesNotStrandConnections(t *testing.T) {
	t.Parallel()
	h := startHerd(t, []string{"TEST_CRASH_SLOT=1"}, argv("-w", "2", "-l", "127.0.0.1:0", worker("http"))...)
	h.WaitLog("worker is crash-looping", 10*time.Second)
	url := "http://" + h.Addr("listen0") + "/"
	c := herdtest.NewClient(false)
	c.Timeout = 2 * time.Second // well under the slot's backoff once it grows
	defer c.CloseIdleConnections()
	// Let the backoff grow past the client's timeout.
	if !herdtest.Eventually(15*time.Second, func() bool { return h.Count("worker is crash-looping") >= 6 }) {
		t.Fatal("slot 1 did not keep crashing")
	}
	for i := range 100 {
		r, err := herdtest.Get(c, url)
		if err != nil {
			t.Fatalf("request %d: %v (stranded on the crash-looping slot?)", i, err)
		}
		if r.ID != 0 {
			t.Fatalf("request %d served by slot %d", i, r.ID)
		}
	}
}

func TestCrashLoopBacksOff(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, argv("-w", "1", worker("exit", "3"))...)
	time.Sleep(3 * time.Second)
	// 100ms doubling: starts at about 0, 0, 0.1, 0.3, 0.7, 1.5 and 3.1 s.
	exits := h.Count(`msg="worker exited"`)
	if exits < 4 || exits > 12 {
		t.Fatalf("%d exits in 3s, want the backoff's 5-8 (not a busy loop, not stuck)", exits)
	}
	if h.Count("worker is crash-looping") == 0 {
		t.Error("crash-looping not reported")
	}
	h.Signal(syscall.SIGTERM)
	if code := h.Wait(10 * time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM during backoff", code)
	}
}

func TestMaxRestartsExitsNonZero(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, argv("-w", "2", "--max-restarts", "3", "--restart-window", "1m", worker("exit", "3"))...)
	if code := h.Wait(20 * time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	if !strings.Contains(h.Stderr(), "worker restarted too often: more than 3 restarts within 1m0s") {
		t.Fatalf("no reason given; stderr:\n%s", h.Stderr())
	}
}

// One slot crash-loops, the other is healthy: when herd gives up it stops
// the healthy worker (gracefully, and logs it) before it exits non-zero,
// rather than leaving it to the parent-death signal or the watchdog.
func TestMaxRestartsStopsTheHealthyWorkers(t *testing.T) {
	t.Parallel()
	h := startHerd(t, []string{"TEST_CRASH_SLOT=1"}, argv("-w", "2", "--max-restarts", "4", "-l", "127.0.0.1:0", worker("http"))...)
	started := h.WaitLog(`msg="worker started" worker=0 `, 10*time.Second)
	var pid int
	if _, err := fmt.Sscanf(started[strings.Index(started, " pid="):], " pid=%d", &pid); err != nil {
		t.Fatalf("no pid in %q: %v", started, err)
	}
	if code := h.Wait(20 * time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	if !strings.Contains(h.Stderr(), "worker restarted too often: more than 4 restarts") {
		t.Errorf("no reason given")
	}
	// herd logs "worker stopped" when it has stopped and reaped a worker;
	// a worker left to the parent-death signal or the watchdog would die
	// after herd, unlogged.
	if !strings.Contains(h.Stderr(), fmt.Sprintf(`msg="worker stopped" worker=0 pid=%d `, pid)) {
		t.Errorf("the healthy worker %d was not stopped before herd exited", pid)
	}
	if herdtest.Alive(pid) {
		t.Errorf("the healthy worker %d outlived herd", pid)
	}
}

// -w defaults to the number of CPUs.
func TestWorkersDefaultToTheCPUs(t *testing.T) {
	t.Parallel()
	n := runtime.NumCPU()
	h := startHerd(t, nil, argv("-l", "127.0.0.1:0", worker("http"))...)
	if got := len(status(t, controlOf(t, h)).Workers); got != n {
		t.Fatalf("herd status lists %d workers, want runtime.NumCPU() = %d", got, n)
	}
	c := herdtest.NewClient(false)
	defer c.CloseIdleConnections()
	seen := map[int]bool{}
	herdtest.Eventually(15*time.Second, func() bool {
		if r, err := herdtest.Get(c, "http://"+h.Addr("listen0")+"/"); err == nil {
			seen[r.ID] = true
			if r.Workers != n {
				t.Fatalf("worker %d has HERD_WORKERS=%d, want %d", r.ID, r.Workers, n)
			}
		}
		return len(seen) == n
	})
	for id := range n {
		if !seen[id] {
			t.Errorf("no answer from worker %d (heard %v)", id, seen)
		}
	}
}

func TestSIGTERMStopsEverything(t *testing.T) {
	t.Parallel()
	h := startHerd(t, []string{"TEST_CHILD=1"}, argv("-w", "2", "-l", "127.0.0.1:0", worker("http"))...)
	waitServing(t, h, 2)
	procs := workerPIDs(t, "http://"+h.Addr("listen0")+"/", 2)
	h.Signal(syscall.SIGTERM)
	if code := h.Wait(15 * time.Second); code != 0 {
		t.Fatalf("exit %d, want 0", code)
	}
	for _, pid := range procs {
		if herdtest.Alive(pid) {
			t.Errorf("pid %d alive after herd stopped", pid)
		}
	}
	if n := h.Count(`msg="worker stopped"`); n != 2 {
		t.Errorf("%d workers reported stopped, want 2", n)
	}
}

// A child that left the worker's process group (setsid, Node's detached:
// true) is stopped with the worker all the same: herd signals the
// worker's whole process tree, not only its group.
func TestStopReachesChildrenThatLeftTheGroup(t *testing.T) {
	t.Parallel()
	h := startHerd(t, []string{"TEST_CHILD=setsid"}, argv("-w", "1", "-l", "127.0.0.1:0", worker("http"))...)
	waitServing(t, h, 1)
	procs := workerPIDs(t, "http://"+h.Addr("listen0")+"/", 1)
	if len(procs) != 2 {
		t.Fatalf("pids %v, want the worker's and its child's", procs)
	}
	if sid, err := unix.Getsid(procs[1]); err != nil || sid != procs[1] {
		t.Fatalf("the child %d is not in a session of its own (sid %d, %v)", procs[1], sid, err)
	}
	h.Signal(syscall.SIGTERM)
	if code := h.Wait(15 * time.Second); code != 0 {
		t.Fatalf("exit %d, want 0", code)
	}
	if !herdtest.Eventually(5*time.Second, func() bool { return !herdtest.Alive(procs[1]) }) {
		syscall.Kill(procs[1], syscall.SIGKILL)
		t.Errorf("the worker's child %d, in a session of its own, outlived herd's stop", procs[1])
	}
}

// workerPIDs returns the pids of every worker and of its grandchild.
func workerPIDs(t *testing.T, url string, n int) []int {
	t.Helper()
	c := herdtest.NewClient(false)
	defer c.CloseIdleConnections()
	seen := map[int]herdtest.Reply{}
	for i := 0; len(seen) < n && i < 400; i++ {
		if r, err := herdtest.Get(c, url); err == nil {
			seen[r.ID] = r
		}
	}
	var pids []int
	for _, r := range seen {
		pids = append(pids, r.PID)
		if r.Child != 0 {
			pids = append(pids, r.Child)
		}
	}
	if len(seen) < n {
		t.Fatalf("heard from %d workers, want %d", len(seen), n)
	}
	return pids
}

func TestWorkerIgnoringSIGTERMIsKilledAtDeadline(t *testing.T) {
	t.Parallel()
	h := startHerd(t, []string{"TEST_IGNORE_TERM=1"}, argv("-w", "1", "--stop-timeout", "1s", "-l", "127.0.0.1:0", worker("http"))...)
	waitServing(t, h, 1)
	pids := workerPIDs(t, "http://"+h.Addr("listen0")+"/", 1)
	start := time.Now()
	h.Signal(syscall.SIGTERM)
	if code := h.Wait(15 * time.Second); code != 0 {
		t.Fatalf("exit %d, want 0", code)
	}
	took := time.Since(start)
	if took < time.Second {
		t.Fatalf("herd stopped after %v, before the 1s stop timeout: the worker was not given its time", took)
	}
	// Far below the 10s default: the 1s deadline was the one applied.
	if took > 6*time.Second {
		t.Fatalf("herd stopped after %v: the worker was killed at the 10s default, not at --stop-timeout 1s", took)
	}
	if herdtest.Alive(pids[0]) {
		t.Fatalf("worker %d alive after the deadline", pids[0])
	}
	h.WaitLog("worker did not stop in time", time.Second)
}

func TestStopSignalIsConfigurable(t *testing.T) {
	t.Parallel()
	// The sleep worker ignores SIGTERM; SIGINT ends it. With a minute of
	// stop timeout, only the configured signal stops it in time.
	h := startHerd(t, nil, argv("-w", "2", "--stop-signal", "INT", "--stop-timeout", "1m", worker("sleep"))...)
	waitServing(t, h, 2)
	h.Signal(syscall.SIGTERM)
	if code := h.Wait(20 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if n := h.Count(`msg="worker stopped"`); n != 2 || h.Count(`status="signal: interrupt"`) != 2 {
		t.Fatalf("want both workers stopped by SIGINT:\n%s", h.Stderr())
	}
	if !strings.Contains(h.Stderr(), "msg=stopping signal=SIGINT") {
		t.Error("the stop signal is not named in the log")
	}
}

func TestSecondSIGINTKillsAtOnce(t *testing.T) {
	t.Parallel()
	h := startHerd(t, []string{"TEST_IGNORE_TERM=1"}, argv("-w", "1", "--stop-timeout", "1m", "-l", "127.0.0.1:0", worker("http"))...)
	waitServing(t, h, 1)
	h.Signal(syscall.SIGINT)
	h.WaitLog("msg=stopping", 5*time.Second)
	h.Signal(syscall.SIGINT)
	// The stop timeout is a minute; only the second Ctrl-C ends it sooner.
	if code := h.Wait(20 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func TestPrimaryKilledLeavesNoWorker(t *testing.T) {
	t.Parallel()
	h := startHerd(t, []string{"TEST_CHILD=1"}, argv("-w", "2", "-l", "127.0.0.1:0", worker("http"))...)
	waitServing(t, h, 2)
	pids := workerPIDs(t, "http://"+h.Addr("listen0")+"/", 2)
	watchdog := childrenNamed(h.Cmd.Process.Pid, "herd-watchdog")
	if len(watchdog) != 1 {
		t.Fatalf("want one watchdog child, got %v", watchdog)
	}
	pids = append(pids, watchdog...)
	primary := h.Cmd.Process.Pid
	h.Signal(syscall.SIGKILL)
	// The clock starts when the primary is dead (a zombie until reaped).
	if !herdtest.Eventually(5*time.Second, func() bool { return !herdtest.Alive(primary) }) {
		t.Fatal("the primary survived SIGKILL")
	}
	died := time.Now()
	// Required: gone within a second. The parent-death signal kills the
	// workers at once and the watchdog their children as soon as its pipe
	// from the primary closes; 1.5s leaves a loaded machine some slack
	// and still fails a fallback that polls every second or two.
	for _, pid := range pids {
		if !herdtest.Eventually(time.Until(died.Add(1500*time.Millisecond)), func() bool { return !herdtest.Alive(pid) }) {
			t.Errorf("pid %d still alive %v after the primary died", pid, time.Since(died).Round(time.Millisecond))
		}
	}
	h.Wait(5 * time.Second)
}

// childrenNamed lists the children of ppid whose argv[0] has base name.
func childrenNamed(ppid int, name string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 || f[1] != strconv.Itoa(ppid) {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		argv0, _, _ := strings.Cut(string(cmdline), "\x00")
		if filepath.Base(argv0) == name {
			out = append(out, pid)
		}
	}
	return out
}

func TestBadInputGivesOneClearLine(t *testing.T) {
	t.Parallel()
	busy := startHerd(t, nil, argv("-w", "1", "-l", "127.0.0.1:0", worker("http"))...)
	inUse := busy.Addr("listen0")
	notExec := filepath.Join(t.TempDir(), "script")
	os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644)
	badFormat := filepath.Join(t.TempDir(), "garbage")
	os.WriteFile(badFormat, []byte("\x7fELF not really"), 0o755)
	cases := []struct {
		name string
		args []string
		want string
		code int
	}{
		{"unknown flag", []string{"run", "--nosuch", "--", "true"}, "unknown flag: --nosuch", 2},
		{"zero workers", []string{"run", "-w", "0", "--", "true"}, "--workers must be at least 1", 2},
		{"bad balance", []string{"run", "--balance", "magic", "--", "true"}, "--balance must be reuseport, shared, round-robin", 2},
		{"bad signal", []string{"run", "--stop-signal", "SIGNOPE", "--", "true"}, `unknown signal "SIGNOPE"`, 2},
		{"bad duration", []string{"run", "--stop-timeout", "soon", "--", "true"}, `invalid argument "soon"`, 2},
		{"no command", []string{"run", "-l", "127.0.0.1:0"}, "missing worker command", 2},
		{"malformed address", []string{"run", "-l", "localhost", "--", "true"}, `bad listen address "localhost": missing port in address`, 2},
		{"port out of range", []string{"run", "-l", "127.0.0.1:99999", "--", "true"}, `port "99999" is not a number from 0 to 65535`, 2},
		{"bad name", []string{"run", "-l", "a b=127.0.0.1:0", "--", "true"}, "may only use letters", 2},
		{"duplicate name", []string{"run", "-l", "x=127.0.0.1:0", "-l", "x=127.0.0.1:0", "--", "true"}, `name "x" is used twice`, 2},
		{"address in use", []string{"run", "-l", inUse, "--", "true"}, "listen tcp " + inUse + ": bind: address already in use", 1},
		{"address in use, shared", []string{"run", "--balance", "shared", "-l", inUse, "--", "true"}, "bind: address already in use", 1},
		{"address not local", []string{"run", "-l", "192.0.2.1:8080", "--", "true"}, "bind: cannot assign requested address", 1},
		{"unix dir missing", []string{"run", "-l", "unix:/nonexistent/dir/s.sock", "--", "true"}, "listen unix /nonexistent/dir/s.sock: bind: no such file or directory", 1},
		{"command not found", []string{"run", "--", "no-such-command-xyz"}, `cannot start worker command: exec: "no-such-command-xyz": executable file not found in $PATH`, 1},
		{"command not executable", []string{"run", "--", notExec}, "permission denied", 1},
		{"command cannot be exec'ed", []string{"run", "-w", "3", "--", badFormat}, "cannot start worker command: exec " + badFormat + ": exec format error", 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := herdCtl(t, herdtest.ControlPath(t), tc.args...)
			if code != tc.code {
				t.Errorf("exit code %d, want %d", code, tc.code)
			}
			// herd's own log may come before (a cluster that started);
			// the error is said once, on the last line.
			lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
			last := lines[len(lines)-1]
			if !strings.HasPrefix(last, "herd: ") || !strings.Contains(last, tc.want) || strings.Count(stderr, tc.want) != 1 {
				t.Errorf("stderr %q, want the error once, as a last line \"herd: ...%s...\"", stderr, tc.want)
			}
			if tc.code == 2 && len(lines) != 1 {
				t.Errorf("a usage error must be a single line, got %q", stderr)
			}
			if len(stdout) != 0 {
				t.Errorf("stdout %q, want nothing", stdout)
			}
		})
	}
}

// An address the user may not bind fails like the other bad addresses: one
// line naming it, exit 1. Tests run as root, who may bind anything, so herd
// runs as nobody here.
func TestAddressWithoutPermission(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run herd as user nobody (uid 65534)")
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start"); err == nil {
		if first, _ := strconv.Atoi(strings.TrimSpace(string(b))); first <= 80 {
			t.Skipf("port 80 needs no privilege here (net.ipv4.ip_unprivileged_port_start=%d)", first)
		}
	}
	bin, dir := binForNobody(t)
	private := t.TempDir() // root's, mode 0700
	// want: what the line must name.
	for _, tc := range []struct{ addr, want string }{
		{"127.0.0.1:80", "127.0.0.1:80"},
		{"unix:" + private + "/s.sock", private + "/s.sock"},
	} {
		cmd := exec.Command(bin, "run", "--no-control", "-w", "1", "-l", tc.addr, "--", "true")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "HERD_TEST_AS_CLI=1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if cmd.ProcessState == nil {
			t.Fatalf("cannot run herd as nobody: %v", err)
		}
		if code := cmd.ProcessState.ExitCode(); code != 1 {
			t.Errorf("-l %s: exit code %d, want 1", tc.addr, code)
		}
		got := stderr.String()
		if strings.Count(got, "\n") != 1 || !strings.HasPrefix(got, "herd: ") || !strings.Contains(got, tc.want) || !strings.Contains(got, "permission denied") {
			t.Errorf("-l %s: stderr %q, want one line \"herd: ...\" naming %s and saying \"permission denied\"", tc.addr, got, tc.want)
		}
		if stdout.Len() != 0 {
			t.Errorf("-l %s: stdout %q, want nothing", tc.addr, stdout.String())
		}
	}
}

// binForNobody copies this test binary (herd, with HERD_TEST_AS_CLI=1)
// where user nobody can run it: it lives in root's private build
// directory. It returns the copy and its world-readable directory.
func binForNobody(t *testing.T) (bin, dir string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "herd-nobody")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "herd")
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, dir
}

// Without the privilege to load eBPF, reuseport steering falls back to
// the classic program, and herd says so and why on its listening line.
func TestReuseportWithoutBPFPrivilegeSaysSo(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run herd as user nobody (uid 65534)")
	}
	bin, dir := binForNobody(t)
	cmd := exec.Command(bin, "run", "--no-control", "-w", "2", "-l", "127.0.0.1:0", "--", "sleep", "30")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HERD_TEST_AS_CLI=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}, Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot run herd as nobody: %v", err)
	}
	defer func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}()
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "msg=listening") {
				line <- sc.Text()
				break
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	select {
	case l := <-line:
		if !strings.Contains(l, `steering="flow hash"`) || !strings.Contains(l, `round_robin="not permitted: loading BPF programs needs root or CAP_BPF"`) {
			t.Errorf("listening line %q; want the flow hash steering and why round-robin is not there", l)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no listening line within 15s")
	}
}

// A worker the readiness probe may not look into (one that made itself
// non-dumpable, under a herd without CAP_SYS_PTRACE) accepts but cannot be
// seen to: herd says why, once, and the readiness timeout names it,
// instead of killing the worker "not ready" with no reason given.
func TestReadinessProbeErrorIsTold(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run herd as user nobody (uid 65534)")
	}
	bin, dir := binForNobody(t)
	// ctypes is the stdlib's way to prctl(PR_SET_DUMPABLE, 0).
	const worker = `import ctypes, socket
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)
s = socket.socket(fileno=3)
while True:
    s.accept()[0].close()
`
	cmd := exec.Command(bin, "run", "--no-control", "-w", "1", "-l", "127.0.0.1:0",
		"--ready", "listen", "--ready-timeout", "1s", "--", "python3", "-c", worker)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HERD_TEST_AS_CLI=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}, Setpgid: true}
	var stderr herdtest.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot run herd as nobody: %v", err)
	}
	defer func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}()
	warn := "readiness probe cannot see what the worker waits on"
	timeout := "not ready within 1s (--ready listen); the readiness probe could not look: probe: "
	if !herdtest.Eventually(15*time.Second, func() bool {
		return strings.Contains(stderr.String(), timeout)
	}) {
		t.Fatalf("no readiness timeout naming the probe's error within 15s; stderr:\n%s", stderr.String())
	}
	got := stderr.String()
	if n := strings.Count(got[:strings.Index(got, timeout)], warn); n != 1 {
		t.Errorf("%d warnings %q before the timeout, want 1; stderr:\n%s", n, warn, got)
	}
	for _, l := range strings.Split(got, "\n") {
		if strings.Contains(l, warn) && !strings.Contains(l, "permission denied") {
			t.Errorf("warning %q does not say permission denied", l)
		}
	}
}

func TestWorkerOutputIsTaggedAndKeptWhole(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, argv("-w", "1", worker("print", "first", "long:200000", "stderr:oops", "partial:no newline"))...)
	var pid int
	herdtest.Eventually(10*time.Second, func() bool {
		for _, l := range h.StdoutLines() {
			if strings.HasSuffix(l, "| first") {
				fmt.Sscanf(l, "w0 %d |", &pid)
			}
		}
		return pid != 0 && len(h.StdoutLines()) >= 2
	})
	h.Signal(syscall.SIGTERM)
	h.Wait(15 * time.Second)
	prefix := fmt.Sprintf("w0 %d | ", pid)
	want := []string{prefix + "first", prefix + strings.Repeat("x", 200000), prefix + "no newline"}
	if got := h.StdoutLines(); !slices.Equal(got, want) {
		t.Errorf("stdout has %d lines (lengths %v), want %d whole lines with prefix %q", len(got), lineLens(got), len(want), prefix)
	}
	if !strings.Contains(h.Stderr(), prefix+"oops") {
		t.Errorf("worker stderr line missing from herd's stderr")
	}
}

func lineLens(lines []string) []int {
	var n []int
	for _, l := range lines {
		n = append(n, len(l))
	}
	return n
}

func TestJSONLogFormat(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, argv("-w", "1", "--log-format", "json", worker("print", `say "hi"`))...)
	herdtest.Eventually(10*time.Second, func() bool { return len(h.StdoutLines()) >= 1 })
	h.Signal(syscall.SIGTERM)
	h.Wait(15 * time.Second)
	lines := h.StdoutLines()
	if len(lines) != 1 {
		t.Fatalf("stdout lines %q", lines)
	}
	var rec struct {
		Time   string
		Worker int
		PID    int
		Stream string
		Line   string
	}
	if err := jsonUnmarshal(lines[0], &rec); err != nil {
		t.Fatalf("stdout line %q is not JSON: %v", lines[0], err)
	}
	if rec.Worker != 0 || rec.PID == 0 || rec.Stream != "stdout" || rec.Line != `say "hi"` || rec.Time == "" {
		t.Errorf("record %+v", rec)
	}
	for _, l := range strings.Split(h.Stderr(), "\n") {
		if l != "" && jsonUnmarshal(l, &map[string]any{}) != nil {
			t.Errorf("herd's own log line %q is not JSON", l)
		}
	}
}

func TestExampleWorkersInPythonAndNode(t *testing.T) {
	t.Parallel()
	root, _ := filepath.Abs("../..")
	for _, tc := range []struct{ bin, file string }{
		{"python3", "examples/python/hello.py"},
		{"node", "examples/node/hello.js"},
	} {
		t.Run(tc.bin, func(t *testing.T) {
			t.Parallel()
			if _, err := exec.LookPath(tc.bin); err != nil {
				t.Skipf("%s is not installed: skipping the %s example", tc.bin, tc.bin)
			}
			h := startHerd(t, nil, "-w", "2", "-l", "127.0.0.1:0", "--", tc.bin, filepath.Join(root, tc.file))
			waitServing(t, h, 2)
			url := "http://" + h.Addr("listen0") + "/"
			var seen map[int]int
			herdtest.Eventually(10*time.Second, func() bool {
				seen = map[int]int{}
				c := herdtest.NewClient(false)
				defer c.CloseIdleConnections()
				for range 40 {
					if r, err := herdtest.Get(c, url); err == nil {
						seen[r.ID] = r.PID
					}
				}
				return len(seen) == 2
			})
			if len(seen) != 2 {
				t.Fatalf("%s example: replies from workers %v, want 0 and 1", tc.bin, seen)
			}
			h.Signal(syscall.SIGTERM)
			if code := h.Wait(15 * time.Second); code != 0 {
				t.Fatalf("exit %d", code)
			}
		})
	}
}

// As PID 1 (in a new PID namespace), herd reaps the orphans it inherits.
func TestPID1ReapsOrphans(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		t.Skip("needs Linux and root to make a PID namespace")
	}
	if err := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "true").Run(); err != nil {
		t.Skipf("cannot make a PID namespace here: %v", err)
	}
	h := herdtest.Start(t, []string{"HERD_TEST_AS_CLI=1", "HERD_CONTROL=" + herdtest.ControlPath(t)},
		argv("unshare", "--pid", "--fork", "--mount-proc", "--kill-child", os.Args[0], "run", "-w", "1", worker("orphans"))...)
	herdtest.Eventually(10*time.Second, func() bool { return strings.Contains(h.Stdout(), "orphans made") })
	var herdPID int
	herdtest.Eventually(5*time.Second, func() bool {
		kids := childrenNamed(h.Cmd.Process.Pid, filepath.Base(os.Args[0]))
		if len(kids) == 1 {
			herdPID = kids[0]
		}
		return herdPID != 0
	})
	if herdPID == 0 {
		t.Fatal("cannot find herd inside the namespace")
	}
	// The orphans (sleep 0.2) exit soon; as zombies they are herd's.
	time.Sleep(time.Second)
	if z := zombieChildren(herdPID); len(z) > 0 {
		t.Fatalf("herd as PID 1 left zombies %v", z)
	}
	// unshare ignores SIGTERM while it waits; herd is the one to stop.
	syscall.Kill(herdPID, syscall.SIGTERM)
	if code := h.Wait(15 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func zombieChildren(ppid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(ppid) {
			out = append(out, pid)
		}
	}
	return out
}

// The primary never accepts; if its copies of the listening sockets were
// in its epoll set, every connection would wake it (a share of a core
// under load). Checked structurally, not by timing.
func TestPrimaryDoesNotPollItsListeners(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	h := startHerd(t, nil, argv("-w", "2", "-l", "127.0.0.1:0", "-l", "unix:"+filepath.Join(t.TempDir(), "s"), worker("http"))...)
	waitServing(t, h, 2)
	pid := h.Cmd.Process.Pid
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(fdDir)
	if err != nil {
		t.Fatal(err)
	}
	listening := listeningInodes(t)
	sockets := map[string]bool{} // fd number -> is one of the cluster's listening sockets
	var polls []string
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join(fdDir, e.Name()))
		switch {
		case listening[target]:
			sockets[e.Name()] = true
		case target == "anon_inode:[eventpoll]":
			polls = append(polls, e.Name())
		}
	}
	if len(sockets) < 3 {
		t.Fatalf("primary holds %d listening sockets, want at least 3 (2 reuseport + 1 unix)", len(sockets))
	}
	for _, ep := range polls {
		info, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, ep))
		for _, line := range strings.Split(string(info), "\n") {
			var tfd string
			if _, err := fmt.Sscanf(line, "tfd: %s", &tfd); err == nil && sockets[tfd] {
				t.Errorf("listening socket fd %s is in the primary's epoll set", tfd)
			}
		}
	}
}

// listeningInodes returns "socket:[INODE]" for every listening TCP socket
// and every listening Unix socket other than a herd control socket (which
// the primary does accept on).
func listeningInodes(t *testing.T) map[string]bool {
	out := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, _ := os.ReadFile(f)
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fl := strings.Fields(line)
			if len(fl) > 9 && fl[3] == "0A" {
				out["socket:["+fl[9]+"]"] = true
			}
		}
	}
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		// Num RefCount Protocol Flags Type St Inode Path
		fl := strings.Fields(line)
		if len(fl) > 7 && fl[3] == "00010000" && !strings.HasSuffix(fl[7], "ctl.sock") {
			out["socket:["+fl[6]+"]"] = true
		}
	}
	return out
}

// The parent-death signal alone ends the workers of a killed primary: with
// the watchdog (the fallback) killed first, SIGKILL of herd still leaves
// no worker alive. The workers here start no children: those only the
// watchdog would reach.
func TestParentDeathSignalAloneEndsTheWorkers(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("the parent-death signal is Linux's")
	}
	h := startHerd(t, nil, argv("-w", "2", "-l", "127.0.0.1:0", worker("http"))...)
	waitServing(t, h, 2)
	pids := workerPIDs(t, "http://"+h.Addr("listen0")+"/", 2)
	if len(pids) != 2 {
		t.Fatalf("pids %v, want the 2 workers'", pids)
	}
	t.Cleanup(func() {
		for _, pid := range pids {
			syscall.Kill(-pid, syscall.SIGKILL) // each leads its group
		}
	})
	primary := h.Cmd.Process.Pid
	watchdog := childrenNamed(primary, "herd-watchdog")
	if len(watchdog) != 1 {
		t.Fatalf("want one watchdog child of herd, got %v", watchdog)
	}
	environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", watchdog[0]))
	if !slices.Contains(strings.Split(string(environ), "\x00"), "HERD_REEXEC_ROLE=watchdog") {
		t.Fatalf("child %d of herd is not its watchdog (no HERD_REEXEC_ROLE=watchdog)", watchdog[0])
	}
	if err := syscall.Kill(watchdog[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !herdtest.Eventually(5*time.Second, func() bool { return !herdtest.Alive(watchdog[0]) }) {
		t.Fatal("the watchdog survived SIGKILL")
	}
	for _, pid := range pids {
		if !herdtest.Alive(pid) {
			t.Fatalf("worker %d died with the watchdog", pid)
		}
	}
	h.Signal(syscall.SIGKILL)
	if !herdtest.Eventually(5*time.Second, func() bool { return !herdtest.Alive(primary) }) {
		t.Fatal("the primary survived SIGKILL")
	}
	died := time.Now()
	// The kernel sends the signal as the primary dies: 2s is slack for a
	// loaded machine, and nothing else would end these workers.
	for _, pid := range pids {
		if !herdtest.Eventually(time.Until(died.Add(2*time.Second)), func() bool { return !herdtest.Alive(pid) }) {
			t.Errorf("worker %d still alive %v after the primary died, with no watchdog", pid, time.Since(died).Round(time.Millisecond))
		}
	}
	h.Wait(5 * time.Second)
}
