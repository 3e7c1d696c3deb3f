package sockets

import (
	"slices"
	"sync"
	"testing"
)

// The round-robin program gives the live slots new connections in turn,
// exactly evenly however many clients connect at once, follows the live
// set, and takes in the sockets a scale-up adds.
func TestRoundRobinTakesLiveSlotsInTurn(t *testing.T) {
	s := openProgram(t, false, 3, "127.0.0.1:0")
	g := s.Groups[0]
	addr := g.Addr.String()
	// dial makes n connections from four goroutines at once: turns taken
	// on several CPUs at the same moment must not be lost or doubled.
	dial := func(n int) []int {
		t.Helper()
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() { dialFrom(t, nil, addr, n/4) })
		}
		wg.Wait()
		return landings(t, g, n)
	}
	for _, step := range []struct {
		live []int
		grow int
		n    int
		want []int
	}{
		{live: nil, n: 120, want: []int{40, 40, 40}},
		{live: []int{0, 2}, n: 80, want: []int{40, 0, 40}},
		{live: []int{1}, n: 20, want: []int{0, 20, 0}},
		{grow: 5, live: []int{0, 1, 2, 3, 4}, n: 100, want: []int{20, 20, 20, 20, 20}},
		{live: []int{4, 3}, n: 40, want: []int{0, 0, 0, 20, 20}},
	} {
		if step.grow > 0 {
			if err := s.Grow(step.grow); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Steer(step.live); err != nil {
			t.Fatal(err)
		}
		if got := dial(step.n); !slices.Equal(got, step.want) {
			t.Errorf("live %v: %d connections landed %v, want %v", step.live, step.n, got, step.want)
		}
		if got := g.Steering(); got != "round-robin" {
			t.Errorf("live %v: steering %q, want round-robin", step.live, got)
		}
	}
	// Probes still reach their slot, live or not.
	for _, slot := range []int{0, 2, 4} {
		probeSlot(t, s, slot, 5)
	}
}
