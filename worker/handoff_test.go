package worker

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// handoffWorker starts a worker whose connections of listener "web" are
// handed over on its channel, with the test as its primary (fakePrimary)
// past the hellos. The worker's end of the channel has a small send
// buffer, so that a few hundred kilobytes back it up whatever the
// machine's default.
func handoffWorker(t *testing.T) (*Worker, *net.UnixConn, *bufio.Reader) {
	t.Helper()
	primary, _ := fakePrimary(t, 0)
	fd, _ := strconv.Atoi(os.Getenv("HERD_IPC_FD"))
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 32<<10); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HERD_HANDOFF", "web")
	w, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	rd := bufio.NewReaderSize(primary, 1<<20)
	if line := readLine(t, primary, rd); line != `{"type":"herd.hello","v":1}` {
		t.Fatalf("worker sent %s, want its hello", line)
	}
	primary.Write([]byte(`{"type":"herd.hello","v":1,"id":0,"workers":1,"max":1048576}` + "\n"))
	return w, primary.(*net.UnixConn), rd
}

// readLine reads the worker's next line, failing the test after 10 s.
func readLine(t *testing.T, primary net.Conn, rd *bufio.Reader) string {
	t.Helper()
	primary.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := rd.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the channel: %v", err)
	}
	return strings.TrimSuffix(line, "\n")
}

// handOver does what the primary does with a connection it accepted: it
// sends herd.conn for listener "web" with the connection's descriptor,
// keeping its own copy (the returned file). It returns the client's end.
func handOver(t *testing.T, primary *net.UnixConn) (client net.Conn, mine *os.File) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	mine, err = server.(*net.TCPConn).File()
	server.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mine.Close() })
	line := []byte(`{"type":"herd.conn","listener":"web"}` + "\n")
	if _, _, err := primary.WriteMsgUnix(line, unix.UnixRights(int(mine.Fd())), nil); err != nil {
		t.Fatal(err)
	}
	return client, mine
}

type accepted struct {
	c   net.Conn
	err error
}

func acceptAsync(l net.Listener) <-chan accepted {
	out := make(chan accepted, 1)
	go func() {
		c, err := l.Accept()
		out <- accepted{c, err}
	}()
	return out
}

// A connection reaches Accept only once the worker's herd.took for it is
// in the channel's socket, even when the channel is backed up with the
// worker's own messages: until then the primary keeps its copy and gives
// the connection to another worker if this one dies, and a connection
// whose request this worker had read would reach the other one empty (a
// client waiting forever). herd.took goes ahead of the backlog, so the
// primary need not read it all first; and it is never dropped, not even
// when the worker's queue is full (Send waiting for room).
func TestTookIsWrittenBeforeTheConnectionIsServed(t *testing.T) {
	for _, tc := range []struct {
		name string
		full bool // fill the queue until Send waits; else 2 MB, half of it
	}{
		{"backed-up channel", false},
		{"full queue", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, primary, rd := handoffWorker(t)
			big := json.RawMessage(`"` + strings.Repeat("x", 64<<10) + `"`)
			var stop atomic.Bool
			var flooders sync.WaitGroup
			defer func() {
				stop.Store(true)
				primary.SetReadDeadline(time.Time{})
				go io.Copy(io.Discard, rd)
				w.Close() // a flood still waiting for room gives up
				flooders.Wait()
			}()
			// flood sends data until told to stop, or n messages; it
			// returns once Send has waited for room a while.
			flood := func(data any, n int) {
				var sent atomic.Int64
				done := make(chan struct{})
				flooders.Go(func() {
					defer close(done)
					for !stop.Load() && (n == 0 || sent.Load() < int64(n)) {
						if w.Send("fill", data) != nil {
							return
						}
						sent.Add(1)
					}
				})
				for last := int64(-1); ; last = sent.Load() {
					select {
					case <-done:
						return
					case <-time.After(200 * time.Millisecond):
					}
					if sent.Load() == last {
						return
					}
				}
			}
			if tc.full {
				// Big messages until one waits for room, then small ones
				// into what room is left: none for a herd.took.
				flood(big, 0)
				flood(nil, 0)
			} else {
				flood(big, 32)
			}
			client, _ := handOver(t, primary)
			client.Write([]byte("request"))
			acc := acceptAsync(w.Listener("web"))
			select {
			case a := <-acc:
				t.Fatalf("Accept returned %v, %v while the primary had read nothing of a backed-up channel: the connection went to the app before its herd.took was written", a.c, a.err)
			case <-time.After(300 * time.Millisecond):
			}

			// The primary reads; herd.took must come, and before most of
			// the backlog.
			stop.Store(true)
			before := 0
			for {
				primary.SetReadDeadline(time.Now().Add(2 * time.Second))
				line, err := rd.ReadString('\n')
				if err != nil {
					t.Fatalf("the worker never sent herd.took for the connection handed over (%d bytes of its own messages read, then %v)", before, err)
				}
				if line == `{"type":"herd.took"}`+"\n" {
					break
				}
				if !strings.HasPrefix(line, `{"type":"fill"`) {
					t.Fatalf("worker sent %.80s, want fill messages and herd.took", line)
				}
				before += len(line)
			}
			// The socket held 64 KB, the write at hand 256 KB at most, and
			// the rest of a message; the backlog is 2 MB or more.
			if before > 600<<10 {
				t.Errorf("herd.took came after %d bytes of the worker's backlog, want it ahead of all but a write's worth", before)
			}
			var a accepted
			select {
			case a = <-acc:
			case <-time.After(10 * time.Second):
				t.Fatal("Accept did not return the connection after herd.took was written")
			}
			if a.err != nil {
				t.Fatal(a.err)
			}
			defer a.c.Close()
			buf := make([]byte, 7)
			a.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(a.c, buf); err != nil || string(buf) != "request" {
				t.Fatalf("read %q, %v from the connection handed over", buf, err)
			}
		})
	}
}

// Once its listener is closed, the worker leaves the connections handed
// to it untaken: no herd.took, its copy closed, so that the primary gives
// them to another worker (the worker is draining, or going away) rather
// than one of them dying unserved.
func TestClosedHandoffListenerLeavesConnectionsUntaken(t *testing.T) {
	w, primary, rd := handoffWorker(t)
	l := w.Listener("web")
	l.Close()
	for i := range 3 {
		late, mine := handOver(t, primary)
		mine.Close() // as if the primary gave it to another worker
		// Declined, not taken: the primary gives it to another worker at
		// once.
		if line := readLine(t, primary, rd); line != `{"type":"herd.declined"}` {
			t.Fatalf("after its listener was closed the worker sent %s for connection %d handed over, want herd.declined", line, i+1)
		}
		late.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := late.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("connection %d: its client read %d, %v, want EOF: the worker kept its copy", i+1, n, err)
		}
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
}

// A connection the worker took (its herd.took written) is served even if
// the listener is closed before the app accepts it: Accept returns it,
// then reports the listener closed. (Once herd.took is written the
// primary has let go of it: closing it would cut its client off.)
func TestConnectionTakenBeforeCloseIsStillAccepted(t *testing.T) {
	w, primary, rd := handoffWorker(t)
	l := w.Listener("web")
	client, _ := handOver(t, primary)
	client.Write([]byte("first"))
	if line := readLine(t, primary, rd); line != `{"type":"herd.took"}` {
		t.Fatalf("worker sent %s, want herd.took", line)
	}
	l.Close()
	c, err := l.Accept()
	if err != nil {
		t.Fatalf("Accept after Close: %v, want the connection taken before it", err)
	}
	buf := make([]byte, 5)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "first" {
		t.Fatalf("read %q, %v from the connection taken before Close", buf, err)
	}
	c.Close()
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Accept after Close: %v, want net.ErrClosed", err)
	}
	if line := readLine(t, primary, rd); line != `{"type":"herd.closed","data":1}` {
		t.Fatalf("worker sent %s, want herd.closed", line)
	}
}

// A handed TCP connection keeps what net/http looks for beyond net.Conn:
// CloseWrite (a half-close after an error response, so that the client
// reads the response rather than a reset) and io.ReaderFrom (sendfile);
// and its Close is still reported (herd.closed, for least-conn).
func TestHandedConnKeepsCloseWriteAndReadFrom(t *testing.T) {
	w, primary, rd := handoffWorker(t)
	client, _ := handOver(t, primary)
	c, err := w.Listener("web").Accept()
	if err != nil {
		t.Fatal(err)
	}
	if line := readLine(t, primary, rd); line != `{"type":"herd.took"}` {
		t.Fatalf("worker sent %s, want herd.took", line)
	}
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("a handed connection (%T) has no CloseWrite", c)
	}
	rf, ok := c.(io.ReaderFrom)
	if !ok {
		t.Fatalf("a handed connection (%T) is not an io.ReaderFrom", c)
	}
	if _, err := rf.ReadFrom(bytes.NewReader([]byte("answer"))); err != nil {
		t.Fatal(err)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "answer" {
		t.Fatalf("client read %q, %v, want the answer and then EOF", got, err)
	}
	// Half-closed only: the worker still reads what the client sends.
	client.Write([]byte("more"))
	buf := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "more" {
		t.Fatalf("after CloseWrite the worker read %q, %v", buf, err)
	}
	c.Close()
	if line := readLine(t, primary, rd); line != `{"type":"herd.closed","data":1}` {
		t.Fatalf("worker sent %s, want herd.closed", line)
	}
}
