package worker_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/herd-sh/herd/worker"
)

// roleEnv names the part a copy of this test binary plays when a test
// starts it as a worker (see TestMain).
const roleEnv = "WORKER_TEST_ROLE"

// The test binary is also the workers of its own tests: started with
// roleEnv set, it plays that role and exits; started by Example_cluster's
// primary (a self-fork: same program, same arguments), it is that
// example's worker half. Otherwise the tests run.
func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		if err := playRole(role); err != nil {
			fmt.Fprintln(os.Stderr, "test worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if worker.IsWorker() {
		Example_cluster()
		os.Exit(0)
	}
	// Race-built workers otherwise sleep a second at exit.
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	goleak.VerifyTestMain(m)
}

func playRole(role string) error {
	switch role {
	case "names":
		return servesEachListenerItsName()
	case "listeners":
		return printListeners()
	case "flood":
		return floodWhileServing()
	}
	return fmt.Errorf("unknown role %q", role)
}

// servesEachListenerItsName answers on listeners "a" and "b", found by
// name, with that name, and tells the primary what Listeners() holds.
func servesEachListenerItsName() error {
	w, err := worker.Start(worker.Options{})
	if err != nil {
		return err
	}
	defer w.Close()
	var order []string
	for _, l := range w.Listeners() {
		order = append(order, l.Addr().String())
	}
	if err := w.Send("listeners", map[string]any{"order": order, "nosuch": w.Listener("nosuch") != nil}); err != nil {
		return err
	}
	for _, name := range []string{"a", "b"} {
		l := w.Listener(name)
		if l == nil {
			return fmt.Errorf("no listener %q", name)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
			fmt.Fprint(rw, name)
		})}
		go srv.Serve(l)
		defer srv.Close()
	}
	w.Ready()
	<-w.Context().Done()
	return nil
}

// printListeners starts a worker without a primary and prints what it took
// of the sockets it was given.
func printListeners() error {
	w, err := worker.Start(worker.Options{})
	if err != nil {
		return err
	}
	defer w.Close()
	fmt.Printf("listeners=%d web=%v LISTEN_FDS=%q\n", len(w.Listeners()), w.Listener("web") != nil, os.Getenv("LISTEN_FDS"))
	return nil
}

// floodWhileServing serves HTTP on the listeners handed over (answering
// "ok") and, from the first request on, sends the primary messages as fast
// as the channel takes them, 64 KB ones and tiny ones filling what room
// those leave, so that its queue stays full to the byte.
func floodWhileServing() error {
	w, err := worker.Start(worker.Options{})
	if err != nil {
		return err
	}
	defer w.Close()
	big := json.RawMessage(`"` + strings.Repeat("x", 64<<10) + `"`)
	var once sync.Once
	flood := func(typ string, data any) {
		for w.Context().Err() == nil && w.Send(typ, data) == nil {
		}
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
		once.Do(func() { // herd.ready is out by now
			go flood("flood", big)
			go flood("f", nil)
		})
		fmt.Fprint(rw, "ok")
	})}
	return w.Serve(srv)
}
