// Command poolbench measures herd's Go task pool (herd.Pool): trivial tasks,
// n → 2n, on 2 workers with up to 256 tasks in flight each. It is one
// program: the primary self-forks its workers, which serve the tasks with
// worker.ServeTasks. bench/tasks.sh runs it beside herd map and Node's
// cluster module (bench/node-tasks.js) and prints ratios.
//
//	go run ./bench/poolbench            # N=1000000
//
// The primary maps the tasks 0..N-1, sums the results and checks that the
// sum is N*(N-1). The clock runs from the first task handed to the pool to
// the last result taken: the workers' start-up is left out (the primary
// waits until all are ready first).
//
// Knobs: N=1000000, WORKERS=2, INFLIGHT=256, TASKS=int|raw. TASKS=int
// (the default) hands plain ints, as a program would; TASKS=raw hands each
// task as a json.RawMessage built with strconv.AppendInt (to see what the
// producer costs).
//
// Output (stdout), one line:
//
//	pool_tasks_per_s N
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/worker"
)

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

func main() {
	var err error
	if worker.IsWorker() {
		err = workerMain()
	} else {
		err = primaryMain()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "poolbench:", err)
		os.Exit(1)
	}
}

func primaryMain() error {
	n := envInt("N", 1_000_000)
	workers := envInt("WORKERS", 2)
	mode := os.Getenv("TASKS")
	if mode == "" {
		mode = "int"
	}
	var tasks iter.Seq[any]
	switch mode {
	case "raw":
		// A number's JSON is its decimal digits: no encoder needed.
		tasks = func(yield func(any) bool) {
			for i := range n {
				if !yield(json.RawMessage(strconv.AppendInt(nil, int64(i), 10))) {
					return
				}
			}
		}
	case "int":
		tasks = func(yield func(any) bool) {
			for i := range n {
				if !yield(i) {
					return
				}
			}
		}
	default:
		return fmt.Errorf("TASKS must be int or raw, not %q", mode)
	}

	p, err := herd.NewPool(herd.PoolOptions{
		Options: herd.Options{
			Workers: workers,
			Stderr:  os.Stderr,
			// Workers starting and stopping is not news here; trouble is.
			Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		},
		Inflight: envInt("INFLIGHT", 256),
	})
	if err != nil {
		return err
	}
	// Close once: a second Close of a Pool waits forever (for the end of
	// a Run that has already been reported).
	closed := false
	defer func() {
		if !closed {
			p.Close()
		}
	}()
	if err := waitReady(p, workers, time.Minute); err != nil {
		return err
	}

	ctx := context.Background()
	var sum, count int64
	start := time.Now()
	for v, err := range p.Map(ctx, tasks) {
		if err != nil {
			return fmt.Errorf("after %d results: %w", count, err)
		}
		r, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil {
			return fmt.Errorf("result %d is %q, not a number", count, v)
		}
		sum += r
		count++
	}
	d := time.Since(start)
	if count != int64(n) {
		return fmt.Errorf("%d results for %d tasks", count, n)
	}
	if want := int64(n) * int64(n-1); sum != want {
		return fmt.Errorf("the results sum to %d, want %d", sum, want)
	}
	closed = true
	if err := p.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	fmt.Printf("pool_tasks_per_s %.0f\n", float64(n)/d.Seconds())
	return nil
}

// waitReady waits until all of the pool's workers are ready.
func waitReady(p *herd.Pool, want int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		ready := 0
		for _, w := range p.Workers() {
			if w.Ready {
				ready++
			}
		}
		if ready == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d workers ready after %v", ready, want, limit)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// workerMain answers each task, a number n, with 2n.
func workerMain() error {
	w, err := worker.Start(worker.Options{})
	if err != nil {
		return err
	}
	defer w.Close()
	return w.ServeTasks(func(ctx context.Context, task json.RawMessage) (any, error) {
		n, err := strconv.ParseInt(string(task), 10, 64)
		if err != nil {
			return nil, errors.New("not a number")
		}
		return 2 * n, nil
	})
}
