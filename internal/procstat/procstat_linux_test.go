package procstat

import (
	"bufio"
	"errors"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"
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

// do sends a command and waits until it is done. It returns the pid that
// comes with the "ok" of some commands, else 0.
func (h *helper) do(t *testing.T, cmd string) int {
	t.Helper()
	if _, err := io.WriteString(h.in, cmd+"\n"); err != nil {
		t.Fatal(err)
	}
	if !h.out.Scan() {
		t.Fatalf("helper ended before doing %q: %v", cmd, h.out.Err())
	}
	reply := strings.Fields(h.out.Text())
	if len(reply) == 0 || reply[0] != "ok" || len(reply) > 2 {
		t.Fatalf("helper said %q to %q, want ok", h.out.Text(), cmd)
	}
	if len(reply) == 1 {
		return 0
	}
	pid, err := strconv.Atoi(reply[1])
	if err != nil || pid <= 0 {
		t.Fatalf("helper said %q to %q: no pid", h.out.Text(), cmd)
	}
	return pid
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

// sessionAttr starts a process in a session, and so a process group, of
// its own.
func sessionAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setsid: true} }

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

// procStat reads one process's stat, to check what a test set up.
func procStat(t *testing.T, pid int) procfs.ProcStat {
	t.Helper()
	p, err := procfs.NewProc(pid)
	if err == nil {
		var st procfs.ProcStat
		if st, err = p.Stat(); err == nil {
			return st
		}
	}
	t.Fatalf("process %d: %v", pid, err)
	return procfs.ProcStat{}
}

// A worker is its whole process tree: a child that moved to a session and
// process group of its own (setsid, Node's detached: true) still counts,
// with its own children, and each process counts once.
func TestTreeCountsChildrenThatLeftTheGroup(t *testing.T) {
	h := startHelper(t)
	base := mustGroup(t, h.pgid)
	d := h.do(t, "detach") // d starts a leaf that touches 64 MiB
	if st := procStat(t, d); st.PPID != h.pgid || st.PGRP != d || st.Session != d {
		t.Fatalf("the detached child %d: ppid %d, pgrp %d, session %d; want ppid %d and its own group and session",
			d, st.PPID, st.PGRP, st.Session, h.pgid)
	}
	grown := mustGroup(t, h.pgid)
	if grown.Procs != base.Procs+2 {
		t.Fatalf("Procs = %d after a detached child and its child were started, want %d", grown.Procs, base.Procs+2)
	}
	if grown.RSS < base.RSS+60<<20 {
		t.Fatalf("RSS went from %d to %d MiB after a detached grandchild touched 64 MiB", base.RSS>>20, grown.RSS>>20)
	}

	// Asked for both, the detached child, leader of its own group, gets its
	// own tree and the worker keeps the rest: nothing counts twice.
	both, err := Groups([]int{h.pgid, d})
	if err != nil {
		t.Fatal(err)
	}
	if w, dd := both[h.pgid], both[d]; w.Procs != base.Procs || dd.Procs != 2 || dd.RSS < 60<<20 || w.RSS+50<<20 > grown.RSS {
		t.Fatalf("worker %+v and its detached child %+v read together; want %d and 2 processes, the 64 MiB in the child's only",
			w, dd, base.Procs)
	}
	t.Logf("idle %d MiB, with a detached child touching 64 MiB %d MiB", base.RSS>>20, grown.RSS>>20)

	h.stop(t) // the worker waits for the detached child, which waits for its leaf
	for _, pid := range []int{h.pgid, d} {
		if s, err := Group(pid); !errors.Is(err, ErrNoProcess) {
			t.Errorf("Group(%d) of an ended tree = %+v, %v; want ErrNoProcess", pid, s, err)
		}
	}
}

// A process whose parent exited is re-parented by the kernel, to init or a
// subreaper: it counts for the worker as long as it stays in the worker's
// group, and for no worker once it left the group too (a daemon's double
// fork): no ancestry leads back to the worker any more.
func TestOrphansCountByGroupOnly(t *testing.T) {
	h := startHelper(t)
	base := mustGroup(t, h.pgid)

	o := h.do(t, "orphan")
	if st := procStat(t, o); st.PGRP != h.pgid || st.PPID == h.pgid {
		t.Fatalf("orphan %d: ppid %d, pgrp %d; want re-parented away from %d, in its group", o, st.PPID, st.PGRP, h.pgid)
	}
	if s := mustGroup(t, h.pgid); s.Procs != base.Procs+1 {
		t.Fatalf("Procs = %d with an orphan in the group, want %d", s.Procs, base.Procs+1)
	}

	x := h.do(t, "daemon")
	if st := procStat(t, x); st.PGRP != x || st.PPID == h.pgid {
		t.Fatalf("daemon %d: ppid %d, pgrp %d; want re-parented away, in a group of its own", x, st.PPID, st.PGRP)
	}
	if s := mustGroup(t, h.pgid); s.Procs != base.Procs+1 {
		t.Fatalf("Procs = %d with an orphan in the group and a daemon out of it, want %d", s.Procs, base.Procs+1)
	}

	// The orphans end when their stdin, held by the worker, closes; their
	// new parent reaps them, or not: zombies do not count.
	h.stop(t)
	gone := func(pid int) bool {
		p, err := procfs.NewProc(pid)
		if err != nil {
			return true
		}
		st, err := p.Stat()
		return err != nil || st.State == "Z" || st.State == "X"
	}
	for deadline := time.Now().Add(10 * time.Second); !gone(o) || !gone(x); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("orphans %d and %d still running 10s after their stdin closed", o, x)
		}
	}
	if s, err := Group(h.pgid); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("Group of an ended worker with ended orphans = %+v, %v; want ErrNoProcess", s, err)
	}
}

// owners' rules on a made-up process table, for what real processes
// cannot easily show: a loop of parents, a worker out of its own group, a
// worker inside another's tree.
func TestOwners(t *testing.T) {
	all := map[int]proc{
		1:   {ppid: 0, pgrp: 1},     // init
		50:  {ppid: 1, pgrp: 50},    // herd
		100: {ppid: 50, pgrp: 100},  // worker
		101: {ppid: 100, pgrp: 100}, // its child
		102: {ppid: 101, pgrp: 102}, // a grandchild that called setsid
		103: {ppid: 102, pgrp: 102}, // its child
		104: {ppid: 1, pgrp: 100},   // orphaned, still in the group
		105: {ppid: 104, pgrp: 105}, // the orphan's detached child
		106: {ppid: 1, pgrp: 106},   // orphaned out of the group: lost
		200: {ppid: 50, pgrp: 200},  // another worker
		201: {ppid: 200, pgrp: 100}, // its child, in worker 100's group
		300: {ppid: 301, pgrp: 0},   // a loop of parents (pids reused
		301: {ppid: 300, pgrp: 0},   // during the scan)
		302: {ppid: 301, pgrp: 0},
		400: {ppid: 50, pgrp: 50},  // a worker that joined herd's group
		401: {ppid: 400, pgrp: 50}, // its child
		500: {ppid: 999, pgrp: 0},  // parent gone during the scan
	}
	want := map[int]int{
		1: 0, 50: 0, 100: 100, 101: 100, 102: 100, 103: 100, 104: 100, 105: 100,
		106: 0, 200: 200, 201: 100, 300: 0, 301: 0, 302: 0, 400: 400, 401: 400, 500: 0,
	}
	got := owners(all, map[int]bool{100: true, 200: true, 400: true})
	for pid, w := range want {
		if got[pid] != w {
			t.Errorf("process %d belongs to %d, want %d", pid, got[pid], w)
		}
	}
	if len(got) != len(all) {
		t.Errorf("owners gave %d processes, want %d: %v", len(got), len(all), got)
	}

	// A worker in another's tree takes its own subtree.
	got = owners(all, map[int]bool{100: true, 102: true})
	for pid, w := range map[int]int{101: 100, 102: 102, 103: 102, 105: 100} {
		if got[pid] != w {
			t.Errorf("with 102 wanted too, process %d belongs to %d, want %d", pid, got[pid], w)
		}
	}
}
