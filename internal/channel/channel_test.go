package channel

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/herd-sh/herd/internal/ipc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair returns a channel over one end of a real socket pair, and the other
// end as a plain connection.
func pair(t *testing.T, max int) (*Conn, net.Conn) {
	t.Helper()
	conns := socketPair(t)
	ch := New(conns[0], max)
	t.Cleanup(func() { ch.Close(); conns[1].Close() })
	return ch, conns[1]
}

// socketPair returns the two ends of a real socket pair.
func socketPair(t *testing.T) [2]net.Conn {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns
}

// fdPair returns channels over both ends of a socket pair: tx sends, rx
// takes the descriptors that come with the messages.
func fdPair(t *testing.T) (tx, rx *Conn) {
	t.Helper()
	ends := socketPair(t)
	tx = New(ends[0], 0)
	rx = New(ends[1], 0)
	rx.acceptFDs = true
	t.Cleanup(func() { rx.Close(); tx.Close() })
	return tx, rx
}

// numberedFiles returns n temporary files, file i holding the number i,
// closed when the test ends.
func numberedFiles(t *testing.T, n int) []*os.File {
	t.Helper()
	dir := t.TempDir()
	files := make([]*os.File, 0, n)
	for i := range n {
		f, err := os.CreateTemp(dir, "fd")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		fmt.Fprintf(f, "%d", i)
		files = append(files, f)
	}
	return files
}

// takeContent takes rx's oldest descriptor not yet taken (a herd.conn's)
// and returns what its file holds (numberedFiles), or "missing".
func takeContent(rx *Conn) string {
	fd, ok := rx.TakeFD()
	if !ok {
		return "missing"
	}
	f := os.NewFile(uintptr(fd), "got")
	defer f.Close()
	b := make([]byte, 16)
	n, _ := f.ReadAt(b, 0)
	return string(b[:n])
}

type collect struct {
	mu   sync.Mutex
	msgs []ipc.Message
	bad  []error
}

func (c *collect) Message(m ipc.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m.Data = append([]byte(nil), m.Data...)
	c.msgs = append(c.msgs, m)
}

func (c *collect) Bad(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bad = append(c.bad, err)
}

func TestSendArrivesInOrder(t *testing.T) {
	ch, peer := pair(t, 0)
	const n = 50000
	go func() {
		for i := range n {
			ch.Send(context.Background(), ipc.Message{Type: "n", Data: []byte(fmt.Sprint(i))})
		}
	}()
	sc := bufio.NewScanner(peer)
	for i := range n {
		if !sc.Scan() {
			t.Fatalf("stream ended after %d messages: %v", i, sc.Err())
		}
		want := fmt.Sprintf(`{"type":"n","data":%d}`, i)
		if sc.Text() != want {
			t.Fatalf("message %d is %q, want %q", i, sc.Text(), want)
		}
	}
}

// A peer that does not read fills the queue; then Send waits (and gives up
// with its context) instead of growing the queue.
func TestQueueIsBounded(t *testing.T) {
	ch, _ := pair(t, 1<<10)
	msg := ipc.Message{Type: "fill", Data: []byte(`"` + strings.Repeat("z", 900) + `"`)}
	sent := 0
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := ch.Send(ctx, msg)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		sent++
		if sent > 100000 {
			t.Fatal("the queue never filled")
		}
	}
	ch.mu.Lock()
	queued := len(ch.out) + ch.inflight
	ch.mu.Unlock()
	if queued > ch.limit {
		t.Fatalf("%d bytes queued, limit %d", queued, ch.limit)
	}
	if err := ch.TrySend(msg); !errors.Is(err, ErrFull) {
		t.Fatalf("TrySend on a full queue: %v", err)
	}
}

// A relay into a queue that does not drain marks the receiver stalled
// after RelayWait; later relays fail at once, until it reads again.
func TestRelayStallsAndRecovers(t *testing.T) {
	ch, peer := pair(t, 1<<10)
	msg := ipc.Message{Type: "r", Data: []byte(`"` + strings.Repeat("z", 900) + `"`)}
	for ch.TrySend(msg) == nil {
	}
	begin := time.Now()
	if err := ch.Relay(msg); !errors.Is(err, ErrStalled) {
		t.Fatalf("relay into a full queue: %v", err)
	}
	if took := time.Since(begin); took < RelayWait/2 {
		t.Fatalf("gave up after %v, before waiting for room", took)
	}
	begin = time.Now()
	if err := ch.Relay(msg); !errors.Is(err, ErrStalled) || time.Since(begin) > RelayWait/2 {
		t.Fatalf("second relay to a stalled receiver: %v after %v, want ErrStalled at once", err, time.Since(begin))
	}
	// The receiver reads everything: it is not stalled any more.
	go func() {
		buf := make([]byte, 1<<16)
		for {
			if _, err := peer.Read(buf); err != nil {
				return
			}
		}
	}()
	if !eventually(func() bool { return ch.Relay(msg) == nil }) {
		t.Fatal("relays still refused after the receiver drained its queue")
	}
}

func TestTooBigAndMalformedAreRefused(t *testing.T) {
	ch, _ := pair(t, 100)
	big := ipc.Message{Type: "b", Data: []byte(`"` + strings.Repeat("z", 200) + `"`)}
	if err := ch.TrySend(big); !errors.Is(err, ErrTooBig) {
		t.Errorf("message over the limit: %v", err)
	}
	if err := ch.TrySend(ipc.Message{Type: "b", Data: []byte(`{`)}); !errors.Is(err, ipc.ErrMalformed) {
		t.Errorf("data that is not JSON: %v", err)
	}
	// Neither left bytes behind.
	if err := ch.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestReadLoopSkipsBadLinesAndGoesOn(t *testing.T) {
	ch, peer := pair(t, 64)
	var c collect
	done := make(chan error, 1)
	go func() { done <- ch.ReadLoop(nil, &c) }()
	fmt.Fprintf(peer, "%s\n", `{"type":"a"}`)
	fmt.Fprintf(peer, "{\"type\":\"big\",\"data\":\"%s\"}\n", strings.Repeat("x", 10000))
	fmt.Fprintf(peer, "not json\n")
	fmt.Fprintf(peer, "%s\n", `{"type":"b","data":[1]}`)
	peer.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(c.msgs) != 2 || c.msgs[0].Type != "a" || c.msgs[1].Type != "b" || string(c.msgs[1].Data) != "[1]" {
		t.Errorf("messages %+v", c.msgs)
	}
	if len(c.bad) != 2 || !errors.Is(c.bad[0], ipc.ErrTooLong) || !errors.Is(c.bad[1], ipc.ErrMalformed) {
		t.Errorf("bad lines reported: %v", c.bad)
	}
}

func TestCloseWakesWaitingSenders(t *testing.T) {
	ch, _ := pair(t, 1<<10)
	msg := ipc.Message{Type: "w", Data: []byte(`"` + strings.Repeat("z", 900) + `"`)}
	for ch.TrySend(msg) == nil {
	}
	errc := make(chan error, 1)
	go func() { errc <- ch.Send(context.Background(), msg) }()
	time.Sleep(50 * time.Millisecond)
	ch.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("waiting Send after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Send still waiting after Close")
	}
}

func eventually(cond func() bool) bool {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

func BenchmarkSendOneWay(b *testing.B) {
	fds, _ := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		conns[i], _ = net.FileConn(f)
		f.Close()
	}
	tx, rx := New(conns[0], 0), New(conns[1], 0)
	defer tx.Close()
	defer rx.Close()
	got := make(chan struct{})
	counter := &countTo{n: b.N, done: got}
	go rx.ReadLoop(nil, counter)
	msg := ipc.Message{Type: "n", Data: []byte("123")}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		tx.Send(context.Background(), msg)
	}
	<-got
}

type countTo struct {
	n, seen int
	done    chan struct{}
}

func (c *countTo) Message(ipc.Message) {
	c.seen++
	if c.seen == c.n {
		close(c.done)
	}
}
func (c *countTo) Bad(error) {}

// Descriptors sent with SendConn arrive in order, each no later than its
// message, however the writes batch them.
func TestDescriptorsArriveWithTheirMessages(t *testing.T) {
	tx, rx := fdPair(t)
	const n = 300
	for i, f := range numberedFiles(t, n) {
		line := fmt.Sprintf(`{"type":"herd.conn","listener":"l%d"}`+"\n", i)
		for tx.SendConn([]byte(line), int(f.Fd()), 1<<20) != nil {
			time.Sleep(time.Millisecond)
		}
		if i%50 == 0 { // some plain messages in between
			tx.Send(context.Background(), ipc.Message{Type: "plain"})
		}
	}
	got := &fdCollector{rx: rx, want: n}
	go rx.ReadLoop(nil, got)
	select {
	case <-got.done():
	case <-time.After(10 * time.Second):
		t.Fatalf("received %d connections of %d", got.count(), n)
	}
	for i, name := range got.contents {
		if name != fmt.Sprint(i) {
			t.Fatalf("connection %d carries the descriptor of file %s", i, name)
		}
	}
}

type fdCollector struct {
	rx       *Conn
	want     int
	mu       sync.Mutex
	contents []string
	ch       chan struct{}
}

func (c *fdCollector) done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch == nil {
		c.ch = make(chan struct{})
	}
	return c.ch
}

func (c *fdCollector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.contents)
}

func (c *fdCollector) Message(m ipc.Message) {
	if m.Type != ipc.TypeConn {
		return
	}
	content := takeContent(c.rx)
	c.done()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.contents = append(c.contents, content)
	if len(c.contents) == c.want {
		close(c.ch)
	}
}

func (c *fdCollector) Bad(error) {}

// SendUrgent goes ahead of a full queue: it waits only for the write at
// hand (and the rest of its message), never fails for want of room, and
// returns once its message is in the socket.
func TestSendUrgentGoesAheadOfTheQueue(t *testing.T) {
	ch, peer := pair(t, 0)
	ch.raw.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 32<<10) })
	big := ipc.Message{Type: "fill", Data: []byte(`"` + strings.Repeat("x", 64<<10) + `"`)}
	queued := 0
	for _, m := range []ipc.Message{big, {Type: "fill"}} { // full to the byte
		for ch.TrySend(m) == nil {
			queued++
		}
	}
	if err := ch.TrySend(ipc.Message{Type: ipc.TypeTook}); !errors.Is(err, ErrFull) {
		t.Fatalf("TrySend on a full queue: %v", err)
	}
	sent := make(chan error, 1)
	go func() { sent <- ch.SendUrgent(context.Background(), ipc.Message{Type: ipc.TypeTook}) }()
	select {
	case err := <-sent:
		t.Fatalf("SendUrgent returned %v while the peer read nothing of a full socket", err)
	case <-time.After(200 * time.Millisecond):
	}
	rd := bufio.NewReaderSize(peer, 1<<20)
	before, fills := 0, 0
	for {
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("the urgent message never came (%d bytes read): %v", before, err)
		}
		if line == `{"type":"herd.took"}`+"\n" {
			break
		}
		before += len(line)
		fills++
	}
	if before > 600<<10 {
		t.Errorf("the urgent message came after %d bytes of the queue", before)
	}
	select {
	case err := <-sent:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("SendUrgent did not return once its message was read")
	}
	for fills < queued { // the rest, whole and in order
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("after %d of %d messages: %v", fills, queued, err)
		}
		if !strings.HasPrefix(line, `{"type":"fill"`) {
			t.Fatalf("message %d is %.60q", fills, line)
		}
		fills++
	}
}

// Urgent messages go in between the others only at message boundaries:
// with senders of every kind at once (Send of all sizes, SendConn with
// descriptors, SendUrgent) and a slow reader, every line arrives whole, in
// its sender's order, each descriptor no later than its message.
func TestUrgentMessagesKeepTheStreamWhole(t *testing.T) {
	tx, rx := fdPair(t)
	tx.raw.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 32<<10) })

	const plain, urgent, conns = 1000, 300, 150
	files := numberedFiles(t, conns)
	got := &streamCheck{rx: rx, done: make(chan struct{}), want: plain + urgent + conns}
	go rx.ReadLoop(nil, got)
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range plain {
			pad := strings.Repeat("p", (i*7919)%(32<<10))
			tx.Send(context.Background(), ipc.Message{Type: "p", Data: []byte(fmt.Sprintf(`[%d,"%s"]`, i, pad))})
		}
	})
	wg.Go(func() {
		for i := range urgent {
			if err := tx.SendUrgent(context.Background(), ipc.Message{Type: "u", Data: []byte(fmt.Sprint(i))}); err != nil {
				t.Error(err)
				return
			}
			if i%10 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	})
	wg.Go(func() {
		for i, f := range files {
			line := fmt.Sprintf(`{"type":"herd.conn","listener":"%d"}`+"\n", i)
			for tx.SendConn([]byte(line), int(f.Fd()), 1<<20) != nil {
				time.Sleep(time.Millisecond)
			}
			if i%5 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	})
	wg.Wait()
	deadline := time.After(30 * time.Second)
	for {
		if bad := got.errs(); len(bad) > 0 {
			t.Fatalf("%d lines are wrong, the first: %v", len(bad), bad[0])
		}
		select {
		case <-got.done:
			return
		case <-deadline:
			t.Fatalf("received %d messages of %d", got.count(), got.want)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// streamCheck checks each sender's order and each herd.conn's descriptor.
type streamCheck struct {
	rx   *Conn
	want int
	done chan struct{}

	mu      sync.Mutex
	n       int
	p, u, c int // the next of each sender
	bad     []error
}

func (s *streamCheck) errs() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]error(nil), s.bad...)
}

func (s *streamCheck) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

func (s *streamCheck) Message(m ipc.Message) {
	if s.n%200 == 0 {
		time.Sleep(2 * time.Millisecond) // a slow reader: the queue backs up
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	switch m.Type {
	case "p":
		var v []any
		if json.Unmarshal(m.Data, &v) != nil || len(v) != 2 || v[0] != float64(s.p) {
			err = fmt.Errorf("plain message %.40s, want number %d", m.Data, s.p)
		}
		s.p++
	case "u":
		if string(m.Data) != fmt.Sprint(s.u) {
			err = fmt.Errorf("urgent message %s, want %d", m.Data, s.u)
		}
		s.u++
	case ipc.TypeConn:
		content := takeContent(s.rx)
		if m.Listener != fmt.Sprint(s.c) || content != m.Listener {
			err = fmt.Errorf("connection %s (want %d) carries descriptor %s", m.Listener, s.c, content)
		}
		s.c++
	default:
		err = fmt.Errorf("unexpected message %+v", m)
	}
	if err != nil {
		s.bad = append(s.bad, err)
	}
	s.n++
	if s.n == s.want {
		close(s.done)
	}
}

func (s *streamCheck) Bad(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bad = append(s.bad, err)
}

// gated is a handler that holds each message until the test lets it go.
type gated struct {
	got  chan string
	gate chan struct{}
}

func (g *gated) Message(m ipc.Message) {
	g.got <- m.Type
	<-g.gate
}

func (g *gated) Bad(error) {}

// TestIdleMeansEverythingSentWasHandled checks Idle, which the primary's
// readiness probe uses to tell whether a worker's hello could still be on
// its way: false before the read loop runs, and from the moment a message
// is sent until its handler has returned.
func TestIdleMeansEverythingSentWasHandled(t *testing.T) {
	ch, peer := pair(t, 0)
	if ch.Idle() {
		t.Fatal("idle before the read loop started")
	}
	g := &gated{got: make(chan string), gate: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- ch.ReadLoop(nil, g) }()
	if !eventually(ch.Idle) {
		t.Fatal("not idle with the read loop waiting and nothing sent")
	}
	fmt.Fprintf(peer, "%s\n", `{"type":"herd.hello"}`)
	if typ := <-g.got; typ != "herd.hello" {
		t.Fatalf("handled %q", typ)
	}
	if ch.Idle() {
		t.Error("idle while the handler of the message runs")
	}
	close(g.gate)
	if !eventually(ch.Idle) {
		t.Error("not idle after the message was handled")
	}
	peer.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
