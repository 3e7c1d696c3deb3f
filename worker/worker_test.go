package worker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/herd-sh/herd"
)

// fakePrimary gives this process a channel as a primary would: the
// worker's end at HERD_IPC_FD, the primary's end returned. The test plays
// the primary over a real socket pair.
func fakePrimary(t *testing.T, id int) (net.Conn, *bufio.Scanner) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "primary")
	primary, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { primary.Close() })
	t.Setenv("HERD_WORKER_ID", strconv.Itoa(id))
	t.Setenv("HERD_WORKERS", "3")
	t.Setenv("HERD_IPC_FD", strconv.Itoa(fds[1]))
	return primary, bufio.NewScanner(primary)
}

func expectLine(t *testing.T, sc *bufio.Scanner, want string) {
	t.Helper()
	if !sc.Scan() {
		t.Fatalf("channel ended, want %s (%v)", want, sc.Err())
	}
	if sc.Text() != want {
		t.Fatalf("worker sent %s, want %s", sc.Text(), want)
	}
}

type inbox struct {
	mu   sync.Mutex
	msgs []herd.Message
}

func (b *inbox) add(m herd.Message) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.msgs = append(b.msgs, m)
}

func (b *inbox) get() []herd.Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]herd.Message(nil), b.msgs...)
}

func TestStartOutsideHerd(t *testing.T) {
	t.Setenv("HERD_WORKER_ID", "")
	if IsWorker() {
		t.Fatal("IsWorker without HERD_WORKER_ID")
	}
	if _, err := Start(Options{}); !errors.Is(err, ErrNotWorker) {
		t.Fatalf("Start: %v, want ErrNotWorker", err)
	}
}

func TestWorkerSpeaksTheProtocol(t *testing.T) {
	primary, sc := fakePrimary(t, 1)
	var in inbox
	w, err := Start(Options{OnMessage: in.add})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if !IsWorker() || w.ID() != 1 || w.Workers() != 3 {
		t.Fatalf("IsWorker %v, ID %d, Workers %d", IsWorker(), w.ID(), w.Workers())
	}
	if os.Getenv("HERD_IPC_FD") != "" {
		t.Error("HERD_IPC_FD left in the environment for the worker's children")
	}
	expectLine(t, sc, `{"type":"herd.hello","v":1}`)

	primary.Write([]byte(`{"type":"herd.hello","v":1,"id":1,"workers":3,"max":1048576}` + "\n" +
		`{"type":"config","data":{"level":"debug"}}` + "\n" +
		`{"type":"herd.message","from":2,"data":"hi"}` + "\n" +
		`{"type":"herd.future","data":1}` + "\n"))
	if !eventually(func() bool { return len(in.get()) >= 2 }) {
		t.Fatalf("messages delivered: %+v", in.get())
	}
	got := in.get()
	if got[0].Type != "config" || got[0].From != herd.FromPrimary || string(got[0].Data) != `{"level":"debug"}` {
		t.Errorf("first message %+v", got[0])
	}
	if got[1].Type != herd.TypeRelayed || got[1].From != 2 || string(got[1].Data) != `"hi"` {
		t.Errorf("relayed message %+v", got[1])
	}

	for _, tc := range []struct {
		send func() error
		want string
	}{
		{func() error { return w.Ready() }, `{"type":"herd.ready"}`},
		{func() error { return w.Send("hits", map[string]int{"n": 3}) }, `{"type":"hits","data":{"n":3}}`},
		{func() error { return w.Broadcast(map[string]string{"cache": "flush"}) }, `{"type":"herd.broadcast","data":{"cache":"flush"}}`},
		{func() error { return w.SendTo(0, "hi") }, `{"type":"herd.to","to":0,"data":"hi"}`},
	} {
		if err := tc.send(); err != nil {
			t.Fatal(err)
		}
		expectLine(t, sc, tc.want)
	}
	if err := w.Send("herd.ready", nil); !errors.Is(err, herd.ErrBadMessage) {
		t.Errorf("Send of a reserved type: %v", err)
	}

	primary.Write([]byte(`{"type":"herd.shutdown"}` + "\n"))
	select {
	case <-w.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("herd.shutdown did not end the worker's context")
	}
	if cause := context.Cause(w.Context()); !errors.Is(cause, ErrShutdown) {
		t.Fatalf("cause %v, want ErrShutdown", cause)
	}
}

func TestPrimaryGoneEndsTheWorker(t *testing.T) {
	primary, _ := fakePrimary(t, 0)
	w, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	primary.Close()
	select {
	case <-w.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the primary closing the channel did not end the worker's context")
	}
	if cause := context.Cause(w.Context()); !errors.Is(cause, ErrPrimaryGone) {
		t.Fatalf("cause %v, want ErrPrimaryGone", cause)
	}
	if err := w.Send("x", 1); err == nil {
		// The write may still succeed into the socket buffer once; a
		// second one cannot.
		time.Sleep(50 * time.Millisecond)
		if err := w.Send("x", 1); err == nil {
			t.Error("Send to a gone primary keeps succeeding")
		}
	}
}

func TestStopSignalEndsTheWorker(t *testing.T) {
	fakePrimary(t, 0)
	w, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case <-w.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("SIGTERM did not end the worker's context")
	}
	if cause := context.Cause(w.Context()); !errors.Is(cause, ErrStopSignal) {
		t.Fatalf("cause %v, want ErrStopSignal", cause)
	}
}

func eventually(cond func() bool) bool {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// BenchmarkSend is the worker's cost of sending one small message; the
// primary's end only reads.
func BenchmarkSend(b *testing.B) {
	primary, _ := fakePrimaryB(b)
	go func() {
		buf := make([]byte, 1<<16)
		for {
			if _, err := primary.Read(buf); err != nil {
				return
			}
		}
	}()
	w, err := Start(Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		w.Send("n", i)
	}
}

func fakePrimaryB(b *testing.B) (net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		b.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "primary")
	primary, err := net.FileConn(f)
	f.Close()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { primary.Close() })
	b.Setenv("HERD_WORKER_ID", "0")
	b.Setenv("HERD_IPC_FD", strconv.Itoa(fds[1]))
	return primary, nil
}

// Handed connections closing at once on many goroutines are each counted
// once in herd.closed (least-conn balances by that count: one counted
// twice makes a worker look idler than it is, for good).
func TestConcurrentClosesAreReportedOnce(t *testing.T) {
	primary, sc := fakePrimary(t, 0)
	w, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	expectLine(t, sc, `{"type":"herd.hello","v":1}`)
	primary.Write([]byte(`{"type":"herd.hello","v":1,"id":0,"workers":3,"max":1048576}` + "\n"))

	const goroutines, each = 32, 100
	var wg sync.WaitGroup
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				w.reportClosed()
			}
		}()
	}
	total := 0
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for total < goroutines*each {
		primary.SetReadDeadline(time.Now().Add(5 * time.Second))
		if !sc.Scan() {
			t.Fatalf("channel ended after %d closes reported, want %d (%v)", total, goroutines*each, sc.Err())
		}
		var m struct {
			Type string
			Data int
		}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil || m.Type != "herd.closed" || m.Data < 1 {
			t.Fatalf("worker sent %s, want herd.closed with a positive count", sc.Text())
		}
		total += m.Data
	}
	<-done
	// Nothing more may follow: a count reported twice would.
	primary.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if sc.Scan() {
		t.Fatalf("after all %d closes were reported the worker also sent %s", total, sc.Text())
	}
	if total != goroutines*each {
		t.Fatalf("%d closes reported, want %d", total, goroutines*each)
	}
}
