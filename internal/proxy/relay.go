package proxy

import (
	"context"
	"io"
	"net"
	"sync"
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
// sees the end too. io.Copy gets the connections' own types, so that it
// can splice.
func pipe(dst, src net.Conn) error {
	if _, err := io.Copy(dst, src); err != nil {
		return err
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
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
