package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"syscall"
)

// maxResponse bounds one response line the client accepts: far above any
// real one (a 1 MiB log line, escaped), low enough to stop a runaway.
const maxResponse = 64 << 20

// Call sends one request and calls onData (if not nil) for each streamed
// value; an error from onData ends the call and is returned. It returns nil
// for {"ok":true}, the server's final error as a *RemoteError (matching
// ErrRemote), an error wrapping ErrNotRunning when nothing listens at
// path, and a permission error (matching fs.ErrPermission) when the socket
// exists but we may not connect to it. Cancelling ctx closes the
// connection, which ends the request on the server too.
func Call(ctx context.Context, path, cmd string, args any, onData func(json.RawMessage) error) error {
	if err := checkPathLen(path); err != nil {
		return err
	}
	req := Request{Cmd: cmd}
	if args != nil {
		raw, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("control socket %s: encoding the arguments of %s: %w", path, cmd, err)
		}
		req.Args = raw
	}
	line, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}

	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("control socket %s: %w", path, ctx.Err())
		}
		return dialError(path, err)
	}
	c := nc.(*net.UnixConn)
	defer c.Close()
	if err := checkServer(c, path); err != nil {
		return err
	}
	// Closing wakes the reads below, and the server sees the client go.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()

	_, werr := c.Write(append(line, '\n'))
	// Even if the write failed, the server may have answered before
	// closing (a request too long, a refused peer): read what it said.
	br := bufio.NewReader(c)
	for {
		line, err := readLine(br, maxResponse, "response")
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return fmt.Errorf("control socket %s: %w", path, ctx.Err())
			case werr != nil:
				return fmt.Errorf("control socket %s: sending the request: %w", path, werr)
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
				return fmt.Errorf("control socket %s: herd closed the connection without a final answer", path)
			}
			return fmt.Errorf("control socket %s: %w", path, err)
		}
		var r struct {
			Data  json.RawMessage `json:"data"`
			OK    bool            `json:"ok"`
			Error *string         `json:"error"`
		}
		if err := json.Unmarshal(line, &r); err != nil {
			return fmt.Errorf("control socket %s: malformed response: %w", path, err)
		}
		switch {
		case r.Error != nil:
			return &RemoteError{Msg: *r.Error}
		case r.OK:
			return nil
		case r.Data == nil:
			return fmt.Errorf("control socket %s: malformed response: no data, ok or error", path)
		case onData != nil:
			if err := onData(r.Data); err != nil {
				return err
			}
		}
	}
}

func dialError(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOTDIR):
		// No file, or a stale one left by a herd that was killed.
		return fmt.Errorf("%w with control socket %s (is the name right? use --name or --control)", ErrNotRunning, path)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("control socket %s: permission denied: the herd there belongs to another user (run this as that user or as root): %w", path, err)
	}
	return fmt.Errorf("control socket %s: %w", path, err)
}

// checkServer makes sure the socket is served by our uid or root before we
// send anything: a socket planted by another user (in a /tmp/herd-UID they
// created first, say) must not get our request. Root, who may control any
// herd, talks to any.
func checkServer(c *net.UnixConn, path string) error {
	uid, err := peerUID(c)
	if err != nil {
		return fmt.Errorf("control socket %s: cannot check who serves it: %w", path, err)
	}
	if euid := os.Geteuid(); euid != 0 && !trustedUID(uid, euid) {
		return fmt.Errorf("control socket %s is served by uid %d, not by you (uid %d) or root: refusing to talk to it", path, uid, euid)
	}
	return nil
}
