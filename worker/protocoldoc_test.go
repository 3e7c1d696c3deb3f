package worker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/internal/herdtest"
)

// The worker library holds up the worker's half of the conversation in
// docs/protocol.md byte for byte: as worker 0 doing what the document's
// worker does (hello at Start, Ready, Send "hits", Broadcast, SendTo 1),
// it writes exactly the document's "<" lines, and it understands the
// document's ">" lines: the user message, the relay, the shutdown.
func TestProtocolDocConversation(t *testing.T) {
	var fromWorker, toWorker []string
	for _, ex := range herdtest.ProtocolConversation(t, "../docs/protocol.md") {
		if ex.Dir == '<' {
			fromWorker = append(fromWorker, ex.Line)
		} else {
			toWorker = append(toWorker, ex.Line)
		}
	}
	primary, sc := fakePrimary(t, 0)
	var in inbox
	w, err := Start(Options{OnMessage: in.add})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, send := range []func() error{
		w.Ready,
		func() error { return w.Send("hits", map[string]int{"n": 3}) },
		func() error { return w.Broadcast(map[string]string{"cache": "flush"}) },
		func() error { return w.SendTo(1, "hi") },
	} {
		if err := send(); err != nil {
			t.Fatal(err)
		}
	}
	if len(fromWorker) != 5 {
		t.Fatalf("the document's worker sends %d lines, %q; this test does what the five of hello, ready, hits, broadcast and to say", len(fromWorker), fromWorker)
	}
	for _, want := range fromWorker {
		expectLine(t, sc, want)
	}

	for _, line := range toWorker {
		if _, err := primary.Write([]byte(line + "\n")); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-w.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the document's herd.shutdown did not end the worker's context")
	}
	if cause := context.Cause(w.Context()); !errors.Is(cause, ErrShutdown) {
		t.Errorf("cause %v, want ErrShutdown", cause)
	}
	got := in.get()
	if len(got) != 2 || got[0].Type != "config" || got[0].From != herd.FromPrimary || string(got[0].Data) != `{"level":"debug"}` ||
		got[1].Type != herd.TypeRelayed || got[1].From != 1 || string(got[1].Data) != `{"cache":"flush"}` {
		t.Errorf("the document's lines %q reached the worker as %+v", toWorker, got)
	}
}
