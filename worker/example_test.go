package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"slices"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/worker"
)

// One program plays both parts, as with Node's cluster module: run by
// hand it is the primary, which starts two copies of itself; the copies
// find they are workers. Each worker greets the primary, which prints the
// greetings and stops the cluster. (Here the program is this package's
// test binary, whose TestMain calls this example in the copies.)
func Example_cluster() {
	if worker.IsWorker() {
		w, err := worker.Start(worker.Options{})
		if err != nil {
			log.Fatal(err)
		}
		defer w.Close()
		w.Send("hello", fmt.Sprintf("I am worker %d of %d", w.ID(), w.Workers()))
		w.Ready()
		<-w.Context().Done() // until the primary asks this worker to stop
		return
	}

	hellos := make(chan string, 2)
	sup, err := herd.New(herd.Options{
		Workers: 2, // no Command: copies of this program, with its arguments
		Stderr:  io.Discard,
		OnEvent: func(ev herd.Event) {
			if ev.Kind == herd.EventMessage && ev.Message.Type == "hello" {
				var text string
				json.Unmarshal(ev.Message.Data, &text)
				hellos <- text
			}
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	got := []string{<-hellos, <-hellos}
	slices.Sort(got) // they start together; either may be first
	for _, text := range got {
		fmt.Println(text)
	}
	stop() // herd.shutdown to each worker, then Run returns
	fmt.Println("stopped:", <-done)
	// Output:
	// I am worker 0 of 2
	// I am worker 1 of 2
	// stopped: <nil>
}

// A worker serves HTTP on the listener named "web" (herd run -l
// web=:8080), reports each request to the primary, and drains when asked
// to stop. Run it under herd: outside a cluster Start fails with
// ErrNotWorker.
func Example() {
	w, err := worker.Start(worker.Options{
		OnMessage: func(m herd.Message) {
			log.Printf("message %s from %d: %s", m.Type, m.From, m.Data)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(rw http.ResponseWriter, r *http.Request) {
		w.Send("hit", r.URL.Path)
		rw.Write([]byte("hello\n"))
	})
	if err := w.Serve(&http.Server{Handler: mux}); err != nil {
		log.Print(err)
	}
	log.Print("stopped: ", context.Cause(w.Context()))
}

// Without Serve: take one listener by name and wire the stop request to
// http.Server.Shutdown yourself.
func ExampleWorker_Listener() {
	w, err := worker.Start(worker.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	srv := &http.Server{Handler: http.NotFoundHandler()}
	go srv.Serve(w.Listener("web"))
	w.Ready()
	<-w.Context().Done() // herd.shutdown, SIGTERM, or the primary gone
	srv.Shutdown(context.Background())
}

// Outside a cluster there is no worker to start: a program that can run
// either way asks IsWorker first, or checks for ErrNotWorker.
func ExampleStart_notWorker() {
	_, err := worker.Start(worker.Options{})
	fmt.Println(worker.IsWorker(), err)
	// Output: false not a herd worker (HERD_WORKER_ID is not set)
}
