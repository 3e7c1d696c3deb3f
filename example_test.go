package herd_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
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
