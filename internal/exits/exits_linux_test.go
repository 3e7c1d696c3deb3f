package exits

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

const childEnv = "HERD_EXITS_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		// A multi-threaded Go process that waits to be killed.
		for range 4 {
			go func() {
				runtime.LockOSThread()
				time.Sleep(time.Hour)
			}()
		}
		time.Sleep(time.Hour)
	}
	goleak.VerifyTestMain(m)
}

// open returns a Notifier, or skips the test when this process may not
// register a taskstats listener (not root, or in a container).
func open(t *testing.T) *Notifier {
	t.Helper()
	n, err := Open()
	// Not root, in a container (EINVAL: not the host's namespaces), or a
	// kernel without taskstats (no such family).
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPROTONOSUPPORT) {
		t.Skipf("early exit notices are not available here (%v): herd waits for the kernel's exit report instead", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	return n
}

// start runs a child that waits to be killed: the test binary (many
// threads), or sleep (one thread).
func start(t *testing.T, threads bool) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	if !threads {
		path, err := exec.LookPath("sleep")
		if err != nil {
			t.Skipf("no sleep command: %v", err)
		}
		cmd = exec.Command(path, "3600")
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestKilledProcessIsReported(t *testing.T) {
	for _, threads := range []bool{true, false} {
		name := "one thread"
		if threads {
			name = "many threads"
		}
		t.Run(name, func(t *testing.T) {
			n := open(t)
			cmd := start(t, threads)
			pid := cmd.Process.Pid
			if threads {
				waitThreads(t, pid, 5)
			}
			dying := n.Watch(pid)
			if closed(dying) {
				t.Fatal("reported before it was killed")
			}
			syscall.Kill(pid, syscall.SIGKILL)
			select {
			case <-dying:
			case <-time.After(10 * time.Second):
				t.Fatal("a killed process was not reported within 10 s")
			}
			cmd.Wait()
		})
	}
}

// waitThreads waits until pid has at least k threads, so that the test
// covers the group record.
func waitThreads(t *testing.T, pid, k int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		tasks, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
		if len(tasks) >= k {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d has %d threads, want %d", pid, len(tasks), k)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLiveProcessIsNotReported checks that records naming a watched
// process that is not exiting (one left over from the pid's previous
// owner, or for a thread of it) are not believed, and that the exits of
// other processes do not touch it.
func TestLiveProcessIsNotReported(t *testing.T) {
	n := open(t)
	for _, threads := range []bool{true, false} {
		live := start(t, threads)
		pid := live.Process.Pid
		dying := n.Watch(pid)
		n.record(record{pid: pid})
		n.record(record{pid: pid, tgid: pid})
		// Others come and go meanwhile; each is reported, the live one
		// is not.
		for range 3 {
			other := start(t, true)
			gone := n.Watch(other.Process.Pid)
			other.Process.Kill()
			<-gone
			other.Wait()
		}
		if closed(dying) {
			t.Fatalf("live pid %d (threads %v) was reported as exiting", pid, threads)
		}
		n.Forget(pid)
	}
}

// TestExitingChecksProc checks the /proc side of the guard: a zombie and a
// reaped pid are exiting, a running process is not.
func TestExitingChecksProc(t *testing.T) {
	cmd := start(t, false)
	pid := cmd.Process.Pid
	if exiting(pid, false) || exiting(pid, true) {
		t.Fatal("a running process is taken for exiting")
	}
	cmd.Process.Kill()
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	if !exiting(pid, false) {
		t.Error("a zombie is not taken for exiting")
	}
	cmd.Wait()
	if !exiting(pid, false) {
		t.Error("a reaped pid is not taken for exiting")
	}
}

func TestForget(t *testing.T) {
	n := open(t)
	cmd := start(t, false)
	pid := cmd.Process.Pid
	dying := n.Watch(pid)
	if again := n.Watch(pid); again != dying {
		t.Error("a second Watch of the same pid gave another channel")
	}
	n.Forget(pid)
	n.record(record{pid: pid}) // as if it were exiting: forgotten, so nothing
	cmd.Process.Kill()
	cmd.Wait()
	n.record(record{pid: pid})
	if closed(dying) {
		t.Error("a forgotten pid was reported")
	}
}
