package herd_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/internal/herdtest"
	"github.com/herd-sh/herd/internal/testworker"
)

// handoffCluster runs lib workers with the primary handing connections
// over in mode.
func handoffCluster(t *testing.T, mode herd.Balance, workers int) (*herd.Supervisor, string, func() error) {
	t.Helper()
	s, stop := start(t, herd.Options{
		Command: testworker.Command("lib"),
		Workers: workers,
		Listen:  []string{"127.0.0.1:0"},
		Balance: mode,
	})
	waitAllReady(t, s, workers)
	return s, s.Listeners()[0].Addr.String(), stop
}

// askFrom makes one request on a new connection from local (nil: any) and
// returns the answering worker.
func askFrom(t *testing.T, local *net.TCPAddr, addr string) herdtest.Reply {
	t.Helper()
	body, err := herdtest.AskFrom(local, addr)
	if err != nil {
		t.Fatalf("request from %v: %v", local, err)
	}
	r, err := herdtest.ParseReply(body)
	if err != nil {
		t.Fatalf("request from %v: %v", local, err)
	}
	return r
}

func roundTrip(c net.Conn, br *bufio.Reader, close bool) (herdtest.Reply, error) {
	body, err := herdtest.Ask(c, br, close)
	if err != nil {
		return herdtest.Reply{}, err
	}
	return herdtest.ParseReply(body)
}

func TestRoundRobinHandsOverInTurn(t *testing.T) {
	_, addr, stop := handoffCluster(t, herd.BalanceRoundRobin, 3)
	counts := map[int]int{}
	for range 60 {
		counts[askFrom(t, nil, addr).ID]++
	}
	for id := range 3 {
		if c := counts[id]; c < 19 || c > 21 {
			t.Errorf("round-robin over 60 connections: %v, want 20 each (±1)", counts)
			break
		}
	}
	stop()
}

func TestLeastConnGoesToTheIdleWorker(t *testing.T) {
	s, addr, stop := handoffCluster(t, herd.BalanceLeastConn, 3)
	// Six long connections spread two per worker.
	type held struct {
		c  net.Conn
		id int
	}
	var long []held
	for range 6 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		r, err := roundTrip(c, bufio.NewReader(c), false)
		if err != nil {
			t.Fatal(err)
		}
		long = append(long, held{c, r.ID})
	}
	per := map[int]int{}
	for _, h := range long {
		per[h.id]++
	}
	if per[0] != 2 || per[1] != 2 || per[2] != 2 {
		t.Fatalf("six long connections landed %v, want two per worker", per)
	}
	for _, w := range s.Workers() {
		if w.Conns != 2 {
			t.Errorf("worker %d counts %d open connections, want 2", w.ID, w.Conns)
		}
	}
	// Worker 2's are closed: it is the idle one, and gets every new
	// connection while the others hold theirs.
	for _, h := range long {
		if h.id == 2 {
			h.c.Close()
		}
	}
	if !herdtest.Eventually(10*time.Second, func() bool { return s.Workers()[2].Conns == 0 }) {
		t.Fatalf("worker 2 still has %d connections counted", s.Workers()[2].Conns)
	}
	// Each request waits for the last one's close to be reported: the
	// policy goes by the counts the workers report, and a report still on
	// its way would make worker 2 look as busy as the others.
	for i := range 10 {
		if r := askFrom(t, nil, addr); r.ID != 2 {
			t.Fatalf("request %d went to worker %d, want the idle worker 2", i, r.ID)
		}
		if !herdtest.Eventually(10*time.Second, func() bool { return s.Workers()[2].Conns == 0 }) {
			t.Fatalf("worker 2 still has %d connections counted after request %d", s.Workers()[2].Conns, i)
		}
	}
	stop()
}

func TestStickyKeepsAClientOnItsWorker(t *testing.T) {
	s, addr, stop := handoffCluster(t, herd.BalanceSticky, 3)
	client := func(i int) *net.TCPAddr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(10+i))} }
	home := map[int]int{}
	for i := range 12 {
		for j := range 10 {
			id := askFrom(t, client(i), addr).ID
			if j == 0 {
				home[i] = id
			} else if id != home[i] {
				t.Fatalf("client %d moved from worker %d to %d", i, home[i], id)
			}
		}
	}
	// 100 requests from one address stay on one worker.
	for range 100 {
		if id := askFrom(t, client(0), addr).ID; id != home[0] {
			t.Fatalf("client 0 moved from worker %d to %d", home[0], id)
		}
	}
	// Kill the worker of client 0: its clients move while it restarts,
	// nobody else does; once back, they come home.
	victim := home[0]
	syscall.Kill(s.Workers()[victim].PID, syscall.SIGKILL)
	herdtest.Eventually(5*time.Second, func() bool { return !s.Workers()[victim].Ready })
	for i := range 12 {
		id := askFrom(t, client(i), addr).ID
		if home[i] != victim && id != home[i] {
			t.Errorf("client %d of worker %d moved to %d when worker %d died", i, home[i], id, victim)
		}
	}
	waitAllReady(t, s, 3)
	for i := range 12 {
		if id := askFrom(t, client(i), addr).ID; id != home[i] {
			t.Errorf("client %d is on worker %d after the restart, want %d again", i, id, home[i])
		}
	}
	stop()
}

// A worker that stops taking connections (frozen) does not stall the
// others: once it has left a connection untaken for a moment, new ones go
// to the other worker; and the connections it holds are served once it is
// found hung, killed and replaced.
func TestStuckWorkerDoesNotStallTheOthers(t *testing.T) {
	s, addr, stop := handoffCluster(t, herd.BalanceRoundRobin, 2)
	frozen := s.Workers()[1].PID
	defer syscall.Kill(frozen, syscall.SIGCONT)
	herdtest.Freeze(t, frozen)
	// Two requests: one of them is handed to the frozen worker and waits.
	waiting := make(chan error, 2)
	connected := make(chan struct{}, 2)
	for range 2 {
		go func() {
			c, err := net.Dial("tcp", addr)
			connected <- struct{}{}
			if err != nil {
				waiting <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			_, err = roundTrip(c, bufio.NewReader(c), true)
			waiting <- err
		}()
	}
	<-connected
	<-connected
	// Once the primary has handed the frozen worker its connection (the
	// dials return as soon as the kernel has queued them, before the
	// primary accepts: on a loaded machine that can be a while), and that
	// connection has gone untaken for longer than the primary waits for a
	// take (200 ms)...
	if !herdtest.Eventually(10*time.Second, func() bool { return s.Workers()[1].Conns == 1 }) {
		t.Fatalf("the frozen worker was not handed a connection: %+v", s.Workers())
	}
	time.Sleep(500 * time.Millisecond)
	// ... new connections are served by worker 0, promptly.
	for i := range 20 {
		begin := time.Now()
		r := askFrom(t, nil, addr)
		if r.ID != 0 || time.Since(begin) > 2*time.Second {
			t.Fatalf("request %d: worker %d after %v, want worker 0 at once", i, r.ID, time.Since(begin))
		}
	}
	for range 2 {
		if err := <-waiting; err != nil {
			t.Errorf("a connection held by the frozen worker was not served: %v", err)
		}
	}
	if !herdtest.Eventually(15*time.Second, func() bool { w := s.Workers()[1]; return w.PID != frozen && w.Ready }) {
		t.Fatalf("the frozen worker was not replaced: %+v", s.Workers())
	}
	stop()
}

// kill -9 of a worker under load: no connection that reaches the primary
// after the kill fails, and none is left hanging; in every hand-over mode.
func TestKilledWorkerStrandsNoConnection(t *testing.T) {
	for _, mode := range []herd.Balance{herd.BalanceRoundRobin, herd.BalanceLeastConn, herd.BalanceSticky} {
		t.Run(string(mode), func(t *testing.T) {
			s, addr, stop := handoffCluster(t, mode, 2)
			load := herdtest.StartLoad(addr, 6, false)
			time.Sleep(300 * time.Millisecond)
			for round := range 3 {
				victim := s.Workers()[round%2].PID
				killed := time.Now()
				syscall.Kill(victim, syscall.SIGKILL)
				time.Sleep(100 * time.Millisecond)
				r := load.Stop()
				// A request the dead worker had taken dies with it (at
				// most one per client); none started after the kill may.
				if n := r.FailedSince(killed.Add(time.Millisecond)); n > 0 {
					t.Errorf("round %d: %d requests started after the kill failed: %v", round, n, r.Errors)
				}
				if r.Failed > 6 {
					t.Errorf("round %d: %d requests failed, more than the 6 in flight", round, r.Failed)
				}
				if r.Slowest > 5*time.Second {
					t.Errorf("round %d: a request took %v: stranded", round, r.Slowest)
				}
				waitAllReady(t, s, 2)
				load = herdtest.StartLoad(addr, 6, false)
				time.Sleep(300 * time.Millisecond)
			}
			load.Stop()
			stop()
		})
	}
}

// Library workers take handed connections as an ordinary net.Listener,
// and drain them on a reload like any other: no request fails.
func TestHandoffReloadFailsNothing(t *testing.T) {
	s, addr, stop := handoffCluster(t, herd.BalanceRoundRobin, 2)
	keep := herdtest.StartLoad(addr, 6, true)
	fresh := herdtest.StartLoad(addr, 3, false)
	for range 2 {
		if err := s.Reload(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	k, f := keep.Stop(), fresh.Stop()
	if k.Failed+f.Failed != 0 {
		t.Errorf("%d keep-alive and %d new-connection requests failed; first: %v %v", k.Failed, f.Failed, k.Errors, f.Errors)
	}
	if k.OK < 100 || f.OK < 100 {
		t.Errorf("only %d and %d answers", k.OK, f.OK)
	}
	stop()
}

// The primary lets go of every handed connection: after many connections
// and a worker killed mid-load, it holds no more descriptors than before.
func TestHandoffLeaksNoDescriptor(t *testing.T) {
	s, addr, stop := handoffCluster(t, herd.BalanceLeastConn, 2)
	before := openFDs(t)
	load := herdtest.StartLoad(addr, 4, false)
	time.Sleep(300 * time.Millisecond)
	syscall.Kill(s.Workers()[0].PID, syscall.SIGKILL)
	time.Sleep(300 * time.Millisecond)
	load.Stop()
	waitAllReady(t, s, 2)
	var now int
	if !herdtest.Eventually(5*time.Second, func() bool { now = openFDs(t); return now == before }) {
		t.Errorf("the primary holds %d descriptors after the load, %d before", now, before)
	}
	stop()
}

// A connection can be handed to a worker in the instant it is asked to
// stop, after the stop request on its channel (a reload switched workers
// between the primary's choice and its send; the hook makes that instant
// certain). examples/python/handoff.py, like any worker may, takes no
// connection once asked to stop. Such a connection goes to another worker
// within moments: it does not wait for the stopping worker to exit, which
// here a request it is still reading keeps running.
func TestHandoffToAStoppingWorkerGoesToAnother(t *testing.T) {
	app, _ := filepath.Abs("examples/python/handoff.py")
	handoffToAStoppingWorker(t, app, 0, 3*time.Second)
}

// A stopping worker that leaves a connection untaken without declining it
// (herd.declined) has it given to another worker after takeWithin (5 s),
// still without waiting for it to exit: here the example with its
// herd.declined taken out.
func TestHandoffToASilentStoppingWorkerGoesToAnotherLater(t *testing.T) {
	b, err := os.ReadFile("examples/python/handoff.py")
	if err != nil {
		t.Fatal(err)
	}
	const decline = `send({"type": "herd.declined", "data": declined})`
	if !bytes.Contains(b, []byte(decline)) {
		t.Fatalf("examples/python/handoff.py no longer says %s", decline)
	}
	app := filepath.Join(t.TempDir(), "silent.py")
	if err := os.WriteFile(app, bytes.ReplaceAll(b, []byte(decline), []byte("pass")), 0o644); err != nil {
		t.Fatal(err)
	}
	handoffToAStoppingWorker(t, app, 4*time.Second, 9*time.Second)
}

// handoffToAStoppingWorker runs app (a hand-over worker) and checks that a
// connection handed to it in the instant it is asked to stop is answered
// by another worker, between after and within of the stop request.
func handoffToAStoppingWorker(t *testing.T, app string, after, within time.Duration) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 is not installed")
	}
	var log herdtest.SyncBuffer
	s, stop := start(t, herd.Options{
		Command: []string{"python3", app},
		Workers: 2,
		Listen:  []string{"127.0.0.1:0"},
		Balance: herd.BalanceRoundRobin,
		Stderr:  &log,
	})
	ws := waitAllReady(t, s, 2)
	addr := s.Listeners()[0].Addr.String()

	// A request whose headers come slowly keeps its worker running after
	// it is asked to stop (handoff.py finishes what it serves).
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	io.WriteString(slow, "GET / HTTP/1.1\r\nHost: herd\r\n")
	victim := -1
	if !herdtest.Eventually(10*time.Second, func() bool {
		for _, w := range s.Workers() {
			if w.Conns == 1 {
				victim = w.ID
				return true
			}
		}
		return false
	}) {
		t.Fatalf("the slow request reached no worker: %+v", s.Workers())
	}
	old := ws[victim].PID
	trickling := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		for {
			select {
			case <-trickling:
				io.WriteString(slow, "\r\n")
				return
			case <-time.After(200 * time.Millisecond):
				io.WriteString(slow, "X-Slow: 1\r\n")
			}
		}
	}()
	defer func() {
		select {
		case <-trickling:
		default:
			close(trickling)
		}
		<-trickled
	}()

	// The next connection handed to the victim is sent only once a
	// restart of its slot has asked it to stop.
	var fired atomic.Bool
	asked := make(chan time.Time, 1)
	herd.SetGiveHook(func(slot, pid int) {
		if pid != old || !fired.CompareAndSwap(false, true) {
			return
		}
		if err := s.Restart(context.Background(), slot); err != nil {
			t.Errorf("restart of worker %d: %v", slot, err)
		}
		asked <- time.Now()
	})
	defer herd.SetGiveHook(nil)
	type answer struct {
		body string
		err  error
		at   time.Time
	}
	var askedAt time.Time
	var got answer
	for i := 0; askedAt.IsZero(); i++ {
		if i == 4 {
			t.Fatalf("round-robin handed none of 4 connections to worker %d", victim)
		}
		done := make(chan answer, 1)
		go func() {
			body, err := herdtest.AskFrom(nil, addr)
			done <- answer{body, err, time.Now()}
		}()
		select {
		case got = <-done: // the other worker's turn
			if got.err != nil {
				t.Fatal(got.err)
			}
		case askedAt = <-asked:
			select {
			case got = <-done:
			case <-time.After(within + 2*time.Second):
				got = answer{err: fmt.Errorf("no answer in %v", within+2*time.Second)}
			}
		}
	}
	if got.err != nil {
		t.Fatalf("the connection handed to the stopping worker: %v", got.err)
	}
	wait := got.at.Sub(askedAt)
	t.Logf("answered %v after the worker was asked to stop", wait)
	if wait < after || wait > within {
		t.Errorf("the connection handed to the stopping worker was answered %v after it was asked to stop, want between %v and %v", wait, after, within)
	}
	if want := fmt.Sprintf(`msg="handing the connections a stopping worker did not take to the others" worker=%d pid=%d connections=1`, victim, old); !strings.Contains(log.String(), want) {
		t.Errorf("no log line %s:\n%s", want, log.String())
	}
	if strings.Contains(got.body, fmt.Sprintf(" pid %d\n", old)) {
		t.Errorf("answered by the stopping worker %d, which took nothing after it was asked to stop: %q", old, got.body)
	}
	// The stopping worker still answers the request it was reading, then
	// exits.
	close(trickling)
	<-trickled
	slow.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(slow), nil)
	if err != nil {
		t.Fatalf("the request the stopping worker was reading: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), fmt.Sprintf(" pid %d\n", old)) {
		t.Errorf("the slow request was answered %q, want by worker pid %d", body, old)
	}
	if !herdtest.Eventually(10*time.Second, func() bool { return !herdtest.Alive(old) }) {
		t.Errorf("the stopping worker %d did not exit", old)
	}
	stop()
}
