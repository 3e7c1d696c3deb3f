package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/herd-sh/herd/internal/herdtest"
	"github.com/herd-sh/herd/internal/testworker"
)

// herdMap runs herd map with input and returns its exit code, stdout lines
// and stderr.
func herdMap(t *testing.T, env []string, input io.Reader, args ...string) (int, []string, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"map"}, args...)...)
	cmd.Env = append(append(os.Environ(), "HERD_TEST_AS_CLI=1"), env...)
	cmd.Stdin = input
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("herd map %v hung; stderr: %s", args, stderr.String())
	}
	out := strings.Split(strings.TrimSuffix(stdout.String(), "\n"), "\n")
	if stdout.Len() == 0 {
		out = nil
	}
	return cmd.ProcessState.ExitCode(), out, stderr.String()
}

func seqInput(n int) io.Reader {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "%d\n", i)
	}
	return strings.NewReader(b.String())
}

func lines(role string) []string {
	return append([]string{"--"}, testworker.Command(role)...)
}

func TestMapKeepsInputOrder(t *testing.T) {
	t.Parallel()
	code, out, stderr := herdMap(t, []string{"TEST_SLOW=0"}, seqInput(20000), argv("-w", "3", lines("lines"))...)
	if code != 0 || len(out) != 20000 {
		t.Fatalf("exit %d, %d lines; stderr %s", code, len(out), stderr)
	}
	for i, l := range out {
		if l != strconv.Itoa(2*i) {
			t.Fatalf("line %d is %q, want %d", i, l, 2*i)
		}
	}
	if !strings.Contains(stderr, "herd map: 20000 tasks, 0 failed, 0 retries") {
		t.Errorf("summary missing: %q", stderr)
	}
	// Unordered: the same answers, in any order.
	code, out, stderr = herdMap(t, nil, seqInput(5000), argv("-w", "3", "--unordered", "-q", lines("lines"))...)
	seen := map[string]bool{}
	for _, l := range out {
		seen[l] = true
	}
	if code != 0 || len(out) != 5000 || len(seen) != 5000 {
		t.Fatalf("unordered: exit %d, %d lines, %d distinct; stderr %s", code, len(out), len(seen), stderr)
	}
}

// A worker killed mid-run loses nothing and answers nothing twice.
// Killed workers lose no task and answer none twice. With one worker its
// replacement starts before herd has seen the old one's exit in full: the
// tasks given meanwhile must go to the new process, not to the old one's
// queue.
func TestMapSurvivesKilledWorkers(t *testing.T) {
	t.Parallel()
	for _, workers := range []string{"1", "2"} {
		t.Run("w"+workers, func(t *testing.T) {
			t.Parallel()
			mapThroughKills(t, workers)
		})
	}
}

func mapThroughKills(t *testing.T, workers string) {
	const n = 100000
	cmd := exec.Command(os.Args[0], argv("map", "-w", workers, "-q", lines("lines"))...)
	cmd.Env = append(os.Environ(), "HERD_TEST_AS_CLI=1")
	cmd.Stdin = seqInput(n)
	out, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	got := 0
	killed := 0
	for sc.Scan() {
		if sc.Text() != strconv.Itoa(2*got) {
			t.Fatalf("line %d is %q, want %d", got, sc.Text(), 2*got)
		}
		got++
		if got%25000 == 0 && killed < 2 {
			kids := childrenNamed(cmd.Process.Pid, filepath.Base(os.Args[0]))
			for _, pid := range kids {
				if pid != 0 {
					syscall.Kill(pid, syscall.SIGKILL)
					killed++
					break
				}
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("herd map: %v; stderr %s", err, stderr.String())
	}
	if got != n || killed != 2 {
		t.Fatalf("%d answers of %d, %d workers killed", got, n, killed)
	}
}

func TestMapTaskThatCrashesItsWorkersFails(t *testing.T) {
	t.Parallel()
	code, out, stderr := herdMap(t, []string{"TEST_CRASH_ON=7"}, seqInput(20), argv("-w", "2", "--retries", "2", lines("lines"))...)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr %s", code, stderr)
	}
	if len(out) != 20 || !strings.Contains(out[7], `"error":"its worker exited (exit status 3)"`) || !strings.Contains(out[7], `"task":"7"`) {
		t.Fatalf("answer 7 is %q (of %d)", out[7], len(out))
	}
	for i, l := range out {
		if i != 7 && l != strconv.Itoa(2*i) {
			t.Fatalf("answer %d is %q", i, l)
		}
	}
	last := strings.Split(strings.TrimSpace(stderr), "\n")
	// Three tries: its first, with other tasks, blames nobody (any of
	// them may have crashed the worker); then it runs alone, and each
	// crash uses up a try. The others held by its worker are retried too.
	if !regexp.MustCompile(`20 tasks, 1 failed, ([3-9]|1[0-9]) retries`).MatchString(stderr) || !strings.Contains(last[len(last)-1], "herd: tasks failed: 1 of 20") {
		t.Errorf("stderr %q", stderr)
	}
}

// A worker that dies with answers unwritten (a buffered stdout) holds
// several tasks, any of which may have killed it: none is blamed until it
// runs alone, so only the task that crashes fails, even with no retries.
func TestMapBlamesOnlyTheTaskThatCrashes(t *testing.T) {
	t.Parallel()
	code, out, stderr := herdMap(t, []string{"TEST_CRASH_ON=7", "TEST_CRASH_UNFLUSHED=1"}, seqInput(40), argv("-w", "2", "--retries", "0", lines("lines"))...)
	if code != 1 || len(out) != 40 || !strings.Contains(stderr, "40 tasks, 1 failed") {
		t.Fatalf("exit %d, %d answers; stderr %s", code, len(out), stderr)
	}
	for i, l := range out {
		if i == 7 {
			if !strings.Contains(l, `"error":"its worker exited (exit status 3)"`) {
				t.Errorf("answer 7 is %q", l)
			}
		} else if l != strconv.Itoa(2*i) {
			t.Errorf("answer %d is %q", i, l)
		}
	}
}

// The timeout counts a task's own time, not its wait behind the tasks its
// worker holds before it: from when the worker answered the one before.
func TestMapTaskTimeoutIsPerTask(t *testing.T) {
	t.Parallel()
	code, out, stderr := herdMap(t, []string{"TEST_SLOW=150ms", "TEST_FLUSH_EACH=1"}, seqInput(6), argv("-w", "1", "--inflight", "8", "--retries", "0", "--task-timeout", "500ms", lines("lines"))...)
	if code != 0 || len(out) != 6 || !strings.Contains(stderr, "6 tasks, 0 failed, 0 retries") {
		t.Fatalf("exit %d, answers %q; stderr %s", code, out, stderr)
	}
}

func TestMapTaskTimeout(t *testing.T) {
	t.Parallel()
	code, out, stderr := herdMap(t, []string{"TEST_HANG_ON=3"}, seqInput(6), argv("-w", "2", "--retries", "1", "--task-timeout", "300ms", lines("lines"))...)
	if code != 1 || len(out) != 6 || !strings.Contains(out[3], "took longer than 300ms") {
		t.Fatalf("exit %d, answers %q; stderr %s", code, out, stderr)
	}
}

// retried matches a summary that counts at least one retry.
var retried = regexp.MustCompile(`, [1-9][0-9]* retries`)

// A task whose worker crashed once succeeds on its retry.
func TestMapRetriesOnAnotherWorker(t *testing.T) {
	t.Parallel()
	marker := filepath.Join(t.TempDir(), "crashed")
	code, out, stderr := herdMap(t, []string{"TEST_CRASH_ONCE=5", "TEST_MARKER=" + marker}, seqInput(10), argv("-w", "2", lines("lines"))...)
	if code != 0 || len(out) != 10 || out[5] != "10" || !retried.MatchString(stderr) {
		t.Fatalf("exit %d, answers %q; stderr %s", code, out, stderr)
	}
}

func TestMapJSONMode(t *testing.T) {
	t.Parallel()
	input := strings.NewReader("1\n{\"broken\n3\n\"x\"\n")
	code, out, stderr := herdMap(t, []string{"TEST_ECHO=1"}, input, argv("-w", "1", "--json", lines("lines"))...)
	if code != 1 || len(out) != 4 {
		t.Fatalf("exit %d, answers %q; stderr %s", code, out, stderr)
	}
	if out[0] != "1" || out[2] != "3" || out[3] != `"x"` || !strings.Contains(out[1], `"error":"the task is not one JSON value"`) {
		t.Errorf("answers %q", out)
	}
}

// Line workers in Python and Node (stdlib only) work.
func TestMapWithPythonAndNodeWorkers(t *testing.T) {
	t.Parallel()
	root, _ := filepath.Abs("../..")
	for _, w := range []struct{ bin, file string }{
		{"python3", "examples/python/double.py"},
		{"node", "examples/node/double.js"},
	} {
		t.Run(w.bin, func(t *testing.T) {
			t.Parallel()
			if _, err := exec.LookPath(w.bin); err != nil {
				t.Skipf("%s is not installed", w.bin)
			}
			code, out, stderr := herdMap(t, nil, seqInput(10000), "-w", "2", "-q", "--", w.bin, filepath.Join(root, w.file))
			if code != 0 || len(out) != 10000 {
				t.Fatalf("exit %d, %d answers; stderr %s", code, len(out), stderr)
			}
			for i, l := range out {
				if l != strconv.Itoa(2*i) {
					t.Fatalf("answer %d is %q", i, l)
				}
			}
		})
	}
}

// A large input through a slow reader of the answers: herd reads input
// only as fast as answers go out, so its memory stays bounded. The reader
// stops for two seconds after the first answer, long enough for a herd
// that did not wait for it (an unbounded queue of answers, or of input
// read ahead) to take in all the input, even built with -race (some 90
// MB/s here), and for shorter whiles later: the input herd has taken stays
// within a few MB of the output the reader has, and herd's peak RSS stays
// bounded.
func TestMapMemoryStaysBounded(t *testing.T) {
	t.Parallel()
	// 16,000 tasks of 12 KiB: 188 MiB, half as much again as memoryBound,
	// so a herd that read it whole could not pass.
	const n, size = 16000, 12 << 10
	// What herd may hold: 2 × 2 workers × 16 tasks read ahead or held
	// (768 KiB), with the pipes and buffers on the way (64 KiB each, a
	// dozen of them), well within lagBound.
	const lagBound = 8 << 20
	var written atomic.Int64 // bytes of input herd has taken
	pr, pw := io.Pipe()
	defer pr.Close() // (a test that stops early stops the writer)
	go func() {
		line := []byte(strings.Repeat("x", size-1) + "\n")
		for i := range n {
			copy(line, fmt.Sprintf("%08d", i))
			if _, err := pw.Write(line); err != nil { // returns once taken whole
				return
			}
			written.Add(size)
		}
		pw.Close()
	}()
	cmd, stdout, wait := startMap(t, []string{"TEST_ECHO=1"}, pr, argv("-w", "2", "-q", lines("lines"))...)
	br := bufio.NewReaderSize(stdout, 64<<10)
	var read int64 // bytes of output the reader has
	got, peak, maxLag := 0, 0, int64(0)
	for {
		l, err := br.ReadSlice('\n')
		if err != nil {
			break
		}
		if len(l) != size || string(l[:8]) != fmt.Sprintf("%08d", got) {
			t.Fatalf("answer %d is %q... (%d bytes), want task %d's", got, l[:min(len(l), 16)], len(l), got)
		}
		got++
		read += int64(len(l))
		lag := written.Load() - read
		maxLag = max(maxLag, lag)
		if lag > lagBound {
			t.Fatalf("herd has taken %d MiB of input while %d MiB of output were read: %d MiB ahead", written.Load()>>20, read>>20, lag>>20)
		}
		// The reader stops: what herd may do meanwhile is take input for
		// what the workers hold, and no more.
		switch {
		case got == 1:
			time.Sleep(2 * time.Second)
		case got%4000 == 1:
			time.Sleep(200 * time.Millisecond)
		case got != n-1: // (after the last answer herd may be gone)
			continue
		}
		peak = max(peak, peakRSS(t, cmd.Process.Pid))
	}
	if code, stderr := wait(); code != 0 || got != n {
		t.Fatalf("exit %d, %d answers of %d; stderr %s", code, got, n, stderr)
	}
	t.Logf("herd was at most %d KiB ahead of the reader, and peaked at %d MiB", maxLag>>10, peak>>20)
	if peak > memoryBound {
		t.Errorf("herd map peaked at %d MiB for %d MiB of tasks", peak>>20, n*size>>20)
	}
}

func TestMapBadInput(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-w", "0", "--", "cat"}, 2, "--workers must be at least 1"},
		{[]string{"--inflight", "0", "--", "cat"}, 2, "--inflight must be at least 1"},
		{[]string{"--retries", "-1", "--", "cat"}, 2, "--retries must not be negative"},
		{[]string{}, 2, "missing worker command"},
		{[]string{"--input", "/no/such/file", "--", "cat"}, 1, "--input: open /no/such/file"},
		{[]string{"--", "no-such-command-xyz"}, 1, "cannot start worker command"},
	} {
		code, _, stderr := herdMap(t, nil, strings.NewReader("1\n"), tc.args...)
		last := strings.Split(strings.TrimSpace(stderr), "\n")
		if code != tc.code || !strings.Contains(last[len(last)-1], tc.want) {
			t.Errorf("herd map %v: exit %d, stderr %q; want %d and %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
}

// Ctrl-C stops a map cleanly: the answers so far are written, in order,
// and the summary says where it stopped.
func TestMapInterrupted(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], argv("map", "-w", "2", lines("lines"))...)
	cmd.Env = append(os.Environ(), "HERD_TEST_AS_CLI=1", "TEST_SLOW=1ms")
	cmd.Stdin = seqInput(100000)
	out, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	got := 0
	for sc.Scan() {
		if sc.Text() != strconv.Itoa(2*got) {
			t.Fatalf("line %d is %q", got, sc.Text())
		}
		if got++; got == 200 {
			cmd.Process.Signal(syscall.SIGINT)
		}
	}
	err := cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 1 || err == nil {
		t.Fatalf("exit %d after SIGINT, want 1", code)
	}
	if !strings.Contains(stderr.String(), "(interrupted: ") || !strings.Contains(stderr.String(), fmt.Sprintf("herd map: %d tasks", got)) {
		t.Errorf("summary after %d answers: %q", got, stderr.String())
	}
}

// --input and --output instead of stdin and stdout; -q prints nothing of
// its own.
func TestMapFilesAndQuiet(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	in, out := filepath.Join(dir, "tasks"), filepath.Join(dir, "answers")
	var b strings.Builder
	for i := range 500 {
		fmt.Fprintf(&b, "%d\n", i)
	}
	if err := os.WriteFile(in, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := herdMap(t, nil, strings.NewReader("not read\n"), argv("-w", "2", "-q", "--input", in, "--output", out, lines("lines"))...)
	if code != 0 || len(stdout) != 0 || stderr != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and nothing on either", code, stdout, stderr)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	answers := strings.Split(strings.TrimSuffix(string(got), "\n"), "\n")
	if len(answers) != 500 {
		t.Fatalf("%d answers in %s, want 500", len(answers), out)
	}
	for i, a := range answers {
		if a != strconv.Itoa(2*i) {
			t.Fatalf("answer %d is %q", i, a)
		}
	}
}

// A worker's stderr reaches herd's stderr, each line tagged with the
// worker's slot and pid.
func TestMapWorkerStderrIsTagged(t *testing.T) {
	t.Parallel()
	code, out, stderr := herdMap(t, []string{"TEST_STDERR=1"}, seqInput(20), argv("-w", "2", lines("lines"))...)
	if code != 0 || len(out) != 20 {
		t.Fatalf("exit %d, %d answers; stderr %s", code, len(out), stderr)
	}
	tagged := regexp.MustCompile(`(?m)^w[01] [0-9]+ \| note ([0-9]+)$`)
	seen := map[string]bool{}
	for _, m := range tagged.FindAllStringSubmatch(stderr, -1) {
		seen[m[1]] = true
	}
	if len(seen) != 20 {
		t.Errorf("%d of 20 notes came tagged; stderr:\n%s", len(seen), stderr)
	}
}

// With --json, an answer that is an object with an "error" member counts
// as a failed task (written as it is), and an answer that is not JSON
// fails its task.
func TestMapJSONAnswers(t *testing.T) {
	t.Parallel()
	input := strings.NewReader("1\n\"x\"\n3\n4\n")
	code, out, stderr := herdMap(t, []string{"TEST_BAD_ANSWER=3"}, input, argv("-w", "1", "--json", "--retries", "0", lines("lines"))...)
	if code != 1 || len(out) != 4 || !strings.Contains(stderr, "4 tasks, 2 failed") {
		t.Fatalf("exit %d, answers %q; stderr %s", code, out, stderr)
	}
	if out[0] != "2" || out[1] != `{"error":"not a number"}` || out[3] != "8" ||
		!strings.Contains(out[2], `"error":"the worker's answer is not one JSON value"`) {
		t.Errorf("answers %q", out)
	}
}

// On a terminal, herd map shows its progress (tasks done, rate, and an ETA
// when the input is a file), then the summary.
func TestMapProgressOnATerminal(t *testing.T) {
	t.Parallel()
	master, slave, err := openPTY()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer master.Close()
	in := filepath.Join(t.TempDir(), "tasks")
	var b strings.Builder
	for i := range 150 {
		fmt.Fprintf(&b, "%d\n", i)
	}
	os.WriteFile(in, []byte(b.String()), 0o644)
	cmd := exec.Command(os.Args[0], argv("map", "-w", "2", "--inflight", "1", "--input", in, lines("lines"))...)
	cmd.Env = append(os.Environ(), "HERD_TEST_AS_CLI=1", "TEST_SLOW=20ms")
	cmd.Stderr = slave
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	var screen strings.Builder
	io.Copy(&screen, master) // until herd, the last holder of the terminal, exits (EIO)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("herd map: %v; terminal:\n%q", err, screen.String())
	}
	progress := regexp.MustCompile(`\r\x1b\[K[0-9]+/[0-9]+ tasks, [0-9]+/s, ETA [0-9]+s`)
	if !progress.MatchString(screen.String()) || !strings.Contains(screen.String(), "herd map: 150 tasks, 0 failed") {
		t.Errorf("terminal got %q; want progress lines with an ETA, then the summary", screen.String())
	}
}

// startMap starts herd map reading input: the caller reads the returned
// stdout to its end, then calls wait for the exit code and stderr. A herd
// map still running after a minute is killed, and the test fails: it hung.
func startMap(t *testing.T, env []string, input io.Reader, args ...string) (*exec.Cmd, io.Reader, func() (int, string)) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"map"}, args...)...)
	cmd.Env = append(append(os.Environ(), "HERD_TEST_AS_CLI=1"), env...)
	cmd.Stdin = input
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var hung atomic.Bool
	timer := time.AfterFunc(time.Minute, func() {
		hung.Store(true)
		cmd.Process.Kill()
	})
	waited := false
	t.Cleanup(func() {
		timer.Stop()
		if !waited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, stdout, func() (int, string) {
		t.Helper()
		waited = true
		cmd.Wait()
		timer.Stop()
		if hung.Load() {
			t.Fatalf("herd map %v hung; stderr: %s", args, stderr.String())
		}
		return cmd.ProcessState.ExitCode(), stderr.String()
	}
}

// --unordered: a slow task holds up no answer but those queued behind it
// on its own worker. Task 0's worker answers nothing until the test opens
// its gate, which it does only once every answer that can come has come.
func TestMapUnorderedDoesNotWaitForASlowTask(t *testing.T) {
	t.Parallel()
	const n, inflight = 200, 4
	gate := filepath.Join(t.TempDir(), "gate")
	_, stdout, wait := startMap(t, []string{"TEST_ECHO=1", "TEST_GATE_ON=0", "TEST_GATE=" + gate}, seqInput(n),
		argv("-w", "2", "--inflight", strconv.Itoa(inflight), "--unordered", "-q", lines("lines"))...)
	// An ordered herd would wait for task 0 for ever: open the gate
	// anyway after a while, and fail below.
	timer := time.AfterFunc(30*time.Second, func() { herdtest.OpenGate(gate) })
	defer timer.Stop()
	var out []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		out = append(out, sc.Text())
		// Task 0's worker holds it and at most inflight-1 tasks after
		// it: every other answer can come out first.
		if len(out) == n-inflight {
			herdtest.OpenGate(gate)
		}
	}
	if code, stderr := wait(); code != 0 || len(out) != n {
		t.Fatalf("exit %d, %d answers; stderr %s", code, len(out), stderr)
	}
	if i := slices.Index(out, "0"); i < n-inflight {
		t.Errorf("task 0's answer came out %d-th; want after the %d answers not held up by it", i+1, n-inflight)
	}
	slices.SortFunc(out, func(a, b string) int { x, _ := strconv.Atoi(a); y, _ := strconv.Atoi(b); return x - y })
	for i, l := range out {
		if l != strconv.Itoa(i) {
			t.Fatalf("answers %q, want each of 0..%d once", out, n-1)
		}
	}
}

// In input order (the default), no answer comes out before a slow task's,
// even when all the others are done.
func TestMapOrderedWaitsForASlowTask(t *testing.T) {
	t.Parallel()
	const n = 12 // all read at once: herd reads 2 × 2 workers × 4 ahead
	dir := t.TempDir()
	gate, log := filepath.Join(dir, "gate"), filepath.Join(dir, "log")
	_, stdout, wait := startMap(t, []string{"TEST_ECHO=1", "TEST_GATE_ON=0", "TEST_GATE=" + gate, "TEST_LOG=" + log}, seqInput(n),
		argv("-w", "2", "--inflight", "4", "-q", lines("lines"))...)
	got := make(chan string, n)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			got <- sc.Text()
		}
		close(got)
	}()
	// Every task reaches a worker; all but task 0 and those behind it on
	// its worker are answered.
	if !herdtest.Eventually(30*time.Second, func() bool { return herdtest.Logged(log, "") == n }) {
		herdtest.OpenGate(gate)
		t.Fatalf("the workers read %d tasks of %d", herdtest.Logged(log, ""), n)
	}
	time.Sleep(200 * time.Millisecond) // room for answers out of turn to come
	select {
	case l := <-got:
		t.Errorf("answer %q came out before task 0's", l)
	default:
	}
	herdtest.OpenGate(gate)
	var out []string
	for l := range got {
		out = append(out, l)
	}
	code, stderr := wait()
	want := make([]string, n)
	for i := range want {
		want[i] = strconv.Itoa(i)
	}
	if code != 0 || !slices.Equal(out, want) {
		t.Fatalf("exit %d, answers %q, want %q; stderr %s", code, out, want, stderr)
	}
}

// A task that crashes every worker it runs on is tried exactly --retries
// more times than its first (the worker logs each task it reads). With
// --inflight 1 a worker holds one task at a time, so each death is the
// task's own and uses up a try; the summary counts each retry.
func TestMapTriesACrashingTaskRetriesPlusOneTimes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		flags   []string
		retries int
	}{
		{nil, 2}, // the default
		{[]string{"--retries", "0"}, 0},
		{[]string{"--retries", "1"}, 1},
		{[]string{"--retries", "4"}, 4},
	} {
		t.Run(strconv.Itoa(tc.retries), func(t *testing.T) {
			t.Parallel()
			log := filepath.Join(t.TempDir(), "log")
			code, out, stderr := herdMap(t, []string{"TEST_CRASH_ON=7", "TEST_LOG=" + log}, seqInput(20),
				argv("-w", "2", "--inflight", "1", tc.flags, lines("lines"))...)
			if code != 1 || len(out) != 20 || !strings.Contains(out[7], `"error":"its worker exited (exit status 3)"`) {
				t.Fatalf("exit %d, answers %q; stderr %s", code, out, stderr)
			}
			if tries := herdtest.Logged(log, "7"); tries != tc.retries+1 {
				t.Errorf("task 7 was tried %d times with %d retries, want %d", tries, tc.retries, tc.retries+1)
			}
			for i := range 20 {
				if tries := herdtest.Logged(log, strconv.Itoa(i)); i != 7 && tries != 1 {
					t.Errorf("task %d was run %d times, want once", i, tries)
				}
			}
			if want := fmt.Sprintf("herd map: 20 tasks, 1 failed, %d retries", tc.retries); !strings.Contains(stderr, want) {
				t.Errorf("stderr %q, want %q", stderr, want)
			}
		})
	}
}

// Plain mode passes lines through byte for byte: only the newline ends a
// line; a '\r' before it, tabs, spaces, bytes that are not UTF-8, NULs,
// empty lines and lines that look like JSON (an error object too) are the
// task and the answer as they are. With --json, a '\r' before the newline
// is white space, and goes.
func TestMapPlainModeIsByteExact(t *testing.T) {
	t.Parallel()
	odd := []string{
		"with CR\r", "\ttabs\tinside\t", "  spaces around  ", " ", "", "\r", "cr \r in the middle",
		"not UTF-8 \xff\xfe \xc3\x28 \xed\xa0\x80", "\x00nul\x00", `{"looks": "like json"}`,
		`{"error":"counts as nothing in plain mode"}`, `[1, 2,`, `"quoted"`, "null\r", "\x1b[K\x7f",
	}
	var in strings.Builder
	for i := range 600 {
		in.WriteString(odd[i%len(odd)] + "\n")
	}
	for name, worker := range map[string][]string{
		"cat":  {"--", "cat"},
		"echo": lines("lines"),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, stdout, wait := startMap(t, []string{"TEST_ECHO=1"}, strings.NewReader(in.String()), argv("-w", "2", worker)...)
			out, err := io.ReadAll(stdout)
			if err != nil {
				t.Fatal(err)
			}
			code, stderr := wait()
			if code != 0 || !strings.Contains(stderr, "herd map: 600 tasks, 0 failed") {
				t.Fatalf("exit %d; stderr %s", code, stderr)
			}
			if string(out) != in.String() {
				got := strings.SplitAfter(string(out), "\n")
				for i, l := range strings.SplitAfter(in.String(), "\n") {
					if i >= len(got) || got[i] != l {
						t.Fatalf("output differs from the input at line %d: %q, want %q (%d bytes, want %d)", i, got[min(i, len(got)-1)], l, len(out), in.Len())
					}
				}
				t.Fatalf("output of %d bytes, want the %d of the input", len(out), in.Len())
			}
		})
	}
	t.Run("json", func(t *testing.T) {
		t.Parallel()
		_, stdout, wait := startMap(t, nil, strings.NewReader("1\r\n\"x\\ty\"\r\n{\"a\": 2}\n"), "-w", "1", "--json", "-q", "--", "cat")
		out, _ := io.ReadAll(stdout)
		if code, stderr := wait(); code != 0 || string(out) != "1\n\"x\\ty\"\n{\"a\": 2}\n" {
			t.Fatalf("exit %d, output %q; stderr %s", code, out, stderr)
		}
	})
}

// Off a terminal, herd map shows no progress (no carriage returns or
// escape sequences on stderr, even over a run longer than the progress
// period and with an input file, which would have an ETA): its summary
// ends stderr, a line of its own.
func TestMapNoProgressOffATerminal(t *testing.T) {
	t.Parallel()
	in := filepath.Join(t.TempDir(), "tasks")
	var b strings.Builder
	for i := range 150 {
		fmt.Fprintf(&b, "%d\n", i)
	}
	os.WriteFile(in, []byte(b.String()), 0o644)
	code, out, stderr := herdMap(t, []string{"TEST_SLOW=20ms"}, nil, argv("-w", "2", "--inflight", "1", "--input", in, lines("lines"))...)
	if code != 0 || len(out) != 150 {
		t.Fatalf("exit %d, %d answers; stderr %q", code, len(out), stderr)
	}
	if strings.ContainsAny(stderr, "\r\x1b") || !regexp.MustCompile(`(^|\n)herd map: 150 tasks, 0 failed, 0 retries, [^\n]*\n$`).MatchString(stderr) {
		t.Errorf("stderr %q; want no progress, and the summary", stderr)
	}
}

// A worker holds at most --inflight tasks, 16 unless told: one whose first
// task is held up (a gate) keeps reading what herd gives it, and herd
// gives it no more than that.
func TestMapInflightBoundsWhatAWorkerHolds(t *testing.T) {
	t.Parallel()
	code, out, _ := herdMap(t, nil, nil, "--help")
	if code != 0 || !regexp.MustCompile(`--inflight int +tasks a worker may hold at once \(default 16\)`).MatchString(strings.Join(out, "\n")) {
		t.Errorf("herd map --help (exit %d) does not give --inflight's default as 16:\n%s", code, strings.Join(out, "\n"))
	}
	for _, tc := range []struct {
		flags []string
		held  int
	}{{nil, 16}, {[]string{"--inflight", "5"}, 5}} {
		t.Run(strconv.Itoa(tc.held), func(t *testing.T) {
			t.Parallel()
			const n = 60
			dir := t.TempDir()
			gate, log := filepath.Join(dir, "gate"), filepath.Join(dir, "log")
			_, stdout, wait := startMap(t, []string{"TEST_ECHO=1", "TEST_GATE_ON=0", "TEST_GATE=" + gate, "TEST_LOG=" + log}, seqInput(n),
				argv("-w", "1", "-q", tc.flags, lines("lines"))...)
			defer herdtest.OpenGate(gate)
			if !herdtest.Eventually(30*time.Second, func() bool { return herdtest.Logged(log, "") >= tc.held }) {
				t.Fatalf("the worker got %d tasks, want %d", herdtest.Logged(log, ""), tc.held)
			}
			time.Sleep(300 * time.Millisecond) // room for more to come, if herd gave more
			if got := herdtest.Logged(log, ""); got != tc.held {
				t.Errorf("a worker held up on its first task was given %d tasks, want %d", got, tc.held)
			}
			herdtest.OpenGate(gate)
			out, _ := io.ReadAll(stdout)
			if code, stderr := wait(); code != 0 || string(out) != seqInputString(n) {
				t.Fatalf("exit %d, output %q; stderr %s", code, out, stderr)
			}
		})
	}
}

func seqInputString(n int) string {
	b, _ := io.ReadAll(seqInput(n))
	return string(b)
}

// A worker that exits as soon as its input ends (cat) is not taken for a
// crashed one at the end of a map: no warning, no replacement. (Map closes
// the workers' input just before the supervisor stops; the exit can come
// first. A race, so a few runs.)
func TestMapWorkersEndingWithTheirInputAreNotRestarted(t *testing.T) {
	t.Parallel()
	for run := range 10 {
		code, out, stderr := herdMap(t, nil, strings.NewReader("a\nb\nc\nd\n"), "-w", "2", "--", "cat")
		if code != 0 || len(out) != 4 {
			t.Fatalf("run %d: exit %d, %d answers; stderr %q", run, code, len(out), stderr)
		}
		if strings.Contains(stderr, "exited") || strings.Contains(stderr, "failed at the end") || strings.Contains(stderr, "restart") {
			t.Fatalf("run %d: the end of the input was taken for a crash:\n%s", run, stderr)
		}
	}
}
