// Command cluster-go is a Go program that is both the primary and its
// workers, with the herd library, the way a Node program uses the cluster
// module. The primary forks copies of itself; each copy serves HTTP and
// tells the primary how many requests it answered; on Ctrl-C the primary
// drains the workers and prints the total per worker.
//
//	go run ./examples/cluster-go -addr 127.0.0.1:8080 -workers 2
//	curl http://127.0.0.1:8080/
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/worker"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to serve on")
	workers := flag.Int("workers", 2, "number of workers")
	flag.Parse()
	log.SetFlags(0)
	var err error
	if worker.IsWorker() {
		err = serve()
	} else {
		err = primary(*addr, *workers)
	}
	if err != nil {
		log.Fatal(err)
	}
}

// primary runs the cluster until SIGINT or SIGTERM and prints how many
// requests each worker reported.
func primary(addr string, workers int) error {
	var mu sync.Mutex
	served := map[int]int{}
	sup, err := herd.New(herd.Options{
		// No Command: the workers are copies of this program.
		Workers: workers,
		Listen:  []string{"web=" + addr},
		OnEvent: func(ev herd.Event) {
			if ev.Kind == herd.EventMessage && ev.Message.Type == "served" {
				var n int
				if json.Unmarshal(ev.Message.Data, &n) == nil {
					mu.Lock()
					served[ev.Worker] += n
					mu.Unlock()
				}
			}
		},
	})
	if err != nil {
		return err
	}
	fmt.Printf("listening on %s\n", sup.Listeners()[0].Addr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := sup.Run(ctx); err != nil {
		return err
	}
	total, ids := 0, []int{}
	for id, n := range served {
		total += n
		ids = append(ids, id)
	}
	sort.Ints(ids)
	fmt.Printf("total %d requests\n", total)
	for _, id := range ids {
		fmt.Printf("worker %d: %d\n", id, served[id])
	}
	return nil
}

// serve is a worker: it answers on the "web" listener and reports its
// count to the primary every 100 ms, and once more when it stops.
func serve() error {
	w, err := worker.Start(worker.Options{})
	if err != nil {
		return err
	}
	defer w.Close() // sends what is still queued
	var count atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		count.Add(1)
		fmt.Fprintf(rw, "hello from worker %d pid %d\n", w.ID(), os.Getpid())
	})}
	report := func() {
		if n := count.Swap(0); n > 0 {
			w.Send("served", n)
		}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				report()
			case <-done:
				return
			}
		}
	}()
	err = w.Serve(srv) // returns once drained
	close(done)
	report()
	return err
}
