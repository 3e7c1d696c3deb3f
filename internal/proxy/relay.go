package proxy

import (
	"context"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// relay copies between client and backend both ways until both directions
// have ended, then closes both.
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
//   - when ctx ends, both connections are reset the same way.
//
// It returns the error that ended the connection, if any.
func relay(ctx context.Context, client, backend net.Conn) error {
	var (
		once  sync.Once
		cause error
	)
	abort := func(err error) {
		once.Do(func() {
			cause = err
			reset(client)
			reset(backend)
		})
	}
	stopped := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { abort(context.Cause(ctx)); close(stopped) })

	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := pipe(backend, client); err != nil {
			abort(err)
		}
	}()
	if err := pipe(client, backend); err != nil {
		abort(err)
	}
	<-done
	if !stop() {
		<-stopped // the reset has happened and its goroutine is ending
	}
	client.Close()
	backend.Close()
	return cause // every abort has returned: both goroutines are done
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
var smallBufs = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// copySmall copies up to spliceAfter bytes (a little more: a whole read)
// from src to dst. It returns io.EOF when src ended, nil when the rest is
// for io.Copy, or the error that stopped it.
func copySmall(dst, src net.Conn) error {
	sc, ok := src.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	for copied := 0; copied < spliceAfter; {
		var (
			bp   *[]byte
			n    int
			rerr error
		)
		// The buffer is taken once the socket is readable: raw.Read
		// calls back at once, and again each time the poller says so.
		if err := raw.Read(func(fd uintptr) bool {
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
			return err // the connection was closed (an abort)
		}
		switch {
		case rerr != nil:
			smallBufs.Put(bp)
			return os.NewSyscallError("read", rerr)
		case n == 0:
			smallBufs.Put(bp)
			return io.EOF
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

// reset closes c so that a TCP peer sees a reset, not an orderly end.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}
