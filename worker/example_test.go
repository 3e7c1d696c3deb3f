package worker_test

import (
	"context"
	"log"
	"net/http"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/worker"
)

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
