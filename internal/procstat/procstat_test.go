package procstat

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// helperEnv makes the test binary a helper process instead of running the
// tests:
//
//	child       a worker that obeys commands on stdin (helperChild)
//	grandchild  a process it starts in its group, which lives until its
//	            stdin closes
//	leaf        touches helperAllocEnv MiB if set, says "ready" and lives
//	            until its stdin closes
//	detached    starts a leaf that touches 64 MiB, says "ready" once the
//	            leaf is, and lives until its stdin closes, then stops and
//	            waits for the leaf
//	forker      starts a leaf that shares its stdin (in a new session with
//	            helperSessionEnv=1), says the leaf's pid and exits without
//	            waiting, so that the leaf is orphaned
const helperEnv = "HERD_PROCSTAT_HELPER"

const (
	helperAllocEnv   = "HERD_PROCSTAT_ALLOC_MIB"
	helperSessionEnv = "HERD_PROCSTAT_SETSID"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "child":
		os.Exit(helperChild())
	case "grandchild":
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	case "leaf":
		os.Exit(helperLeaf())
	case "detached":
		os.Exit(helperDetached())
	case "forker":
		os.Exit(helperForker())
	}
	goleak.VerifyTestMain(m)
}

// helperChild starts a grandchild, says "started", then answers each
// command on stdin with "ok" once done, followed by a pid for some:
//
//	alloc   allocate and touch 64 MiB
//	spin    start burning one CPU (for 10 s at most)
//	stop    stop burning
//	detach  start a "detached" helper in a session (and so a process
//	        group) of its own, as setsid or Node's detached: true would;
//	        "ok PID" gives its pid once its leaf holds its 64 MiB
//	orphan  start a leaf in this group through a forker that exits:
//	        "ok PID" gives the orphaned leaf's pid
//	daemon  the same with the leaf in a session of its own, as a daemon's
//	        double fork leaves it
//
// At the end of stdin it stops its grandchild and the detached helpers,
// waits for them and exits, so that its tree is gone when the test's Wait
// returns; the orphans end when their stdin, which it holds, closes with it.
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
		waits    []*exec.Cmd      // children to wait for at the end
		closes   []io.WriteCloser // stdins to close at the end
	)
	stopSpinning := func() {
		spinning.Store(false)
		spinners.Wait()
	}
	fmt.Println("started")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		reply := "ok"
		switch cmd := sc.Text(); cmd {
		case "alloc":
			mem = touch(64)
		case "spin":
			spinning.Store(true)
			spinners.Go(func() {
				// Bounded so that a lost test cannot leave a core burning.
				for deadline := time.Now().Add(10 * time.Second); spinning.Load() && time.Now().Before(deadline); {
				}
			})
		case "stop":
			stopSpinning()
		case "detach":
			d, in, _, err := spawn("detached", sessionAttr(), nil)
			if err != nil {
				fmt.Fprintln(os.Stderr, "helper: detach:", err)
				return 1
			}
			waits, closes = append(waits, d), append(closes, in)
			reply = fmt.Sprint("ok ", d.Process.Pid)
		case "orphan", "daemon":
			r, w, err := os.Pipe()
			if err != nil {
				fmt.Fprintln(os.Stderr, "helper:", err)
				return 1
			}
			env := helperSessionEnv + "=0"
			if cmd == "daemon" {
				env = helperSessionEnv + "=1"
			}
			f, _, leaf, err := spawn("forker", nil, r, env)
			r.Close()
			if err == nil {
				err = f.Wait()
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "helper: %s: %v\n", cmd, err)
				return 1
			}
			closes = append(closes, w)
			reply = "ok " + leaf
		default:
			fmt.Fprintf(os.Stderr, "helper: unknown command %q\n", cmd)
			return 1
		}
		fmt.Println(reply)
	}
	stopSpinning()
	runtime.KeepAlive(mem)
	gcIn.Close()
	for _, in := range closes {
		in.Close()
	}
	for _, c := range append(waits, gc) {
		if err := c.Wait(); err != nil {
			fmt.Fprintln(os.Stderr, "helper: child:", err)
			return 1
		}
	}
	return 0
}

// helperLeaf is the "leaf" helper.
func helperLeaf() int {
	var mem []byte
	if mib, _ := strconv.Atoi(os.Getenv(helperAllocEnv)); mib > 0 {
		mem = touch(mib)
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	runtime.KeepAlive(mem)
	return 0
}

// helperDetached is the "detached" helper.
func helperDetached() int {
	leaf, in, _, err := spawn("leaf", nil, nil, helperAllocEnv+"=64")
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper: detached:", err)
		return 1
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	in.Close()
	if err := leaf.Wait(); err != nil {
		fmt.Fprintln(os.Stderr, "helper: detached: leaf:", err)
		return 1
	}
	return 0
}

// helperForker is the "forker" helper.
func helperForker() int {
	var attr *syscall.SysProcAttr
	if os.Getenv(helperSessionEnv) == "1" {
		attr = sessionAttr()
	}
	leaf, _, _, err := spawn("leaf", attr, os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper: forker:", err)
		return 1
	}
	fmt.Println(leaf.Process.Pid)
	return 0 // the leaf is not waited for: it is orphaned now
}

// touch allocates mib MiB and touches every page of it: a page counts in
// RSS once touched.
func touch(mib int) []byte {
	mem := make([]byte, mib<<20)
	for i := 0; i < len(mem); i += 4096 {
		mem[i] = 1
	}
	return mem
}

// spawn starts this binary as the helper mode, with attr and the extra
// environment, and returns once the helper wrote its first line, which it
// returns. Its stdin is stdin, or a new pipe (returned) when stdin is nil.
func spawn(mode string, attr *syscall.SysProcAttr, stdin *os.File, env ...string) (*exec.Cmd, io.WriteCloser, string, error) {
	c := exec.Command(os.Args[0])
	c.Env = append(append(os.Environ(), helperEnv+"="+mode), env...)
	c.Stderr = os.Stderr
	c.SysProcAttr = attr
	var in io.WriteCloser
	if stdin != nil {
		c.Stdin = stdin
	} else {
		var err error
		if in, err = c.StdinPipe(); err != nil {
			return nil, nil, "", err
		}
	}
	out, err := c.StdoutPipe()
	if err != nil {
		return nil, nil, "", err
	}
	if err := c.Start(); err != nil {
		return nil, nil, "", err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return nil, nil, "", fmt.Errorf("%s helper ended before its first line: %w", mode, err)
	}
	return c, in, strings.TrimSpace(line), nil
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
