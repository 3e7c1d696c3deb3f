package proxy

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A backend that fails before answering, in a way that TCP says it did not
// read all it was sent (a reset), is replaced by the next one, which gets
// the client's bytes from the start: the client sees nothing. These run
// with both engines (TestServeSocket).

// closeUnread closes c once bytes from its peer wait in it unread: TCP
// then resets the connection, as when a worker dies before reading.
func closeUnread(c *net.TCPConn) {
	if raw, err := c.SyscallConn(); err == nil {
		raw.Read(func(fd uintptr) bool {
			var b [1]byte
			n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			return n > 0 || err != syscall.EAGAIN
		})
	}
	c.Close()
}

// request is a payload of size random bytes behind its length.
func request(size int) (req []byte, sum string) {
	req = make([]byte, 8+size)
	binary.LittleEndian.PutUint64(req, uint64(size))
	rand.Read(req[8:])
	s := sha256.Sum256(req[8:])
	return req, hex.EncodeToString(s[:])
}

// hasher reads a request and answers "SLOT SHA256\n"; then, if its client
// half-closes, "eof\n".
func hasher(slot int) func(*net.TCPConn, <-chan struct{}) {
	return func(c *net.TCPConn, _ <-chan struct{}) {
		var n [8]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return
		}
		h := sha256.New()
		if _, err := io.CopyN(h, c, int64(binary.LittleEndian.Uint64(n[:]))); err != nil {
			return
		}
		if _, err := fmt.Fprintf(c, "%d %x\n", slot, h.Sum(nil)); err != nil {
			return
		}
		if _, err := c.Read(make([]byte, 1)); err == io.EOF {
			io.WriteString(c, "eof\n")
		}
	}
}

// logged is a Proxy logging to a buffer the test can read.
type logged struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logged) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(lockedWriter{&l.mu, &l.buf}, nil))
}

func (l *logged) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

const replayedLog = "reset a connection before answering; replaying"

func startLogged(t *testing.T, p Pool) (*running, *logged) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lg := &logged{}
	return startOn(t, l, New(p, RoundRobin, lg.logger())), lg
}

// TestReplayReset: the first backend closes with the client's bytes unread
// (a reset) before answering; the second answers, with every byte intact:
// a small request; one larger than a read, reset when half of it had come;
// and one followed by the client's half-close, reset after it.
func TestReplayReset(t *testing.T) {
	for _, tc := range []struct {
		name      string
		size      int
		halfClose bool
		resetAt   string // "first": after the first half was sent; else after all
	}{
		{"small", 200, false, ""},
		{"large", 40 << 10, false, "first"},
		{"half-close", 40 << 10, true, ""},
		{"just-under-bound", keepMax - 8 - 1, true, "first"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := make(chan struct{})
			bad := serve(t, 0, func(c *net.TCPConn, quit <-chan struct{}) {
				select {
				case <-now:
				case <-quit:
					return
				}
				closeUnread(c)
			})
			good := serve(t, 1, hasher(1))
			r, lg := startLogged(t, newPool(bad, good))
			c := dial(t, r.addr, "")
			req, sum := request(tc.size)
			half := len(req) / 2
			if _, err := c.Write(req[:half]); err != nil {
				t.Fatal(err)
			}
			if tc.resetAt == "first" {
				time.Sleep(20 * time.Millisecond)
				close(now)
				time.Sleep(20 * time.Millisecond)
			}
			if _, err := c.Write(req[half:]); err != nil {
				t.Fatal(err)
			}
			if tc.halfClose {
				if err := c.CloseWrite(); err != nil {
					t.Fatal(err)
				}
			}
			if tc.resetAt != "first" {
				time.Sleep(20 * time.Millisecond)
				close(now)
			}
			if got, want := readLine(t, c), "1 "+sum; got != want {
				t.Fatalf("answer %q, want %q", got, want)
			}
			if tc.halfClose {
				if got := readLine(t, c); got != "eof" {
					t.Errorf("after the answer %q, want the backend to have seen the half-close", got)
				}
			}
			if n := bad.accepted.Load(); n != 1 {
				t.Errorf("the resetting backend took %d connections, want 1", n)
			}
			if !strings.Contains(lg.String(), replayedLog) {
				t.Errorf("no replay logged:\n%s", lg.String())
			}
			eventually(t, "no open connections", func() bool { c.Close(); return len(r.Open()) == 0 })
		})
	}
}

// TestNoReplayAfterRead: a backend that read the request and closed (an
// orderly end, FIN) may have acted on it: the client sees the end, and the
// next backend gets nothing.
func TestNoReplayAfterRead(t *testing.T) {
	got := make(chan string, 1)
	fin := serve(t, 0, func(c *net.TCPConn, _ <-chan struct{}) {
		b := make([]byte, 5)
		io.ReadFull(c, b)
		got <- string(b)
	})
	good := serve(t, 1, hasher(1))
	r, lg := startLogged(t, newPool(fin, good))
	c := dial(t, r.addr, "")
	c.Write([]byte("hello"))
	if s := <-got; s != "hello" {
		t.Fatalf("the backend read %q", s)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("client read = %d, %v; want EOF", n, err)
	}
	time.Sleep(50 * time.Millisecond)
	if n := good.accepted.Load(); n != 0 {
		t.Errorf("the next backend took %d connections, want none", n)
	}
	if strings.Contains(lg.String(), replayedLog) {
		t.Errorf("a replay was logged:\n%s", lg.String())
	}
}

// TestReplayListenQueue: connections waiting in the listen queue of a
// backend that closes its listening socket unaccepted (a worker killed, an
// app stopping) are reset by the kernel, and go to the next backend; one
// whose client had sent nothing yet too.
func TestReplayListenQueue(t *testing.T) {
	ql, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ql.Close()
	queued := Backend{Slot: 0, Addr: ql.Addr().String()}
	good := serve(t, 1, hasher(1))
	p := &pool{bs: []Backend{queued, good.Backend}}
	r, lg := startLogged(t, p)

	// Round-robin: two of the four wait in ql's queue, two are answered.
	for i := range 4 {
		c := dial(t, r.addr, "")
		req, sum := request(300 + i)
		if i > 0 {
			c.Write(req)
		}
		defer func() {
			if i == 0 {
				c.Write(req) // once ql is closed
			}
			if got, want := readLine(t, c), "1 "+sum; got != want {
				t.Errorf("client %d: answer %q, want %q", i, got, want)
			}
		}()
	}
	eventually(t, "two connections to each backend", func() bool {
		o := r.Open()
		return o[0] == 2 && o[1] == 2
	})
	time.Sleep(50 * time.Millisecond) // the requests reach ql's queue
	ql.Close()
	eventually(t, "both queued connections replayed", func() bool { return r.Open()[0] == 0 })
	eventually(t, "the replay logged", func() bool { return strings.Contains(lg.String(), replayedLog) })
}

// TestNoReplayPastBound: a client that sent more than keepMax before any
// answer cannot be replayed: the backend's reset is passed on.
func TestNoReplayPastBound(t *testing.T) {
	const size = keepMax + 32<<10
	bad := serve(t, 0, func(c *net.TCPConn, _ <-chan struct{}) {
		io.ReadFull(c, make([]byte, size-8<<10))
		closeUnread(c)
	})
	good := serve(t, 1, hasher(1))
	r, lg := startLogged(t, newPool(bad, good))
	c := dial(t, r.addr, "")
	req, _ := request(size - 8)
	wrote := make(chan error, 1)
	go func() { _, err := c.Write(req); wrote <- err }()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client read = %v, want a reset", err)
	}
	<-wrote
	if n := good.accepted.Load(); n != 0 {
		t.Errorf("the next backend took %d connections, want none", n)
	}
	if strings.Contains(lg.String(), replayedLog) {
		t.Errorf("a replay was logged:\n%s", lg.String())
	}
}

// TestReplayBounded: when every backend resets, each is tried once and the
// client is reset.
func TestReplayBounded(t *testing.T) {
	var bads []*server
	for slot := range 3 {
		bads = append(bads, serve(t, slot, func(c *net.TCPConn, _ <-chan struct{}) { closeUnread(c) }))
	}
	r, _ := startLogged(t, newPool(bads...))
	c := dial(t, r.addr, "")
	c.Write([]byte("anyone?"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client read = %v, want a reset", err)
	}
	for _, b := range bads {
		if n := b.accepted.Load(); n != 1 {
			t.Errorf("slot %d took %d connections, want 1", b.Slot, n)
		}
	}
	eventually(t, "no open connections", func() bool { return len(r.Open()) == 0 })
}
