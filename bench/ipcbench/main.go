// Command ipcbench measures herd's message channel with a Go worker: the
// rate of small messages one way (worker → primary) and the round-trip
// latency (worker → primary → worker). It is one program: the primary
// self-forks one worker. bench/ipc.sh runs it beside bench/node-ipc.js,
// which measures the same with Node's cluster module, and prints ratios.
//
//	go run ./bench/ipcbench            # MSGS=2000000 RTT=20000
//
// PHASE=oneway or PHASE=rtt runs one of the two measurements only, in a
// fresh process.
//
// Output (stdout), the same lines node-ipc.js prints:
//
//	oneway_msgs_per_s N
//	rtt_median_us N
//	rtt_p99_us N
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
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
		fmt.Fprintln(os.Stderr, "ipcbench:", err)
		os.Exit(1)
	}
}

func primaryMain() error {
	msgs := envInt("MSGS", 2_000_000)
	var (
		sup        *herd.Supervisor
		count      int
		first      time.Time
		oneWay     = make(chan time.Duration, 1)
		results    = make(chan json.RawMessage, 1)
		ctx, stop  = context.WithCancel(context.Background())
		runErr     = make(chan error, 1)
		replyCount atomic.Int64
	)
	defer stop()
	sup, err := herd.New(herd.Options{
		Workers: 1,
		Stderr:  os.Stderr,
		OnEvent: func(ev herd.Event) {
			if ev.Kind != herd.EventMessage {
				return
			}
			switch ev.Message.Type {
			case "n":
				if count == 0 {
					first = time.Now()
				}
				count++
				if count == msgs {
					oneWay <- time.Since(first)
				}
			case "ping":
				replyCount.Add(1)
				sup.Send(ctx, ev.Worker, "pong", ev.Message.Data)
			case "rtt":
				results <- ev.Message.Data
			}
		},
	})
	if err != nil {
		return err
	}
	go func() { runErr <- sup.Run(ctx) }()
	phase := os.Getenv("PHASE")
	var d time.Duration
	if phase != "rtt" {
		select {
		case d = <-oneWay:
		case err := <-runErr:
			return fmt.Errorf("cluster ended: %v", err)
		}
	}
	var rtt struct{ Median, P99 float64 }
	if phase != "oneway" {
		select {
		case raw := <-results:
			if err := json.Unmarshal(raw, &rtt); err != nil {
				return err
			}
		case err := <-runErr:
			return fmt.Errorf("cluster ended: %v", err)
		}
	}
	stop()
	if err := <-runErr; err != nil {
		return err
	}
	if phase != "rtt" {
		fmt.Printf("oneway_msgs_per_s %.0f\n", float64(msgs-1)/d.Seconds())
	}
	if phase != "oneway" {
		fmt.Printf("rtt_median_us %.1f\n", rtt.Median)
		fmt.Printf("rtt_p99_us %.1f\n", rtt.P99)
	}
	return nil
}

// workerMain floods the primary with MSGS messages, then plays ping-pong
// RTT times (after a warm-up), driven by its message handler the way a
// Node worker is driven by its 'message' event, and reports the latencies.
func workerMain() error {
	msgs, rounds := envInt("MSGS", 2_000_000), envInt("RTT", 20_000)
	const warmup = 2000
	var (
		w    *worker.Worker
		lat  = make([]time.Duration, 0, rounds)
		sent time.Time
		i    int
		done = make(chan struct{})
		ping = func() { sent = time.Now(); w.Send("ping", i) }
	)
	w, err := worker.Start(worker.Options{OnMessage: func(m herd.Message) {
		if m.Type != "pong" {
			return
		}
		if i >= warmup {
			lat = append(lat, time.Since(sent))
		}
		if i++; i == warmup+rounds {
			close(done)
			return
		}
		ping()
	}})
	if err != nil {
		return err
	}
	defer w.Close()
	w.Ready()
	phase := os.Getenv("PHASE")
	if phase != "rtt" {
		for n := range msgs {
			if err := w.Send("n", n); err != nil {
				return err
			}
		}
	}
	if phase == "oneway" {
		<-w.Context().Done()
		return nil
	}
	ping()
	select {
	case <-done:
	case <-w.Context().Done():
		return context.Cause(w.Context())
	}
	slices.Sort(lat)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	w.Send("rtt", map[string]float64{
		"median": us(lat[len(lat)/2]),
		"p99":    us(lat[len(lat)*99/100]),
	})
	<-w.Context().Done()
	return nil
}
