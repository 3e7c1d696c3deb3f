package testworker

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/worker"
)

// libWorker is a worker built on the worker library. It serves HTTP on its
// listeners (answering like the http role) with worker.Serve, and talks on
// its channel:
//
//	TEST_SEQ=N      on start, send N messages {"type":"seq","data":i}
//	ping X          answered with pong X
//	go              broadcast {"id":ID}
//	sendto {"to":N} send {"id":ID} to worker N
//	a relayed X     reported to the primary as got {"from":F,"data":X};
//	                with TEST_COUNT_RELAYS=1 only counted, and the count
//	                is in every pong: {"relays":N,"data":X}
//	TEST_SLOW=DUR   each HTTP request takes this long
//	sick            /health answers 503 from then on (else 200)
//	stall           /health answers nothing from then on: each request
//	                hangs until its client gives up (closes the connection)
//	grow {"mb":N}   allocate and touch N MiB more, and keep it
//	TEST_NOT_READY_IF=FILE  when FILE exists at start, serve but never
//	                say herd.ready (a reload to a broken version)
//	TEST_READY_GATE=FILE  first wait until FILE, or FILE.PID for this
//	                worker's pid, exists (become ready when the test says)
//	TEST_READY_AFTER=DUR  first wait DUR (then serve and say herd.ready):
//	                a worker slow to start
//
// Lib runs the lib role in this process (for a self-forked test binary);
// with TEST_SELF_FORK_ROLE=tasks, the tasks role (a self-forked Pool).
func Lib() error {
	if os.Getenv("TEST_SELF_FORK_ROLE") == "tasks" {
		return taskWorker()
	}
	return libWorker()
}

func libWorker() error {
	var w *worker.Worker
	countOnly := os.Getenv("TEST_COUNT_RELAYS") == "1"
	relays := 0
	var sick, stall atomic.Bool
	var hoard [][]byte
	handle := func(m herd.Message) {
		switch {
		case m.Type == herd.TypeRelayed && countOnly:
			relays++
		case m.Type == herd.TypeRelayed:
			w.Send("got", map[string]any{"from": m.From, "data": m.Data})
		case m.Type == "ping" && countOnly:
			w.Send("pong", map[string]any{"relays": relays, "data": m.Data})
		case m.Type == "ping":
			w.Send("pong", m.Data)
		case m.Type == "go":
			w.Broadcast(map[string]int{"id": w.ID()})
		case m.Type == "sendto":
			var to struct{ To int }
			json.Unmarshal(m.Data, &to)
			w.SendTo(to.To, map[string]int{"id": w.ID()})
		case m.Type == "sick":
			sick.Store(true)
		case m.Type == "stall":
			stall.Store(true)
		case m.Type == "grow":
			var g struct{ MB int }
			json.Unmarshal(m.Data, &g)
			b := make([]byte, g.MB<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			hoard = append(hoard, b)
		}
	}
	w, err := worker.Start(worker.Options{OnMessage: func(m herd.Message) { handle(m) }})
	if err != nil {
		return err
	}
	defer w.Close()
	if gate := os.Getenv("TEST_READY_GATE"); gate != "" {
		own := fmt.Sprintf("%s.%d", gate, os.Getpid())
		for !exists(gate) && !exists(own) {
			select {
			case <-w.Context().Done():
				return nil
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	if d, err := time.ParseDuration(os.Getenv("TEST_READY_AFTER")); err == nil {
		select {
		case <-w.Context().Done():
			return nil
		case <-time.After(d):
		}
	}
	if n, _ := strconv.Atoi(os.Getenv("TEST_SEQ")); n > 0 {
		for i := range n {
			if err := w.Send("seq", i); err != nil {
				return err
			}
		}
	}
	if len(w.Listeners()) == 0 {
		w.Ready()
		<-w.Context().Done()
		return nil
	}
	slow, _ := time.ParseDuration(os.Getenv("TEST_SLOW"))
	body := fmt.Sprintf("id=%d pid=%d child=0 fds=%d names=- workers=%d\n", w.ID(), os.Getpid(), len(w.Listeners()), w.Workers())
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" && stall.Load() {
			<-r.Context().Done() // the client closed the connection
			return
		}
		if r.URL.Path == "/health" && sick.Load() {
			http.Error(rw, "sick", http.StatusServiceUnavailable)
			return
		}
		if slow > 0 {
			time.Sleep(slow)
		}
		rw.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(rw, body)
	})}
	if f := os.Getenv("TEST_NOT_READY_IF"); f != "" {
		if _, err := os.Stat(f); err == nil {
			for _, l := range w.Listeners() {
				go srv.Serve(l)
			}
			<-w.Context().Done()
			return nil
		}
	}
	return w.Serve(srv)
}

// rawIPC writes to its channel fd without reading it, then waits to be
// killed. args say what to write, in order:
//
//	big:N        a line of N bytes (over any limit)
//	bad:N        N lines that are not JSON
//	bcast:N      N broadcasts of a 1 KiB string
//	msg:TYPE     one well-formed message {"type":TYPE}
func rawIPC(args []string) error {
	fd, err := strconv.Atoi(os.Getenv("HERD_IPC_FD"))
	if err != nil {
		return fmt.Errorf("HERD_IPC_FD: %v", err)
	}
	f := os.NewFile(uintptr(fd), "ipc")
	for _, a := range args {
		kind, arg, _ := strings.Cut(a, ":")
		n, _ := strconv.Atoi(arg)
		switch kind {
		case "big":
			chunk := []byte(`{"type":"big","data":"` + strings.Repeat("x", 64<<10))
			for written := 0; written < n; written += len(chunk) {
				if _, err := f.Write(chunk); err != nil {
					return err
				}
				chunk = []byte(strings.Repeat("x", 64<<10))
			}
			f.Write([]byte("\"}\n"))
		case "bad":
			for i := range n {
				fmt.Fprintf(f, "not json %d\n", i)
			}
		case "bcast":
			line := []byte(`{"type":"herd.broadcast","data":"` + strings.Repeat("b", 1024) + "\"}\n")
			for range n {
				if _, err := f.Write(line); err != nil {
					return err
				}
			}
		case "msg":
			fmt.Fprintf(f, "{\"type\":%q}\n", arg)
		}
	}
	fmt.Println("rawipc done")
	time.Sleep(time.Hour)
	return nil
}
