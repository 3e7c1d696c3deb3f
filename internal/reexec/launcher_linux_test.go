package reexec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// workerEnv makes this test binary a worker that reports what it was
// given: its pid, its open fds, and its environment as execve passed it.
const workerEnv = "REEXEC_TEST_WORKER"

// noCloseRangeEnv runs this test binary as a kernel without close_range
// would: the syscall fails with ENOSYS.
const noCloseRangeEnv = "REEXEC_TEST_NO_CLOSE_RANGE"

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) == "1" {
		os.Exit(reportWorker())
	}
	if os.Getenv(noCloseRangeEnv) == "1" {
		if err := denyCloseRange(); err != nil {
			fmt.Fprintln(os.Stderr, "seccomp:", err)
			os.Exit(3)
		}
	}
	os.Exit(m.Run())
}

// denyCloseRange makes close_range fail with ENOSYS in this process, its
// threads and its children, as on Linux before 5.9.
func denyCloseRange() error {
	arch := map[string]uint32{"amd64": unix.AUDIT_ARCH_X86_64, "arm64": unix.AUDIT_ARCH_AARCH64}[runtime.GOARCH]
	filter := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 4}, // seccomp_data.arch
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: arch, Jf: 3},
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // seccomp_data.nr
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: unix.SYS_CLOSE_RANGE, Jf: 1},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return err
	}
	_, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog)))
	if errno != 0 {
		return errno
	}
	return nil
}

func reportWorker() int {
	var fds []string
	for fd := range 256 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			continue
		}
		// The Go runtime's own: it follows the cgroup's CPU limit.
		if l, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); strings.HasPrefix(l, "/sys/fs/cgroup/") {
			continue
		}
		fds = append(fds, strconv.Itoa(fd))
	}
	environ, err := os.ReadFile("/proc/self/environ")
	if err != nil {
		return 3
	}
	fmt.Printf("%d\n%s\n%s", os.Getpid(), strings.Join(fds, ","), environ)
	return 0
}

type report struct {
	pid int
	fds string
	env []string
}

func parseReport(t *testing.T, out []byte) report {
	t.Helper()
	pid, rest, _ := bytes.Cut(out, []byte("\n"))
	fds, environ, ok := bytes.Cut(rest, []byte("\n"))
	n, err := strconv.Atoi(string(pid))
	if !ok || err != nil {
		t.Fatalf("worker report %q", out)
	}
	env := strings.Split(string(environ), "\x00")
	return report{pid: n, fds: string(fds), env: env[:len(env)-1]}
}

// launch runs path through l as herd does: fd 3 is a socket's stand-in,
// fd 4 the status pipe, and fds above it (one in ExtraFiles, one the
// primary holds without close-on-exec) must not reach the worker. It
// returns the worker's stdout, ReadExecStatus's error and the exit code.
func launch(t *testing.T, l *Launcher, path string, argv, env []string) ([]byte, error, int) {
	t.Helper()
	cmd, err := l.Command(path, argv, env, 4)
	if err != nil {
		t.Fatal(err)
	}
	return run(t, l, cmd, path)
}

func run(t *testing.T, l *Launcher, cmd *exec.Cmd, path string) ([]byte, error, int) {
	t.Helper()
	sock, sockW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(sock, sockW)
	statusR, statusW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(statusR, statusW)
	above, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer above.Close()
	// As a shell or CI runner may leave one: inherited by every child.
	if err := unix.Dup3(int(above.Fd()), 100, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(100)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	cmd.ExtraFiles = []*os.File{sock, statusW, above}
	cmd, err = l.Start(cmd, (*exec.Cmd).Start)
	if err != nil {
		t.Fatal(err)
	}
	statusW.Close()
	execErr := ReadExecStatus(statusR, path)
	cmd.Wait()
	return out.Bytes(), execErr, cmd.ProcessState.ExitCode()
}

func closeAll(fs ...*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

func tinyLauncher(t *testing.T) *Launcher {
	t.Helper()
	l := NewLauncher()
	t.Cleanup(func() { l.Close() })
	if err := l.GoFallback(); err != nil {
		if runtime.GOARCH == "amd64" || runtime.GOARCH == "arm64" {
			t.Fatalf("no tiny trampoline on linux/%s: %v", runtime.GOARCH, err)
		}
		t.Skip(err)
	}
	return l
}

func self(t *testing.T) string {
	me, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return me
}

// The worker's pid, fds and environment are the same through either
// trampoline, and what the contract (docs/workers.md) says.
func TestTinyTrampolineRunsWorkerAsGoOneDoes(t *testing.T) {
	tiny := tinyLauncher(t)
	me := self(t)
	base := []string{"A=1", "B=2", "A=3", "NOEQUALS", workerEnv + "=1", "Z="}
	cases := []struct {
		name      string
		env       []string
		listenPID bool // LISTEN_PID is the worker's pid
		viaGo     bool // the tiny trampoline cannot keep this env as the Go one does
	}{
		{"sockets", append(slices.Clone(base), "LISTEN_FDS=2", "LISTEN_FDNAMES=a:b"), true, false},
		{"no sockets", base, false, false},
		{"inherited LISTEN_PID replaced", append([]string{"LISTEN_PID=1", "LISTEN_FDS=1"}, append(slices.Clone(base), "LISTEN_PID=7")...), true, false},
		{"empty LISTEN_FDS", append(slices.Clone(base), "LISTEN_FDS=1", "LISTEN_FDS="), false, false},
		{"LISTEN_PID without sockets", append(slices.Clone(base), "LISTEN_PID=42"), false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd, err := tiny.Command(me, []string{"worker", "arg 1"}, tc.env, 4)
			if err != nil {
				t.Fatal(err)
			}
			if got := cmd.Path == tiny.path; got == tc.viaGo {
				t.Fatalf("through the tiny trampoline: %v, want %v", got, !tc.viaGo)
			}
			var reports []report
			for _, l := range []*Launcher{nil, tiny} {
				out, execErr, code := launch(t, l, me, []string{"worker", "arg 1"}, tc.env)
				if execErr != nil || code != 0 {
					t.Fatalf("exec status %v, exit %d, output %q", execErr, code, out)
				}
				r := parseReport(t, out)
				if r.fds != "0,1,2,3" {
					t.Errorf("worker's fds %s, want 0,1,2,3 (not the status pipe at 4, nothing above)", r.fds)
				}
				for i, kv := range r.env {
					if strings.HasPrefix(kv, "HERD_REEXEC") {
						t.Errorf("worker got %s", kv)
					}
					if v, ok := strings.CutPrefix(kv, "LISTEN_PID="); ok && tc.listenPID {
						if v != strconv.Itoa(r.pid) {
							t.Errorf("LISTEN_PID=%s, worker's pid %d", v, r.pid)
						}
						r.env[i] = "LISTEN_PID=(its pid)"
					}
				}
				if tc.listenPID && !slices.Contains(r.env, "LISTEN_PID=(its pid)") {
					t.Errorf("no LISTEN_PID in %q", r.env)
				}
				reports = append(reports, r)
			}
			if !slices.Equal(reports[0].env, reports[1].env) {
				t.Errorf("environment through the Go trampoline:\n%q\nthrough the tiny one:\n%q", reports[0].env, reports[1].env)
			}
		})
	}
}

// /proc/self/exe, the worker command of a program that runs itself again
// (Options.Command empty), means this program, not the trampoline.
func TestTinyTrampolineRunsSelf(t *testing.T) {
	tiny := tinyLauncher(t)
	env := []string{workerEnv + "=1", "LISTEN_FDS=1"}
	cmd, err := tiny.Command("/proc/self/exe", []string{"worker"}, env, 4)
	if err != nil {
		t.Fatal(err)
	}
	if cmd.Path != tiny.path {
		t.Fatalf("/proc/self/exe runs through %s, not the tiny trampoline", cmd.Path)
	}
	out, execErr, code := launch(t, tiny, "/proc/self/exe", []string{"worker"}, env)
	if execErr != nil || code != 0 {
		t.Fatalf("exec status %v, exit %d, output %q", execErr, code, out)
	}
	if r := parseReport(t, out); !slices.Contains(r.env, "LISTEN_PID="+strconv.Itoa(r.pid)) {
		t.Errorf("worker env %q, pid %d", r.env, r.pid)
	}
}

// A worker command execve refuses is reported as the Go trampoline
// reports it, with exit status 127.
func TestTinyTrampolineReportsExecFailure(t *testing.T) {
	tiny := tinyLauncher(t)
	dir := t.TempDir()
	notExec := filepath.Join(dir, "script")
	os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644)
	noFormat := filepath.Join(dir, "text")
	os.WriteFile(noFormat, []byte("echo no #! line\n"), 0o755)
	cases := []struct {
		path string
		want string
	}{
		{filepath.Join(dir, "missing"), "no such file or directory"},
		{notExec, "permission denied"},
		{noFormat, "exec format error"},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			var msgs []string
			for _, l := range []*Launcher{nil, tiny} {
				_, execErr, code := launch(t, l, tc.path, []string{"w"}, []string{"LISTEN_FDS=1"})
				var ee *ExecError
				if !errors.As(execErr, &ee) {
					t.Fatalf("exec status %v, want an *ExecError", execErr)
				}
				if code != ExitExecFailed {
					t.Errorf("exit %d, want %d", code, ExitExecFailed)
				}
				msgs = append(msgs, ee.Error())
			}
			want := "exec " + tc.path + ": " + tc.want
			if msgs[0] != want || msgs[1] != want {
				t.Errorf("Go trampoline says %q, tiny one %q, want %q", msgs[0], msgs[1], want)
			}
		})
	}
}

// When the memfd cannot be exec'ed after all, the worker starts through
// the Go trampoline, and so does every later one.
func TestTinyTrampolineFallsBackWhenItCannotRun(t *testing.T) {
	tiny := tinyLauncher(t)
	me := self(t)
	env := []string{workerEnv + "=1", "LISTEN_FDS=1"}
	cmd, err := tiny.Command(me, []string{"worker"}, env, 4)
	if err != nil {
		t.Fatal(err)
	}
	// What vm.memfd_noexec or an LSM would do to it.
	if err := unix.Fchmod(int(tiny.memfd.Fd()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, execErr, code := run(t, tiny, cmd, me)
	if execErr != nil || code != 0 {
		t.Fatalf("exec status %v, exit %d", execErr, code)
	}
	r := parseReport(t, out)
	if !slices.Contains(r.env, "LISTEN_PID="+strconv.Itoa(r.pid)) || r.fds != "0,1,2,3" {
		t.Errorf("worker through the fallback: fds %s, env %q", r.fds, r.env)
	}
	if err := tiny.GoFallback(); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("GoFallback after the tiny trampoline failed: %v", err)
	}
	if cmd, _ := tiny.Command(me, []string{"worker"}, env, 4); cmd.Path == tiny.path {
		t.Error("the tiny trampoline is still used after it failed")
	}
}

// Without close_range the launcher uses the Go trampoline, which still
// keeps stray fds from the worker; the tiny trampoline, if it ran anyway,
// would refuse to start the worker rather than leak them.
func TestNoCloseRangeFallsBackToGo(t *testing.T) {
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skip("no tiny trampoline")
	}
	if os.Getenv(noCloseRangeEnv) != "1" {
		cmd := exec.Command(self(t), "-test.run=^TestNoCloseRangeFallsBackToGo$", "-test.v")
		cmd.Env = append(os.Environ(), noCloseRangeEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("--- PASS")) {
			t.Fatalf("%v\n%s", err, out)
		}
		return
	}
	if unix.CloseRange(1<<32-1, 1<<32-1, unix.CLOSE_RANGE_CLOEXEC) != unix.ENOSYS {
		t.Fatal("the seccomp filter did not take")
	}
	l := NewLauncher()
	defer l.Close()
	if err := l.GoFallback(); err == nil || !strings.Contains(err.Error(), "close_range") {
		t.Fatalf("GoFallback without close_range: %v", err)
	}
	me := self(t)
	out, execErr, code := launch(t, l, me, []string{"worker"}, []string{workerEnv + "=1", "LISTEN_FDS=1"})
	if execErr != nil || code != 0 {
		t.Fatalf("exec status %v, exit %d", execErr, code)
	}
	if r := parseReport(t, out); r.fds != "0,1,2,3" || !slices.Contains(r.env, "LISTEN_PID="+strconv.Itoa(r.pid)) {
		t.Errorf("worker through the Go trampoline: fds %s, env %q", r.fds, r.env)
	}

	env, _ := withPIDSlot([]string{workerEnv + "=1", "LISTEN_FDS=1"})
	cmd := exec.Command("tramp/"+runtime.GOARCH+".bin", "4", me, "worker")
	cmd.Env = env
	_, execErr, code = run(t, nil, cmd, me)
	want := "exec " + me + ": herd's exec trampoline: close_range: function not implemented"
	if execErr == nil || execErr.Error() != want || code != ExitExecFailed {
		t.Errorf("tiny trampoline without close_range: %v, exit %d; want %q, %d", execErr, code, want, ExitExecFailed)
	}
}

func openFDs(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var fds []string
	for _, e := range ents {
		fds = append(fds, e.Name())
	}
	return fds
}

// The launcher holds one fd, its memfd, until Close; starting workers
// takes none.
func TestLauncherHoldsOneFD(t *testing.T) {
	before := len(openFDs(t))
	l := NewLauncher()
	if l.GoFallback() != nil {
		t.Skip(l.GoFallback())
	}
	me := self(t)
	for range 3 {
		launch(t, l, me, []string{"worker"}, []string{workerEnv + "=1"})
	}
	if n := len(openFDs(t)); n != before+1 {
		t.Errorf("fds with a launcher, after 3 workers: %d, before it: %d", n, before)
	}
	l.Close()
	if n := len(openFDs(t)); n != before {
		t.Errorf("fds after Close: %d, before: %d", n, before)
	}
}

// The arm64 build, run by qemu-user when it is installed: the worker (this
// amd64 test binary) gets its pid as LISTEN_PID and only its fds.
func TestTinyTrampolineARM64UnderQEMU(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("runs the arm64 build on an amd64 host")
	}
	qemu, err := exec.LookPath("qemu-aarch64-static")
	if err != nil {
		if qemu, err = exec.LookPath("qemu-aarch64"); err != nil {
			t.Skip("no qemu-aarch64")
		}
	}
	me := self(t)
	for _, tc := range []struct {
		path string
		want string
	}{{me, ""}, {"/nonexistent", "exec /nonexistent: no such file or directory"}} {
		env, _ := withPIDSlot([]string{workerEnv + "=1", "LISTEN_FDS=1"})
		cmd := exec.Command(qemu, "tramp/arm64.bin", "4", tc.path, "worker")
		cmd.Env = env
		out, execErr, code := run(t, nil, cmd, tc.path)
		if tc.want != "" {
			if execErr == nil || execErr.Error() != tc.want || code != ExitExecFailed {
				t.Errorf("exec status %v, exit %d, want %q, %d", execErr, code, tc.want, ExitExecFailed)
			}
			continue
		}
		if execErr != nil || code != 0 {
			t.Fatalf("exec status %v, exit %d", execErr, code)
		}
		r := parseReport(t, out)
		if !slices.Contains(r.env, "LISTEN_PID="+strconv.Itoa(r.pid)) || r.fds != "0,1,2,3" {
			t.Errorf("worker under qemu: fds %s, env %q", r.fds, r.env)
		}
	}
}

// BenchmarkStartExec times a worker start up to its execve (the status
// pipe closing) through each trampoline: the part of every restart the
// tiny trampoline exists to cut.
func BenchmarkStartExec(b *testing.B) {
	for _, name := range []string{"go", "tiny"} {
		b.Run(name, func(b *testing.B) {
			var l *Launcher
			if name == "tiny" {
				l = NewLauncher()
				defer l.Close()
				if err := l.GoFallback(); err != nil {
					b.Skip(err)
				}
			}
			var total time.Duration
			for b.Loop() {
				statusR, statusW, err := os.Pipe()
				if err != nil {
					b.Fatal(err)
				}
				cmd, err := l.Command("/bin/true", []string{"true"}, []string{"LISTEN_FDS=1"}, 3)
				if err != nil {
					b.Fatal(err)
				}
				cmd.ExtraFiles = []*os.File{statusW}
				t0 := time.Now()
				if cmd, err = l.Start(cmd, (*exec.Cmd).Start); err != nil {
					b.Fatal(err)
				}
				statusW.Close()
				if _, err := io.ReadAll(statusR); err != nil {
					b.Fatal(err)
				}
				total += time.Since(t0)
				statusR.Close()
				cmd.Wait()
			}
			b.ReportMetric(float64(total.Microseconds())/float64(b.N), "µs-to-exec/op")
		})
	}
}
