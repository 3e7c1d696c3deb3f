// Package bench holds herd's Go benchmarks; the shell scripts beside them
// compare herd with its peers (see docs/benchmarks.md).
package bench

import (
	"context"
	"io"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/internal/herdtest"
	"github.com/herd-sh/herd/internal/testworker"
)

func TestMain(m *testing.M) {
	testworker.Main()
	os.Exit(m.Run())
}

// BenchmarkReplaceKilledWorker measures kill -9 of a Go worker to its
// replacement answering a request (one worker, so every request after the
// kill must wait for the replacement). The peer figure is Node cluster's
// 147 ms (peer figures measured on this kind of machine, 2026-11-22), of which 106 ms is Node's start-up.
func BenchmarkReplaceKilledWorker(b *testing.B) {
	sup, err := herd.New(herd.Options{
		Command: testworker.Command("http"),
		Workers: 1,
		Listen:  []string{"127.0.0.1:0"},
		// Every kill is a first exit (restarted at once), not a crash loop.
		Restart: herd.RestartPolicy{BackoffReset: time.Nanosecond},
		Stdout:  io.Discard,
		Stderr:  io.Discard,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	defer func() { cancel(); <-done }()
	url := "http://" + sup.Listeners()[0].Addr.String() + "/"
	c := herdtest.NewClient(false)
	c.Timeout = 30 * time.Second
	pid := waitPID(c, url, 0)
	b.ResetTimer()
	for range b.N {
		// A worker killed before herd took it for ready would count as
		// a crash loop (restarted after a backoff): wait for that, off
		// the clock.
		b.StopTimer()
		waitReady(sup, pid)
		b.StartTimer()
		syscall.Kill(pid, syscall.SIGKILL)
		pid = waitPID(c, url, pid)
	}
}

// waitReady waits until the supervisor's worker pid is ready.
func waitReady(sup *herd.Supervisor, pid int) {
	for {
		if w := sup.Workers()[0]; w.PID == pid && w.Ready {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// waitPID asks until a worker other than old answers, and returns its pid.
func waitPID(c *http.Client, url string, old int) int {
	for {
		r, err := herdtest.Get(c, url)
		if err == nil && r.PID != old {
			return r.PID
		}
		if err != nil {
			time.Sleep(time.Millisecond) // reset by the dying worker
		}
	}
}
