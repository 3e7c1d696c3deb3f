package procstat

import (
	"bufio"
	"errors"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// helper is a child process group run by helperChild: the child and its
// grandchild.
type helper struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	pgid int
}

// startHelper starts a helper in a process group of its own, as herd
// starts a worker, and returns once its grandchild runs too.
func startHelper(t *testing.T) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=child", "GORACE=atexit_sleep_ms=0")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, in: in, out: bufio.NewScanner(out), pgid: cmd.Process.Pid}
	t.Cleanup(func() {
		if h.cmd.ProcessState == nil { // not stopped by the test: kill it
			h.in.Close()
			syscall.Kill(-h.pgid, syscall.SIGKILL)
			h.cmd.Wait()
		}
	})
	h.expect(t, "started")
	return h
}

func (h *helper) expect(t *testing.T, want string) {
	t.Helper()
	if !h.out.Scan() {
		t.Fatalf("helper ended before saying %q: %v", want, h.out.Err())
	}
	if got := h.out.Text(); got != want {
		t.Fatalf("helper said %q, want %q", got, want)
	}
}

// do sends a command and waits until it is done.
func (h *helper) do(t *testing.T, cmd string) {
	t.Helper()
	if _, err := io.WriteString(h.in, cmd+"\n"); err != nil {
		t.Fatal(err)
	}
	h.expect(t, "ok")
}

// stop ends the helper cleanly: once Wait returns its whole group is gone.
func (h *helper) stop(t *testing.T) {
	t.Helper()
	h.in.Close()
	kill := time.AfterFunc(10*time.Second, func() { syscall.Kill(-h.pgid, syscall.SIGKILL) })
	defer kill.Stop()
	if err := h.cmd.Wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}
}

func mustGroup(t *testing.T, pgid int) Sample {
	t.Helper()
	s, err := Group(pgid)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestGroupMemoryProcsAndCPU(t *testing.T) {
	if !Supported {
		t.Fatal("Supported is false on Linux: herd would refuse --max-memory here")
	}
	h := startHelper(t)
	base := mustGroup(t, h.pgid)
	if base.Procs != 2 {
		t.Fatalf("Procs = %d, want 2 (the child and its grandchild)", base.Procs)
	}
	if base.RSS == 0 || base.At.IsZero() {
		t.Fatalf("idle group: %+v", base)
	}

	h.do(t, "alloc")
	grown := mustGroup(t, h.pgid)
	if grown.RSS < base.RSS+60<<20 {
		t.Fatalf("RSS went from %d to %d MiB after touching 64 MiB", base.RSS>>20, grown.RSS>>20)
	}

	// The bounds below are sanity checks, not timing thresholds: a busy
	// child on a loaded machine still gets far more than 20% of a core,
	// and no unit mistake (ms for µs, ticks for seconds) fits the window.
	h.do(t, "spin")
	prev := mustGroup(t, h.pgid)
	time.Sleep(time.Second)
	cur := mustGroup(t, h.pgid)
	h.do(t, "stop")
	if cur.CPU <= prev.CPU {
		t.Fatalf("CPU did not grow while spinning: %v then %v", prev.CPU, cur.CPU)
	}
	pct := CPUPercent(prev, cur)
	if maxPct := 100*float64(runtime.NumCPU()) + 50; pct < 20 || pct > maxPct {
		t.Fatalf("CPUPercent of a spinning child = %.1f, want between 20 and %.0f", pct, maxPct)
	}
	t.Logf("idle %d MiB, after alloc %d MiB, spinning %.0f%% of a core", base.RSS>>20, grown.RSS>>20, pct)

	h.stop(t)
	if s, err := Group(h.pgid); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("Group of an ended group = %+v, %v; want ErrNoProcess", s, err)
	}
}

func TestGroupsReadsAllInOneCall(t *testing.T) {
	a, b := startHelper(t), startHelper(t)
	ended := exec.Command(os.Args[0]) // stdin is /dev/null: it ends at once
	ended.Env = append(os.Environ(), helperEnv+"=grandchild", "GORACE=atexit_sleep_ms=0")
	if err := ended.Run(); err != nil {
		t.Fatal(err)
	}
	dead := ended.Process.Pid

	got, err := Groups([]int{a.pgid, b.pgid, dead, 0, -1})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("Groups returned %d groups, want 2: %+v", len(got), got)
	}
	for _, pgid := range []int{a.pgid, b.pgid} {
		s, ok := got[pgid]
		if !ok || s.Procs != 2 || s.RSS == 0 || s.At.IsZero() {
			t.Errorf("group %d: %+v (present %v), want 2 live processes", pgid, s, ok)
		}
	}
	if got[a.pgid].At != got[b.pgid].At {
		t.Error("one scan should give one time")
	}
	if _, err := Group(dead); !errors.Is(err, ErrNoProcess) {
		t.Errorf("Group(%d) of an exited process: %v, want ErrNoProcess", dead, err)
	}
	if _, err := Group(0); !errors.Is(err, ErrNoProcess) {
		t.Errorf("Group(0): %v, want ErrNoProcess (kernel threads are no worker)", err)
	}
	if got, err := Groups(nil); err != nil || len(got) != 0 {
		t.Errorf("Groups(nil) = %v, %v", got, err)
	}
	a.stop(t)
	b.stop(t)
}
