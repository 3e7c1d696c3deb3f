package logpump

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/herd-sh/herd/internal/herdtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestLinesAreTaggedAndKeptWhole(t *testing.T) {
	var out herdtest.SyncBuffer
	s := NewSink(&out, Text, "stdout", 0)
	long := strings.Repeat("y", 300_000) // longer than the read buffer
	s.Pump(strings.NewReader("a\n\n"+long+"\nlast without newline"), 2, 42)
	s.Close()
	want := "w2 42 | a\nw2 42 | \nw2 42 | " + long + "\nw2 42 | last without newline\n"
	if got := out.String(); got != want {
		t.Fatalf("got %d bytes, want %d: %.80q", len(got), len(want), got)
	}
}

func TestOverlongLineIsSplitWithoutLoss(t *testing.T) {
	var out herdtest.SyncBuffer
	s := NewSink(&out, Text, "stdout", 4*MaxLine)
	line := strings.Repeat("z", 2*MaxLine+10)
	s.Pump(strings.NewReader(line+"\n"), 0, 1)
	s.Close()
	parts := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(parts) != 3 {
		t.Fatalf("%d pieces, want 3", len(parts))
	}
	var joined strings.Builder
	for _, p := range parts {
		rest, ok := strings.CutPrefix(p, "w0 1 | ")
		if !ok {
			t.Fatalf("piece without tag: %.40q", p)
		}
		joined.WriteString(rest)
	}
	if joined.String() != line {
		t.Fatal("bytes lost or changed when splitting")
	}
}

func TestJSONFormat(t *testing.T) {
	var out herdtest.SyncBuffer
	s := NewSink(&out, JSON, "stderr", 0)
	s.Pump(strings.NewReader("tab\there \"quoted\"\n\xff invalid utf8\n"), 1, 7)
	s.Close()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("lines %q", lines)
	}
	var rec struct {
		Time   time.Time
		Worker int
		PID    int
		Stream string
		Line   string
	}
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Worker != 1 || rec.PID != 7 || rec.Stream != "stderr" || rec.Line != "tab\there \"quoted\"" || rec.Time.IsZero() {
		t.Fatalf("record %+v", rec)
	}
	if err := json.Unmarshal([]byte(lines[1]), &rec); err != nil {
		t.Fatalf("invalid UTF-8 made invalid JSON: %v", err)
	}
}

// blockingWriter never returns from Write until released.
type blockingWriter struct{ release chan struct{} }

func (w blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	return len(p), nil
}

// A destination that does not take writes must not stop the reader of a
// worker's pipe (the worker would block), nor let memory grow.
func TestStuckDestinationDropsAndCounts(t *testing.T) {
	w := blockingWriter{release: make(chan struct{})}
	s := NewSink(w, Text, "stdout", 64<<10)
	input := strings.Repeat(strings.Repeat("q", 99)+"\n", 50_000) // 5 MB
	done := make(chan struct{})
	go func() {
		s.Pump(strings.NewReader(input), 0, 9)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Pump blocked behind a stuck destination")
	}
	s.mu.Lock()
	queued := s.queued
	s.mu.Unlock()
	if queued > 64<<10+256 { // the bound, plus the one drop notice
		t.Fatalf("%d bytes queued, over the 64 KiB bound", queued)
	}
	close(w.release)
	s.Close()
}

func TestDroppedLinesAreCounted(t *testing.T) {
	var out herdtest.SyncBuffer
	gate := make(chan struct{})
	s := NewSink(io.MultiWriter(writerFunc(func(p []byte) (int, error) { <-gate; return len(p), nil }), &out), Text, "stdout", 200)
	s.Pump(strings.NewReader(strings.Repeat("0123456789\n", 100)), 3, 5)
	close(gate)
	s.Close()
	delivered, dropped := 0, 0
	for _, l := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
		if l == "w3 5 | 0123456789" {
			delivered++
		} else if _, err := fmt.Sscanf(l, "w3 5 | herd: dropped %d lines", &dropped); err != nil {
			t.Fatalf("unexpected line %q", l)
		}
	}
	if dropped == 0 || delivered+dropped != 100 {
		t.Fatalf("%d delivered + %d reported dropped, want 100 with some dropped", delivered, dropped)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestParseFormat(t *testing.T) {
	for in, want := range map[string]Format{"": Text, "text": Text, "json": JSON} {
		if got, err := ParseFormat(in); err != nil || got != want {
			t.Errorf("ParseFormat(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseFormat("xml"); err == nil {
		t.Error("xml accepted")
	}
}
