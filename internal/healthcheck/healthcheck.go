// Package healthcheck probes one worker through its listening socket, for
// health checks (--health http:/path, --health tcp) and HTTP readiness
// (--ready http:/path): an HTTP GET that must answer 2xx, or a TCP connect
// that must complete.
//
// A probe connects to the remote address and from the local address that
// sockets.Set.ProbeTarget gives for the worker's slot; in reuseport mode
// that source address is what makes the kernel hand the connection to
// that slot's socket rather than to whichever one it would pick.
//
// A probe's timeout is its context's deadline. Every error names the
// request and the socket, and what went wrong: "GET /health on worker
// socket 127.0.0.1:8080: status 503", "…: timeout after 2s".
package healthcheck

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"
)

// UserAgent is the User-Agent of every HTTP probe, so that a worker can
// tell probes from clients in its access log, or leave them out.
const UserAgent = "herd-healthcheck"

// maxDrain and drainWait bound how much of a response body HTTP reads,
// and how long it waits for it. The body is not checked; reading a health
// endpoint's short answer before closing lets the connection end with a
// FIN rather than a reset, which some servers log as an error.
const (
	maxDrain  = 4 << 10
	drainWait = 100 * time.Millisecond
)

// earliest returns t, or ctx's deadline when that comes first.
func earliest(ctx context.Context, t time.Time) time.Time {
	if d, ok := ctx.Deadline(); ok && d.Before(t) {
		return d
	}
	return t
}

// HTTP GETs path (which starts with "/" and may carry a query) on remote,
// connecting from local (nil: any address), and reports whether the
// worker answered with a 2xx status before ctx's deadline. The request
// carries "User-Agent: herd-healthcheck" and "Connection: close", and goes
// straight to remote: no proxy, no redirect is followed (a 3xx is a
// failure), no connection is reused.
func HTTP(ctx context.Context, remote, local *net.TCPAddr, path string) error {
	return HTTPChecked(ctx, remote, local, path, nil)
}

// HTTPChecked is HTTP with check called on the connection once it is
// established, before the request is sent (nil: no check). A check that
// fails ends the probe with its error, and the server sees a connection
// closed with nothing sent. Readiness uses it to make sure that the
// worker being probed is the one that took the connection.
func HTTPChecked(ctx context.Context, remote, local *net.TCPAddr, path string, check func(context.Context, net.Conn) error) error {
	p := start(ctx, "GET "+path+" on worker socket "+remote.String())
	if !strings.HasPrefix(path, "/") {
		return fmt.Errorf("%s: the path must start with /", p.op)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+remote.String()+path, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", p.op, err)
	}
	req.Header.Set("User-Agent", UserAgent)
	req.Close = true // sends "Connection: close"
	conn, err := p.dial(ctx, remote, local)
	if err != nil {
		return err
	}
	defer conn.Close()
	// The connection obeys ctx: its deadline, and cancellation.
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if check != nil {
		if err := check(ctx, conn); err != nil {
			return fmt.Errorf("%s: %w", p.op, err)
		}
	}
	if err := req.Write(conn); err != nil {
		return p.fail(ctx, err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	// Informational answers (103 Early Hints) come before the real one.
	for err == nil && resp.StatusCode >= 100 && resp.StatusCode <= 199 && resp.StatusCode != http.StatusSwitchingProtocols {
		resp, err = http.ReadResponse(br, req)
	}
	if err != nil {
		return p.fail(ctx, err)
	}
	// Only what has (nearly) arrived: a body that stalls does not hold the
	// verdict, which the status has given.
	conn.SetReadDeadline(earliest(ctx, time.Now().Add(drainWait)))
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s: status %d", p.op, resp.StatusCode)
	}
	return nil
}

// TCP connects to remote from local (nil: any address) and closes the
// connection at once; the worker is healthy when the connection is
// established before ctx's deadline.
//
// The kernel completes the handshake on a listening socket by itself and
// queues the connection for accept(2). Since herd keeps every socket
// listening across worker restarts, a TCP probe of a slot whose worker is
// down, or hung, still succeeds until that socket's accept queue is full;
// it proves the socket takes connections, not that the worker serves them.
func TCP(ctx context.Context, remote, local *net.TCPAddr) error {
	p := start(ctx, "TCP probe of worker socket "+remote.String())
	conn, err := p.dial(ctx, remote, local)
	if err != nil {
		return err
	}
	conn.Close()
	return nil
}

// probe is one probe in progress: what it does, for its errors, and how
// long it was given.
type probe struct {
	op     string
	budget time.Duration // 0: ctx has no deadline
}

func start(ctx context.Context, op string) probe {
	p := probe{op: op}
	if d, ok := ctx.Deadline(); ok {
		// To the millisecond: the timeout the caller set, less the few
		// microseconds since it set it.
		p.budget = time.Until(d).Round(time.Millisecond)
	}
	return p
}

// dial connects to remote from local within ctx.
func (p probe) dial(ctx context.Context, remote, local *net.TCPAddr) (net.Conn, error) {
	d := net.Dialer{KeepAlive: -1} // a probe is too short-lived for keepalives
	// Go may default to Multipath TCP some day; a probe is plain TCP,
	// like the workers' sockets.
	d.SetMultipathTCP(false)
	if local != nil {
		// Only when set: a nil *net.TCPAddr in the interface is not nil.
		d.LocalAddr = local
	}
	conn, err := d.DialContext(ctx, "tcp", remote.String())
	if err != nil {
		return nil, p.fail(ctx, err)
	}
	return conn, nil
}

// fail turns err, which ended the probe, into an error that says what
// failed: a timeout as "timeout after 2s", and a network error without
// the addresses p.op already names.
func (p probe) fail(ctx context.Context, err error) error {
	ctxErr := ctx.Err()
	if errors.Is(ctxErr, context.Canceled) {
		return fmt.Errorf("%s: %w", p.op, ctxErr)
	}
	// The connection's deadline is ctx's, and may pass a moment before
	// ctx's own timer fires.
	if ctxErr != nil || errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%s: %w", p.op, &TimeoutError{After: p.budget})
	}
	var op *net.OpError
	if errors.As(err, &op) {
		err = op.Err
	}
	// A reset says the same as an end of stream here: which one the probe
	// sees when the worker closes without answering depends on whether its
	// request arrived before the close.
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return fmt.Errorf("%s: connection closed before a response: %w", p.op, err)
	}
	return fmt.Errorf("%s: %w", p.op, err)
}

// TimeoutError is a probe that did not finish before its context's
// deadline. It matches context.DeadlineExceeded with errors.Is.
type TimeoutError struct {
	// After is how long the probe was given, to the millisecond.
	After time.Duration
}

// Error says how long the probe waited: "timeout after 2s".
func (e *TimeoutError) Error() string {
	return "timeout after " + e.After.String()
}

// Timeout reports true, as net.Error's timeouts do.
func (e *TimeoutError) Timeout() bool { return true }

// Unwrap returns context.DeadlineExceeded, the cause.
func (e *TimeoutError) Unwrap() error { return context.DeadlineExceeded }
