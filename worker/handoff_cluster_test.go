package worker_test

import (
	"io"
	"net/http"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-sh/herd"
)

// A worker whose channel is full of its own messages (Send as fast as the
// primary takes them, and the primary slow to take them) still takes every
// connection handed to it: herd.took is never dropped, so the primary's
// count of what the worker took does not go one off, every client is
// answered at once, and the worker is not killed as hung.
func TestHandoffSurvivesAFloodOfWorkerMessages(t *testing.T) {
	var floods, exits atomic.Int64
	sup := runUntilReady(t, herd.Options{
		Command: []string{os.Args[0]},
		Env:     append(os.Environ(), roleEnv+"=flood"),
		Workers: 1,
		Listen:  []string{"127.0.0.1:0"},
		Balance: herd.BalanceRoundRobin,
		OnEvent: func(ev herd.Event) {
			switch ev.Kind {
			case herd.EventMessage:
				if ev.Message.Type == "flood" {
					floods.Add(1)
					// A slow handler: the primary reads this worker's
					// channel only as fast as it handles its messages.
					time.Sleep(time.Millisecond)
				}
			case herd.EventExited, herd.EventRestart:
				exits.Add(1)
			}
		},
	})
	url := "http://" + sup.Listeners()[0].Addr.String() + "/"
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	const requests = 40
	for i := range requests {
		resp, err := c.Get(url) // a new connection each, handed over
		if err != nil {
			t.Fatalf("request %d of %d (the worker had sent %d flood messages): %v", i+1, requests, floods.Load(), err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "ok" {
			t.Fatalf("request %d answered %q", i+1, body)
		}
		if i == 0 {
			// The flood begins with the first request; let it fill the queue.
			deadline := time.Now().Add(10 * time.Second)
			for floods.Load() < 100 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
		}
		time.Sleep(50 * time.Millisecond) // past the primary's 200 ms "slow to take" soon enough
	}
	if n := exits.Load(); n > 0 {
		t.Errorf("the worker exited %d times while flooding (killed as hung?)", n)
	}
	if floods.Load() < 100 {
		t.Errorf("the worker sent only %d flood messages: the test did not flood", floods.Load())
	}
}
