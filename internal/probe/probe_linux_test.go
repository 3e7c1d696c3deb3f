package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// childEnv makes the test binary act as a child process (see runChild)
// instead of running the tests.
const childEnv = "PROBE_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		runChild(mode)
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// Every child gets LISTEN_FDS sockets at fds 3.., then a gate (read end)
// and a ready pipe (write end). At each step it writes a byte on ready
// (it is at its gate, holding its sockets, waiting on none of them) and
// reads one from the gate before going on, so a test can check Accepting
// both before and after the child starts waiting.

// childFds returns the child's socket fds, its gate and its ready fd.
func childFds() (socks []int, gate, ready int) {
	k, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	for i := range k {
		socks = append(socks, 3+i)
	}
	return socks, 3 + k, 4 + k
}

// runChild is the test binary acting as a worker, in one of these modes:
//
//	netlisten  net.FileListener + Accept on every socket (epoll)
//	keep       the same, holding each connection until its client closes it
//	accept     a raw blocking accept(2) on the first socket
//	accept4    a raw blocking accept4(2) on the first socket
//	poll       x/sys unix.Poll (ppoll(2) on Linux) on [-1, first socket]
//	ppoll      unix.Ppoll on the first socket
//	select     syscall.Select (select(2) on amd64) on the first socket
//	pselect    unix.Pselect (pselect6(2)) on the first socket
//	           (each then does a non-blocking accept)
//	hold       two steps, never accepting
//	onebyone   one step per socket, listening on it after the step
//	fork       starts a netlisten child of its own group and waits for it
//	reuse      at its gate holds /dev/null at some fd; then closes it and
//	           opens an epoll instance at the same number (and nothing
//	           else), watching the first socket, and steps again
//	swap       at its gate holds a listening socket of its own; then
//	           puts it on the first socket's fd (dup2), blocks in accept
//	           there, and steps again
func runChild(mode string) {
	socks, gate, ready := childFds()
	step := func() {
		if _, err := unix.Write(ready, []byte{'r'}); err != nil {
			fail(err)
		}
		if n, err := unix.Read(gate, make([]byte, 1)); n != 1 {
			fail(fmt.Errorf("gate: %d bytes, %v", n, err))
		}
	}
	// serve accepts the connections on fd (net.FileListener: epoll) and
	// gives each to handle; closeConn closes it at once.
	closeConn := func(c net.Conn) { c.Close() }
	serve := func(fd int, handle func(net.Conn)) {
		l, err := net.FileListener(os.NewFile(uintptr(fd), "socket"))
		if err != nil {
			fail(err)
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					fail(err)
				}
				handle(c)
			}
		}()
	}
	rawAccept := func(nr uintptr) {
		if err := unix.SetNonblock(socks[0], false); err != nil {
			fail(err)
		}
		go func() {
			for {
				nfd, _, errno := syscall.Syscall6(nr, uintptr(socks[0]), 0, 0, 0, 0, 0)
				if errno != 0 {
					fail(errno)
				}
				unix.Close(int(nfd))
			}
		}()
	}
	waitIn := func(wait func(fd int) error) {
		if err := unix.SetNonblock(socks[0], true); err != nil {
			fail(err)
		}
		go func() {
			for {
				if err := wait(socks[0]); err != nil && err != unix.EINTR {
					fail(err)
				}
				if nfd, _, err := unix.Accept(socks[0]); err == nil {
					unix.Close(nfd)
				}
			}
		}()
	}
	switch mode {
	case "poll":
		step()
		waitIn(func(fd int) error {
			_, err := unix.Poll([]unix.PollFd{{Fd: -1}, {Fd: int32(fd), Events: unix.POLLIN}}, -1)
			return err
		})
	case "ppoll":
		step()
		waitIn(func(fd int) error {
			_, err := unix.Ppoll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, nil, nil)
			return err
		})
	case "select":
		step()
		waitIn(func(fd int) error {
			// syscall's Select is select(2) itself on amd64 (x/sys's
			// is pselect6), and pselect6 on arm64.
			set := new(syscall.FdSet)
			set.Bits[fd/64] |= 1 << (fd % 64)
			_, err := syscall.Select(fd+1, set, nil, nil, nil)
			return err
		})
	case "pselect":
		step()
		waitIn(func(fd int) error {
			set := new(unix.FdSet)
			set.Set(fd)
			_, err := unix.Pselect(fd+1, set, nil, nil, nil, nil)
			return err
		})
	case "netlisten":
		step()
		for _, fd := range socks {
			serve(fd, closeConn)
		}
	case "keep":
		// Like netlisten, but every connection is held until its client
		// closes it: TakenBy looks for the accepted socket.
		step()
		for _, fd := range socks {
			serve(fd, func(c net.Conn) {
				go func() {
					io.Copy(io.Discard, c)
					c.Close()
				}()
			})
		}
	case "accept":
		step()
		rawAccept(syscall.SYS_ACCEPT)
	case "accept4":
		step()
		rawAccept(syscall.SYS_ACCEPT4)
	case "hold":
		step()
		step()
	case "onebyone":
		for _, fd := range socks {
			step()
			serve(fd, closeConn)
		}
	case "reuse":
		null, err := unix.Open("/dev/null", unix.O_RDONLY, 0)
		if err != nil {
			fail(err)
		}
		step()
		unix.Close(null)
		ep, err := unix.EpollCreate1(0)
		if err != nil {
			fail(err)
		}
		if ep != null {
			fail(fmt.Errorf("epoll instance at fd %d, not at %d", ep, null))
		}
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(socks[0])}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, socks[0], &ev); err != nil {
			fail(err)
		}
		step()
	case "swap":
		own, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err == nil {
			err = unix.Bind(own, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
		}
		if err == nil {
			err = unix.Listen(own, 8)
		}
		if err != nil {
			fail(err)
		}
		step()
		if err := unix.Dup2(own, socks[0]); err != nil {
			fail(err)
		}
		rawAccept(syscall.SYS_ACCEPT4)
		step()
	case "fork":
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"=netlisten")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		for fd := 3; fd <= ready; fd++ {
			cmd.ExtraFiles = append(cmd.ExtraFiles, os.NewFile(uintptr(fd), "inherited"))
		}
		fail(cmd.Run())
	default:
		fail(fmt.Errorf("unknown mode %q", mode))
	}
	time.Sleep(time.Hour) // the test kills the group
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "probe test child:", err)
	os.Exit(1)
}

// child is a process started by a test, leading its own process group.
type child struct {
	cmd   *exec.Cmd
	gate  *os.File // write end of the child's gate
	ready *os.File // read end of the child's ready pipe
}

// pgid is the child's process group.
func (c *child) pgid() int { return c.cmd.Process.Pid }

// start runs name with args in a new process group, with socks as its fds
// 3.. and the gate and ready pipes after them. The group is killed when
// the test ends.
func start(tb testing.TB, socks []*os.File, env []string, name string, args ...string) *child {
	tb.Helper()
	gateR, gateW, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "LISTEN_FDS="+strconv.Itoa(len(socks)))
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.ExtraFiles = append(append(cmd.ExtraFiles, socks...), gateR, readyW)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	gateR.Close()
	readyW.Close()
	if err != nil {
		tb.Fatal(err)
	}
	c := &child{cmd: cmd, gate: gateW, ready: readyR}
	tb.Cleanup(func() {
		syscall.Kill(-c.pgid(), syscall.SIGKILL)
		cmd.Wait()
		gateW.Close()
		readyR.Close()
	})
	return c
}

// startGo runs the test binary as a child in mode (see runChild).
func startGo(tb testing.TB, mode string, socks ...*os.File) *child {
	tb.Helper()
	return start(tb, socks, []string{childEnv + "=" + mode}, os.Args[0], "-test.run=^$")
}

// startTool runs a program found in PATH (python3, node), or skips.
func startTool(tb testing.TB, tool string, socks []*os.File, args ...string) *child {
	tb.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		tb.Skipf("%s is not installed (%v): this detection path is untested here", tool, err)
	}
	return start(tb, socks, nil, path, args...)
}

// atGate waits until the child writes on its ready pipe.
func (c *child) atGate(tb testing.TB) {
	tb.Helper()
	c.ready.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.ready.Read(make([]byte, 1)); err != nil {
		tb.Fatalf("child %d did not reach its gate: %v", c.pgid(), err)
	}
}

// open lets the child go past its gate.
func (c *child) open(tb testing.TB) {
	tb.Helper()
	if _, err := c.gate.Write([]byte{1}); err != nil {
		tb.Fatal(err)
	}
}

// listener opens a listening socket and returns the primary's file for
// it, and its inode.
func listener(tb testing.TB) (*os.File, uint64) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	ln.Close() // f keeps the socket listening
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	ino, err := SocketInode(f)
	if err != nil {
		tb.Fatal(err)
	}
	return f, ino
}

// asker asks whether a process group is accepting: the Accepting
// function, or the Accepting method of one Watcher that a test keeps
// asking, so that what it keeps between calls is put to the test too.
type asker struct {
	name string
	pgid int
	ask  func() (bool, error)
}

// function asks the Accepting function.
func function(pgid int, inodes ...uint64) asker {
	return asker{
		name: fmt.Sprintf("Accepting(%d, %v)", pgid, inodes),
		pgid: pgid,
		ask:  func() (bool, error) { return Accepting(pgid, inodes) },
	}
}

// watcher asks one new Watcher, closed when the test ends.
func watcher(tb testing.TB, pgid int, inodes ...uint64) asker {
	w := NewWatcher(pgid, inodes)
	tb.Cleanup(w.Close)
	return asker{
		name: fmt.Sprintf("Watcher(%d, %v).Accepting", pgid, inodes),
		pgid: pgid,
		ask:  w.Accepting,
	}
}

// askers returns both: the Accepting function, and a Watcher.
func askers(tb testing.TB, pgid int, inodes ...uint64) []asker {
	return []asker{function(pgid, inodes...), watcher(tb, pgid, inodes...)}
}

// eventually polls every asker until each has reported true, for up to
// 10 s.
func eventually(tb testing.TB, askers ...asker) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, a := range askers {
		for {
			ok, err := a.ask()
			if ok {
				if err != nil {
					tb.Fatalf("%s = true with error %v", a.name, err)
				}
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("%s still false after 10 s (error %v); threads: %s", a.name, err, threadStates(a.pgid))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// never checks that every asker keeps reporting false, without error,
// for a while: for more calls than a Watcher makes between two walks of
// /proc or two readings of every fd link.
func never(tb testing.TB, askers ...asker) {
	tb.Helper()
	for range 2*max(walkEvery, relinkEvery) + 1 {
		for _, a := range askers {
			if ok, err := a.ask(); ok || err != nil {
				tb.Fatalf("%s = %v, %v; want false, nil", a.name, ok, err)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// threadStates shows what the threads of pid are blocked in, for failure
// messages and logs.
func threadStates(pid int) string {
	paths, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/syscall", pid))
	var out []string
	for _, p := range paths {
		b, _ := os.ReadFile(p)
		f := strings.Fields(string(b))
		if len(f) > 2 {
			f = f[:3]
		}
		out = append(out, strings.Join(f, " "))
	}
	return strings.Join(out, "; ")
}

// via reports which test found ino in process pid: "epoll", "threads"
// (accept, poll, select) or "".
func via(pid int, ino uint64) string {
	s := newScan(pid, []uint64{ino})
	defer s.close()
	s.left[ino] = true
	p := s.open(pid)
	if p == nil {
		return ""
	}
	s.fds(p)
	for _, fd := range s.epolls {
		s.epoll(p, fd)
	}
	if s.done() {
		return "epoll"
	}
	s.threads(p)
	if s.done() {
		return "threads"
	}
	return ""
}

// TestAccepting starts one kind of worker per case and checks that it is
// not accepting while it holds its socket at its gate, and is accepting
// soon after it starts waiting on it, by the expected path.
func TestAccepting(t *testing.T) {
	if !Supported {
		t.Fatal("Supported is false on Linux: herd would refuse --ready listen here")
	}
	cases := []struct {
		name  string
		via   string // the test that must find it
		start func(testing.TB, *os.File) *child
	}{
		{"go net.FileListener", "epoll", func(tb testing.TB, f *os.File) *child {
			return startGo(tb, "netlisten", f)
		}},
		{"go accept", "threads", func(tb testing.TB, f *os.File) *child {
			return startGo(tb, "accept", f)
		}},
		{"go accept4", "threads", func(tb testing.TB, f *os.File) *child {
			return startGo(tb, "accept4", f)
		}},
		{"go unix.Poll", "threads", func(tb testing.TB, f *os.File) *child {
			return startGo(tb, "poll", f)
		}},
		{"go ppoll", "threads", func(tb testing.TB, f *os.File) *child {
			return startGo(tb, "ppoll", f)
		}},
		{"go syscall.Select", "threads", func(tb testing.TB, f *os.File) *child {
			return startGo(tb, "select", f)
		}},
		{"go pselect6", "threads", func(tb testing.TB, f *os.File) *child {
			return startGo(tb, "pselect", f)
		}},
		{"python ThreadingHTTPServer", "threads", func(tb testing.TB, f *os.File) *child {
			return startTool(tb, "python3", []*os.File{f}, "-c", pyGate+`
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
import threading
srv = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler, bind_and_activate=False)
srv.socket.close()
srv.socket = socket.socket(fileno=3)
t = threading.Thread(target=srv.serve_forever)
t.start()
t.join()
`)
		}},
		{"python accept", "threads", func(tb testing.TB, f *os.File) *child {
			return startTool(tb, "python3", []*os.File{f}, "-c", pyGate+`
s = socket.socket(fileno=3)
s.setblocking(True)
while True:
    s.accept()[0].close()
`)
		}},
		{"python select", "threads", func(tb testing.TB, f *os.File) *child {
			return startTool(tb, "python3", []*os.File{f}, "-c", pyGate+`
import select
s = socket.socket(fileno=3)
s.setblocking(False)
while True:
    select.select([s], [], [])
    try:
        s.accept()[0].close()
    except BlockingIOError:
        pass
`)
		}},
		{"python asyncio", "epoll", func(tb testing.TB, f *os.File) *child {
			return startTool(tb, "python3", []*os.File{f}, "-c", pyGate+`
import asyncio
async def main():
    srv = await asyncio.start_server(lambda r, w: w.close(), sock=socket.socket(fileno=3))
    await srv.serve_forever()
asyncio.run(main())
`)
		}},
		{"node net.Server", "epoll", func(tb testing.TB, f *os.File) *child {
			return startTool(tb, "node", []*os.File{f}, "-e", nodeServer)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f, ino := listener(t)
			c := tc.start(t, f)
			c.atGate(t)
			a := askers(t, c.pgid(), ino)
			never(t, a...)
			c.open(t)
			eventually(t, a...)
			if got := via(c.pgid(), ino); got != tc.via {
				t.Errorf("found by %q, want %q; threads: %s", got, tc.via, threadStates(c.pgid()))
			}
			t.Logf("accepting; threads of %d: %s", c.pgid(), threadStates(c.pgid()))
		})
	}
}

// pyGate is the start of every Python child: one step at the gate.
const pyGate = `
import os, socket
os.write(5, b"r")
os.read(4, 1)
`

// nodeServer is a Node worker with one step at the gate.
const nodeServer = `
const fs = require('fs');
fs.writeSync(5, 'r');
fs.readSync(4, Buffer.alloc(1));
require('net').createServer(c => c.destroy()).listen({fd: 3});
`

// TestAcceptingExited checks that a group whose processes are gone is not
// accepting, and that this is no error.
func TestAcceptingExited(t *testing.T) {
	f, ino := listener(t)
	c := startGo(t, "netlisten", f)
	c.atGate(t)
	c.open(t)
	a := askers(t, c.pgid(), ino)
	eventually(t, a...)
	syscall.Kill(-c.pgid(), syscall.SIGKILL)
	c.cmd.Wait()
	never(t, a...)
	never(t, askers(t, 1<<23, ino)...) // above any pid_max
}

// TestAcceptingHoldOnly checks that holding a socket is not accepting.
func TestAcceptingHoldOnly(t *testing.T) {
	f, ino := listener(t)
	c := startGo(t, "hold", f)
	c.atGate(t)
	c.open(t)
	c.atGate(t) // past its first step, holding the socket for good
	never(t, askers(t, c.pgid(), ino)...)
}

// TestAcceptingAllSockets checks that a worker is accepting only once it
// waits on every socket it was given.
func TestAcceptingAllSockets(t *testing.T) {
	f1, ino1 := listener(t)
	f2, ino2 := listener(t)
	c := startGo(t, "onebyone", f1, f2)
	c.atGate(t)
	both, first, reversed := askers(t, c.pgid(), ino1, ino2), askers(t, c.pgid(), ino1), askers(t, c.pgid(), ino2, ino1)
	never(t, both...)
	c.open(t)
	c.atGate(t) // listening on the first socket only
	eventually(t, first...)
	never(t, both...)
	never(t, reversed...)
	c.open(t)
	eventually(t, both...)
	eventually(t, reversed...)
}

// TestAcceptingOtherGroup checks that a process of another group waiting
// on the socket does not make the group accepting (nor does the test
// process, which holds the socket too).
func TestAcceptingOtherGroup(t *testing.T) {
	f, ino := listener(t)
	other := startGo(t, "netlisten", f)
	holder := startGo(t, "hold", f)
	other.atGate(t)
	other.open(t)
	holder.atGate(t)
	eventually(t, askers(t, other.pgid(), ino)...)
	never(t, askers(t, holder.pgid(), ino)...)
}

// TestAcceptingGroupMember checks that a process of the group other than
// its leader counts: the leader only waits for its child, which accepts.
func TestAcceptingGroupMember(t *testing.T) {
	f, ino := listener(t)
	c := startGo(t, "fork", f)
	c.atGate(t)
	a := askers(t, c.pgid(), ino)
	never(t, a...)
	c.open(t)
	eventually(t, a...)
	if got := via(c.pgid(), ino); got != "" {
		t.Errorf("the leader itself is found accepting by %q", got)
	}
}

// skipWalk makes w's next call one that does not walk /proc (see
// walkEvery), as if it were the second.
func skipWalk(w *Watcher) {
	w.s = newScan(w.pgid, w.inodes)
	w.s.calls = 1
}

// TestWatcherChild checks that a Watcher finds a worker accepting in a
// child of its leader (sh -c running it without exec) from the leader's
// children, on a call that does not walk /proc.
func TestWatcherChild(t *testing.T) {
	f, ino := listener(t)
	c := start(t, []*os.File{f}, []string{childEnv + "=netlisten"},
		"/bin/sh", "-c", `"$0" -test.run='^$'; exit $?`, os.Args[0])
	c.atGate(t)
	c.open(t)
	eventually(t, function(c.pgid(), ino))
	if got := via(c.pgid(), ino); got != "" {
		t.Fatalf("sh itself is found accepting by %q", got)
	}
	w := NewWatcher(c.pgid(), []uint64{ino})
	defer w.Close()
	skipWalk(w)
	if ok, err := w.Accepting(); !ok || err != nil {
		t.Errorf("Watcher.Accepting = %v, %v; want true, nil", ok, err)
	}
}

// TestWatcherOrphan checks that a Watcher finds a worker accepting in a
// process of the group that no member has for a child (its parent
// exited) within walkEvery calls: only the walk of /proc names it.
func TestWatcherOrphan(t *testing.T) {
	f, ino := listener(t)
	c := start(t, []*os.File{f}, []string{childEnv + "=netlisten"},
		"/bin/sh", "-c", `("$0" -test.run='^$' &); exec sleep 3600`, os.Args[0])
	c.atGate(t)
	c.open(t)
	eventually(t, function(c.pgid(), ino))
	w := NewWatcher(c.pgid(), []uint64{ino})
	defer w.Close()
	skipWalk(w)
	foundWithin(t, w, walkEvery)
}

// foundWithin fails the test unless w says accepting within n calls.
func foundWithin(t *testing.T, w *Watcher, n int) {
	t.Helper()
	var err error
	for call := 1; call <= n; call++ {
		var ok bool
		if ok, err = w.Accepting(); ok {
			t.Logf("found on call %d", call)
			return
		}
	}
	t.Fatalf("Watcher.Accepting still false after %d calls (error %v)", n, err)
}

// TestWatcherReusedFd checks that a Watcher finds, within relinkEvery
// calls, an epoll instance opened at the number of an fd it had seen
// another file at, the process having opened or closed nothing else.
func TestWatcherReusedFd(t *testing.T) {
	f, ino := listener(t)
	c := startGo(t, "reuse", f)
	c.atGate(t)
	w := NewWatcher(c.pgid(), []uint64{ino})
	defer w.Close()
	if ok, err := w.Accepting(); ok || err != nil {
		t.Fatalf("Watcher.Accepting = %v, %v at the gate; want false, nil", ok, err)
	}
	c.open(t)
	c.atGate(t) // /dev/null's fd is an epoll instance now
	eventually(t, function(c.pgid(), ino))
	foundWithin(t, w, relinkEvery)
}

// TestWatcherReplacedSocket checks that a thread blocked in accept on the
// fd a Watcher saw the socket at does not count once another socket has
// taken that fd, although the process's fds are the same numbers.
func TestWatcherReplacedSocket(t *testing.T) {
	f, ino := listener(t)
	c := startGo(t, "swap", f)
	c.atGate(t)
	a := askers(t, c.pgid(), ino)
	never(t, a...)
	c.open(t)
	c.atGate(t)
	blockedInAccept(t, c.pgid(), 3)
	never(t, a...)
}

// blockedInAccept waits until a thread of process pid is blocked in
// accept or accept4 on fd.
func blockedInAccept(tb testing.TB, pid, fd int) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		paths, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/syscall", pid))
		for _, p := range paths {
			b, _ := os.ReadFile(p)
			if nr, args, ok := parseSyscall(b); ok && waitOf(nr) == waitAccept && args[0] == uint64(fd) {
				return
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no thread of %d blocked in accept on fd %d after 10 s; threads: %s", pid, fd, threadStates(pid))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWatcherClose checks that Close releases the fds a Watcher keeps of
// the group's processes, and that Accepting keeps none.
func TestWatcherClose(t *testing.T) {
	f, ino := listener(t)
	c := startGo(t, "hold", f)
	c.atGate(t)
	c.open(t)
	c.atGate(t) // holding the socket for good: its threads are looked at too
	kept := func() int {
		n := 0
		dir := fmt.Sprintf("/proc/%d", c.pgid())
		links, _ := filepath.Glob("/proc/self/fd/*")
		for _, l := range links {
			if target, err := os.Readlink(l); err == nil && (target == dir || strings.HasPrefix(target, dir+"/")) {
				n++
			}
		}
		return n
	}
	w := NewWatcher(c.pgid(), []uint64{ino})
	for range 3 {
		if ok, err := w.Accepting(); ok || err != nil {
			t.Fatalf("Watcher.Accepting = %v, %v; want false, nil", ok, err)
		}
	}
	if kept() == 0 {
		t.Fatalf("the Watcher keeps no fd of the group's processes: this test tests nothing")
	}
	w.Close()
	if n := kept(); n != 0 {
		t.Errorf("%d fds of the group's processes left open after Close", n)
	}
	if ok, err := Accepting(c.pgid(), []uint64{ino}); ok || err != nil {
		t.Fatalf("Accepting = %v, %v; want false, nil", ok, err)
	}
	if n := kept(); n != 0 {
		t.Errorf("%d fds of the group's processes left open by Accepting", n)
	}
}

func TestAcceptingNoInodes(t *testing.T) {
	if ok, err := Accepting(1<<23, nil); !ok || err != nil {
		t.Errorf("Accepting with no inodes = %v, %v; want true, nil", ok, err)
	}
	if ok, err := Accepting(0, []uint64{1}); ok || err == nil {
		t.Errorf("Accepting(0) = %v, %v; want false and an error", ok, err)
	}
}

func TestSocketInode(t *testing.T) {
	f, ino := listener(t)
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("socket:[%d]", ino); link != want {
		t.Errorf("SocketInode = %d, but the fd links to %s", ino, link)
	}
	file, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	if _, err := SocketInode(file); err == nil {
		t.Errorf("SocketInode of a regular file: no error")
	}
}

func TestParseSyscall(t *testing.T) {
	nr, args, ok := parseSyscall([]byte("43 0x3 0x0 0x0 0x0 0x0 0x0 0x7ffc 0x7f12\n"))
	if !ok || nr != 43 || args != [6]uint64{3} {
		t.Errorf("parseSyscall = %d, %v, %v", nr, args, ok)
	}
	for _, line := range []string{"running\n", "-1 0x7ffc 0x7f12\n", ""} {
		if _, _, ok := parseSyscall([]byte(line)); ok {
			t.Errorf("parseSyscall(%q): ok", line)
		}
	}
}

// BenchmarkAccepting measures one call for a group of one Node process:
// "ready" is answered from the leader alone; "waiting" (the worker holds
// the socket but does not listen yet) looks at every thread of the
// leader, and Accepting walks all of /proc, to prove the answer is false.
// The Watcher cases are the calls of one Watcher polling the same worker,
// as the primary does while a worker starts: it walks /proc on one call
// in walkEvery.
func BenchmarkAccepting(b *testing.B) {
	if _, err := exec.LookPath("node"); err != nil {
		b.Skip("node is not installed")
	}
	oneShot := func(pgid int, inodes []uint64) func() (bool, error) {
		return func() (bool, error) { return Accepting(pgid, inodes) }
	}
	watcher := func(pgid int, inodes []uint64) func() (bool, error) {
		w := NewWatcher(pgid, inodes)
		b.Cleanup(w.Close)
		return w.Accepting
	}
	for _, poll := range []struct {
		name string
		new  func(pgid int, inodes []uint64) func() (bool, error)
	}{{"Accepting", oneShot}, {"Watcher", watcher}} {
		b.Run(poll.name+"/ready", func(b *testing.B) {
			f, ino := listener(b)
			c := startTool(b, "node", []*os.File{f}, "-e", nodeServer)
			c.atGate(b)
			c.open(b)
			eventually(b, function(c.pgid(), ino))
			accepting := poll.new(c.pgid(), []uint64{ino})
			for b.Loop() {
				if ok, err := accepting(); !ok {
					b.Fatal(err)
				}
			}
		})
		b.Run(poll.name+"/waiting", func(b *testing.B) {
			f, ino := listener(b)
			c := startTool(b, "node", []*os.File{f}, "-e", nodeServer)
			c.atGate(b)
			accepting := poll.new(c.pgid(), []uint64{ino})
			for b.Loop() {
				if ok, err := accepting(); ok || err != nil {
					b.Fatal(ok, err)
				}
			}
			procs, _ := filepath.Glob("/proc/[0-9]*")
			b.ReportMetric(float64(len(procs)), "procs")
		})
	}
}

// dialTaken connects to the listening socket f and returns the connection
// and its two ends' addresses, as TakenBy wants them.
func dialTaken(tb testing.TB, f *os.File) (c net.Conn, server, client netip.AddrPort) {
	tb.Helper()
	ln, err := net.FileListener(f)
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c, err = net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c, c.RemoteAddr().(*net.TCPAddr).AddrPort(), c.LocalAddr().(*net.TCPAddr).AddrPort()
}

func takenWithin(d time.Duration, pgid int, server, client netip.AddrPort) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return TakenBy(ctx, pgid, server, client)
}

// TakenBy tells which of two processes accepting on one socket (an old
// worker and its replacement, in reuseport mode) took a connection, and
// waits while nobody has.
func TestTakenBy(t *testing.T) {
	t.Parallel()
	f, _ := listener(t)
	old := startGo(t, "keep", f)
	next := startGo(t, "keep", f)
	old.atGate(t)
	next.atGate(t)

	// Nobody accepts yet: the connection waits in the queue.
	_, server, client := dialTaken(t, f)
	if ok, err := takenWithin(50*time.Millisecond, next.pgid(), server, client); ok || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("TakenBy of a queued connection = %v, %v; want false and a deadline error", ok, err)
	}
	old.open(t) // only the old one accepts
	if ok, err := takenWithin(10*time.Second, next.pgid(), server, client); ok || err != nil {
		t.Errorf("TakenBy(the process that did not accept) = %v, %v; want false, nil", ok, err)
	}
	if ok, err := takenWithin(10*time.Second, old.pgid(), server, client); !ok || err != nil {
		t.Errorf("TakenBy(the process that accepted) = %v, %v; want true, nil", ok, err)
	}
}

func TestTakenByIPv6(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	f, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := startGo(t, "keep", f)
	c.atGate(t)
	c.open(t)
	_, server, client := dialTaken(t, f)
	if ok, err := takenWithin(10*time.Second, c.pgid(), server, client); !ok || err != nil {
		t.Errorf("TakenBy over IPv6 = %v, %v; want true, nil", ok, err)
	}
}

// A connection the kernel does not know is an error, not a "no".
func TestTakenByUnknownConnection(t *testing.T) {
	t.Parallel()
	server := netip.MustParseAddrPort("127.0.0.1:1")
	client := netip.MustParseAddrPort("127.0.0.1:2")
	if ok, err := takenWithin(time.Second, os.Getpid(), server, client); ok || !errors.Is(err, unix.ENOENT) {
		t.Errorf("TakenBy of no connection = %v, %v; want false and ENOENT", ok, err)
	}
}
