package logpump

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herd-sh/herd/internal/herdtest"
)

func texts(lines []Line) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = l.Text
	}
	return out
}

func addTexts(r *Ring, ts ...string) {
	for _, t := range ts {
		r.Add(Line{Text: t})
	}
}

func TestRingKeepsTheLastLinesInOrder(t *testing.T) {
	r := NewRing(3, 0)
	for i := range 10 {
		addTexts(r, fmt.Sprint(i))
	}
	for _, tc := range []struct {
		n    int
		want []string
	}{
		{10, []string{"7", "8", "9"}},
		{2, []string{"8", "9"}},
		{0, []string{}},
		{-1, []string{}},
	} {
		if got := texts(r.Last(tc.n)); !slices.Equal(got, tc.want) {
			t.Errorf("Last(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

func TestRingByteBound(t *testing.T) {
	r := NewRing(100, 10)
	addTexts(r, "aaaa", "bbbb", "cccc")
	if got, want := texts(r.Last(100)), []string{"bbbb", "cccc"}; !slices.Equal(got, want) {
		t.Fatalf("held %q, want %q (10 bytes at most)", got, want)
	}
	addTexts(r, "0123456789abc")
	if got, want := texts(r.Last(100)), []string{"0123456789"}; !slices.Equal(got, want) {
		t.Fatalf("held %q, want the over-long line alone, cut to the bound", got)
	}
}

// The ring's index arithmetic (growth, wrapping, evictions by count and by
// bytes) against the obvious slice implementation.
func TestRingMatchesModel(t *testing.T) {
	const maxLines, maxBytes = 40, 200
	r := NewRing(maxLines, maxBytes)
	var model []string
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		text := fmt.Sprintf("%d:%s", i, strings.Repeat("x", rng.IntN(30)))
		r.Add(Line{Text: text})
		model = append(model, text)
		size := 0
		for _, m := range model {
			size += len(m)
		}
		for len(model) > maxLines || size > maxBytes {
			size -= len(model[0])
			model = model[1:]
		}
		if got := texts(r.Last(maxLines + 1)); !slices.Equal(got, model) {
			t.Fatalf("after line %d: ring holds %q, want %q", i, got, model)
		}
	}
}

func TestFollowBacklogThenNewLines(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // first, so that a failed test's follower ends
	r := NewRing(0, 0)
	addTexts(r, "0", "1", "2", "3", "4")

	if got, _, _ := r.Follow(100).Next(ctx); !slices.Equal(texts(got), []string{"0", "1", "2", "3", "4"}) {
		t.Errorf("a backlog larger than the ring gives all it holds; got %q", texts(got))
	}
	f := r.Follow(2)
	got, dropped, err := f.Next(ctx)
	if err != nil || dropped != 0 || !slices.Equal(texts(got), []string{"3", "4"}) {
		t.Fatalf("backlog: %q, dropped %d, %v; want [3 4]", texts(got), dropped, err)
	}

	// Next now waits for a new line.
	type result struct {
		lines []Line
		err   error
	}
	res := make(chan result, 1)
	wg.Go(func() {
		lines, _, err := f.Next(ctx)
		res <- result{lines, err}
	})
	select {
	case r := <-res:
		t.Fatalf("Next returned %q, %v with no new line", texts(r.lines), r.err)
	case <-time.After(50 * time.Millisecond):
	}
	addTexts(r, "5")
	select {
	case got := <-res:
		if got.err != nil || !slices.Equal(texts(got.lines), []string{"5"}) {
			t.Fatalf("followed %q, %v; want [5]", texts(got.lines), got.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a waiting follower was not woken by a new line")
	}

	addTexts(r, "6", "7")
	if got, _, _ := f.Next(ctx); !slices.Equal(texts(got), []string{"6", "7"}) {
		t.Errorf("got %q, want [6 7]", texts(got))
	}
}

// A follower that does not read must neither slow Pump down nor hold
// memory: it loses the lines that left the ring, and learns how many.
func TestSlowFollowerDropsAndCountsWithoutBlockingPump(t *testing.T) {
	r := NewRing(100, 0)
	s := NewSink(io.Discard, Text, "stdout", 0)
	s.SetRing(r)
	f := r.Follow(0)
	var input strings.Builder
	for i := range 10_000 {
		fmt.Fprintf(&input, "line %d\n", i)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Pump(strings.NewReader(input.String()), 1, 2)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Pump blocked behind a follower that does not read")
	}
	s.Close()

	lines, dropped, err := f.Next(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if dropped != 9900 || len(lines) != 100 || lines[0].Text != "line 9900" || lines[99].Text != "line 9999" {
		t.Fatalf("dropped %d, got %d lines (%q … %q); want 9900 dropped and the last 100",
			dropped, len(lines), lines[0].Text, lines[len(lines)-1].Text)
	}
}

func TestFollowEndsWithContext(t *testing.T) {
	r := NewRing(0, 0)
	f := r.Follow(0)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		_, _, err := f.Next(ctx)
		errc <- err
	})
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Next after cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelling the context did not end a waiting follower")
	}

	// An ended context ends the follower even with lines waiting.
	addTexts(r, "late")
	if lines, _, err := f.Next(ctx); !errors.Is(err, context.Canceled) || lines != nil {
		t.Fatalf("Next with an ended context: %q, %v", texts(lines), err)
	}
}

func TestSinkTeesWorkerLinesOnly(t *testing.T) {
	r := NewRing(0, 4*MaxLine)
	var out, errOut herdtest.SyncBuffer
	stdout := NewSink(&out, Text, "stdout", 4*MaxLine)
	stderr := NewSink(&errOut, JSON, "stderr", 0)
	stdout.SetRing(r)
	stderr.SetRing(r)

	fmt.Fprintf(stderr, "time=… level=INFO msg=\"herd's own record\"\n")
	long := strings.Repeat("z", 2*MaxLine+10)
	stdout.Pump(strings.NewReader("a\n"+long+"\npartial"), 2, 42)
	stderr.Pump(strings.NewReader("oops\n"), 3, 43)
	stdout.Close()
	stderr.Close()

	type key struct {
		worker, pid  int
		stream, text string
	}
	want := []key{
		{2, 42, "stdout", "a"},
		{2, 42, "stdout", long[:MaxLine]},
		{2, 42, "stdout", long[MaxLine : 2*MaxLine]},
		{2, 42, "stdout", long[2*MaxLine:]},
		{2, 42, "stdout", "partial"},
		{3, 43, "stderr", "oops"},
	}
	var got []key
	for _, l := range r.Last(100) {
		if l.Time.IsZero() {
			t.Errorf("line %.20q has no time", l.Text)
		}
		got = append(got, key{l.Worker, l.PID, l.Stream, l.Text})
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ring holds %d lines, want %d: %.200v", len(got), len(want), got)
	}
	// The destinations are written as before.
	if !strings.HasPrefix(out.String(), "w2 42 | a\nw2 42 | zzz") || !strings.HasSuffix(out.String(), "w2 42 | partial\n") {
		t.Errorf("stdout changed: %.40q…", out.String())
	}
	if !strings.Contains(errOut.String(), "herd's own record") || !strings.Contains(errOut.String(), `"line":"oops"`) {
		t.Errorf("stderr changed: %q", errOut.String())
	}
}

// Writers and a follower at once (for the race detector): the follower
// sees each worker's lines in order, and every line is either read or
// counted as dropped.
func TestFollowWhileWorkersWrite(t *testing.T) {
	const workers, perWorker = 4, 2000
	r := NewRing(64, 0)
	s := NewSink(io.Discard, Text, "stdout", 0)
	s.SetRing(r)
	f := r.Follow(0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var wg sync.WaitGroup
	defer wg.Wait()
	for w := range workers {
		wg.Go(func() {
			var b strings.Builder
			for i := range perWorker {
				fmt.Fprintf(&b, "%d\n", i)
			}
			s.Pump(strings.NewReader(b.String()), w, 100+w)
		})
	}
	last := make([]int, workers)
	for i := range last {
		last[i] = -1
	}
	read, dropped := 0, 0
	for read+dropped < workers*perWorker {
		lines, d, err := f.Next(ctx)
		if err != nil {
			t.Fatalf("after %d read and %d dropped: %v", read, dropped, err)
		}
		dropped += d
		for _, l := range lines {
			var i int
			fmt.Sscan(l.Text, &i)
			if i <= last[l.Worker] {
				t.Fatalf("worker %d: line %d after line %d", l.Worker, i, last[l.Worker])
			}
			last[l.Worker] = i
			read++
		}
	}
	wg.Wait()
	s.Close()
	if read+dropped != workers*perWorker {
		t.Fatalf("%d read + %d dropped, want %d", read, dropped, workers*perWorker)
	}
	t.Logf("%d read, %d dropped", read, dropped)
}
