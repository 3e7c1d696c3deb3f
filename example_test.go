package herd_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/internal/testworker"
)

// A cluster of two workers sharing one listening socket; cancel the
// context to stop it.
func ExampleSupervisor() {
	sup, err := herd.New(herd.Options{
		// Any program that serves the sockets it inherits (fds 3..);
		// here a Go test worker.
		Command: testworker.Command("http"),
		Workers: 2,
		Listen:  []string{"web=127.0.0.1:0"},
		Stdout:  io.Discard,
		Stderr:  io.Discard,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()

	url := "http://" + sup.Listeners()[0].Addr.String() + "/"
	for range 100 {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			fmt.Println(resp.Status)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	fmt.Println("stopped:", <-done)
	// Output:
	// 200 OK
	// stopped: <nil>
}

// Options need only a command; every other field has a useful zero value.
func ExampleOptions() {
	sup, err := herd.New(herd.Options{Command: []string{"sleep", "60"}, Workers: 3})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sup.Close()
	fmt.Println(len(sup.Workers()), "slots")
	// Output: 3 slots
}

// Workers send the primary messages; OnEvent receives them with the rest of
// each worker's life. Here a Go test worker sends three numbered messages
// when it starts.
func ExampleOptions_onEvent() {
	got := make(chan string, 3)
	sup, err := herd.New(herd.Options{
		Command: testworker.Command("lib"),
		Workers: 1,
		Env:     append(os.Environ(), "TEST_SEQ=3"),
		Stdout:  io.Discard,
		Stderr:  io.Discard,
		OnEvent: func(ev herd.Event) {
			if ev.Kind == herd.EventMessage {
				got <- fmt.Sprintf("worker %d: %s %s", ev.Worker, ev.Message.Type, ev.Message.Data)
			}
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	for range 3 {
		fmt.Println(<-got)
	}
	cancel()
	<-done
	// Output:
	// worker 0: seq 0
	// worker 0: seq 1
	// worker 0: seq 2
}

// The primary sends a worker a message; this test worker answers every
// "ping" with a "pong" carrying the same data.
func ExampleSupervisor_Send() {
	pong := make(chan string, 1)
	ready := make(chan struct{})
	sup, err := herd.New(herd.Options{
		Command: testworker.Command("lib"),
		Workers: 2,
		Stdout:  io.Discard,
		Stderr:  io.Discard,
		OnEvent: func(ev herd.Event) {
			switch {
			case ev.Kind == herd.EventReady && ev.Worker == 1:
				close(ready)
			case ev.Kind == herd.EventMessage && ev.Message.Type == "pong":
				pong <- fmt.Sprintf("worker %d answered %s", ev.Worker, ev.Message.Data)
			}
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	<-ready // a message needs a running worker to go to
	if err := sup.Send(ctx, 1, "ping", map[string]int{"n": 42}); err != nil {
		fmt.Println(err)
	}
	fmt.Println(<-pong)
	cancel()
	<-done
	// Output: worker 1 answered {"n":42}
}

// A pool of workers doubles numbers; results come back in task order.
// (The workers here are a Go test worker serving worker.ServeTasks; with
// no Command they would be copies of this program.)
func ExamplePool() {
	p, err := herd.NewPool(herd.PoolOptions{Options: herd.Options{
		Command: testworker.Command("tasks"),
		Workers: 2,
		Stdout:  io.Discard,
		Stderr:  io.Discard,
	}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	for result, err := range p.Map(context.Background(), slices.Values([]any{1, 2, 3, "fail"})) {
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Println(string(result))
	}
	// Output:
	// 2
	// 4
	// 6
	// error: task 3: asked to fail
}
