package herd_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/internal/herdtest"
	"github.com/herd-sh/herd/internal/testworker"
)

func newPool(t *testing.T, opts herd.PoolOptions) *herd.Pool {
	t.Helper()
	if opts.Command == nil {
		opts.Command = testworker.Command("tasks")
	}
	if opts.Workers == 0 {
		opts.Workers = 2
	}
	opts.Stdout, opts.Stderr = discard{}, discard{}
	p, err := herd.NewPool(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

type discard struct{}

func (discard) Write(b []byte) (int, error) { return len(b), nil }

func numbers(n int) iter.Seq[any] {
	return func(yield func(any) bool) {
		for i := range n {
			if !yield(i) {
				return
			}
		}
	}
}

// mapDoubles maps the numbers 0..n-1 on p and checks that the results are
// their doubles, in order, each once.
func mapDoubles(t *testing.T, p *herd.Pool, n int) {
	t.Helper()
	i := 0
	for v, err := range p.Map(context.Background(), numbers(n)) {
		if err != nil {
			t.Fatal(err)
		}
		if string(v) != fmt.Sprint(2*i) {
			t.Fatalf("result %d is %s, want %d", i, v, 2*i)
		}
		i++
	}
	if i != n {
		t.Fatalf("%d results, want %d", i, n)
	}
}

func TestPoolResultsInOrder(t *testing.T) {
	p := newPool(t, herd.PoolOptions{})
	mapDoubles(t, p, 20000)
}

// Unordered: every answer once, whatever the order, and failures still
// name their task.
func TestPoolUnordered(t *testing.T) {
	p := newPool(t, herd.PoolOptions{Unordered: true, Inflight: 8})
	const n = 5000
	tasks := func(yield func(any) bool) {
		for i := range n {
			var task any = i
			if i%1000 == 7 {
				task = "fail"
			}
			if !yield(task) {
				return
			}
		}
	}
	seen := map[string]bool{}
	var failed []int
	for v, err := range p.Map(context.Background(), tasks) {
		var te *herd.TaskError
		switch {
		case errors.As(err, &te):
			failed = append(failed, te.Index)
		case err != nil:
			t.Fatal(err)
		case seen[string(v)]:
			t.Fatalf("result %s twice", v)
		default:
			seen[string(v)] = true
		}
	}
	slices.Sort(failed)
	if want := []int{7, 1007, 2007, 3007, 4007}; !slices.Equal(failed, want) {
		t.Errorf("failed tasks %v, want %v", failed, want)
	}
	if len(seen) != n-5 {
		t.Fatalf("%d distinct results, want %d", len(seen), n-5)
	}
	for i := range n {
		if i%1000 != 7 && !seen[fmt.Sprint(2*i)] {
			t.Fatalf("no result for task %d", i)
		}
	}
}

// Large tasks: many more bytes in flight than a channel queues for other
// messages, and one task longer than a message may be, which fails alone.
func TestPoolLargeTasks(t *testing.T) {
	p := newPool(t, herd.PoolOptions{Options: herd.Options{MaxMessage: 64 << 10}, Inflight: 256})
	big := strings.Repeat("x", 60<<10)  // 256 of them in flight: 15 MiB a worker
	huge := strings.Repeat("y", 64<<10) // no room left for the message around it
	const n = 2000
	tasks := func(yield func(any) bool) {
		for i := range n {
			task := big
			if i == 1234 {
				task = huge
			}
			if !yield(task) {
				return
			}
		}
	}
	i := 0
	for v, err := range p.Map(context.Background(), tasks) {
		var te *herd.TaskError
		switch {
		case i == 1234:
			if !errors.As(err, &te) || te.Index != 1234 || !strings.Contains(te.Reason, "message limit") {
				t.Fatalf("task 1234: %v, %v; want a TaskError about the message limit", v, err)
			}
		case err != nil:
			t.Fatalf("task %d: %v", i, err)
		case string(v) != fmt.Sprint(len(big)+2):
			t.Fatalf("task %d: result %s, want %d", i, v, len(big)+2)
		}
		i++
	}
	if i != n {
		t.Fatalf("%d results, want %d", i, n)
	}
}

func TestPoolFailuresAreReported(t *testing.T) {
	p := newPool(t, herd.PoolOptions{Retries: 1, TaskTimeout: 500 * time.Millisecond})
	tasks := []any{1, "fail", 2, "crash", 3, "hang", 4}
	var got []string
	for v, err := range p.Map(context.Background(), slices.Values(tasks)) {
		var te *herd.TaskError
		switch {
		case errors.As(err, &te):
			got = append(got, fmt.Sprintf("task %d: %s", te.Index, firstWords(te.Reason)))
		case err != nil:
			t.Fatal(err)
		default:
			got = append(got, string(v))
		}
	}
	want := []string{"2", "task 1: asked to fail", "4", "task 3: its worker exited", "6", "task 5: it took longer", "8"}
	if !slices.Equal(got, want) {
		t.Errorf("results %q\nwant    %q", got, want)
	}
}

func firstWords(s string) string {
	f := strings.Fields(s)
	return strings.Join(f[:min(3, len(f))], " ")
}

// A worker killed mid-run loses nothing and duplicates nothing.
func TestPoolSurvivesAKilledWorker(t *testing.T) {
	p := newPool(t, herd.PoolOptions{})
	const n = 100000
	seen := make([]int, n)
	i := 0
	for v, err := range p.Map(context.Background(), numbers(n)) {
		if err != nil {
			t.Fatal(err)
		}
		var r int
		json.Unmarshal(v, &r)
		if r%2 != 0 || r/2 >= n {
			t.Fatalf("result %s", v)
		}
		seen[r/2]++
		if i == n/4 {
			syscall.Kill(p.Workers()[0].PID, syscall.SIGKILL)
		}
		i++
	}
	for task, c := range seen {
		if c != 1 {
			t.Fatalf("task %d answered %d times", task, c)
		}
	}
	if w := p.Workers()[0]; w.Restarts != 1 {
		t.Errorf("worker 0 restarted %d times, want once (the kill)", w.Restarts)
	}
}

// Cancelling the context stops a Map early: its last yield is the
// context's cause, and the pool stays usable.
func TestPoolMapStopsWithItsContext(t *testing.T) {
	p := newPool(t, herd.PoolOptions{})
	why := errors.New("enough")
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	results := 0
	var last error
	for _, err := range p.Map(ctx, numbers(1000000)) {
		if err != nil {
			last = err
			continue // the last one
		}
		if results++; results == 100 {
			cancel(why)
		}
	}
	if !errors.Is(last, why) || results >= 1000000 {
		t.Fatalf("after %d results the map ended with %v, want the cause %q before the end", results, last, why)
	}
	// The pool still works.
	mapDoubles(t, p, 50)
}

func TestPoolMapStopsWhenTheLoopDoes(t *testing.T) {
	p := newPool(t, herd.PoolOptions{})
	for range 3 {
		n := 0
		for _, err := range p.Map(context.Background(), numbers(1000000)) {
			if err != nil {
				t.Fatal(err)
			}
			if n++; n == 10 {
				break
			}
		}
	}
	// The pool still works after abandoned maps.
	// The pool still works.
	mapDoubles(t, p, 100)
}

// gated is a task that waits for its file to exist, and the file.
func gated(t *testing.T) (any, string) {
	gate := filepath.Join(t.TempDir(), "gate")
	return map[string]string{"gate": gate}, gate
}

// gatedFirst is the gated task, then the numbers 0 to n-1.
func gatedFirst(gate any, n int) iter.Seq[any] {
	return func(yield func(any) bool) {
		if !yield(gate) {
			return
		}
		for i := range n {
			if !yield(i) {
				return
			}
		}
	}
}

// Unordered: a slow task holds up no result but those queued behind it on
// its own worker. Task 0 gives nothing until the test opens its gate,
// which it does only once every result that can come has come.
func TestPoolUnorderedDoesNotWaitForASlowTask(t *testing.T) {
	const n, inflight = 200, 4
	p := newPool(t, herd.PoolOptions{Unordered: true, Inflight: inflight})
	gate, file := gated(t)
	// A pool that kept task order would wait for task 0 for ever: open
	// the gate anyway after a while, and fail below.
	timer := time.AfterFunc(30*time.Second, func() { herdtest.OpenGate(file) })
	defer timer.Stop()
	var got []string
	for v, err := range p.Map(context.Background(), gatedFirst(gate, n)) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(v))
		// Task 0's worker holds it and at most inflight-1 tasks after
		// it: every other result can come first.
		if len(got) == n+1-inflight {
			herdtest.OpenGate(file)
		}
	}
	if i := slices.Index(got, `"gated"`); i < n+1-inflight {
		t.Errorf("the slow task's result came %d-th; want after the %d not held up by it", i+1, n+1-inflight)
	}
	seen := map[string]int{}
	for _, v := range got {
		seen[v]++
	}
	for i := range n {
		if seen[fmt.Sprint(2*i)] != 1 {
			t.Fatalf("task %d's result came %d times", i+1, seen[fmt.Sprint(2*i)])
		}
	}
}

// In task order (the default), no result comes before a slow task's, even
// when all the others are done.
func TestPoolOrderedWaitsForASlowTask(t *testing.T) {
	const n, inflight = 11, 4 // with the slow one, all read at once: 2 × 2 workers × 4 ahead
	log := filepath.Join(t.TempDir(), "log")
	p := newPool(t, herd.PoolOptions{Options: herd.Options{Env: append(os.Environ(), "TEST_LOG="+log)}, Inflight: inflight})
	gate, file := gated(t)
	var opened atomic.Bool
	done := make(chan struct{})
	defer func() { herdtest.OpenGate(file); <-done }()
	go func() {
		defer close(done)
		// Task 0's worker holds it and at most inflight-1 tasks after
		// it: the other worker runs all the others.
		herdtest.Eventually(30*time.Second, func() bool { return herdtest.Logged(log, "") >= 1+n-(inflight-1) })
		time.Sleep(200 * time.Millisecond) // room for results out of turn to come
		opened.Store(true)
		herdtest.OpenGate(file)
	}()
	var got []string
	for v, err := range p.Map(context.Background(), gatedFirst(gate, n)) {
		if err != nil {
			t.Fatal(err)
		}
		if !opened.Load() {
			t.Errorf("result %s came before the slow task's", v)
		}
		got = append(got, string(v))
	}
	want := []string{`"gated"`}
	for i := range n {
		want = append(want, fmt.Sprint(2*i))
	}
	if !slices.Equal(got, want) {
		t.Errorf("results %q, want %q", got, want)
	}
}

// The pool takes tasks from the sequence only as results are consumed: at
// no time more than 2 × workers × Inflight ahead of the consumer, however
// long it holds back.
func TestPoolTakesTasksOnlyAsResultsAreConsumed(t *testing.T) {
	const workers, inflight, n = 2, 4, 3000
	const bound = 2 * workers * inflight
	p := newPool(t, herd.PoolOptions{Options: herd.Options{Workers: workers}, Inflight: inflight})
	var taken atomic.Int64
	tasks := func(yield func(any) bool) {
		for i := range n {
			taken.Add(1)
			if !yield(i) {
				return
			}
		}
	}
	consumed, most := 0, 0
	for v, err := range p.Map(context.Background(), tasks) {
		if err != nil {
			t.Fatal(err)
		}
		if string(v) != fmt.Sprint(2*consumed) {
			t.Fatalf("result %d is %s", consumed, v)
		}
		consumed++
		switch {
		case consumed == 1 || consumed == n/2:
			time.Sleep(500 * time.Millisecond) // the consumer holds back
		case consumed < 300:
			time.Sleep(time.Millisecond) // a slow consumer
		}
		ahead := int(taken.Load()) - consumed
		most = max(most, ahead)
		if ahead > bound {
			t.Fatalf("%d tasks taken when %d results were consumed: %d ahead, more than 2 × %d workers × %d in flight", taken.Load(), consumed, ahead, workers, inflight)
		}
	}
	if consumed != n || taken.Load() != n {
		t.Fatalf("%d results of %d tasks taken, want %d", consumed, taken.Load(), n)
	}
	t.Logf("at most %d tasks ahead of the consumer", most)
}

// A task that crashes every worker it runs on is tried exactly Retries
// more times than its first (each try is logged by the worker); with
// Inflight 1 each death is the task's own. Retries 0 means 2, negative
// none.
func TestPoolTriesACrashingTaskRetriesPlusOneTimes(t *testing.T) {
	for _, tc := range []struct{ retries, tries int }{{-1, 1}, {0, 3}, {1, 2}, {3, 4}} {
		t.Run(fmt.Sprint(tc.retries), func(t *testing.T) {
			log := filepath.Join(t.TempDir(), "log")
			p := newPool(t, herd.PoolOptions{Options: herd.Options{Env: append(os.Environ(), "TEST_LOG="+log)}, Inflight: 1, Retries: tc.retries})
			var got []string
			for v, err := range p.Map(context.Background(), slices.Values([]any{1, "crash", 2})) {
				var te *herd.TaskError
				switch {
				case errors.As(err, &te):
					got = append(got, fmt.Sprintf("task %d: %s", te.Index, te.Reason))
				case err != nil:
					t.Fatal(err)
				default:
					got = append(got, string(v))
				}
			}
			if want := []string{"2", "task 1: its worker exited (exit status 3)", "4"}; !slices.Equal(got, want) {
				t.Errorf("results %q, want %q", got, want)
			}
			if tries := herdtest.Logged(log, `"crash"`); tries != tc.tries {
				t.Errorf("the crashing task was tried %d times with Retries %d, want %d", tries, tc.retries, tc.tries)
			}
			if runs := herdtest.Logged(log, "1") + herdtest.Logged(log, "2"); runs != 2 {
				t.Errorf("the other two tasks ran %d times, want once each", runs)
			}
		})
	}
}

// A task that crashes its worker once succeeds on its retry; the other
// tasks its worker held are answered once each, and the worker restarts
// once.
func TestPoolTaskThatCrashesOnceSucceedsOnItsRetry(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	p := newPool(t, herd.PoolOptions{Options: herd.Options{Env: append(os.Environ(), "TEST_LOG="+log, "TEST_MARKER="+filepath.Join(dir, "crashed"))}})
	const n, bad = 500, 250
	tasks := func(yield func(any) bool) {
		for i := range n {
			var task any = i
			if i == bad {
				task = "crash-once"
			}
			if !yield(task) {
				return
			}
		}
	}
	i := 0
	for v, err := range p.Map(context.Background(), tasks) {
		switch {
		case err != nil:
			t.Fatalf("task %d: %v", i, err)
		case i == bad && string(v) != `"recovered"`:
			t.Errorf("task %d gave %s, want its retry's \"recovered\"", i, v)
		case i != bad && string(v) != fmt.Sprint(2*i):
			t.Errorf("task %d gave %s, want %d", i, v, 2*i)
		}
		i++
	}
	if i != n {
		t.Fatalf("%d results, want %d", i, n)
	}
	if tries := herdtest.Logged(log, `"crash-once"`); tries != 2 {
		t.Errorf("the task was tried %d times, want twice", tries)
	}
	restarts := 0
	for _, w := range p.Workers() {
		restarts += w.Restarts
	}
	if restarts != 1 {
		t.Errorf("%d restarts, want 1 (the crash)", restarts)
	}
}

// With no Command the pool's workers are copies of this test binary, run
// with its own arguments (see TestMain), that serve the tasks.
func TestPoolSelfForked(t *testing.T) {
	p, err := herd.NewPool(herd.PoolOptions{Options: herd.Options{
		Workers: 2,
		Env:     append(os.Environ(), "HERD_TEST_SELF_FORK=1", "TEST_SELF_FORK_ROLE=tasks"),
		Stdout:  discard{}, Stderr: discard{},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	mapDoubles(t, p, 1000)
	for _, w := range p.Workers() {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", w.PID))
		if err != nil {
			continue // not Linux
		}
		if args := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00"); !slices.Equal(args, os.Args) {
			t.Errorf("worker %d runs %q, want this program's own arguments %q", w.ID, args, os.Args)
		}
	}
}

// Tasks travel on the channel, so workers may write what they like on
// their stdout: the results are right, and every line reaches the pool's
// Stdout, tagged with its worker.
func TestPoolWorkersMayLogOnStdout(t *testing.T) {
	var stdout herdtest.SyncBuffer
	p, err := herd.NewPool(herd.PoolOptions{Options: herd.Options{
		Command: testworker.Command("tasks"),
		Workers: 2,
		Env:     append(os.Environ(), "TEST_STDOUT=1"),
		Stdout:  &stdout, Stderr: discard{},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const n = 2000
	mapDoubles(t, p, n)
	p.Close()
	tagged := regexp.MustCompile(`(?m)^w[01] [0-9]+ \| log ([0-9]+)$`)
	seen := map[string]int{}
	for _, m := range tagged.FindAllStringSubmatch(stdout.String(), -1) {
		seen[m[1]]++
	}
	for i := range n {
		if seen[fmt.Sprint(i)] != 1 {
			t.Fatalf("the log line of task %d reached Stdout %d times, want once", i, seen[fmt.Sprint(i)])
		}
	}
}

// The results of quick tasks go back while a slow task that follows them
// on the same worker runs: the worker does not hold them for a batch.
func TestPoolResultsDoNotWaitBehindASlowTask(t *testing.T) {
	p := newPool(t, herd.PoolOptions{Options: herd.Options{Workers: 1}, Unordered: true, Inflight: 8})
	gate, file := gated(t)
	tasks := func(yield func(any) bool) {
		for _, task := range []any{1, 2, 3, gate} {
			if !yield(task) {
				return
			}
		}
	}
	// Were the three held behind the gated task, nothing would come until
	// the gate opens: open it anyway after a while, and fail below.
	var late atomic.Bool
	timer := time.AfterFunc(30*time.Second, func() { late.Store(true); herdtest.OpenGate(file) })
	defer timer.Stop()
	var got []string
	for v, err := range p.Map(context.Background(), tasks) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(v))
		if len(got) == 3 {
			herdtest.OpenGate(file)
		}
	}
	if late.Load() || !slices.Equal(got, []string{"2", "4", "6", `"gated"`}) {
		t.Errorf("results %v (gate opened by the timeout: %v); want the three quick ones while the slow one ran", got, late.Load())
	}
}
