package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herd-sh/herd/internal/herdtest"
)

// status runs herd status --json.
func status(t *testing.T, ctl string) statusView {
	t.Helper()
	code, stdout, stderr := herdCtl(t, ctl, "status", "--json")
	if code != 0 {
		t.Fatalf("herd status: exit %d: %s", code, stderr)
	}
	var st statusView
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("herd status --json printed %q: %v", stdout, err)
	}
	return st
}

// timedStatus runs herd status --json and says when it was asked for and
// when it had answered.
func timedStatus(t *testing.T, ctl string) (st statusView, asked, answered time.Time) {
	t.Helper()
	asked = time.Now()
	st = status(t, ctl)
	return st, asked, time.Now()
}

// checkUptime checks that a worker's uptime_seconds agrees with its
// started time and with when the status was asked for and answered. The
// bounds follow from the order of events alone: started is in whole
// seconds (RFC 3339), the uptime is rounded to the millisecond.
func checkUptime(t *testing.T, w workerView, asked, answered time.Time) {
	t.Helper()
	started, err := time.Parse(time.RFC3339, w.Started)
	if err != nil {
		t.Fatalf("worker %d: started %q: %v", w.ID, w.Started, err)
	}
	uptime := time.Duration(w.UptimeSec * float64(time.Second))
	const ms = time.Millisecond
	if longest := answered.Sub(started) + ms; w.UptimeSec <= 0 || uptime > longest {
		t.Errorf("worker %d: uptime_seconds %v, started %s, answered %v after it: want more than 0, at most that", w.ID, w.UptimeSec, w.Started, longest)
	}
	if shortest := asked.Sub(started.Add(time.Second)) - ms; uptime < shortest {
		t.Errorf("worker %d: uptime_seconds %v, started %s, asked %v after it: want at least that", w.ID, w.UptimeSec, w.Started, shortest)
	}
}

// waitWorkers waits until status shows n workers, all ready and none
// being replaced.
func waitWorkers(t *testing.T, ctl string, n int) statusView {
	t.Helper()
	var st statusView
	ok := herdtest.Eventually(30*time.Second, func() bool {
		st = status(t, ctl)
		if len(st.Workers) != n {
			return false
		}
		for _, w := range st.Workers {
			if !w.Ready || w.State != "ready" || w.NextPID != 0 {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("want %d ready workers, status says %+v", n, st.Workers)
	}
	return st
}

// waitReplaced waits until worker 0 is a ready worker other than pid;
// what names the one replaced, for the failure message.
func waitReplaced(t *testing.T, ctl string, pid int, what string) {
	t.Helper()
	var st statusView
	if !herdtest.Eventually(20*time.Second, func() bool {
		st = status(t, ctl)
		return st.Workers[0].PID != pid && st.Workers[0].Ready
	}) {
		t.Fatalf("%s was not replaced: %+v", what, st.Workers)
	}
}

func TestStatusFollowsScaling(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, argv("-w", "2", "-l", "127.0.0.1:0", worker("lib"))...)
	ctl := controlOf(t, h)
	st := waitWorkers(t, ctl, 2)
	if st.PID != h.Cmd.Process.Pid || len(st.Listeners) != 1 || st.Listeners[0].Sockets != 2 {
		t.Errorf("status %+v", st)
	}
	scale := func(arg ...string) func() {
		return func() {
			if code, _, stderr := herdCtl(t, ctl, append([]string{"scale"}, arg...)...); code != 0 {
				t.Fatalf("herd scale %v: exit %d: %s", arg, code, stderr)
			}
		}
	}
	steps := []struct {
		do   func()
		want int
	}{
		{scale("+2"), 4},
		{scale("-1"), 3}, // not taken for a flag
		{scale("1"), 1},
		{scale("--name", "ignored", "--control", ctl, "+2"), 3},
		{scale("--", "-1"), 2},
		{func() { h.Signal(syscall.SIGTTIN) }, 3},
		{func() { h.Signal(syscall.SIGTTOU) }, 2},
		{scale("-1"), 1},
	}
	for _, step := range steps {
		step.do()
		st := waitWorkers(t, ctl, step.want)
		for i, w := range st.Workers {
			if w.ID != i || w.PID == 0 {
				t.Errorf("worker %d in status: %+v", i, w)
			}
		}
	}
	// -K is an argument, but --help is still help.
	code, stdout, stderr := herdCtl(t, ctl, "scale", "--help")
	if code != 0 || !strings.Contains(stdout, "herd scale [flags] N|+K|-K") || !strings.Contains(stdout, "--name") || stderr != "" {
		t.Errorf("herd scale --help: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	// The table form has a header and a line per worker.
	code, stdout, _ = herdCtl(t, ctl, "status")
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || len(lines) != 2 || !strings.HasPrefix(lines[0], "WORKER") || !strings.Contains(lines[1], "ready") {
		t.Errorf("herd status printed %q", stdout)
	}
}

// The example workers, which know nothing of herd's protocol, are ready
// once they accept (seen in /proc) and drain on SIGTERM: reloads under
// keep-alive and new-connection load fail no request. hello-go uses the
// worker library (herd.ready, herd.shutdown) to the same effect.
func TestReloadsOfTheExamplesFailNothing(t *testing.T) {
	t.Parallel()
	root, _ := filepath.Abs("../..")
	helloGo := filepath.Join(t.TempDir(), "hello-go")
	if out, err := exec.Command("go", "build", "-o", helloGo, "../../examples/hello-go").CombinedOutput(); err != nil {
		t.Fatalf("build hello-go: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		name string
		cmd  []string
	}{
		{"node", []string{"node", filepath.Join(root, "examples/node/hello.js")}},
		{"python3", []string{"python3", filepath.Join(root, "examples/python/hello.py")}},
		{"go", []string{helloGo}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := exec.LookPath(tc.cmd[0]); err != nil {
				t.Skipf("%s is not installed: skipping its reload test", tc.cmd[0])
			}
			h := startHerd(t, nil, append([]string{"-w", "2", "-l", "127.0.0.1:0", "--"}, tc.cmd...)...)
			ctl := controlOf(t, h)
			before := waitWorkers(t, ctl, 2)
			addr := h.Addr("listen0")
			keep := herdtest.StartLoad(addr, 6, true)
			fresh := herdtest.StartLoad(addr, 3, false)
			time.Sleep(300 * time.Millisecond)
			for round := range 2 {
				if code, _, stderr := herdCtl(t, ctl, "reload"); code != 0 {
					t.Fatalf("reload %d: exit %d: %s", round, code, stderr)
				}
			}
			// A third one by signal, as with nginx and gunicorn.
			reloaded := h.Count(`msg=reloaded`)
			h.Signal(syscall.SIGHUP)
			if !herdtest.Eventually(30*time.Second, func() bool { return h.Count(`msg=reloaded`) > reloaded }) {
				t.Fatal("SIGHUP did not reload")
			}
			after := waitWorkers(t, ctl, 2)
			time.Sleep(300 * time.Millisecond)
			k, f := keep.Stop(), fresh.Stop()
			if k.Failed+f.Failed != 0 {
				t.Errorf("%d keep-alive and %d new-connection requests failed over 3 reloads; first: %v %v", k.Failed, f.Failed, k.Errors, f.Errors)
			}
			if k.OK < 100 || f.OK < 50 {
				t.Errorf("only %d keep-alive and %d new-connection answers", k.OK, f.OK)
			}
			for i := range 2 {
				if after.Workers[i].PID == before.Workers[i].PID {
					t.Errorf("worker %d kept pid %d through 3 reloads", i, after.Workers[i].PID)
				}
			}
		})
	}
}

// A reload whose new workers never become ready stops at the first one,
// says why, exits 1, and the old workers keep serving.
func TestFailedReloadKeepsTheOldWorkers(t *testing.T) {
	t.Parallel()
	broken := filepath.Join(t.TempDir(), "broken")
	h := startHerd(t, []string{"TEST_NOT_READY_IF=" + broken}, argv("-w", "2", "-l", "127.0.0.1:0", "--ready-timeout", "500ms", worker("lib"))...)
	ctl := controlOf(t, h)
	before := waitWorkers(t, ctl, 2)
	os.WriteFile(broken, nil, 0o644)
	code, _, stderr := herdCtl(t, ctl, "reload")
	if code != 1 || !strings.Contains(stderr, "reload stopped after 0 of 2 workers") || !strings.Contains(stderr, "not ready within 500ms") {
		t.Fatalf("reload to broken workers: exit %d, stderr %q", code, stderr)
	}
	after := waitWorkers(t, ctl, 2)
	for i := range 2 {
		if after.Workers[i].PID != before.Workers[i].PID {
			t.Errorf("worker %d: pid %d, want the old %d", i, after.Workers[i].PID, before.Workers[i].PID)
		}
	}
	if !strings.Contains(h.Stderr(), `msg="reload failed"`) {
		t.Error("herd's log does not say the reload failed")
	}
	replies(t, "http://"+h.Addr("listen0")+"/", 10, 2)

	// Status says why, and counts the replacement as a failed start; the
	// slot's own worker did not exit, so last_exit stays empty.
	w0, w1 := after.Workers[0], after.Workers[1]
	if !strings.Contains(w0.LastError, "(reload) did not become ready: not ready within 500ms") || w0.Restarts != 1 || w0.LastExit != "" {
		t.Errorf("worker 0 after a failed reload: last_error %q, restarts %d, last_exit %q; want the reason, 1 and none", w0.LastError, w0.Restarts, w0.LastExit)
	}
	if w1.LastError != "" || w1.Restarts != 0 {
		t.Errorf("worker 1, never tried: last_error %q, restarts %d", w1.LastError, w1.Restarts)
	}
	code, stdout, _ := herdCtl(t, ctl, "status")
	if code != 0 || !strings.Contains(stdout, "LAST ERROR") || !strings.Contains(stdout, "did not become ready: not ready within 500ms") {
		t.Errorf("herd status table: %q, want a LAST ERROR column with the reason", stdout)
	}
	// herd logs says why too: herd's own records are kept with the
	// workers' lines.
	code, stdout, _ = herdCtl(t, ctl, "logs", "-n", "1000")
	var why string
	for _, l := range strings.Split(stdout, "\n") {
		if strings.Contains(l, `msg="reload failed"`) {
			why = l
		}
	}
	if code != 0 || !strings.HasPrefix(why, fmt.Sprintf("herd %d | ", h.Cmd.Process.Pid)) || !strings.Contains(why, "not ready within 500ms") {
		t.Errorf("herd logs: exit %d, no \"herd PID | ...reload failed...\" line giving the reason; got:\n%s", code, stdout)
	}

	// A reload that works replaces every worker and clears the error.
	os.Remove(broken)
	if code, _, stderr := herdCtl(t, ctl, "reload"); code != 0 {
		t.Fatalf("reload to fixed workers: exit %d: %s", code, stderr)
	}
	fixed := waitWorkers(t, ctl, 2)
	for i, w := range fixed.Workers {
		if w.LastError != "" || w.PID == before.Workers[i].PID {
			t.Errorf("worker %d after a good reload: %+v", i, w)
		}
	}
	if fixed.Workers[0].Restarts != 1 {
		t.Errorf("worker 0 restarts %d after a good reload, want still 1 (a count, not a state)", fixed.Workers[0].Restarts)
	}
}

// With --reload-batch 2, both new workers of a batch failing make one
// error: one line on stderr naming both.
func TestFailedBatchReloadIsOneLine(t *testing.T) {
	t.Parallel()
	broken := filepath.Join(t.TempDir(), "broken")
	h := startHerd(t, []string{"TEST_NOT_READY_IF=" + broken}, argv("-w", "2", "-l", "127.0.0.1:0", "--reload-batch", "2", "--ready-timeout", "500ms", worker("lib"))...)
	ctl := controlOf(t, h)
	before := waitWorkers(t, ctl, 2)
	os.WriteFile(broken, nil, 0o644)
	code, stdout, stderr := herdCtl(t, ctl, "reload")
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	if code != 1 || len(lines) != 1 || stdout != "" ||
		!strings.HasPrefix(lines[0], "herd: reload stopped after 0 of 2 workers") ||
		!strings.Contains(lines[0], "worker 0: new worker did not become ready: not ready within 500ms") ||
		!strings.Contains(lines[0], "worker 1: new worker did not become ready: not ready within 500ms") {
		t.Fatalf("reload of a batch of 2 broken workers: exit %d, stdout %q, stderr %q; want exit 1 and one line naming both failures", code, stdout, stderr)
	}
	after := waitWorkers(t, ctl, 2)
	for i := range 2 {
		if after.Workers[i].PID != before.Workers[i].PID {
			t.Errorf("worker %d: pid %d, want the old %d", i, after.Workers[i].PID, before.Workers[i].PID)
		}
	}
}

// A scale signal does not hold up a stop. Here SIGTTOU retires worker 1,
// which ignores SIGTERM and so is killed only at --stop-timeout (6s), and
// the SIGTTIN that follows waits for it to be gone; a SIGTERM meanwhile
// stops herd at once, and the waiting scale-up starts no worker.
func TestStopIsNotHeldUpByAWaitingScale(t *testing.T) {
	t.Parallel()
	h := startHerd(t, []string{"TEST_IGNORE_TERM=1"}, argv("-w", "2", "--stop-timeout", "6s", "-l", "127.0.0.1:0", worker("http"))...)
	ctl := controlOf(t, h)
	waitWorkers(t, ctl, 2)
	h.Signal(syscall.SIGTTOU)
	h.WaitLog(`msg="scaled down"`, 10*time.Second)
	h.Signal(syscall.SIGTTIN)
	// Let herd take SIGTTIN first: of signals pending together, Go
	// delivers the lower-numbered first, SIGTERM before SIGTTIN.
	time.Sleep(500 * time.Millisecond)
	started := h.Count(`msg="worker started"`)
	h.Signal(syscall.SIGTERM)
	// Far below the 6s until worker 1 is killed, which the stop waited
	// for when the scale-up was applied in the signal loop.
	if !herdtest.Eventually(3*time.Second, func() bool { return h.Count("msg=stopping ") > 0 }) {
		t.Errorf("herd did not log its stop within 3s of SIGTERM")
	}
	if code := h.Wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0", code)
	}
	if n := h.Count(`msg="worker started"`); n != started || h.Count(`msg="scaled up"`) != 0 {
		t.Errorf("%d workers started after SIGTERM (scaled up: %d), want none", n-started, h.Count(`msg="scaled up"`))
	}
}

func TestRestartStopAndLogs(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, argv("-w", "2", worker("print", "line-one", "line-two"))...)
	ctl := controlOf(t, h)
	before := waitWorkers(t, ctl, 2)

	code, stdout, _ := herdCtl(t, ctl, "logs", "-n", "10")
	for _, w := range before.Workers {
		if code != 0 || !strings.Contains(stdout, fmt.Sprintf("w%d %d | line-one", w.ID, w.PID)) {
			t.Errorf("herd logs printed %q, want line-one of worker %d", stdout, w.ID)
		}
	}

	// A follower sees the output of the replacement that restart starts.
	follow := exec.Command(os.Args[0], "logs", "-f", "-n", "0")
	follow.Env = append(os.Environ(), "HERD_TEST_AS_CLI=1", "HERD_CONTROL="+ctl)
	out, _ := follow.StdoutPipe()
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	followed := make(chan string, 1)
	go func() {
		buf := make([]byte, 4096)
		var got strings.Builder
		for {
			n, err := out.Read(buf)
			got.Write(buf[:n])
			if strings.Contains(got.String(), "line-two") || err != nil {
				followed <- got.String()
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond)
	first, firstAsked, firstAnswered := timedStatus(t, ctl)
	for _, w := range first.Workers {
		checkUptime(t, w, firstAsked, firstAnswered)
	}
	restartAsked := time.Now()
	if code, _, stderr := herdCtl(t, ctl, "restart", "1"); code != 0 {
		t.Fatalf("herd restart 1: exit %d: %s", code, stderr)
	}
	after := waitWorkers(t, ctl, 2)
	if after.Workers[1].PID == before.Workers[1].PID || after.Workers[0].PID != before.Workers[0].PID {
		t.Errorf("restart 1: pids %d %d -> %d %d", before.Workers[0].PID, before.Workers[1].PID, after.Workers[0].PID, after.Workers[1].PID)
	}
	select {
	case got := <-followed:
		if !strings.Contains(got, fmt.Sprintf("w1 %d | line-one", after.Workers[1].PID)) {
			t.Errorf("herd logs -f printed %q, want the new worker's lines", got)
		}
	case <-time.After(10 * time.Second):
		t.Error("herd logs -f saw nothing of the new worker")
	}
	follow.Process.Signal(syscall.SIGINT)
	follow.Wait()

	// Uptimes: worker 0's went on growing, worker 1's counts from the
	// restart.
	st, asked, answered := timedStatus(t, ctl)
	for _, w := range st.Workers {
		checkUptime(t, w, asked, answered)
	}
	if w := st.Workers[0]; w.PID != first.Workers[0].PID || w.Started != first.Workers[0].Started ||
		w.UptimeSec < first.Workers[0].UptimeSec+asked.Sub(firstAnswered).Seconds()-0.002 {
		t.Errorf("worker 0 before the restart of 1: %+v, after: %+v; want the same start, the uptime grown by the time between", first.Workers[0], w)
	}
	if w := st.Workers[1]; w.UptimeSec > answered.Sub(restartAsked).Seconds()+0.001 {
		t.Errorf("worker 1: uptime_seconds %v, %v after herd restart was run: it did not start again from 0", w.UptimeSec, answered.Sub(restartAsked))
	}

	if code, _, stderr := herdCtl(t, ctl, "stop"); code != 0 {
		t.Fatalf("herd stop: exit %d: %s", code, stderr)
	}
	if code := h.Wait(15 * time.Second); code != 0 {
		t.Fatalf("herd run exited %d after herd stop", code)
	}
}

func TestControlSocketIsPrivate(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, argv("-w", "1", worker("lib"))...)
	ctl := controlOf(t, h)
	fi, err := os.Stat(ctl)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("control socket mode %v, want a socket with 0600", fi.Mode())
	}
	// A second herd with the same control socket is refused.
	second := startHerd(t, []string{"HERD_CONTROL=" + ctl}, argv("-w", "1", worker("lib"))...)
	if code := second.Wait(15 * time.Second); code != 1 || !strings.Contains(second.Stderr(), "another herd is already running") {
		t.Errorf("second herd on the same socket: exit %d, stderr %q", code, second.Stderr())
	}
	if h.Exited() {
		t.Error("the first herd stopped")
	}
}

func TestOperationErrorsAreOneClearLine(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, argv("-w", "1", worker("lib"))...)
	ctl := controlOf(t, h)
	waitWorkers(t, ctl, 1)
	nowhere := herdtest.ControlPath(t)
	for _, tc := range []struct {
		name string
		ctl  string
		args []string
		code int
		want string
	}{
		{"restart missing worker", ctl, []string{"restart", "9"}, 1, "no such worker 9"},
		{"restart bad id", ctl, []string{"restart", "x"}, 2, "WORKER must be a worker id"},
		{"scale to zero", ctl, []string{"scale", "0"}, 2, "at least 1 must run"},
		{"scale below one", ctl, []string{"scale", "-5"}, 1, "at least 1 must run"},
		{"scale unknown flag", ctl, []string{"scale", "--bogus", "2"}, 2, "unknown flag: --bogus"},
		{"scale two numbers", ctl, []string{"scale", "-1", "-2"}, 2, "scale takes 1 argument(s), got 2"},
		{"scale nonsense", ctl, []string{"scale", "many"}, 2, "is not N, +K or -K"},
		{"status extra argument", ctl, []string{"status", "x"}, 2, "takes 0 argument"},
		{"reload nothing running", nowhere, []string{"reload"}, 1, "no herd is running"},
		{"bad readiness", ctl, []string{"run", "--ready", "soon", "--", "true"}, 2, "--ready"},
		{"bad health", ctl, []string{"run", "--health", "udp", "--", "true"}, 2, "--health"},
		{"bad memory", ctl, []string{"run", "--max-memory", "lots", "--", "true"}, 2, "--max-memory"},
		{"ready listen without sockets", nowhere, []string{"run", "--ready", "listen", "--", "true"}, 2, "readiness listen waits for a worker to accept on its sockets, and there are none"},
		{"ready listen in a hand-over mode", nowhere, []string{"run", "--balance", "round-robin", "-l", "127.0.0.1:0", "--ready", "listen", "--", "true"}, 2, "in --balance round-robin workers get none"},
		{"jitter as long as the lifetime", nowhere, []string{"run", "--max-lifetime", "1m", "--lifetime-jitter", "1m", "--", "true"}, 2, "--lifetime-jitter 1m0s must be less than --max-lifetime 1m0s"},
		{"jitter longer than the lifetime", nowhere, []string{"run", "--max-lifetime", "10s", "--lifetime-jitter", "1m", "--", "true"}, 2, "--lifetime-jitter 1m0s must be less than --max-lifetime 10s"},
		{"jitter without a lifetime", nowhere, []string{"run", "--lifetime-jitter", "5s", "--", "true"}, 2, "--lifetime-jitter 5s needs --max-lifetime"},
		{"health without per-worker sockets", nowhere, []string{"run", "--balance", "shared", "-w", "2", "-l", "127.0.0.1:0", "--health", "tcp", "--", "true"}, 2, "need a TCP listener"},
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
		t.Fatal("a bad request ended the cluster")
	}
}

// In proxy mode each worker binds the port herd gives it. A reload's
// replacement must get a port of its own: were it the port of the worker
// it replaces, its readiness connect would reach the old worker, it would
// be taken for ready at once, and then fail to bind while the old one
// drains, failing requests. Under new-connection load, reloads of the
// port examples fail nothing and leave every slot with a new worker.
func TestProxyReloadsFailNothing(t *testing.T) {
	t.Parallel()
	for _, app := range portApps(t) {
		t.Run(app.name, func(t *testing.T) {
			t.Parallel()
			if _, err := exec.LookPath(app.bin); err != nil {
				t.Skipf("%s is not installed: skipping its proxy reload test", app.bin)
			}
			h := startHerd(t, nil, "-w", "2", "--balance", "proxy", "-l", "127.0.0.1:0", "--", app.bin, app.file)
			ctl := controlOf(t, h)
			before := waitWorkers(t, ctl, 2)
			fresh := herdtest.StartLoad(h.Addr("listen0"), 3, false)
			time.Sleep(300 * time.Millisecond)
			for round := range 3 {
				if code, _, stderr := herdCtl(t, ctl, "reload"); code != 0 {
					t.Fatalf("reload %d: exit %d: %s", round, code, stderr)
				}
			}
			after := waitWorkers(t, ctl, 2)
			time.Sleep(300 * time.Millisecond)
			r := fresh.Stop()
			if r.Failed != 0 {
				t.Errorf("%d of %d new-connection requests failed over 3 reloads; first: %v", r.Failed, r.OK+r.Failed, r.Errors)
			}
			if r.OK < 50 {
				t.Errorf("only %d answers: the load did not run", r.OK)
			}
			for i := range 2 {
				if after.Workers[i].PID == before.Workers[i].PID {
					t.Errorf("worker %d kept pid %d through 3 reloads", i, after.Workers[i].PID)
				}
			}
			// A replacement that could not bind its port exits: none may.
			if n := h.Count(`msg="worker exited"`); n != 0 {
				t.Errorf("%d workers exited unasked during the reloads", n)
			}
		})
	}
}

// A worker found unhealthy is replaced even when the first replacement
// fails: the slot tries again after a backoff delay, instead of leaving
// the sick worker serving, unchecked, for good.
func TestUnhealthyWorkerIsReplacedAfterAFailedReplacement(t *testing.T) {
	t.Parallel()
	broken := filepath.Join(t.TempDir(), "broken")
	h := startHerd(t, []string{"TEST_NOT_READY_IF=" + broken}, argv("-w", "1", "-l", "127.0.0.1:0",
		"--ready-timeout", "500ms", "--health", "http:/health", "--health-interval", "100ms", "--health-failures", "2", worker("lib"))...)
	ctl := controlOf(t, h)
	sick := waitWorkers(t, ctl, 1).Workers[0].PID
	// New workers are broken until the first replacement has failed.
	os.WriteFile(broken, nil, 0o644)
	if code, _, stderr := herdCtl(t, ctl, "send", "0", `{"type":"sick"}`); code != 0 {
		t.Fatalf("herd send: exit %d: %s", code, stderr)
	}
	h.WaitLog(fmt.Sprintf(`msg="worker is unhealthy; replacing it" worker=0 pid=%d`, sick), 20*time.Second)
	h.WaitLog(`msg="replacement failed; the old worker keeps serving"`, 20*time.Second)
	os.Remove(broken)
	var st statusView
	if !herdtest.Eventually(30*time.Second, func() bool {
		st = status(t, ctl)
		w := st.Workers[0]
		return w.PID != sick && w.Ready && w.NextPID == 0
	}) {
		t.Fatalf("the unhealthy worker %d was not replaced after its first replacement failed: %+v", sick, st.Workers)
	}
	if !strings.Contains(h.Stderr(), `msg="trying again to replace the unhealthy worker"`) {
		t.Error("the retry is not logged")
	}
	if !herdtest.Eventually(10*time.Second, func() bool { return !herdtest.Alive(sick) }) {
		t.Errorf("the unhealthy worker %d still runs after its replacement is ready", sick)
	}
}

// herdEnv runs the herd CLI with args and exactly the herd variables of
// env (no HERD_CONTROL unless env has one), and returns its exit code and
// output.
func herdEnv(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HERD_CONTROL=") && !strings.HasPrefix(kv, "XDG_RUNTIME_DIR=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "HERD_TEST_AS_CLI=1")
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 20 * time.Second
	timer := time.AfterFunc(20*time.Second, func() { cmd.Process.Kill() })
	defer timer.Stop()
	cmd.Run()
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

// The control socket is picked by --control, else --name, else
// $HERD_CONTROL, else the default name: a flag on the command line beats
// the environment, for herd run and the client commands alike.
func TestControlSocketFlagsBeatTheEnvironment(t *testing.T) {
	t.Parallel()
	runtimeDir, err := os.MkdirTemp("", "hx") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runtimeDir) })
	elsewhere := herdtest.ControlPath(t) // where HERD_CONTROL points: nothing runs there
	explicit := herdtest.ControlPath(t)
	env := []string{"HERD_CONTROL=" + elsewhere, "XDG_RUNTIME_DIR=" + runtimeDir}

	// --name: the socket is the name's default path, not $HERD_CONTROL.
	named := startHerd(t, env, argv("--name", "api", "-w", "1", worker("lib"))...)
	byName := filepath.Join(runtimeDir, "herd", "api.sock")
	if got := controlOf(t, named); got != byName {
		t.Fatalf("herd run --name api listens on %s, want %s", got, byName)
	}
	// --control: that path, whatever the name and the variable say.
	pathed := startHerd(t, env, argv("--control", explicit, "--name", "other", "-w", "1", worker("lib"))...)
	if got := controlOf(t, pathed); got != explicit {
		t.Fatalf("herd run --control %s listens on %s", explicit, got)
	}
	pids := map[string]int{"api": named.Cmd.Process.Pid, "explicit": pathed.Cmd.Process.Pid}

	for _, tc := range []struct {
		name string
		args []string
		want string // whose status, or "" for none
	}{
		{"--name", []string{"--name", "api"}, "api"},
		{"--control", []string{"--control", explicit}, "explicit"},
		{"--control beats --name", []string{"--control", explicit, "--name", "api"}, "explicit"},
		{"no flag: $HERD_CONTROL", nil, ""},
	} {
		code, stdout, stderr := herdEnv(t, env, append([]string{"status", "--json"}, tc.args...)...)
		if tc.want == "" {
			if code != 1 || !strings.Contains(stderr, "no herd is running") || !strings.Contains(stderr, elsewhere) {
				t.Errorf("%s: exit %d, stderr %q; want the socket of $HERD_CONTROL (%s), where nothing runs", tc.name, code, stderr, elsewhere)
			}
			continue
		}
		var st statusView
		if err := json.Unmarshal([]byte(stdout), &st); code != 0 || err != nil || st.PID != pids[tc.want] {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want the status of the %s cluster (pid %d)", tc.name, code, stdout, stderr, tc.want, pids[tc.want])
		}
	}
}

// logIndex returns the index of the first of lines at or after from that
// contains every one of parts, or -1.
func logIndex(lines []string, from int, parts ...string) int {
	for i := max(from, 0); i < len(lines); i++ {
		all := true
		for _, p := range parts {
			if !strings.Contains(lines[i], p) {
				all = false
				break
			}
		}
		if all {
			return i
		}
	}
	return -1
}

// --reload-batch 2 replaces two workers at once, and the next two only
// once both are ready; under load nothing fails. Readiness is a delay
// here, so that a replacement is ready long (500 ms) after it starts: with
// one at a time, the second would start only after the first is ready.
func TestReloadBatch(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, argv("-w", "4", "-l", "127.0.0.1:0", "--reload-batch", "2", "--ready", "delay:500ms", worker("lib"))...)
	ctl := controlOf(t, h)
	before := waitWorkers(t, ctl, 4)
	addr := h.Addr("listen0")
	keep := herdtest.StartLoad(addr, 4, true)
	fresh := herdtest.StartLoad(addr, 2, false)
	time.Sleep(200 * time.Millisecond)
	if code, _, stderr := herdCtl(t, ctl, "reload"); code != 0 {
		t.Fatalf("reload: exit %d: %s", code, stderr)
	}
	after := waitWorkers(t, ctl, 4)
	time.Sleep(200 * time.Millisecond)
	k, f := keep.Stop(), fresh.Stop()
	if k.Failed+f.Failed != 0 {
		t.Errorf("%d keep-alive and %d new-connection requests failed; first: %v %v", k.Failed, f.Failed, k.Errors, f.Errors)
	}
	if k.OK < 50 || f.OK < 20 {
		t.Errorf("only %d keep-alive and %d new-connection answers: the load did not run", k.OK, f.OK)
	}
	for i := range 4 {
		if after.Workers[i].PID == before.Workers[i].PID {
			t.Errorf("worker %d kept pid %d through the reload", i, before.Workers[i].PID)
		}
	}
	lines := strings.Split(h.Stderr(), "\n")
	start := logIndex(lines, 0, "msg=reloading", "batch=2")
	begun, ready := map[int]int{}, map[int]int{}
	for id := range 4 {
		begun[id] = logIndex(lines, start, `msg="starting a replacement"`, fmt.Sprintf("worker=%d ", id), "reason=reload")
		ready[id] = logIndex(lines, start, `msg="worker ready"`, fmt.Sprintf("worker=%d pid=%d ", id, after.Workers[id].PID))
		if start < 0 || begun[id] < 0 || ready[id] < 0 {
			t.Fatalf("reload of worker %d not logged (reloading at line %d, started %d, ready %d):\n%s", id, start, begun[id], ready[id], h.Stderr())
		}
	}
	for _, pair := range [][2]int{{0, 1}, {2, 3}} {
		a, b := pair[0], pair[1]
		if begun[b] > ready[a] || begun[a] > ready[b] {
			t.Errorf("workers %d and %d were not replaced together: started at lines %d and %d, ready at %d and %d", a, b, begun[a], begun[b], ready[a], ready[b])
		}
	}
	if first := max(ready[0], ready[1]); begun[2] < first || begun[3] < first {
		t.Errorf("the second batch started (lines %d, %d) before the first was ready (line %d)", begun[2], begun[3], first)
	}
}

// --ready http:/PATH and --ready delay:DUR through the CLI. The lib
// workers here serve but never say herd.ready (TEST_NOT_READY_IF), so
// only the rule asked for can make them ready.
func TestReadyHTTPAndDelay(t *testing.T) {
	t.Parallel()
	mute := filepath.Join(t.TempDir(), "mute")
	os.WriteFile(mute, nil, 0o644)
	env := []string{"TEST_NOT_READY_IF=" + mute}

	t.Run("http", func(t *testing.T) {
		t.Parallel()
		h := startHerd(t, env, argv("-w", "2", "-l", "127.0.0.1:0", "--ready", "http:/health", worker("lib"))...)
		ctl := controlOf(t, h)
		before := waitWorkers(t, ctl, 2)
		if code, _, stderr := herdCtl(t, ctl, "reload"); code != 0 {
			t.Fatalf("reload with HTTP readiness: exit %d: %s", code, stderr)
		}
		after := waitWorkers(t, ctl, 2)
		for i := range 2 {
			if after.Workers[i].PID == before.Workers[i].PID {
				t.Errorf("worker %d kept pid %d through the reload", i, before.Workers[i].PID)
			}
		}
	})
	t.Run("http never answered", func(t *testing.T) {
		t.Parallel()
		// The sleep worker holds its socket and never accepts: the probe
		// gets no answer, so the worker is never ready.
		h := startHerd(t, nil, argv("-w", "1", "-l", "127.0.0.1:0", "--ready", "http:/health", "--ready-timeout", "1s", worker("sleep"))...)
		line := h.WaitLog(`msg="worker did not become ready; killing it"`, 20*time.Second)
		if !strings.Contains(line, "not ready within 1s (--ready http:/health)") {
			t.Errorf("log line %q does not give the rule and the timeout", line)
		}
		if n := h.Count(`msg="worker ready"`); n != 0 {
			t.Errorf("a worker that never answers was ready %d times", n)
		}
	})
	t.Run("delay", func(t *testing.T) {
		t.Parallel()
		h := startHerd(t, env, argv("-w", "1", "-l", "127.0.0.1:0", "--ready", "delay:1500ms", worker("lib"))...)
		ctl := controlOf(t, h)
		pid := waitWorkers(t, ctl, 1).Workers[0].PID
		line := h.WaitLog(fmt.Sprintf(`msg="worker ready" worker=0 pid=%d `, pid), 5*time.Second)
		_, after, _ := strings.Cut(line, "after=")
		if d, err := time.ParseDuration(strings.Fields(after + " ")[0]); err != nil || d < 1500*time.Millisecond {
			t.Errorf("worker ready after %q, want at least the 1.5s delay (line %q)", after, line)
		}
	})
}

// portWorkerArg makes this test binary a worker that binds $PORT (see
// portWorker) instead of running the tests.
const portWorkerArg = "__portworker"

func init() {
	if len(os.Args) > 1 && os.Args[1] == portWorkerArg {
		os.Exit(portWorker())
	}
}

// portWorker is an app for --balance proxy: it listens on $HOST:$PORT and
// answers HTTP. SIGUSR1 makes it close its listener and go on running (an
// app that stopped accepting, which only a probe of its port notices);
// SIGTERM ends it.
func portWorker() int {
	l, err := net.Listen("tcp", net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT")))
	if err != nil {
		fmt.Fprintln(os.Stderr, "port worker:", err)
		return 1
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from port %s pid %d\n", os.Getenv("PORT"), os.Getpid())
	})}
	go srv.Serve(l)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGTERM)
	for sig := range sigs {
		if sig == syscall.SIGTERM {
			return 0
		}
		l.Close()
	}
	return 0
}

// --health tcp connects to each worker's own socket (here the worker's
// port in proxy mode): a worker that accepts passes, one that stopped
// accepting fails, is logged as unhealthy and replaced.
func TestHealthTCP(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, "-w", "1", "--balance", "proxy", "-l", "127.0.0.1:0",
		"--health", "tcp", "--health-interval", "100ms", "--health-failures", "2", "--", os.Args[0], portWorkerArg)
	ctl := controlOf(t, h)
	healthy := waitWorkers(t, ctl, 1).Workers[0].PID
	// About ten checks of a worker that accepts: none fails.
	time.Sleep(time.Second)
	if n := h.Count(`msg="health check failed"`); n != 0 {
		t.Fatalf("%d health checks of a healthy worker failed:\n%s", n, h.Stderr())
	}
	if pid := status(t, ctl).Workers[0].PID; pid != healthy {
		t.Fatalf("the healthy worker %d was replaced by %d", healthy, pid)
	}
	syscall.Kill(healthy, syscall.SIGUSR1) // it stops accepting
	line := h.WaitLog(fmt.Sprintf(`msg="worker is unhealthy; replacing it" worker=0 pid=%d `, healthy), 20*time.Second)
	if !strings.Contains(line, "failed 2 health checks in a row") || !strings.Contains(line, "connection refused") {
		t.Errorf("unhealthy line %q does not say why", line)
	}
	waitReplaced(t, ctl, healthy, "the worker that stopped accepting")
	replies(t, "http://"+h.Addr("listen0")+"/", 10, 2)
}

// logTime parses the time= of one of herd's own (text) log lines.
func logTime(t *testing.T, line string) time.Time {
	t.Helper()
	_, rest, ok := strings.Cut(line, "time=")
	if !ok {
		t.Fatalf("log line %q has no time", line)
	}
	at, err := time.Parse(time.RFC3339Nano, strings.Fields(rest)[0])
	if err != nil {
		t.Fatalf("log line %q: %v", line, err)
	}
	return at
}

// logAttr returns the value of key=VALUE in a log line ("" if absent).
func logAttr(line, key string) string {
	_, rest, ok := strings.Cut(line, " "+key+"=")
	if !ok {
		return ""
	}
	return strings.Fields(rest)[0]
}

// --max-lifetime with --lifetime-jitter: each worker's lifetime is
// --max-lifetime ± a random part of the jitter, so workers are not
// recycled on one beat; they are recycled one at a time, and under
// keep-alive and new-connection load no request fails. Waiting for the
// recycling token can only lengthen a lifetime, never shorten it: without
// the jitter no worker is recycled before it has been ready for
// --max-lifetime; with it (lifetimes 0.2-3.8s here) about half are. New
// workers take 500ms to be ready, so that recycles not held one at a time
// would overlap, about one in three.
func TestLifetimeJitterRecyclesOneAtATimeFailingNothing(t *testing.T) {
	t.Parallel()
	const life, jitter = 2 * time.Second, 1800 * time.Millisecond
	h := startHerd(t, []string{"TEST_READY_AFTER=500ms"}, argv("-w", "3", "-l", "127.0.0.1:0", "--max-lifetime", life.String(), "--lifetime-jitter", jitter.String(), worker("lib"))...)
	waitServing(t, h, 3)
	addr := h.Addr("listen0")
	keep := herdtest.StartLoad(addr, 3, true)
	fresh := herdtest.StartLoad(addr, 2, false)

	type recycle struct {
		slot  string
		lived time.Duration // from "worker ready" to "starting a replacement"
	}
	// recycles reads the log: every recycle, and whether two were ever
	// under way at once (a replacement started before the previous
	// lifetime replacement was ready).
	recycles := func() (out []recycle, overlap string) {
		readyAt := map[string]time.Time{}
		inFlight := map[string]string{} // new pid -> the line that started it
		for _, l := range strings.Split(h.Stderr(), "\n") {
			switch {
			case strings.Contains(l, `msg="worker ready"`):
				pid := logAttr(l, "pid")
				readyAt[pid] = logTime(t, l)
				delete(inFlight, pid)
			case strings.Contains(l, `msg="starting a replacement"`) && strings.Contains(l, "reason=lifetime"):
				old, at := logAttr(l, "old_pid"), logTime(t, l)
				if r, ok := readyAt[old]; ok {
					out = append(out, recycle{logAttr(l, "worker"), at.Sub(r)})
				}
				for _, other := range inFlight {
					if overlap == "" {
						overlap = other + "\n" + l
					}
				}
				inFlight[logAttr(l, "pid")] = l
			}
		}
		return out, overlap
	}
	var recs []recycle
	var overlap string
	herdtest.Eventually(45*time.Second, func() bool {
		recs, overlap = recycles()
		return len(recs) >= 12 || overlap != "" || h.Exited()
	})
	k, f := keep.Stop(), fresh.Stop()
	if overlap != "" {
		t.Fatalf("two workers recycled at once:\n%s", overlap)
	}
	if len(recs) < 12 {
		t.Fatalf("%d lifetime recycles within 45s, want 12 (lifetimes of 0.2-3.8s, 3 workers)", len(recs))
	}
	short, slots := 0, map[string]bool{}
	var lived []time.Duration
	for _, r := range recs {
		slots[r.slot] = true
		lived = append(lived, r.lived.Round(time.Millisecond))
		if r.lived < life-100*time.Millisecond {
			short++
		}
	}
	t.Logf("%d recycles; the workers had been ready for %v", len(recs), lived)
	if short == 0 {
		t.Errorf("workers lived %v before being recycled: none less than --max-lifetime %v, so --lifetime-jitter %v had no effect", lived, life, jitter)
	}
	if len(slots) != 3 {
		t.Errorf("recycled slots %v, want all 3", slots)
	}
	if k.Failed+f.Failed != 0 {
		t.Errorf("%d keep-alive and %d new-connection requests failed over %d recycles; first: %v %v", k.Failed, f.Failed, len(recs), k.Errors, f.Errors)
	}
	if k.OK < 100 || f.OK < 50 {
		t.Errorf("only %d keep-alive and %d new-connection answers: the load did not run", k.OK, f.OK)
	}
}

// --health-timeout, end to end: a worker whose /health stops answering
// (it hangs, it does not fail) fails --health-failures checks in a row,
// each given up at --health-timeout (the log says "timeout after" it),
// and is replaced.
func TestHealthTimeoutReplacesAWorkerThatHangs(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, argv("-w", "1", "-l", "127.0.0.1:0", "--health", "http:/health", "--health-interval", "200ms",
		"--health-timeout", "300ms", "--health-failures", "3", "--stop-timeout", "2s", worker("lib"))...)
	ctl := controlOf(t, h)
	hung := waitWorkers(t, ctl, 1).Workers[0].PID
	// About five checks of a worker that answers: none fails.
	time.Sleep(time.Second)
	if n := h.Count(`msg="health check failed"`); n != 0 {
		t.Fatalf("%d health checks of a healthy worker failed:\n%s", n, h.Stderr())
	}
	if code, _, stderr := herdCtl(t, ctl, "send", "0", `{"type":"stall"}`); code != 0 {
		t.Fatalf("herd send: exit %d: %s", code, stderr)
	}
	line := h.WaitLog(fmt.Sprintf(`msg="worker is unhealthy; replacing it" worker=0 pid=%d `, hung), 20*time.Second)
	if !strings.Contains(line, "failed 3 health checks in a row") || !strings.Contains(line, "timeout after 300ms") {
		t.Errorf("unhealthy line %q; want 3 checks in a row, the last a timeout after 300ms", line)
	}
	var failed []string
	for _, l := range strings.Split(h.Stderr(), "\n") {
		if strings.Contains(l, `msg="health check failed"`) && strings.Contains(l, fmt.Sprintf(" pid=%d ", hung)) {
			failed = append(failed, l)
		}
	}
	if len(failed) != 3 {
		t.Errorf("%d failed checks logged before the worker was replaced, want --health-failures 3:\n%s", len(failed), strings.Join(failed, "\n"))
	}
	for i, l := range failed {
		if !strings.Contains(l, "timeout after 300ms") || !strings.Contains(l, fmt.Sprintf(" failures=%d of=3", i+1)) {
			t.Errorf("failed check %d logged as %q; want a timeout after 300ms (--health-timeout), failure %d of 3", i+1, l, i+1)
		}
	}
	// Checks given up at 300ms follow each other about that far apart
	// (the 200ms ticks come meanwhile); at the 2s default they would be
	// 2s apart.
	if len(failed) == 3 {
		if span := logTime(t, failed[2]).Sub(logTime(t, failed[0])); span > 1800*time.Millisecond {
			t.Errorf("the 2nd and 3rd failed checks came %v after the 1st: not given up at --health-timeout 300ms", span)
		}
	}
	waitReplaced(t, ctl, hung, "the worker whose health check hangs")
	if !herdtest.Eventually(10*time.Second, func() bool { return !herdtest.Alive(hung) }) {
		t.Errorf("the replaced worker %d still runs", hung)
	}
	replies(t, "http://"+h.Addr("listen0")+"/", 10, 2)
}

// --ready message: only herd.ready makes a worker ready. A plain worker,
// which accepts on its socket but never says it, is never ready and is
// killed at --ready-timeout; a library worker says it and is ready.
func TestReadyMessageIsTheMessageOnly(t *testing.T) {
	t.Parallel()
	t.Run("plain worker", func(t *testing.T) {
		t.Parallel()
		h := startHerd(t, nil, argv("-w", "1", "-l", "127.0.0.1:0", "--ready", "message", "--ready-timeout", "1s", worker("http"))...)
		started := h.WaitLog(`msg="worker started" worker=0 `, 10*time.Second)
		pid := logAttr(started, "pid")
		// It serves: under --ready auto or listen it would be ready.
		replies(t, "http://"+h.Addr("listen0")+"/", 1, 1)
		line := h.WaitLog(fmt.Sprintf(`msg="worker did not become ready; killing it" worker=0 pid=%s `, pid), 20*time.Second)
		if !strings.Contains(line, "not ready within 1s (--ready message)") {
			t.Errorf("log line %q does not give the rule and the timeout", line)
		}
		h.WaitLog(fmt.Sprintf(`msg="worker exited" worker=0 pid=%s status="signal: killed"`, pid), 10*time.Second)
		if n := h.Count(`msg="worker ready"`); n != 0 {
			t.Errorf("a worker that never sends herd.ready was ready %d times", n)
		}
		var w workerView
		if !herdtest.Eventually(10*time.Second, func() bool { w = status(t, controlOf(t, h)).Workers[0]; return w.Restarts > 0 }) || w.Ready {
			t.Errorf("status after the readiness timeout: %+v; want not ready, a failed start counted", w)
		}
	})
	t.Run("library worker", func(t *testing.T) {
		t.Parallel()
		h := startHerd(t, nil, argv("-w", "1", "-l", "127.0.0.1:0", "--ready", "message", "--ready-timeout", "10s", worker("lib"))...)
		ctl := controlOf(t, h)
		pid := waitWorkers(t, ctl, 1).Workers[0].PID
		h.WaitLog(fmt.Sprintf(`msg="worker ready" worker=0 pid=%d `, pid), 5*time.Second)
		if n := h.Count(`msg="worker did not become ready`); n != 0 {
			t.Errorf("a library worker was killed for not becoming ready:\n%s", h.Stderr())
		}
	})
}

// A reload whose old worker ignores the stop signal (and does not speak
// the protocol) completes, and the old worker is killed at --stop-timeout:
// gone well before the 10s default, and logged as killed.
func TestReloadKillsAnOldWorkerThatIgnoresTheStop(t *testing.T) {
	t.Parallel()
	h := startHerd(t, []string{"TEST_IGNORE_TERM=1"}, argv("-w", "1", "-l", "127.0.0.1:0", "--stop-timeout", "1s", worker("http"))...)
	ctl := controlOf(t, h)
	old := waitWorkers(t, ctl, 1).Workers[0].PID
	if code, _, stderr := herdCtl(t, ctl, "reload"); code != 0 {
		t.Fatalf("reload: exit %d: %s", code, stderr)
	}
	reloaded := time.Now()
	if now := waitWorkers(t, ctl, 1).Workers[0].PID; now == old {
		t.Fatalf("worker 0 kept pid %d through the reload", old)
	}
	// 1s of stop timeout plus slack; far below the 10s default.
	if !herdtest.Eventually(time.Until(reloaded.Add(5*time.Second)), func() bool { return !herdtest.Alive(old) }) {
		t.Fatalf("the old worker %d, which ignores SIGTERM, still runs %v after the reload (--stop-timeout 1s)", old, time.Since(reloaded).Round(time.Millisecond))
	}
	line := h.WaitLog(fmt.Sprintf(`msg="worker did not stop in time; killing its process group" worker=0 pid=%d `, old), 5*time.Second)
	if !strings.Contains(line, "timeout=1s") {
		t.Errorf("kill line %q does not give the 1s stop timeout", line)
	}
	h.WaitLog(fmt.Sprintf(`msg="worker stopped" worker=0 pid=%d status="signal: killed"`, old), 5*time.Second)
	for _, r := range replies(t, "http://"+h.Addr("listen0")+"/", 10, 2) {
		if r.PID == old {
			t.Fatalf("answer from the old worker %d after the reload", old)
		}
	}
}

// Without --stop-signal and --stop-timeout, herd asks workers to stop
// with SIGTERM and kills one that ignores it 10s later.
func TestStopDefaultsAreSIGTERMAndTenSeconds(t *testing.T) {
	t.Parallel()
	h := startHerd(t, []string{"TEST_IGNORE_TERM=1", "TEST_SAY_SIGNAL=1"}, argv("-w", "1", "-l", "127.0.0.1:0", worker("http"))...)
	ctl := controlOf(t, h)
	pid := waitWorkers(t, ctl, 1).Workers[0].PID
	asked := time.Now()
	h.Signal(syscall.SIGTERM)
	if line := h.WaitLog("msg=stopping ", 5*time.Second); !strings.Contains(line, "signal=SIGTERM timeout=10s") {
		t.Errorf("stop line %q, want signal=SIGTERM timeout=10s", line)
	}
	said := fmt.Sprintf("w0 %d | got signal SIGTERM", pid)
	if !herdtest.Eventually(5*time.Second, func() bool { return strings.Contains(h.Stdout(), said) }) {
		t.Errorf("the worker did not say it got SIGTERM; its output:\n%s", h.Stdout())
	}
	if code := h.Wait(40 * time.Second); code != 0 {
		t.Fatalf("exit %d, want 0", code)
	}
	took := time.Since(asked)
	// Not before the 10s (the kill timer starts after the signal), and
	// not much after.
	if took < 9500*time.Millisecond || took > 30*time.Second {
		t.Errorf("herd stopped %v after SIGTERM, want the 10s default stop timeout", took.Round(time.Millisecond))
	}
	line := h.WaitLog(fmt.Sprintf(`msg="worker did not stop in time; killing its process group" worker=0 pid=%d `, pid), time.Second)
	if !strings.Contains(line, "timeout=10s") {
		t.Errorf("kill line %q, want timeout=10s", line)
	}
	h.WaitLog(fmt.Sprintf(`msg="worker stopped" worker=0 pid=%d status="signal: killed"`, pid), time.Second)
	if herdtest.Alive(pid) {
		t.Errorf("worker %d outlived herd", pid)
	}
}

// shortTempDir makes a directory with a short path (socket paths are
// limited to 107 bytes), removed at the end of the test.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// A herd killed by SIGKILL leaves its control socket behind. The next herd
// run with the same name finds nobody listening there, replaces the
// socket and runs (it is not "already running"), and the client commands
// reach the new cluster.
func TestRunReplacesTheSocketOfAKilledHerd(t *testing.T) {
	t.Parallel()
	runtimeDir := shortTempDir(t)
	env := []string{"XDG_RUNTIME_DIR=" + runtimeDir}
	sock := filepath.Join(runtimeDir, "herd", "app.sock")
	first := startHerd(t, env, argv("--name", "app", "-w", "1", worker("lib"))...)
	if got := controlOf(t, first); got != sock {
		t.Fatalf("herd run --name app listens on %s, want %s", got, sock)
	}
	first.Signal(syscall.SIGKILL)
	first.Wait(10 * time.Second)
	if fi, err := os.Lstat(sock); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("the killed herd left no socket at %s (%v): nothing stale to replace", sock, err)
	}

	second := startHerd(t, env, argv("--name", "app", "-w", "1", worker("lib"))...)
	herdtest.Eventually(10*time.Second, func() bool { return second.Exited() || second.Count(`msg="control socket"`) > 0 })
	if second.Exited() {
		t.Fatalf("the second herd run --name app exited instead of replacing the stale socket:\n%s", second.Stderr())
	}
	if got := controlOf(t, second); got != sock {
		t.Fatalf("the second herd run --name app listens on %s, want %s", got, sock)
	}
	code, stdout, stderr := herdEnv(t, env, "status", "--json", "--name", "app")
	var st statusView
	if err := json.Unmarshal([]byte(stdout), &st); code != 0 || err != nil || st.PID != second.Cmd.Process.Pid {
		t.Errorf("herd status --name app: exit %d, stdout %q, stderr %q; want the status of the new herd (pid %d)", code, stdout, stderr, second.Cmd.Process.Pid)
	}
}

// staleSocket leaves a Unix socket at path that nobody listens on, as a
// herd killed by SIGKILL does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
}

// A client command with no --name (and no $HERD_CONTROL) talks to the one
// cluster running in the default directory. Sockets left there by killed
// herds are no cluster: they neither make "several clusters" nor hide the
// one that runs.
func TestStatusWithoutANameIgnoresStaleSockets(t *testing.T) {
	t.Parallel()
	runtimeDir := shortTempDir(t)
	dir := filepath.Join(runtimeDir, "herd")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	staleSocket(t, filepath.Join(dir, "dead1.sock"))
	staleSocket(t, filepath.Join(dir, "dead2.sock"))
	env := []string{"XDG_RUNTIME_DIR=" + runtimeDir}

	code, stdout, stderr := herdEnv(t, env, "status")
	if code != 1 || !strings.Contains(stderr, "no control socket in "+dir) || stdout != "" {
		t.Errorf("herd status with only two stale sockets: exit %d, stdout %q, stderr %q; want exit 1, no cluster running", code, stdout, stderr)
	}

	live := startHerd(t, env, argv("--name", "live", "-w", "1", worker("lib"))...)
	controlOf(t, live)
	code, stdout, stderr = herdEnv(t, env, "status", "--json")
	var st statusView
	if err := json.Unmarshal([]byte(stdout), &st); code != 0 || err != nil || st.PID != live.Cmd.Process.Pid {
		t.Errorf("herd status beside two stale sockets: exit %d, stdout %q, stderr %q; want the status of the one live herd (pid %d)", code, stdout, stderr, live.Cmd.Process.Pid)
	}

	// Two live ones: now the user must say which, and only those are named.
	other := startHerd(t, env, argv("--name", "other", "-w", "1", worker("lib"))...)
	controlOf(t, other)
	code, _, stderr = herdEnv(t, env, "status")
	if code != 2 || !strings.Contains(stderr, "several clusters run (live, other)") {
		t.Errorf("herd status with two live herds and two stale sockets: exit %d, stderr %q; want exit 2 naming live and other only", code, stderr)
	}
}
