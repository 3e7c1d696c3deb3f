package herd_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/internal/herdtest"
	"github.com/herd-sh/herd/internal/testworker"
)

// events collects what OnEvent receives.
type events struct {
	mu  sync.Mutex
	all []herd.Event
}

func (e *events) add(ev herd.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, ev)
}

// messages returns the messages of type typ, by worker.
func (e *events) messages(typ string) map[int][]json.RawMessage {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[int][]json.RawMessage{}
	for _, ev := range e.all {
		if ev.Kind == herd.EventMessage && ev.Message.Type == typ {
			out[ev.Worker] = append(out[ev.Worker], ev.Message.Data)
		}
	}
	return out
}

func (e *events) count(kind herd.EventKind) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, ev := range e.all {
		if ev.Kind == kind {
			n++
		}
	}
	return n
}

// failedExits returns the exits of workers that did not exit 0.
func (e *events) failedExits() []herd.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []herd.Event
	for _, ev := range e.all {
		if ev.Kind == herd.EventExited && ev.Code != 0 {
			out = append(out, ev)
		}
	}
	return out
}

func (e *events) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !herdtest.Eventually(20*time.Second, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

func libCluster(t *testing.T, workers int, env ...string) (*herd.Supervisor, *events, func() error) {
	t.Helper()
	ev := &events{}
	s, stop := start(t, herd.Options{
		Command: testworker.Command("lib"),
		Workers: workers,
		Env:     append(os.Environ(), env...),
		OnEvent: ev.add,
	})
	ev.waitFor(t, "every worker ready", func() bool { return ev.count(herd.EventReady) >= workers })
	return s, ev, stop
}

func TestWorkerMessagesArriveInOrder(t *testing.T) {
	const n = 20000
	_, ev, stop := libCluster(t, 2, fmt.Sprintf("TEST_SEQ=%d", n))
	ev.waitFor(t, "every seq message", func() bool {
		m := ev.messages("seq")
		return len(m[0]) >= n && len(m[1]) >= n
	})
	for id, msgs := range ev.messages("seq") {
		if len(msgs) != n {
			t.Errorf("worker %d: %d messages, want %d", id, len(msgs), n)
		}
		for i, d := range msgs {
			if string(d) != fmt.Sprint(i) {
				t.Fatalf("worker %d: message %d carries %s", id, i, d)
			}
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestPrimaryMessagesArriveInOrder(t *testing.T) {
	const n = 5000
	s, ev, stop := libCluster(t, 2)
	ctx := context.Background()
	for i := range n {
		if err := s.Send(ctx, 1, "ping", i); err != nil {
			t.Fatal(err)
		}
	}
	ev.waitFor(t, "every pong", func() bool { return len(ev.messages("pong")[1]) >= n })
	for i, d := range ev.messages("pong")[1] {
		if string(d) != fmt.Sprint(i) {
			t.Fatalf("pong %d carries %s", i, d)
		}
	}
	if got := len(ev.messages("pong")[0]); got != 0 {
		t.Errorf("worker 0 answered %d pings sent to worker 1", got)
	}
	stop()
}

// got decodes the "got" reports: which worker received a relayed message
// from which.
func gotFrom(ev *events) map[int][]int {
	out := map[int][]int{}
	for id, msgs := range ev.messages("got") {
		for _, d := range msgs {
			var g struct {
				From int
				Data struct{ ID int }
			}
			json.Unmarshal(d, &g)
			if g.From != g.Data.ID {
				out[id] = append(out[id], -100) // a lie about the sender
			}
			out[id] = append(out[id], g.From)
		}
	}
	return out
}

func TestBroadcastReachesEveryOtherWorkerOnce(t *testing.T) {
	s, ev, stop := libCluster(t, 3)
	if err := s.Broadcast(context.Background(), "go", nil); err != nil {
		t.Fatal(err)
	}
	ev.waitFor(t, "six relayed messages", func() bool {
		n := 0
		for _, f := range gotFrom(ev) {
			n += len(f)
		}
		return n >= 6
	})
	time.Sleep(300 * time.Millisecond) // room for a duplicate to show up
	got := gotFrom(ev)
	for id := range 3 {
		from := slices.Sorted(slices.Values(got[id]))
		var want []int
		for j := range 3 {
			if j != id {
				want = append(want, j)
			}
		}
		if !slices.Equal(from, want) {
			t.Errorf("worker %d received broadcasts from %v, want %v once each", id, from, want)
		}
	}
	stop()
}

func TestSendToOneWorker(t *testing.T) {
	s, ev, stop := libCluster(t, 3)
	if err := s.Send(context.Background(), 0, "sendto", map[string]int{"to": 2}); err != nil {
		t.Fatal(err)
	}
	ev.waitFor(t, "the relayed message", func() bool { return len(gotFrom(ev)[2]) >= 1 })
	time.Sleep(200 * time.Millisecond)
	got := gotFrom(ev)
	if !slices.Equal(got[2], []int{0}) || len(got[0])+len(got[1]) != 0 {
		t.Fatalf("relays received: %v, want only worker 2 hearing from 0", got)
	}
	stop()
}

func TestSendErrors(t *testing.T) {
	s, _, stop := libCluster(t, 1)
	ctx := context.Background()
	for _, tc := range []struct {
		id   int
		typ  string
		data any
		want error
	}{
		{5, "x", nil, herd.ErrNoWorker},
		{-1, "x", nil, herd.ErrNoWorker},
		{0, "herd.shutdown", nil, herd.ErrBadMessage},
		{0, "", nil, herd.ErrBadMessage},
		{0, "x", json.RawMessage(`{"broken"`), herd.ErrBadMessage},
		{0, "x", func() {}, herd.ErrBadMessage},
		{0, "x", strings.Repeat("y", 2<<20), herd.ErrBadMessage},
	} {
		if err := s.Send(ctx, tc.id, tc.typ, tc.data); !errors.Is(err, tc.want) {
			t.Errorf("Send(%d, %q): %v, want %v", tc.id, tc.typ, err, tc.want)
		}
	}
	stop()
	if err := s.Send(ctx, 0, "x", nil); !errors.Is(err, herd.ErrNoWorker) {
		t.Errorf("Send after stop: %v, want ErrNoWorker", err)
	}
}

// Events of one worker come in order: started, ready, its messages, exited,
// restart; and a graceful restart is reported as expected.
func TestLifecycleEvents(t *testing.T) {
	s, ev, stop := libCluster(t, 1)
	old := s.Workers()[0].PID
	if err := s.Restart(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	ev.waitFor(t, "a second ready", func() bool { return ev.count(herd.EventReady) >= 2 })
	stop()
	ev.mu.Lock()
	defer ev.mu.Unlock()
	var kinds []string
	for _, e := range ev.all {
		kinds = append(kinds, e.Kind.String())
		if e.Kind == herd.EventExited && (!e.Expected || e.Status == "") {
			t.Errorf("exit event %+v: want expected, with a status", e)
		}
	}
	// The replacement starts and is ready before the old worker is asked
	// to stop.
	want := []string{"started", "ready", "started", "ready", "exited", "exited"}
	if !slices.Equal(kinds, want) {
		t.Errorf("events %v, want %v", kinds, want)
	}
	// The final stop may end the new worker before the old one is done.
	exits := []int{ev.all[4].PID, ev.all[5].PID}
	if ev.all[0].PID != old || ev.all[2].PID == old || !slices.Contains(exits, old) || !slices.Contains(exits, ev.all[2].PID) {
		t.Errorf("pids: first %d (want %d), second %d, exits %v", ev.all[0].PID, old, ev.all[2].PID, exits)
	}
}

// A worker killed with kill -9 is reported as an unexpected exit, with its
// status, and then as a restart: at once the first time, after a backoff
// delay when it happens again soon after.
func TestUnexpectedExitAndRestartEvents(t *testing.T) {
	s, ev, stop := libCluster(t, 1)
	var killed []int
	for round := range 2 {
		pid := s.Workers()[0].PID
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed = append(killed, pid)
		ev.waitFor(t, "the replacement ready", func() bool { return ev.count(herd.EventReady) >= 2+round })
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	for round, pid := range killed {
		// One worker's events come in order; a replacement's may
		// interleave with them, so look at this pid's alone.
		var mine []herd.Event
		for _, e := range ev.all {
			if e.PID == pid {
				mine = append(mine, e)
			}
		}
		var kinds []string
		for _, e := range mine {
			kinds = append(kinds, e.Kind.String())
		}
		if want := []string{"started", "ready", "exited", "restart"}; !slices.Equal(kinds, want) {
			t.Fatalf("events of killed pid %d: %v, want %v", pid, kinds, want)
		}
		exit, restart := mine[2], mine[3]
		if exit.Expected || exit.Status != "signal: killed" || exit.Code != -1 || exit.Uptime <= 0 || exit.Worker != 0 {
			t.Errorf("exit event %+v: want unexpected, \"signal: killed\", code -1, an uptime, worker 0", exit)
		}
		if restart.Worker != 0 {
			t.Errorf("restart event for worker %d, want 0", restart.Worker)
		}
		// The first crash is restarted at once; the second, soon after,
		// waits the first backoff step (100ms, jittered).
		if round == 0 && restart.Delay != 0 {
			t.Errorf("first restart after %v, want at once", restart.Delay)
		}
		if round == 1 && (restart.Delay <= 0 || restart.Delay > time.Second) {
			t.Errorf("second restart after %v, want the first backoff step (about 100ms)", restart.Delay)
		}
	}
	// Each restart did start a new worker in the slot.
	var started []int
	for _, e := range ev.all {
		if e.Kind == herd.EventStarted {
			started = append(started, e.PID)
		}
	}
	if len(started) != 3 || started[1] == killed[0] || started[2] == killed[1] || started[1] != killed[1] {
		t.Errorf("workers started %v, killed %v: want a new worker after each kill", started, killed)
	}
}

// Scripts in other languages speak the protocol: they answer pings and hear
// each other's broadcasts.
func TestNodeAndPythonWorkersSpeakTheProtocol(t *testing.T) {
	root, _ := filepath.Abs(".")
	for _, tc := range []struct{ bin, file string }{
		{"python3", "examples/python/chat.py"},
		{"node", "examples/node/chat.js"},
	} {
		t.Run(tc.bin, func(t *testing.T) {
			if _, err := exec.LookPath(tc.bin); err != nil {
				t.Skipf("%s is not installed: skipping its protocol test", tc.bin)
			}
			ev := &events{}
			s, stop := start(t, herd.Options{
				Command: []string{tc.bin, filepath.Join(root, tc.file)},
				Workers: 2,
				OnEvent: ev.add,
			})
			ev.waitFor(t, "both workers ready", func() bool { return ev.count(herd.EventReady) >= 2 })
			ev.waitFor(t, "both hellos relayed", func() bool {
				m := ev.messages("got")
				return len(m[0]) >= 1 && len(m[1]) >= 1
			})
			for id := range 2 {
				var g struct {
					From int
					Data struct{ Hello int }
				}
				json.Unmarshal(ev.messages("got")[id][0], &g)
				if g.From != 1-id || g.Data.Hello != 1-id {
					t.Errorf("worker %d heard %s, want the hello of worker %d", id, ev.messages("got")[id][0], 1-id)
				}
			}
			if err := s.Send(context.Background(), 1, "ping", map[string]string{"x": "é\n"}); err != nil {
				t.Fatal(err)
			}
			ev.waitFor(t, "the pong", func() bool { return len(ev.messages("pong")[1]) >= 1 })
			var pong map[string]string
			if err := json.Unmarshal(ev.messages("pong")[1][0], &pong); err != nil || pong["x"] != "é\n" {
				t.Errorf("pong data %s (%v)", ev.messages("pong")[1][0], err)
			}
			// They speak the protocol, so they are stopped with herd.shutdown
			// and exit on their own, well before the stop timeout.
			begin := time.Now()
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if took := time.Since(begin); took > 5*time.Second {
				t.Errorf("stop took %v", took)
			}
			for _, e := range ev.failedExits() {
				t.Errorf("worker %d ended with %s, want exit 0 after herd.shutdown", e.Worker, e.Status)
			}
		})
	}
}

// The worker library learns the primary's limit from herd.hello: with a
// 4 MiB limit, a 2 MiB message goes through both ways.
func TestLargeMessagesWithinARaisedLimit(t *testing.T) {
	ev := &events{}
	s, stop := start(t, herd.Options{
		Command:    testworker.Command("lib"),
		Workers:    1,
		MaxMessage: 4 << 20,
		OnEvent:    ev.add,
	})
	ev.waitFor(t, "the worker ready", func() bool { return ev.count(herd.EventReady) >= 1 })
	big := strings.Repeat("x", 2<<20)
	if err := s.Send(context.Background(), 0, "ping", big); err != nil {
		t.Fatal(err)
	}
	ev.waitFor(t, "the big pong", func() bool { return len(ev.messages("pong")[0]) >= 1 })
	if got := len(ev.messages("pong")[0][0]); got != len(big)+2 {
		t.Fatalf("pong of %d bytes, want %d", got, len(big)+2)
	}
	stop()
}
