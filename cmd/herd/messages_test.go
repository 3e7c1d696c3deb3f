package main

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herd-sh/herd/internal/herdtest"
)

// herdCtl runs this test binary as the herd CLI with args and
// HERD_CONTROL=ctl (a client command such as herd send talks to the
// cluster there), and returns its exit code and output. It fails the test
// if the command runs for more than 20 s.
func herdCtl(t *testing.T, ctl string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "HERD_TEST_AS_CLI=1", "HERD_CONTROL="+ctl)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("herd %v hung", args)
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

// controlOf returns the control socket path herd reported.
func controlOf(t *testing.T, h *herdtest.Proc) string {
	t.Helper()
	line := h.WaitLog(`msg="control socket"`, 10*time.Second)
	_, path, _ := strings.Cut(line, "path=")
	return strings.Fields(path)[0]
}

func TestSendReachesWorkers(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, argv("-w", "2", worker("lib"))...)
	waitServing(t, h, 2)
	ctl := controlOf(t, h)
	if code, _, stderr := herdCtl(t, ctl, "send", "1", `{"type":"ping","data":{"n":7}}`); code != 0 {
		t.Fatalf("herd send: exit %d: %s", code, stderr)
	}
	line := h.WaitLog(`type=pong`, 10*time.Second)
	if !strings.Contains(line, `worker=1`) || !strings.Contains(line, `data="{\"n\":7}"`) {
		t.Errorf("pong logged as %q, want worker=1 and the data", line)
	}
	if code, _, stderr := herdCtl(t, ctl, "send", "all", `{"type":"ping","data":"x"}`); code != 0 {
		t.Fatalf("herd send all: exit %d: %s", code, stderr)
	}
	if !herdtest.Eventually(10*time.Second, func() bool { return h.Count(`data="\"x\""`) == 2 }) {
		t.Errorf("want a pong from each of the 2 workers:\n%s", h.Stderr())
	}
}

func TestSendErrorsAreOneClearLine(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, argv("-w", "1", "--max-message", "4KiB", worker("lib"))...)
	waitServing(t, h, 1)
	ctl := controlOf(t, h)
	nowhere := herdtest.ControlPath(t)
	for _, tc := range []struct {
		name string
		ctl  string
		args []string
		code int
		want string
	}{
		{"no such worker", ctl, []string{"send", "5", `{"type":"x"}`}, 1, "no such worker 5"},
		{"reserved type", ctl, []string{"send", "0", `{"type":"herd.shutdown"}`}, 2, "reserved"},
		{"not an object", ctl, []string{"send", "0", `[1,2]`}, 2, `JSON object with a string "type"`},
		{"bad worker", ctl, []string{"send", "one", `{"type":"x"}`}, 2, `WORKER must be a worker id or "all"`},
		{"missing argument", ctl, []string{"send", "0"}, 2, "send takes WORKER|all and MESSAGE"},
		{"too big", ctl, []string{"send", "0", `{"type":"x","data":"` + strings.Repeat("y", 8<<10) + `"}`}, 1, "longer than the limit"},
		{"no cluster", nowhere, []string{"send", "0", `{"type":"x"}`}, 1, "no herd is running"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := herdCtl(t, tc.ctl, tc.args...)
			lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
			if code != tc.code || len(lines) != 1 || !strings.HasPrefix(lines[0], "herd: ") || !strings.Contains(lines[0], tc.want) || stdout != "" {
				t.Errorf("exit %d, stderr %q; want exit %d and one line with %q", code, stderr, tc.code, tc.want)
			}
		})
	}
	if h.Exited() {
		t.Fatal("a bad client request ended the cluster")
	}
}

// peakRSS is a process's high-water mark of resident memory, in bytes.
func peakRSS(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("cannot read the primary's memory: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// memoryBound is what the primary may reach while workers misbehave: its
// own few MB, the race detector's share and the bounded queues, far below
// the hundreds of MB the tests push at it.
const memoryBound = 120 << 20

// An oversized line (200 MB) and a burst of lines that are not JSON are
// dropped, logged a few times with a count, and the messages after them
// arrive; the primary never holds the big line.
func TestOversizedAndInvalidMessagesAreDropped(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, argv("-w", "1", "--max-message", "64KiB", worker("rawipc", "big:200000000", "bad:2000", "msg:after"))...)
	h.WaitLog("type=after", 30*time.Second)
	// Every dropped line is counted, logged or not: the long one and the
	// 2000 bad ones.
	if w := status(t, controlOf(t, h)).Workers[0]; w.Dropped != 2001 {
		t.Errorf("status counts %d dropped messages, want 2001", w.Dropped)
	}
	if n := h.Count("message longer than the limit"); n != 1 {
		t.Errorf("the oversized line was reported %d times, want once", n)
	}
	bad := h.Count(`msg="dropped a message from worker"`)
	if bad < 2 || bad > 20 {
		t.Errorf("%d log lines about 2000 bad lines, want a few (rate-limited)", bad)
	}
	// Each of them names the worker that sent the bad lines, and its pid.
	pid := regexp.MustCompile(`msg="worker started" worker=0 pid=(\d+)`).FindStringSubmatch(h.Stderr())
	if pid == nil {
		t.Fatalf("no start line for worker 0:\n%s", h.Stderr())
	}
	for _, line := range strings.Split(h.Stderr(), "\n") {
		if strings.Contains(line, `msg="dropped a message from worker"`) && (!strings.Contains(line, " worker=0 ") || !strings.Contains(line, " pid="+pid[1]+" ")) {
			t.Errorf("drop logged as %q, want worker=0 pid=%s", line, pid[1])
		}
	}
	if !strings.Contains(h.Stderr(), "not_logged=") || !strings.Contains(h.Stderr(), "malformed message") {
		t.Errorf("the log does not say how many went unlogged, or why:\n%s", h.Stderr())
	}
	if peak := peakRSS(t, h.Cmd.Process.Pid); peak > memoryBound {
		t.Errorf("primary peaked at %d MB reading a 200 MB line", peak>>20)
	}
	h.Signal(syscall.SIGTERM)
	if code := h.Wait(15 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// Worker 0 floods broadcasts; worker 1 never reads its channel; worker 2
// reads. The whole flood reaches worker 2 (a relay to a reader waits for
// room, which slows the sender: none is dropped), the relays to worker 1
// are dropped once it is stalled, the primary's memory stays bounded, and
// a message from the operator to worker 2 still gets through during the
// flood. (The relays to worker 2 make this flood slow under the race
// detector: TestHugeFloodLeavesThePrimarysMemoryAlone floods far more.)
func TestFloodingWorkerIsContained(t *testing.T) {
	t.Parallel()
	h := startHerd(t, []string{"TEST_SLOT0=rawipc bcast:30000", "TEST_SLOT1=rawipc", "TEST_SLOT2=lib", "TEST_COUNT_RELAYS=1"},
		argv("-w", "3", worker("byslot"))...)
	waitServing(t, h, 3)
	ctl := controlOf(t, h)
	if code, _, stderr := herdCtl(t, ctl, "send", "2", `{"type":"ping","data":"during"}`); code != 0 {
		t.Fatalf("herd send during the flood: exit %d: %s", code, stderr)
	}
	h.WaitLog(`\"data\":\"during\"`, 20*time.Second)
	h.WaitLog("receiver is not reading its channel", 20*time.Second)
	if !strings.Contains(h.WaitLog("receiver is not reading", time.Second), "worker=1") {
		t.Error("the stalled receiver is not named")
	}
	// Every broadcast reaches worker 2, which counts them.
	ok := herdtest.Eventually(30*time.Second, func() bool {
		herdCtl(t, ctl, "send", "2", `{"type":"ping","data":"count"}`)
		time.Sleep(100 * time.Millisecond)
		return strings.Contains(h.Stderr(), `{\"data\":\"count\",\"relays\":30000}`)
	})
	if !ok {
		t.Errorf("worker 2 did not receive all 30000 broadcasts:\n%s", h.Stderr())
	}
	if peak := peakRSS(t, h.Cmd.Process.Pid); peak > memoryBound {
		t.Errorf("primary peaked at %d MB during a 30 MB broadcast flood", peak>>20)
	}
}

// Worker 0 floods 300 MB of broadcasts, more than twice what the primary
// may ever hold, at worker 1, which never reads its channel (the slowest
// handler there is). The primary reads the whole flood (worker 0 gets to
// the end of it), drops the relays once worker 1 is stalled, says so, and
// its memory stays far below the flood's size: nothing of the flood is
// kept, in a read-ahead queue or in worker 1's queue.
func TestHugeFloodLeavesThePrimarysMemoryAlone(t *testing.T) {
	t.Parallel()
	const floodMB = 300 // broadcasts of 1 KiB
	if floodMB<<20 < 2*memoryBound {
		t.Fatal("the flood is not far larger than the memory bound")
	}
	h := startHerd(t, []string{"TEST_SLOT0=rawipc bcast:" + strconv.Itoa(floodMB<<10), "TEST_SLOT1=rawipc"},
		argv("-w", "2", worker("byslot"))...)
	flooded := func() bool {
		for _, l := range h.StdoutLines() {
			if strings.HasPrefix(l, "w0 ") && strings.HasSuffix(l, "| rawipc done") {
				return true
			}
		}
		return false
	}
	if !herdtest.Eventually(60*time.Second, func() bool { return flooded() || h.Exited() }) || h.Exited() {
		t.Fatalf("worker 0 did not get to the end of its flood:\n%s", h.Stderr())
	}
	if peak := peakRSS(t, h.Cmd.Process.Pid); peak > memoryBound {
		t.Errorf("primary peaked at %d MB during a %d MB broadcast flood", peak>>20, floodMB)
	}
	if line := h.WaitLog("receiver is not reading its channel", time.Second); !strings.Contains(line, "worker=1") || !strings.Contains(line, "from=0") {
		t.Errorf("the dropped relays are logged as %q, want them to name the stalled worker 1 and the sender 0", line)
	}
}
