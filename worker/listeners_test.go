package worker_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/internal/herdtest"
)

// runUntilReady runs a supervisor for opts until the test ends, and
// returns it once a worker is ready. opts.OnEvent sees every event; what
// the workers print is shown if the test fails.
func runUntilReady(t *testing.T, opts herd.Options) *herd.Supervisor {
	t.Helper()
	var log herdtest.SyncBuffer
	opts.Stdout, opts.Stderr = &log, &log
	ready := make(chan struct{})
	var readyOnce sync.Once
	onEvent := opts.OnEvent
	opts.OnEvent = func(ev herd.Event) {
		if ev.Kind == herd.EventReady {
			readyOnce.Do(func() { close(ready) })
		}
		if onEvent != nil {
			onEvent(ev)
		}
	}
	sup, err := herd.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("supervisor log:\n%s", log.String())
		}
	})
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatal("the worker did not get ready")
	}
	return sup
}

// A worker given two named listeners (herd run -l a=... -l b=...) finds
// each by its name: a connection to a's address reaches what the worker
// serves on Listener("a"), and b's on Listener("b").
func TestListenersByName(t *testing.T) {
	report := make(chan json.RawMessage, 1)
	sup := runUntilReady(t, herd.Options{
		Command: []string{os.Args[0]},
		Env:     append(os.Environ(), roleEnv+"=names"),
		Workers: 1,
		// b first: names, not positions, must decide.
		Listen: []string{"b=127.0.0.1:0", "a=127.0.0.1:0"},
		OnEvent: func(ev herd.Event) {
			if ev.Kind == herd.EventMessage && ev.Message.Type == "listeners" {
				select {
				case report <- ev.Message.Data:
				default: // a restarted worker's: the first is the one checked
				}
			}
		},
	})

	addr := map[string]string{}
	var order []string
	for _, l := range sup.Listeners() {
		addr[l.Name] = l.Addr.String()
		order = append(order, l.Addr.String())
	}
	c := &http.Client{Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	for _, name := range []string{"a", "b"} {
		resp, err := c.Get("http://" + addr[name] + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != name {
			t.Errorf("a connection to listener %s (%s) was served by Listener(%q)", name, addr[name], body)
		}
	}
	var got struct {
		Order  []string
		NoSuch bool
	}
	if err := json.Unmarshal(<-report, &got); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Order, order) {
		t.Errorf("Listeners() holds %v, want the primary's order %v", got.Order, order)
	}
	if got.NoSuch {
		t.Error(`Listener("nosuch") is not nil`)
	}
}

// Like sd_listen_fds, Start takes the sockets only when LISTEN_PID is
// this process: sockets meant for another process (LISTEN_PID inherited
// through a process that did not clear it) are left alone. The worker is a
// copy of this test binary given a socket at fd 3; sh sets LISTEN_PID and
// then execs it, so $$ is the worker's own pid.
func TestListenersForAnotherProcessAreRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, tc := range []struct {
		name, pid, want string
	}{
		{"own pid", "$$", `listeners=1 web=true LISTEN_FDS=""`},
		{"another pid", strconv.Itoa(os.Getpid()), `listeners=0 web=false LISTEN_FDS=""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command("sh", "-c", `export LISTEN_PID=`+tc.pid+`; exec "$0"`, os.Args[0])
			cmd.ExtraFiles = []*os.File{f} // fd 3
			cmd.Env = append(os.Environ(), roleEnv+"=listeners", "HERD_WORKER_ID=0", "HERD_WORKERS=1",
				"LISTEN_FDS=1", "LISTEN_FDNAMES=web", "HERD_IPC_FD=")
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("worker: %v: %s", err, stderr.String())
			}
			if got := strings.TrimSpace(string(out)); got != tc.want {
				t.Errorf("LISTEN_PID=%s: worker says %s, want %s", tc.pid, got, tc.want)
			}
		})
	}
}
