package restart

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestBackoffDoublesToCapAndResets(t *testing.T) {
	b := NewBackoff(100*time.Millisecond, time.Second, 10*time.Second)
	b.jitter = func() float64 { return 0.5 } // no jitter: factor 1.0
	var got []time.Duration
	for range 7 {
		got = append(got, b.Next(10*time.Millisecond))
	}
	want := []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond,
		800 * time.Millisecond, time.Second, time.Second}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("delays (-want +got):\n%s", diff)
	}
	if d := b.Next(11 * time.Second); d != 0 {
		t.Fatalf("after a worker stayed up past resetAfter: delay %v, want 0", d)
	}
	if d := b.Next(0); d != 100*time.Millisecond {
		t.Fatalf("second quick exit after reset: delay %v, want 100ms", d)
	}
}

func TestBackoffJitterStaysInBounds(t *testing.T) {
	for _, j := range []float64{0, 0.999999} {
		b := NewBackoff(100*time.Millisecond, 30*time.Second, time.Minute)
		b.jitter = func() float64 { return j }
		b.Next(0)
		d := b.Next(0)
		if d < 80*time.Millisecond || d > 120*time.Millisecond {
			t.Errorf("jitter %v: delay %v, want within ±20%% of 100ms", j, d)
		}
		for range 20 {
			d = b.Next(0)
		}
		if d > 30*time.Second {
			t.Errorf("jitter %v: delay %v exceeds the cap", j, d)
		}
	}
}

func TestLimitSlidingWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := NewLimit(3, time.Minute)
		for i := range 3 {
			if !l.Allow(time.Now()) {
				t.Fatalf("restart %d refused within the limit", i+1)
			}
			time.Sleep(10 * time.Second)
		}
		if l.Allow(time.Now()) {
			t.Fatal("4th restart within a minute allowed, want refused")
		}
		time.Sleep(time.Minute)
		if !l.Allow(time.Now()) {
			t.Fatal("restart after the window passed refused")
		}
	})
}

func TestNoLimit(t *testing.T) {
	l := NewLimit(0, time.Minute)
	for range 100 {
		if !l.Allow(time.Now()) {
			t.Fatal("zero max must mean no limit")
		}
	}
}

func TestAtOnceAgreesWithNext(t *testing.T) {
	b := NewBackoff(100*time.Millisecond, time.Second, 10*time.Second)
	for i, uptime := range []time.Duration{time.Second, time.Second, 20 * time.Second, 0, 0} {
		predicted := b.AtOnce(uptime)
		if got := b.Next(uptime) == 0; got != predicted {
			t.Fatalf("exit %d after %v: AtOnce %v, Next restarts at once %v", i, uptime, predicted, got)
		}
	}
}
