// Command ipcbench measures herd's message channel with a Go worker: the
// rate of small messages one way (worker → primary) and the round-trip
// latency (worker → primary → worker). It is one program: the primary
// self-forks one worker. bench/ipc.sh runs it beside bench/node-ipc.js,
// which measures the same with Node's cluster module, and prints ratios.
//
//	go run ./bench/ipcbench            # MSGS=2000000 RTT=20000
//
// PHASE=oneway or PHASE=rtt runs one of the two measurements only, in a
// fresh process. PHASE=floor measures what no channel can beat on this
// machine: the same round trips between two processes over a bare socket
// pair with blocking read and write system calls (no JSON, no runtime
// poller), printed as floor_rtt_median_us and floor_rtt_p99_us.
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
	"os/exec"
	"slices"
	"strconv"
	"sync/atomic"
	"syscall"
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
	switch {
	case os.Getenv("IPCBENCH_FLOOR_CHILD") != "":
		err = floorChild()
	case os.Getenv("PHASE") == "floor":
		err = floorMain()
	case worker.IsWorker():
		err = workerMain()
	default:
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

// floorMain plays ping-pong with a copy of this program over a socket
// pair, one message of the benchmark's size at a time, with blocking
// system calls on both ends: the latency of two process wake-ups and two
// socket hops, which is the floor under any channel's round trip.
func floorMain() error {
	rounds := envInt("RTT", 20_000)
	const warmup = 2000
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	// Close-on-exec, or the child would hold the primary's end too and
	// never see end of stream (ExtraFiles gives it its own copy as fd 3).
	syscall.CloseOnExec(fds[0])
	syscall.CloseOnExec(fds[1])
	child := os.NewFile(uintptr(fds[1]), "floor-child")
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), "IPCBENCH_FLOOR_CHILD=1")
	cmd.ExtraFiles = []*os.File{child}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	child.Close()
	fd := fds[0]
	msg := []byte(`{"type":"ping","data":12345}` + "\n")
	buf := make([]byte, 256)
	lat := make([]time.Duration, 0, rounds)
	for i := range warmup + rounds {
		t := time.Now()
		if _, err := syscall.Write(fd, msg); err != nil {
			return err
		}
		if _, err := syscall.Read(fd, buf); err != nil {
			return err
		}
		if i >= warmup {
			lat = append(lat, time.Since(t))
		}
	}
	syscall.Close(fd)
	if err := cmd.Wait(); err != nil {
		return err
	}
	slices.Sort(lat)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	fmt.Printf("floor_rtt_median_us %.1f\n", us(lat[len(lat)/2]))
	fmt.Printf("floor_rtt_p99_us %.1f\n", us(lat[len(lat)*99/100]))
	return nil
}

// floorChild echoes what arrives on fd 3 until it closes.
func floorChild() error {
	buf := make([]byte, 256)
	for {
		n, err := syscall.Read(3, buf)
		if n <= 0 || err != nil {
			return nil
		}
		if _, err := syscall.Write(3, buf[:n]); err != nil {
			return err
		}
	}
}
