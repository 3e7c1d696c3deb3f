package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
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

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// server is a real TCP backend on 127.0.0.1 running handler on every
// connection; the test's cleanup closes it and waits for its goroutines.
type server struct {
	Backend
	l        net.Listener
	quit     chan struct{}
	accepted atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]bool
}

func serve(t testing.TB, slot int, handler func(c *net.TCPConn, quit <-chan struct{})) *server {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{Backend: Backend{Slot: slot, Addr: l.Addr().String()}, l: l,
		quit: make(chan struct{}), conns: map[net.Conn]bool{}}
	s.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.mu.Lock()
			s.conns[c] = true
			s.mu.Unlock()
			s.wg.Go(func() {
				defer func() {
					c.Close()
					s.mu.Lock()
					delete(s.conns, c)
					s.mu.Unlock()
				}()
				handler(c.(*net.TCPConn), s.quit)
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		close(s.quit)
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

// echo says which slot it is on a line, then echoes until EOF.
func echo(slot int) func(*net.TCPConn, <-chan struct{}) {
	return func(c *net.TCPConn, _ <-chan struct{}) {
		fmt.Fprintf(c, "%d\n", slot)
		io.Copy(c, c)
	}
}

func echoServer(t testing.TB, slot int) *server { return serve(t, slot, echo(slot)) }

// refusing returns a loopback address nothing listens on.
func refusing(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// pool is a Pool whose backends the test sets.
type pool struct {
	mu sync.Mutex
	bs []Backend
}

func newPool(servers ...*server) *pool {
	p := &pool{}
	for _, s := range servers {
		p.bs = append(p.bs, s.Backend)
	}
	return p
}

func (p *pool) Backends() []Backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bs
}

func (p *pool) set(bs ...Backend) {
	p.mu.Lock()
	p.bs = bs
	p.mu.Unlock()
}

// running is a Proxy serving a listener until the test ends.
type running struct {
	*Proxy
	l      net.Listener
	addr   string
	cancel context.CancelFunc
	done   chan error // Serve's result
}

func start(t testing.TB, p Pool, policy Policy) *running {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startOn(t, l, New(p, policy, nil))
}

// viaSockets makes startOn serve with ServeSocket (the event loops on
// Linux) instead of Serve: TestServeSocket runs the tests with it.
var viaSockets bool

func startOn(t testing.TB, l net.Listener, p *Proxy) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Proxy: p, l: l, addr: l.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	if fl, ok := l.(interface{ File() (*os.File, error) }); ok && viaSockets {
		f, err := fl.File()
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			err := p.ServeSocket(ctx, f)
			f.Close()
			l.Close() // ServeSocket serves a copy; the test's listener goes with it
			r.done <- err
		}()
	} else {
		go func() { r.done <- p.Serve(ctx, l) }()
	}
	t.Cleanup(func() {
		r.cancel()
		if err := r.wait(t); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return r
}

// wait returns Serve's result; it fails the test if Serve does not return
// within 5 s.
func (r *running) wait(t testing.TB) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // for a later wait
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
		return nil
	}
}

// dial connects to addr from the loopback address from ("" for any).
func dial(t testing.TB, addr, from string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// readLine reads one line from c within 5 s.
func readLine(t testing.TB, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var b []byte
	one := make([]byte, 1)
	for {
		if _, err := c.Read(one); err != nil {
			t.Fatalf("reading a line (have %q): %v", b, err)
		}
		if one[0] == '\n' {
			return string(b)
		}
		b = append(b, one[0])
	}
}

// slotOf connects through the proxy from the address from and returns the
// slot that answered; the connection is closed.
func slotOf(t testing.TB, addr, from string) int {
	t.Helper()
	c := dial(t, addr, from)
	defer c.Close()
	n, err := strconv.Atoi(readLine(t, c))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// held connects through the proxy and returns the connection, open, with
// the slot that answered.
func held(t testing.TB, addr string) (*net.TCPConn, int) {
	t.Helper()
	c := dial(t, addr, "")
	n, err := strconv.Atoi(readLine(t, c))
	if err != nil {
		t.Fatal(err)
	}
	return c, n
}

// eventually fails the test unless cond holds within 5 s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func needLoopbackRange(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs all of 127.0.0.0/8 on the loopback interface (Linux)")
	}
}

func TestRoundRobin(t *testing.T) {
	// Slots that are not indexes, to catch one used for the other.
	servers := []*server{echoServer(t, 3), echoServer(t, 5), echoServer(t, 7)}
	r := start(t, newPool(servers...), RoundRobin)
	got := map[int]int{}
	for range 4 * len(servers) {
		got[slotOf(t, r.addr, "")]++
	}
	for _, s := range servers {
		if got[s.Slot] != 4 {
			t.Errorf("slot %d got %d connections, want 4 (all: %v)", s.Slot, got[s.Slot], got)
		}
	}
	eventually(t, "no open connections", func() bool { return len(r.Open()) == 0 })
}

func TestLeastConn(t *testing.T) {
	s0, s1, s2 := echoServer(t, 0), echoServer(t, 1), echoServer(t, 2)
	p := newPool(s0, s1)
	r := start(t, p, LeastConn)

	// Only 0 and 1 at first: four long connections split evenly.
	got := map[int]int{}
	for range 4 {
		_, slot := held(t, r.addr)
		got[slot]++
	}
	if got[0] != 2 || got[1] != 2 {
		t.Fatalf("4 connections over slots 0 and 1 went %v, want 2 each", got)
	}
	// Slot 2 joins idle: it takes the new connections until it catches up.
	p.set(s0.Backend, s1.Backend, s2.Backend)
	for range 2 {
		if _, slot := held(t, r.addr); slot != 2 {
			t.Fatalf("a new connection went to slot %d, want the idle slot 2", slot)
		}
	}
	want := map[int]int{0: 2, 1: 2, 2: 2}
	if open := r.Open(); fmt.Sprint(open) != fmt.Sprint(want) {
		t.Errorf("Open() = %v, want %v", open, want)
	}
	// Sequential short connections with equal counts still spread.
	got = map[int]int{}
	for range 6 {
		eventually(t, "the last short connection to end", func() bool { return fmt.Sprint(r.Open()) == fmt.Sprint(want) })
		got[slotOf(t, r.addr, "")]++
	}
	if got[0] != 2 || got[1] != 2 || got[2] != 2 {
		t.Errorf("6 short connections at equal load went %v, want 2 each", got)
	}
}

func TestSticky(t *testing.T) {
	needLoopbackRange(t)
	var servers []*server
	for slot := range 4 {
		servers = append(servers, echoServer(t, slot))
	}
	p := newPool(servers...)
	r := start(t, p, Sticky)

	first := slotOf(t, r.addr, "127.0.0.2")
	for i := range 99 {
		if got := slotOf(t, r.addr, "127.0.0.2"); got != first {
			t.Fatalf("connection %d from 127.0.0.2 went to slot %d, the first to %d", i+2, got, first)
		}
	}

	clients := make([]string, 40)
	for i := range clients {
		clients[i] = fmt.Sprintf("127.0.0.%d", 10+i)
	}
	where := func() map[string]int {
		m := map[string]int{}
		for _, c := range clients {
			m[c] = slotOf(t, r.addr, c)
		}
		return m
	}
	before := where()
	used := map[int]bool{}
	for _, s := range before {
		used[s] = true
	}
	if len(used) < 3 {
		t.Errorf("40 clients used only slots %v of 4", used)
	}

	// Remove the first client's slot: only its clients move.
	gone := before[clients[0]]
	var rest []Backend
	for _, s := range servers {
		if s.Slot != gone {
			rest = append(rest, s.Backend)
		}
	}
	p.set(rest...)
	after := where()
	moved := 0
	for _, c := range clients {
		switch {
		case before[c] == gone:
			moved++
			if after[c] == gone {
				t.Errorf("client %s still went to removed slot %d", c, gone)
			}
		case after[c] != before[c]:
			t.Errorf("client %s moved from slot %d to %d though slot %d was removed", c, before[c], after[c], gone)
		}
	}
	t.Logf("removing slot %d moved %d of %d clients", gone, moved, len(clients))

	// Back again: everyone is where they were.
	p.set(newPool(servers...).bs...)
	if again := where(); fmt.Sprint(again) != fmt.Sprint(before) {
		t.Errorf("after slot %d came back clients went\n%v\nwant\n%v", gone, again, before)
	}
}

func TestSkipsRefusingBackend(t *testing.T) {
	needLoopbackRange(t)
	for _, policy := range []Policy{RoundRobin, LeastConn, Sticky} {
		t.Run(policy.String(), func(t *testing.T) {
			live := echoServer(t, 1)
			p := &pool{bs: []Backend{{Slot: 0, Addr: refusing(t)}, live.Backend, {Slot: 2, Addr: refusing(t)}}}
			r := start(t, p, policy)
			// Several client IPs, so that Sticky ranks each slot first for some.
			for i := range 12 {
				if got := slotOf(t, r.addr, fmt.Sprintf("127.0.0.%d", 2+i)); got != 1 {
					t.Fatalf("connection %d went to slot %d, want the live slot 1", i, got)
				}
			}
			eventually(t, "no open connections", func() bool { return len(r.Open()) == 0 })
		})
	}
}

// TestNoBackend: with nothing to connect to, the client is closed at once,
// with a reset.
func TestNoBackend(t *testing.T) {
	for name, bs := range map[string][]Backend{
		"empty":   nil,
		"refused": {{Slot: 0, Addr: refusing(t)}, {Slot: 1, Addr: refusing(t)}},
	} {
		t.Run(name, func(t *testing.T) {
			r := start(t, &pool{bs: bs}, RoundRobin)
			for range 20 {
				begin := time.Now()
				// On loopback the reset may come before connect returns.
				c, err := net.Dial("tcp", r.addr)
				if err == nil {
					c.SetReadDeadline(begin.Add(5 * time.Second))
					_, err = c.Read(make([]byte, 1))
					c.Close()
				}
				if !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("got %v, want a reset", err)
				}
				if d := time.Since(begin); d > time.Second {
					t.Errorf("the client waited %v", d)
				}
			}
		})
	}
}

// TestUnixClients: clients on a Unix listener have no IP; Sticky sends them
// round-robin, and with no backend they get EOF at once (Unix sockets have
// no reset).
func TestUnixClients(t *testing.T) {
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "p.sock"))
	if err != nil {
		t.Fatal(err)
	}
	p := newPool(echoServer(t, 0), echoServer(t, 1))
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r := startOn(t, l, New(p, Sticky, log))
	connect := func() net.Conn {
		c, err := net.Dial("unix", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	got := map[string]int{}
	for range 4 {
		c := connect()
		got[readLine(t, c)]++
		c.Close()
	}
	if got["0"] != 2 || got["1"] != 2 {
		t.Errorf("4 Unix clients went %v, want 2 per slot", got)
	}

	p.set()
	c := connect()
	begin := time.Now()
	c.SetReadDeadline(begin.Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("read = %v, want EOF", err)
	}
	if d := time.Since(begin); d > time.Second {
		t.Errorf("the client waited %v", d)
	}
}

// stream writes size bytes of reproducible data to w: 1 MiB random blocks,
// each starting with its index so that a lost or repeated block shows. It
// returns the data's sha256.
func stream(w io.Writer, seed uint64, size int) ([]byte, error) {
	block := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{byte(seed)}).Read(block)
	h := sha256.New()
	for i := 0; size > 0; i++ {
		binary.LittleEndian.PutUint64(block, uint64(i))
		b := block[:min(size, len(block))]
		if _, err := w.Write(b); err != nil {
			return nil, err
		}
		h.Write(b)
		size -= len(b)
	}
	return h.Sum(nil), nil
}

// TestLargeTransfer sends size bytes each way through the proxy, from a
// TCP and from a Unix client, checking both by sha256, and half-closes:
// the backend answers only after it saw the client's EOF.
func TestLargeTransfer(t *testing.T) {
	size := 64 << 20
	if testing.Short() {
		size = 8 << 20
	}
	// The backend hashes the upload to EOF, answers with its digest, then
	// sends size bytes of its own and their digest, and closes.
	b := serve(t, 0, func(c *net.TCPConn, _ <-chan struct{}) {
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			t.Errorf("backend reading the upload: %v", err)
			return
		}
		c.Write(h.Sum(nil))
		sum, err := stream(c, 2, size)
		if err != nil {
			t.Errorf("backend sending: %v", err)
			return
		}
		c.Write(sum)
	})

	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "unix" {
				addr = filepath.Join(t.TempDir(), "p.sock")
			}
			l, err := net.Listen(network, addr)
			if err != nil {
				t.Fatal(err)
			}
			startOn(t, l, New(newPool(b), RoundRobin, nil))
			c, err := net.Dial(network, l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Minute))

			sent := make(chan []byte, 1)
			go func() {
				sum, err := stream(c, 1, size)
				if err != nil {
					t.Errorf("client sending: %v", err)
				}
				// The half-close: the backend only answers after EOF.
				if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
					t.Errorf("CloseWrite: %v", err)
				}
				sent <- sum
			}()
			br := bufio.NewReaderSize(c, 1<<20)
			got := make([]byte, sha256.Size)
			if _, err := io.ReadFull(br, got); err != nil {
				t.Fatalf("reading the upload's digest: %v", err)
			}
			if want := <-sent; !bytes.Equal(got, want) {
				t.Errorf("the backend got other data than sent: sha256 %x, want %x", got, want)
			}
			h := sha256.New()
			if n, err := io.CopyN(h, br, int64(size)); err != nil {
				t.Fatalf("reading the download: %v after %d bytes", err, n)
			}
			rest, err := io.ReadAll(br)
			if err != nil {
				t.Fatalf("reading the download's digest: %v", err)
			}
			if !bytes.Equal(rest, h.Sum(nil)) {
				t.Errorf("the download arrived changed: sha256 %x, backend says %x", h.Sum(nil), rest)
			}
		})
	}
}

// TestResetPropagates: a reset on one side reaches the other as a reset,
// not as a clean end it could take for a complete answer.
func TestResetPropagates(t *testing.T) {
	t.Run("backend", func(t *testing.T) {
		b := serve(t, 0, func(c *net.TCPConn, _ <-chan struct{}) {
			fmt.Fprintf(c, "0\n")
			bufio.NewReader(c).ReadString('\n')
			c.Write([]byte("partial answ"))
			c.SetLinger(0)
			c.Close()
		})
		r := start(t, newPool(b), RoundRobin)
		c, _ := held(t, r.addr)
		c.Write([]byte("question\n"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.ReadAll(c)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client read = %v, want a reset", err)
		}
	})
	t.Run("client", func(t *testing.T) {
		readErr := make(chan error, 1)
		b := serve(t, 0, func(c *net.TCPConn, _ <-chan struct{}) {
			fmt.Fprintf(c, "0\n")
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := io.Copy(io.Discard, c)
			readErr <- err
		})
		r := start(t, newPool(b), RoundRobin)
		c, _ := held(t, r.addr)
		c.SetLinger(0)
		c.Close()
		if err := <-readErr; !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("backend read = %v, want a reset", err)
		}
	})
}

// TestSlowBackend: a backend that never reads stalls only its own
// connections.
func TestSlowBackend(t *testing.T) {
	stuck := serve(t, 0, func(c *net.TCPConn, quit <-chan struct{}) {
		fmt.Fprintf(c, "0\n")
		<-quit
	})
	r := start(t, newPool(stuck, echoServer(t, 1)), RoundRobin)

	a, slot := held(t, r.addr)
	if slot != 0 {
		t.Fatalf("first connection went to slot %d, want 0", slot)
	}
	var written atomic.Int64
	writer := make(chan struct{})
	go func() {
		defer close(writer)
		buf := make([]byte, 64<<10)
		for {
			n, err := a.Write(buf)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	defer func() { a.Close(); <-writer }()
	// Wait until every buffer from a to the stuck backend is full.
	last := int64(-1)
	eventually(t, "the writer to stall", func() bool {
		time.Sleep(100 * time.Millisecond)
		n := written.Load()
		defer func() { last = n }()
		return n > 0 && n == last
	})

	b, slot := held(t, r.addr)
	if slot != 1 {
		t.Fatalf("second connection went to slot %d, want 1", slot)
	}
	b.Write([]byte("ping\n"))
	if got := readLine(t, b); got != "ping" {
		t.Errorf("echo through slot 1 = %q, want ping", got)
	}
}

// TestCancel: when ctx ends, Serve resets what is open and returns; no
// goroutine is left (TestMain checks).
func TestCancel(t *testing.T) {
	r := start(t, newPool(echoServer(t, 0), echoServer(t, 1)), RoundRobin)
	var clients []*net.TCPConn
	for range 4 {
		c, _ := held(t, r.addr)
		clients = append(clients, c)
	}
	if n := r.Open(); n[0]+n[1] != 4 {
		t.Errorf("Open() = %v, want 4 connections", n)
	}
	r.cancel()
	if err := r.wait(t); err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
	for i, c := range clients {
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client %d read = %v, want a reset", i, err)
		}
	}
	if n := r.Open(); len(n) != 0 {
		t.Errorf("Open() = %v after Serve returned", n)
	}
	if c, err := net.Dial("tcp", r.addr); err == nil {
		c.Close()
		t.Error("the listener still accepts")
	}
}

// TestListenerClosed: closing the listener stops new connections but lets
// open ones finish; Serve returns after them.
func TestListenerClosed(t *testing.T) {
	r := start(t, newPool(echoServer(t, 0)), RoundRobin)
	c, _ := held(t, r.addr)
	r.l.Close()
	c.Write([]byte("still here\n"))
	if got := readLine(t, c); got != "still here" {
		t.Errorf("echo = %q", got)
	}
	select {
	case err := <-r.done:
		t.Fatalf("Serve returned %v with a connection open", err)
	case <-time.After(50 * time.Millisecond):
	}
	c.Close()
	if err := r.wait(t); err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
}

// failing returns err from its first n Accepts.
type failing struct {
	net.Listener
	n   atomic.Int32
	err error
}

func (l *failing) Accept() (net.Conn, error) {
	if l.n.Add(-1) >= 0 {
		return nil, l.err
	}
	return l.Listener.Accept()
}

func TestAcceptErrors(t *testing.T) {
	opErr := func(errno syscall.Errno) error {
		return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}
	}
	listen := func(errno syscall.Errno, n int32) *failing {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		f := &failing{Listener: l, err: opErr(errno)}
		f.n.Store(n)
		return f
	}

	t.Run("temporary", func(t *testing.T) {
		var logs bytes.Buffer
		var mu sync.Mutex
		log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
		l := listen(syscall.EMFILE, 3)
		r := startOn(t, l, New(newPool(echoServer(t, 4)), RoundRobin, log))
		if got := slotOf(t, r.addr, ""); got != 4 {
			t.Errorf("slot %d answered, want 4", got)
		}
		mu.Lock()
		defer mu.Unlock()
		if n := strings.Count(logs.String(), "accept failed"); n != 1 {
			t.Errorf("3 accept errors within a second logged %d times, want once:\n%s", n, logs.String())
		}
	})
	t.Run("permanent", func(t *testing.T) {
		l := listen(syscall.EINVAL, 1)
		r := startOn(t, l, New(newPool(), RoundRobin, nil))
		err := <-r.done
		r.done <- nil // for the cleanup
		if !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), r.addr) {
			t.Errorf("Serve = %v, want EINVAL naming %s", err, r.addr)
		}
	})
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w lockedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(b)
}

func TestParsePolicy(t *testing.T) {
	for _, p := range []Policy{RoundRobin, LeastConn, Sticky} {
		if got, err := ParsePolicy(p.String()); got != p || err != nil {
			t.Errorf("ParsePolicy(%q) = %v, %v", p.String(), got, err)
		}
	}
	if _, err := ParsePolicy("random"); err == nil {
		t.Error("ParsePolicy(random) succeeded")
	}
}

// TestServeSocket runs the tests that do not depend on Serve's own
// listener handling with ServeSocket, the event loops of Linux.
func TestServeSocket(t *testing.T) {
	viaSockets = true
	defer func() { viaSockets = false }()
	for _, tc := range []struct {
		name string
		test func(*testing.T)
	}{
		{"RoundRobin", TestRoundRobin},
		{"LeastConn", TestLeastConn},
		{"Sticky", TestSticky},
		{"SkipsRefusingBackend", TestSkipsRefusingBackend},
		{"NoBackend", TestNoBackend},
		{"UnixClients", TestUnixClients},
		{"LargeTransfer", TestLargeTransfer},
		{"ResetPropagates", TestResetPropagates},
		{"SlowBackend", TestSlowBackend},
		{"Cancel", TestCancel},
		{"ReplayReset", TestReplayReset},
		{"NoReplayAfterRead", TestNoReplayAfterRead},
		{"ReplayListenQueue", TestReplayListenQueue},
		{"NoReplayPastBound", TestNoReplayPastBound},
		{"ReplayBounded", TestReplayBounded},
	} {
		t.Run(tc.name, tc.test)
	}
}
