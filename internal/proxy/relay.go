package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// session is one connection relayed by Serve: its client, the backend it
// goes to now, and, until that backend answers, what moving it to another
// backend needs (see replay).
type session struct {
	p      *Proxy
	ctx    context.Context
	client net.Conn
	pick   picker
	slot   int // the backend's slot while counted, else -1; the down side's after connect

	cur     atomic.Pointer[backendConn] // changes only by a replay, while keeping
	keeping atomic.Bool                 // no byte came from the backend yet, nor its end
	aborted atomic.Bool

	// mu orders what goes to the backend while keeping: the up side holds
	// it while it writes a chunk (kept first) or half-closes, a replay
	// while it dials and re-sends. The down side, which reads the backend,
	// takes it only when the backend failed or ended before answering, so
	// a holder blocked on the backend's flow control never waits for it.
	mu        sync.Mutex
	kept      []byte // the client's bytes so far, while keeping
	clientEOF bool   // the client half-closed
	writeErr  error  // the first failed write to the current backend, while keeping
	resends   sync.WaitGroup
}

type backendConn struct{ net.Conn }

func (s *session) backend() net.Conn { return s.cur.Load().Conn }

// setBackend makes c the backend. abort resets the backend it sees: either
// it sees c, or this sees that it ran.
func (s *session) setBackend(c net.Conn) {
	s.cur.Store(&backendConn{c})
	if s.aborted.Load() {
		reset(c)
	}
}

// relay copies between the client and the backend both ways until both
// directions have ended, then closes both.
//
// The aim is that each peer sees what it would have seen talking to the
// other directly:
//   - a direction whose reader ends cleanly (EOF) is half-closed on the
//     writing side (CloseWrite), so the peer sees EOF and may still answer;
//   - a direction that fails (a reset, a write to a peer that is gone) resets
//     both connections (SO_LINGER 0, so the kernel sends RST): a client
//     whose backend reset it mid-answer gets an error rather than a clean
//     EOF that could pass for a complete answer. Unix sockets have no RST;
//     their peer sees EOF;
//   - except that a backend that fails before its first byte in a way that
//     says it did not read all it was sent (see replayable) is replaced by
//     the next one, which gets the client's bytes from the start;
//   - when ctx ends, both connections are reset the same way.
//
// It returns the error that ended the connection, if any.
func (s *session) relay() error {
	var (
		once  sync.Once
		cause error
	)
	abort := func(err error) {
		once.Do(func() {
			cause = err
			s.aborted.Store(true)
			reset(s.client)
			reset(s.backend())
		})
	}
	stopped := make(chan struct{})
	stop := context.AfterFunc(s.ctx, func() { abort(context.Cause(s.ctx)); close(stopped) })

	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.down(); err != nil {
			abort(err)
		}
	}()
	if err := s.up(); err != nil {
		abort(err)
	}
	<-done
	s.resends.Wait()
	if !stop() {
		<-stopped // the reset has happened and its goroutine is ending
	}
	s.client.Close()
	s.backend().Close()
	return cause // every abort has returned: both goroutines are done
}

// up copies the client to the backend until the client ends, then
// half-closes the backend, as pipe does; while keeping, what it sends is
// kept too.
func (s *session) up() error {
	rc := rawOf(s.client)
	for copied := 0; copied < spliceAfter; {
		bp, n, err := readChunk(s.client, rc)
		if err == io.EOF {
			return s.clientEnded()
		}
		if err != nil {
			return err
		}
		err = s.send((*bp)[:n])
		putBuf(bp)
		if err != nil {
			return err
		}
		copied += n
	}
	s.mu.Lock() // after a re-send still running, if any
	s.stopKeeping()
	b := s.backend()
	s.mu.Unlock()
	if _, err := io.Copy(b, s.client); err != nil {
		return err
	}
	return closeWrite(b)
}

// stopKeeping ends the keeping, under mu.
func (s *session) stopKeeping() {
	s.keeping.Store(false)
	s.kept = nil
}

// send writes b to the backend. While keeping it keeps b first and writes
// under mu; a failure then is the down side's to judge (it may replay),
// unless the keeping ended meanwhile.
func (s *session) send(b []byte) error {
	s.mu.Lock()
	be := s.backend()
	if s.keeping.Load() && len(s.kept)+len(b) < keepMax {
		s.kept = append(s.kept, b...)
		_, err := be.Write(b)
		if err != nil && s.writeErr == nil {
			s.writeErr = err
		}
		return s.unlockJudged(err)
	}
	s.stopKeeping() // too much to keep: no replay
	s.mu.Unlock()
	_, err := be.Write(b)
	return err
}

// clientEnded passes the client's half-close on to the backend (and to
// any backend a replay moves to).
func (s *session) clientEnded() error {
	s.mu.Lock()
	s.clientEOF = true
	err := closeWrite(s.backend())
	return s.unlockJudged(err)
}

// unlockJudged lets go of mu, held by the up side after it wrote to the
// backend (or half-closed it), and returns err, the outcome; while keeping,
// a failure is the down side's to judge (it may replay) and it returns
// nil. Once the keeping has ended, what was kept goes.
func (s *session) unlockJudged(err error) error {
	keeping := s.keeping.Load()
	if !keeping {
		s.kept = nil
	}
	s.mu.Unlock()
	if keeping {
		return nil
	}
	return err
}

// down copies the backend to the client, as pipe does. Until the
// backend's first byte, a failure or end of the backend may move the
// connection to the next backend instead (replay).
func (s *session) down() error {
	for s.keeping.Load() {
		b := s.backend()
		bp, n, err := readChunk(b, rawOf(b))
		if err == nil {
			// Answered: from now on failures are passed on. The kept
			// bytes go now, or when the holder of mu lets go.
			s.keeping.Store(false)
			if s.mu.TryLock() {
				s.kept = nil
				s.mu.Unlock()
			}
			_, err = s.client.Write((*bp)[:n])
			putBuf(bp)
			if err != nil {
				return err
			}
			break
		}
		if !s.replay(b, err) {
			if err == io.EOF {
				return closeWrite(s.client)
			}
			return err
		}
	}
	return pipe(s.client, s.backend())
}

// replay moves the connection from b, which failed with err (io.EOF: it
// ended) before its first byte, to the next backend of the policy's
// choice, when TCP says b did not read all it was sent: a reset, met by
// the read or by an earlier write (which leaves the read an EOF). The
// kept bytes and the client's half-close, if it came, go to the new
// backend in a goroutine of their own that holds mu meanwhile, while the
// caller reads the new backend's answer. It reports false when the
// connection cannot move: an orderly end, too much sent, every backend
// tried.
func (s *session) replay(b net.Conn, err error) bool {
	s.mu.Lock()
	if err == io.EOF && s.writeErr != nil {
		err = s.writeErr
	}
	if !s.keeping.Load() || !replayable(err) || !s.pick.more() || s.ctx.Err() != nil {
		s.stopKeeping()
		s.mu.Unlock()
		return false
	}
	b.Close()
	slot := s.slot
	s.p.release(slot)
	s.slot = -1
	if ok, held := s.p.refusedLog.allow(); ok {
		s.p.log.Warn("proxy: a backend reset a connection before answering; replaying it to the next",
			"slot", slot, "err", err, "suppressed", held)
	}
	nb, slot, derr := s.p.dialNext(s.ctx, &s.pick, []error{fmt.Errorf("slot %d: %w", slot, err)})
	if derr != nil {
		s.stopKeeping()
		s.mu.Unlock()
		if s.ctx.Err() == nil {
			if ok, held := s.p.failedLog.allow(); ok {
				s.p.log.Warn("proxy: no backend took a connection; closed it",
					"client", addrString(s.client.RemoteAddr()), "err", derr, "suppressed", held)
			}
		}
		return false
	}
	s.slot = slot
	s.writeErr = nil
	s.setBackend(nb)
	kept, eof := s.kept, s.clientEOF
	s.resends.Go(func() {
		defer s.mu.Unlock()
		var err error
		if len(kept) > 0 {
			_, err = nb.Write(kept)
		}
		if err != nil {
			s.writeErr = err // the down side judges it
		} else if eof {
			closeWrite(nb)
		}
		if !s.keeping.Load() {
			s.kept = nil
		}
	})
	return true
}

// pipe copies src to dst until src ends, then half-closes dst so its peer
// sees the end too.
//
// The first spliceAfter bytes go through a buffer, the rest by io.Copy,
// which between the connections' own types moves them with splice(2)
// inside the kernel. Most connections carry a request and its answer,
// a few hundred bytes each way: for those, splice only adds work (a pipe
// from a pool, and two calls per chunk where read and write make two
// too). A bulk transfer is worth splicing, and gets there after its first
// spliceAfter bytes.
func pipe(dst, src net.Conn) error {
	if err := copySmall(dst, src); err != nil {
		if err == io.EOF {
			return closeWrite(dst)
		}
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		return err
	}
	return closeWrite(dst)
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// spliceAfter is how much of a direction goes through a buffer before
// the rest is spliced.
const spliceAfter = 64 << 10

// smallBufs are the buffers of copySmall; a connection holds one only
// while it reads into it, not while it waits (idle connections cost no
// buffer).
var smallBufs = sync.Pool{New: func() any { b := make([]byte, smallSize); return &b }}

const smallSize = 16 << 10

// keepMax bounds the client's bytes a connection keeps for a replay until
// its backend answers (see replayable): a connection whose client sent
// more before the answer is not replayed. It is spliceAfter: what is kept
// is what went through a buffer.
const keepMax = spliceAfter

// keepBufs hold the kept bytes of the requests that outgrow a small buffer.
var keepBufs = sync.Pool{New: func() any { b := make([]byte, keepMax); return &b }}

// putBuf gives b back to the pool of its size; a buffer of another size
// (cut to the bytes it keeps) is left to the collector.
func putBuf(b *[]byte) {
	switch len(*b) {
	case smallSize:
		smallBufs.Put(b)
	case keepMax:
		keepBufs.Put(b)
	}
}

// replayable reports whether err, from a backend that has sent no byte
// yet, means the connection may go to another backend with the bytes the
// client sent so far: a reset (or, when our write met it first, EPIPE)
// is what TCP sends when the backend's socket is closed with bytes of
// ours unread, or while the connection waits in its listen queue; a
// backend that read what we sent and then closed sends an orderly end
// instead (EOF), and that is passed on, never replayed.
func replayable(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNREFUSED)
}

// copySmall copies up to spliceAfter bytes (a little more: a whole read)
// from src to dst. It returns io.EOF when src ended, nil when the rest is
// for io.Copy, or the error that stopped it.
func copySmall(dst, src net.Conn) error {
	rc := rawOf(src)
	for copied := 0; copied < spliceAfter; {
		bp, n, err := readChunk(src, rc)
		if err != nil {
			return err
		}
		_, werr := dst.Write((*bp)[:n])
		smallBufs.Put(bp)
		if werr != nil {
			return werr
		}
		copied += n
	}
	return nil
}

// rawOf returns c's raw connection, for readChunk; nil if it has none.
func rawOf(c net.Conn) syscall.RawConn {
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			return rc
		}
	}
	return nil
}

// readChunk reads what c (whose raw connection is rc, or nil) has, into a
// buffer from smallBufs that the caller puts back; io.EOF when c ended.
// With rc, the buffer is taken once the socket is readable: raw.Read
// calls back at once, and again each time the poller says so.
func readChunk(c net.Conn, rc syscall.RawConn) (*[]byte, int, error) {
	if rc == nil {
		bp := smallBufs.Get().(*[]byte)
		for {
			n, err := c.Read(*bp)
			if n > 0 {
				return bp, n, nil
			}
			if err != nil {
				smallBufs.Put(bp)
				return nil, 0, err
			}
		}
	}
	var (
		bp   *[]byte
		n    int
		rerr error
	)
	if err := rc.Read(func(fd uintptr) bool {
		bp = smallBufs.Get().(*[]byte)
		for {
			n, rerr = syscall.Read(int(fd), *bp)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			smallBufs.Put(bp)
			return false
		}
		return true
	}); err != nil {
		return nil, 0, err // the connection was closed (an abort)
	}
	switch {
	case rerr != nil:
		smallBufs.Put(bp)
		return nil, 0, os.NewSyscallError("read", rerr)
	case n == 0:
		smallBufs.Put(bp)
		return nil, 0, io.EOF
	}
	return bp, n, nil
}

// reset closes c so that a TCP peer sees a reset, not an orderly end.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}
