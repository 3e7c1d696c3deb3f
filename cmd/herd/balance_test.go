package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/herd-sh/herd/internal/herdtest"
)

// portApps are the unmodified servers of examples/: they bind $PORT and
// know nothing of herd.
func portApps(t *testing.T) []struct{ name, bin, file string } {
	root, _ := filepath.Abs("../..")
	return []struct{ name, bin, file string }{
		{"python", "python3", filepath.Join(root, "examples/python/port.py")},
		{"node", "node", filepath.Join(root, "examples/node/port.js")},
	}
}

// Proxy mode serves apps that only bind a port, with large bodies intact
// both ways.
func TestProxyModeServesUnmodifiedApps(t *testing.T) {
	t.Parallel()
	for _, app := range portApps(t) {
		t.Run(app.name, func(t *testing.T) {
			t.Parallel()
			if _, err := exec.LookPath(app.bin); err != nil {
				t.Skipf("%s is not installed: skipping its proxy test", app.bin)
			}
			h := startHerd(t, nil, "-w", "2", "--balance", "proxy", "-l", "127.0.0.1:0", "--", app.bin, app.file)
			waitServing(t, h, 2)
			base := "http://" + h.Addr("listen0")
			c := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			ports := map[string]bool{}
			for range 20 {
				resp, err := c.Get(base + "/")
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if !strings.HasPrefix(string(b), "hello from port ") {
					t.Fatalf("answer %q", b)
				}
				ports[strings.Fields(string(b))[3]] = true
			}
			if len(ports) != 2 {
				t.Errorf("answers came from ports %v, want both workers'", ports)
			}

			// 64 MiB up and back.
			body := make([]byte, 64<<20)
			rand.Read(body)
			resp, err := c.Post(base+"/echo", "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			got := sha256.New()
			n, err := io.Copy(got, resp.Body)
			resp.Body.Close()
			if err != nil || n != int64(len(body)) || !bytes.Equal(got.Sum(nil), sha(body)) {
				t.Fatalf("echo of 64 MiB: %d bytes back, err %v, checksum match %v", n, err, bytes.Equal(got.Sum(nil), sha(body)))
			}
			// 64 MiB down, the pattern checked byte for byte.
			const size = 64 << 20
			resp, err = c.Get(fmt.Sprintf("%s/bytes/%d", base, size))
			if err != nil {
				t.Fatal(err)
			}
			down, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || len(down) != size {
				t.Fatalf("download: %d bytes, %v", len(down), err)
			}
			for i, b := range down {
				if b != byte(i%251) {
					t.Fatalf("download byte %d is %d, want %d", i, b, i%251)
				}
			}
			h.Signal(syscall.SIGTERM)
			if code := h.Wait(20 * time.Second); code != 0 {
				t.Fatalf("exit %d", code)
			}
		})
	}
}

func sha(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

// kill -9 of a worker under load in proxy mode: no connection that starts
// after the kill fails, and none hangs, as in the hand-over modes. The
// proxy tries the next worker when one refuses, and replays to it a
// connection the dying worker reset before answering (one waiting in its
// listen queue, or accepted and not read).
func TestProxyKilledWorkerFailsNoNewConnection(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 is not installed")
	}
	app := portApps(t)[0]
	h := startHerd(t, nil, "-w", "2", "--balance", "proxy", "-l", "127.0.0.1:0", "--", app.bin, app.file)
	waitServing(t, h, 2)
	ctl := controlOf(t, h)
	for round := range 3 {
		st := waitWorkers(t, ctl, 2)
		load := herdtest.StartLoad(h.Addr("listen0"), 4, false)
		time.Sleep(300 * time.Millisecond)
		victim := st.Workers[round%2].PID
		killed := time.Now()
		syscall.Kill(victim, syscall.SIGKILL)
		time.Sleep(500 * time.Millisecond)
		r := load.Stop()
		// A request the worker had read dies with it (at most one per
		// client): the proxy passes its end on rather than run it twice.
		// None started after the kill may fail, though herd sees the exit
		// only later: until then the proxy still tries the dead worker.
		if n := r.FailedSince(killed.Add(time.Millisecond)); n > 0 {
			var when []string
			for _, at := range r.FailedAt {
				when = append(when, at.Sub(killed).String())
			}
			t.Errorf("round %d: %d requests started after the kill failed (started at %v from the kill): %v",
				round, n, when, r.Errors)
		}
		// The next round's workers are the ready ones once herd saw this exit.
		h.WaitLog(fmt.Sprintf(`pid=%d status="signal: killed"`, victim), 10*time.Second)
		if r.Failed > 4 || r.OK < 20 {
			t.Errorf("round %d: %d answers, %d failed", round, r.OK, r.Failed)
		}
		if r.Slowest > 5*time.Second {
			t.Errorf("round %d: a request took %v: stranded", round, r.Slowest)
		}
	}
}

// The hand-over examples take connections from the channel: Python with
// recv_fds, Node as net.Socket handles on its own IPC channel.
func TestHandoffExamples(t *testing.T) {
	t.Parallel()
	root, _ := filepath.Abs("../..")
	for _, app := range []struct{ name, bin, file string }{
		{"python", "python3", filepath.Join(root, "examples/python/handoff.py")},
		{"node", "node", filepath.Join(root, "examples/node/handoff.js")},
	} {
		t.Run(app.name, func(t *testing.T) {
			t.Parallel()
			if _, err := exec.LookPath(app.bin); err != nil {
				t.Skipf("%s is not installed", app.bin)
			}
			h := startHerd(t, nil, "-w", "2", "--balance", "round-robin", "-l", "127.0.0.1:0", "--", app.bin, app.file)
			waitServing(t, h, 2)
			seen := map[int]int{}
			for _, r := range replies(t, "http://"+h.Addr("listen0")+"/", 40, 4) {
				seen[r.ID]++
			}
			if seen[0] != 20 || seen[1] != 20 {
				t.Errorf("round-robin over 40 connections: %v, want 20 each", seen)
			}
			keep := herdtest.StartLoad(h.Addr("listen0"), 4, true)
			time.Sleep(300 * time.Millisecond)
			if code, _, stderr := herdCtl(t, controlOf(t, h), "reload"); code != 0 {
				t.Fatalf("reload: %s", stderr)
			}
			time.Sleep(300 * time.Millisecond)
			if r := keep.Stop(); r.Failed != 0 || r.OK < 20 {
				t.Errorf("keep-alive load over a reload: %d ok, %d failed: %v", r.OK, r.Failed, r.Errors)
			}
			h.Signal(syscall.SIGTERM)
			if code := h.Wait(20 * time.Second); code != 0 {
				t.Fatalf("exit %d", code)
			}
		})
	}
}

// In sticky mode a client without an IP (one of a Unix socket) has
// nothing to stick to: such clients go round-robin, as in proxy mode, not
// all to the one worker an empty address hashes to.
func TestStickyUnixClientsGoRoundRobin(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "app.sock")
	h := startHerd(t, nil, argv("-w", "2", "--balance", "sticky", "-l", "unix:"+sock, worker("lib"))...)
	waitServing(t, h, 2)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	per := map[int]int{}
	for range 40 {
		r, err := herdtest.Get(c, "http://unix/")
		if err != nil {
			t.Fatal(err)
		}
		per[r.ID]++
	}
	if per[0] != 20 || per[1] != 20 {
		t.Errorf("40 connections over a Unix socket landed %v, want 20 on each worker", per)
	}
}

// fromPort makes one request on a new connection from local (nil: any)
// to a proxy of portWorkers, and returns the worker port that answered.
func fromPort(t *testing.T, local *net.TCPAddr, addr string) string {
	t.Helper()
	body, err := herdtest.AskFrom(local, addr)
	if err != nil {
		t.Fatalf("request from %v: %v", local, err)
	}
	port, _, err := parsePort(body)
	if err != nil {
		t.Fatalf("request from %v: %v", local, err)
	}
	return port
}

// askPort sends one request on c and returns the port and pid of the
// portWorker that answered.
func askPort(c net.Conn, br *bufio.Reader, close bool) (port string, pid int, err error) {
	body, err := herdtest.Ask(c, br, close)
	if err != nil {
		return "", 0, err
	}
	return parsePort(body)
}

// parsePort reads the port and pid from a portWorker's answer.
func parsePort(body string) (port string, pid int, err error) {
	if _, err := fmt.Sscanf(body, "hello from port %s pid %d", &port, &pid); err != nil {
		return "", 0, fmt.Errorf("answer %q: %w", body, err)
	}
	return port, pid, nil
}

// --proxy-policy sticky: a client IP stays on one worker for 100
// requests, every client IP does, and the IPs spread over both workers.
func TestProxyPolicySticky(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, "-w", "2", "--balance", "proxy", "--proxy-policy", "sticky", "-l", "127.0.0.1:0", "--", os.Args[0], portWorkerArg)
	waitServing(t, h, 2)
	addr := h.Addr("listen0")
	client := func(i int) *net.TCPAddr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(10+i))} }
	home := fromPort(t, client(0), addr)
	for i := range 100 {
		if port := fromPort(t, client(0), addr); port != home {
			t.Fatalf("request %d from %v went to port %s, the first to %s", i, client(0).IP, port, home)
		}
	}
	ports := map[string]int{}
	for i := range 20 {
		first := fromPort(t, client(i), addr)
		ports[first]++
		for range 4 {
			if port := fromPort(t, client(i), addr); port != first {
				t.Fatalf("client %v moved from port %s to %s", client(i).IP, first, port)
			}
		}
	}
	if len(ports) != 2 {
		t.Errorf("20 client IPs landed on ports %v, want both workers'", ports)
	}
}

// --proxy-policy least-conn: while one worker holds long connections, new
// ones go to the idle worker.
func TestProxyPolicyLeastConn(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, "-w", "2", "--balance", "proxy", "--proxy-policy", "least-conn", "-l", "127.0.0.1:0", "--", os.Args[0], portWorkerArg)
	ctl := controlOf(t, h)
	waitWorkers(t, ctl, 2)
	addr := h.Addr("listen0")
	// Four long connections: two per worker (ties go round). Those of one
	// worker are closed; the other worker keeps its two.
	type held struct {
		c    net.Conn
		port string
		pid  int
	}
	per := map[string][]held{}
	for range 4 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		port, pid, err := askPort(c, bufio.NewReader(c), false)
		if err != nil {
			t.Fatal(err)
		}
		per[port] = append(per[port], held{c, port, pid})
	}
	if len(per) != 2 {
		t.Fatalf("four long connections landed on ports %v, want two per worker", per)
	}
	var busy, idle held
	for _, hs := range per {
		if len(hs) != 2 {
			t.Fatalf("four long connections landed %v, want two per worker", per)
		}
		if busy.c == nil {
			busy = hs[0]
			continue
		}
		idle = hs[0]
		for _, x := range hs {
			x.c.Close()
		}
	}
	conns := func(pid int) int {
		for _, w := range status(t, ctl).Workers {
			if w.PID == pid {
				return w.Conns
			}
		}
		return -1
	}
	if !herdtest.Eventually(10*time.Second, func() bool { return conns(idle.pid) == 0 && conns(busy.pid) == 2 }) {
		t.Fatalf("status: %+v; want 2 connections to pid %d and none to pid %d", status(t, ctl).Workers, busy.pid, idle.pid)
	}
	for i := range 20 {
		// The last request's connection is counted until the proxy has
		// seen both of its ends close: with two of them still closing,
		// the idle worker would tie with the busy one.
		if !herdtest.Eventually(10*time.Second, func() bool { return conns(idle.pid) == 0 }) {
			t.Fatalf("request %d: the idle worker's connections did not end: %+v", i, status(t, ctl).Workers)
		}
		if port := fromPort(t, nil, addr); port != idle.port {
			t.Fatalf("request %d went to port %s, want the idle worker's %s (the other holds 2 connections)", i, port, idle.port)
		}
	}
}

// readyTimes returns when herd logged each worker ready, by pid (the
// times are cut to the millisecond).
func readyTimes(t *testing.T, h *herdtest.Proc) map[int]time.Time {
	t.Helper()
	out := map[int]time.Time{}
	re := regexp.MustCompile(`^time=(\S+) .*msg="worker ready" .*pid=(\d+)`)
	for _, line := range strings.Split(h.Stderr(), "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		pid, _ := strconv.Atoi(m[2])
		out[pid] = at
	}
	return out
}

// In proxy mode a worker that is not ready gets no connection: neither a
// worker started after a kill -9 nor a reload's replacement answers
// before herd has logged it ready (--ready delay:2s: each listens at once,
// and would answer at once).
func TestProxySendsNothingToAWorkerNotReady(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, "-w", "2", "--balance", "proxy", "--ready", "delay:2s", "-l", "127.0.0.1:0", "--", os.Args[0], portWorkerArg)
	ctl := controlOf(t, h)
	first := waitWorkers(t, ctl, 2)
	addr := h.Addr("listen0")
	type answer struct {
		pid int
		at  time.Time
	}
	var (
		mu      sync.Mutex
		answers []answer
		wg      sync.WaitGroup
	)
	stop := make(chan struct{})
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(2 * time.Millisecond):
				}
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					continue
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				_, pid, err := askPort(c, bufio.NewReader(c), true)
				at := time.Now()
				c.Close()
				if err == nil {
					mu.Lock()
					answers = append(answers, answer{pid, at})
					mu.Unlock()
				}
			}
		})
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	// A worker killed: its replacement starts, and is ready 2 s later.
	victim := first.Workers[0].PID
	syscall.Kill(victim, syscall.SIGKILL)
	h.WaitLog(fmt.Sprintf(`pid=%d status="signal: killed"`, victim), 10*time.Second)
	second := waitWorkers(t, ctl, 2)
	// A reload: two replacements, each ready 2 s after it starts.
	if code, _, stderr := herdCtl(t, ctl, "reload"); code != 0 {
		t.Fatalf("reload: exit %d: %s", code, stderr)
	}
	third := waitWorkers(t, ctl, 2)
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()

	ready := readyTimes(t, h)
	newPIDs := []int{second.Workers[0].PID, third.Workers[0].PID, third.Workers[1].PID}
	served, early := map[int]int{}, map[int]int{}
	for _, a := range answers {
		at, ok := ready[a.pid]
		if !ok {
			t.Fatalf("an answer from pid %d, which herd never logged ready", a.pid)
		}
		if a.at.Before(at) {
			if early[a.pid] == 0 {
				t.Errorf("pid %d answered at %s, before herd logged it ready at %s", a.pid, a.at.Format(time.RFC3339Nano), at.Format(time.RFC3339Nano))
			}
			early[a.pid]++
		}
		served[a.pid]++
	}
	if len(early) > 0 {
		t.Errorf("answers before the worker was logged ready, by pid: %v", early)
	}
	for _, pid := range newPIDs {
		if served[pid] == 0 {
			t.Errorf("the new worker %d answered nothing once ready (answers by pid: %v)", pid, served)
		}
	}
	t.Logf("%d answers, by pid: %v", len(answers), served)
	if len(answers) < 100 {
		t.Errorf("only %d answers: the load did not run", len(answers))
	}
}

// cpuTime is the user+system CPU time pid has used (Linux /proc; clock
// ticks are 1/100 s there).
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Skipf("cannot read the primary's CPU time: %v", err)
	}
	// Fields after the command name (which may hold spaces): state is
	// field 3, utime 14, stime 15.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// Idle proxied connections cost the primary no CPU: 200 of them, each
// through to a worker, held idle for 2 s, cost less than 100 ms (a loop
// that polled them would burn the whole 2 s).
func TestProxyIdleConnectionsCostNoCPU(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	h := startHerd(t, nil, "-w", "2", "--balance", "proxy", "-l", "127.0.0.1:0", "--", os.Args[0], portWorkerArg)
	ctl := controlOf(t, h)
	waitWorkers(t, ctl, 2)
	addr := h.Addr("listen0")
	for range 200 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// One request each: the connection reaches a worker and stays
		// open (keep-alive), idle.
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, _, err := askPort(c, bufio.NewReader(c), false); err != nil {
			t.Fatal(err)
		}
	}
	open := 0
	for _, w := range status(t, ctl).Workers {
		open += w.Conns
	}
	if open != 200 {
		t.Fatalf("herd status counts %d proxied connections, want the 200 held", open)
	}
	pid := h.Cmd.Process.Pid
	time.Sleep(200 * time.Millisecond) // the requests' own work is done
	before := cpuTime(t, pid)
	time.Sleep(2 * time.Second)
	used := cpuTime(t, pid) - before
	t.Logf("the primary used %v of CPU in 2 s", used)
	if used >= 100*time.Millisecond {
		t.Errorf("the primary used %v of CPU in 2 s with 200 idle proxied connections, want less than 100 ms", used)
	}
}
