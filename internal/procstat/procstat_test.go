package procstat

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// helperEnv makes the test binary a helper process instead of running the
// tests: "child" is a worker that obeys commands on stdin, "grandchild" a
// process it starts in its group, which lives until its stdin closes.
const helperEnv = "HERD_PROCSTAT_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "child":
		os.Exit(helperChild())
	case "grandchild":
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// helperChild starts a grandchild, says "started", then answers each
// command on stdin with "ok" once done:
//
//	alloc  allocate and touch 64 MiB
//	spin   start burning one CPU (for 10 s at most)
//	stop   stop burning
//
// At the end of stdin it stops its grandchild, waits for it and exits, so
// that the whole group is gone when the test's Wait returns.
func helperChild() int {
	gc := exec.Command(os.Args[0])
	gc.Env = append(os.Environ(), helperEnv+"=grandchild")
	gc.Stderr = os.Stderr
	gcIn, err := gc.StdinPipe()
	if err == nil {
		err = gc.Start()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper: start grandchild:", err)
		return 1
	}
	var (
		mem      []byte
		spinning atomic.Bool
		spinners sync.WaitGroup
	)
	stopSpinning := func() {
		spinning.Store(false)
		spinners.Wait()
	}
	fmt.Println("started")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch cmd := sc.Text(); cmd {
		case "alloc":
			mem = make([]byte, 64<<20)
			for i := 0; i < len(mem); i += 4096 {
				mem[i] = 1 // a page counts in RSS once touched
			}
		case "spin":
			spinning.Store(true)
			spinners.Go(func() {
				// Bounded so that a lost test cannot leave a core burning.
				for deadline := time.Now().Add(10 * time.Second); spinning.Load() && time.Now().Before(deadline); {
				}
			})
		case "stop":
			stopSpinning()
		default:
			fmt.Fprintf(os.Stderr, "helper: unknown command %q\n", cmd)
			return 1
		}
		fmt.Println("ok")
	}
	stopSpinning()
	runtime.KeepAlive(mem)
	gcIn.Close()
	if err := gc.Wait(); err != nil {
		fmt.Fprintln(os.Stderr, "helper: grandchild:", err)
		return 1
	}
	return 0
}

func TestCPUPercent(t *testing.T) {
	t0 := time.Now()
	for _, tc := range []struct {
		name      string
		prev, cur Sample
		want      float64
	}{
		{"one core", Sample{CPU: time.Second, At: t0}, Sample{CPU: 3 * time.Second, At: t0.Add(2 * time.Second)}, 100},
		{"quarter core", Sample{At: t0}, Sample{CPU: 250 * time.Millisecond, At: t0.Add(time.Second)}, 25},
		{"two cores", Sample{At: t0}, Sample{CPU: 2 * time.Second, At: t0.Add(time.Second)}, 200},
		{"idle", Sample{CPU: time.Second, At: t0}, Sample{CPU: time.Second, At: t0.Add(time.Second)}, 0},
		{"empty interval", Sample{At: t0}, Sample{CPU: time.Second, At: t0}, 0},
		{"backwards interval", Sample{At: t0.Add(time.Second)}, Sample{CPU: time.Second, At: t0}, 0},
		{"a member exited", Sample{CPU: 5 * time.Second, At: t0}, Sample{CPU: time.Second, At: t0.Add(time.Second)}, 0},
	} {
		if got := CPUPercent(tc.prev, tc.cur); got != tc.want {
			t.Errorf("%s: CPUPercent = %v, want %v", tc.name, got, tc.want)
		}
	}
}
