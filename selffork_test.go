package herd_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/internal/herdtest"
	"github.com/herd-sh/herd/internal/testworker"
)

// With no Command the supervisor runs this very program again, with its
// own arguments, as Node's cluster.fork() does; the copy finds itself a
// worker (see TestMain) and serves through the worker package.
func TestSelfFork(t *testing.T) {
	ev := &events{}
	s, stop := start(t, herd.Options{
		Workers: 2,
		Listen:  []string{"127.0.0.1:0"},
		Env:     append(os.Environ(), "HERD_TEST_SELF_FORK=1", "TEST_SEQ=3"),
		OnEvent: ev.add,
	})
	ev.waitFor(t, "both workers ready", func() bool { return ev.count(herd.EventReady) >= 2 })
	ev.waitFor(t, "their messages", func() bool {
		m := ev.messages("seq")
		return len(m[0]) == 3 && len(m[1]) == 3
	})
	ws := s.Workers()
	url := "http://" + s.Listeners()[0].Addr.String() + "/"
	seen := map[int]int{}
	c := herdtest.NewClient(false)
	defer c.CloseIdleConnections()
	for i := 0; len(seen) < 2 && i < 200; i++ {
		if r, err := herdtest.Get(c, url); err == nil {
			seen[r.ID] = r.PID
		}
	}
	for id := range 2 {
		if seen[id] != ws[id].PID {
			t.Errorf("worker %d answered from pid %d, supervisor says %d", id, seen[id], ws[id].PID)
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", ws[id].PID))
		if err == nil {
			args := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
			if !slices.Equal(args, os.Args) {
				t.Errorf("worker %d runs %q, want this program's own arguments %q", id, args, os.Args)
			}
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// Workers built on worker.Serve drain on herd.shutdown: replacing them one
// after another under keep-alive and new-connection load fails no request.
func TestWorkerShutdownDrainsWithoutFailedRequests(t *testing.T) {
	ev := &events{}
	s, stop := start(t, herd.Options{
		Command: testworker.Command("lib"),
		Workers: 2,
		Listen:  []string{"127.0.0.1:0"},
		OnEvent: ev.add,
	})
	ev.waitFor(t, "both workers ready", func() bool { return ev.count(herd.EventReady) >= 2 })
	addr := s.Listeners()[0].Addr.String()
	keep := herdtest.StartLoad(addr, 8, true)
	fresh := herdtest.StartLoad(addr, 4, false)
	const rounds = 4
	for round := range rounds {
		time.Sleep(300 * time.Millisecond)
		if err := s.Restart(context.Background(), round%2); err != nil {
			t.Fatal(err)
		}
		ev.waitFor(t, "the replacement ready", func() bool { return ev.count(herd.EventReady) >= 3+round })
	}
	time.Sleep(300 * time.Millisecond)
	k, f := keep.Stop(), fresh.Stop()
	if k.Failed+f.Failed != 0 {
		t.Errorf("%d keep-alive and %d new-connection requests failed during %d restarts; first: %v %v", k.Failed, f.Failed, rounds, k.Errors, f.Errors)
	}
	if k.OK < 100 || f.OK < 100 {
		t.Errorf("only %d keep-alive and %d new-connection answers: the load did not run", k.OK, f.OK)
	}
	if pids := len(k.PIDs); pids < 2+rounds-1 {
		t.Errorf("answers came from %d worker pids, want the replacements too", pids)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
