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
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultMaxRequest is the request line limit when Server.MaxRequest is 0.
const DefaultMaxRequest = 2 << 20

const (
	// requestTimeout lets go of a client that connects and never sends
	// its request (a stuck or hand-driven client).
	requestTimeout = 10 * time.Second
	// closeGrace is how long a final line may take to get out when the
	// server stops or a peer is turned away, so that a client that does not
	// read cannot hold a connection open.
	closeGrace = time.Second
)

// Handler serves one request. It calls reply for each streamed data value
// (reply returns an error once the client is gone, the server is stopping
// or the handler has returned; it may be called from several goroutines)
// and returns the final error, nil for {"ok":true}. ctx ends when the
// client disconnects or the server closes; the handler must then return
// promptly, because Serve waits for it.
type Handler func(ctx context.Context, req Request, reply func(v any) error) error

// Server is a listening control socket. Set its fields before Serve.
type Server struct {
	// MaxRequest limits the request line, newline excluded;
	// 0 means DefaultMaxRequest.
	MaxRequest int
	// OnRefused, if set, is called with the uid of every peer turned away
	// because it is neither the server's uid nor root (to log it). It runs
	// on the connection's goroutine.
	OnRefused func(uid int)
	// OnPanic, if set, is called when a handler panics, with the command,
	// the panic value and the stack (to log it). The client gets an error
	// and the server goes on.
	OnPanic func(cmd string, v any, stack []byte)

	path string
	ln   *net.UnixListener
	fi   os.FileInfo // the socket file we bound: Close removes only that one
	euid int

	closeOnce sync.Once
	closeErr  error
}

// Listen creates the control socket at path: it makes sure the directory
// is private to us (creating it 0700 if missing), replaces a stale socket
// left by a killed herd, refuses to take over a live one (ErrAlreadyRunning)
// or anything that is not a socket, and leaves the new socket 0600.
func Listen(path string) (*Server, error) {
	if !peerCredSupported {
		return nil, fmt.Errorf("control socket %s: herd cannot tell who connects to a Unix socket on %s, so it offers no control socket there", path, runtime.GOOS)
	}
	// Absolute, so that Close removes the same file whatever the working
	// directory is by then, and errors show where the socket is.
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	path = abs
	if err := checkPathLen(path); err != nil {
		return nil, err
	}
	euid := os.Geteuid()
	dir := filepath.Dir(path)
	if err := prepareDir(dir, euid); err != nil {
		return nil, err
	}
	unlock := lockDir(dir)
	defer unlock()
	if err := clearStale(path); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false) // Close unlinks, and only if the file is still ours
	// bind created the socket with the umask's mode; the 0700 directory
	// keeps others out until this chmod. (fchmod on the socket's fd would
	// not change the file.)
	fi, err := os.Lstat(path)
	if err == nil {
		err = os.Chmod(path, 0o600)
	}
	if err != nil {
		ln.Close()
		if fi != nil {
			os.Remove(path)
		}
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return &Server{path: path, ln: ln, fi: fi, euid: euid}, nil
}

// prepareDir creates dir 0700, or checks that an existing one is ours and
// not writable by others: whoever can write to it can replace our socket
// with theirs (think of /tmp/herd-1000 created by another user first).
func prepareDir(dir string, euid int) error {
	err := os.Mkdir(dir, 0o700)
	if err == nil {
		// Mkdir's mode went through the umask.
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("control socket directory %s: %w", dir, err)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("control socket directory %s: %w", dir, err)
	}
	fi, err := os.Lstat(dir)
	if err == nil && fi.Mode().Type() == fs.ModeSymlink {
		// A symlink in a shared directory such as /tmp belongs to whoever
		// made it, and they can repoint it at will.
		if uid := fileOwner(fi); !trustedUID(uid, euid) {
			return fmt.Errorf("control socket directory %s is a symlink owned by uid %d, not by uid %d or root: someone else may have made it; remove it or choose another control path", dir, uid, euid)
		}
		fi, err = os.Stat(dir)
	}
	if err != nil {
		return fmt.Errorf("control socket directory %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("control socket directory %s is not a directory", dir)
	}
	if uid := fileOwner(fi); uid != euid {
		return fmt.Errorf("control socket directory %s is owned by uid %d, not by uid %d: someone else may have made it; remove it or choose another control path", dir, uid, euid)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("control socket directory %s is writable by group or others (mode %04o): run chmod go-w %s, or choose another control path", dir, perm, dir)
	}
	return nil
}

func fileOwner(fi os.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}

// lockDir holds an flock on dir while Listen checks for a stale socket,
// removes it and binds, so that of two herds starting at once with the same
// path, the second sees the first's live socket instead of deleting it. It
// is best effort: without the lock (a file system without flock, or another
// process holding it for more than a second) Listen goes on.
func lockDir(dir string) (unlock func()) {
	f, err := os.Open(dir)
	if err != nil {
		return func() {}
	}
	for range 20 {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return func() { f.Close() } // closing the file releases the lock
}

// Stale reports whether path is a socket that nobody listens on any more:
// left by a herd that was killed. It dials it, as clearStale does; a live
// socket, or one it cannot tell, is not stale.
func Stale(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// clearStale removes a socket file that nobody listens on (left by a herd
// that was killed), and refuses a live socket or a file that is not one.
func clearStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("control socket %s: %s exists and is not a socket; herd will not replace it", path, path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	switch {
	case err == nil:
		c.Close()
		return fmt.Errorf("%w with control socket %s", ErrAlreadyRunning, path)
	case errors.Is(err, syscall.EAGAIN):
		// Linux says EAGAIN when a live listener's backlog is full.
		return fmt.Errorf("%w with control socket %s", ErrAlreadyRunning, path)
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, fs.ErrNotExist):
		// Nobody listens (or it was just removed): stale.
	default:
		return fmt.Errorf("control socket %s: checking the existing socket: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("control socket %s: removing the stale socket: %w", path, err)
	}
	return nil
}

// Path returns the absolute path of the socket.
func (s *Server) Path() string { return s.path }

// Close stops listening and removes the socket file if it is still the one
// Listen made (a herd started after us may have replaced it). It does not
// wait for connections: Serve does. It is idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		// Unlink before closing: while our socket is open, its inode cannot
		// be reused, so SameFile cannot mistake another file for ours.
		if fi, err := os.Lstat(s.path); err == nil && os.SameFile(fi, s.fi) {
			if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("control socket %s: %w", s.path, err))
			}
		}
		if err := s.ln.Close(); err != nil {
			errs = append(errs, fmt.Errorf("control socket %s: %w", s.path, err))
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// Serve accepts connections and runs h for each request, every connection
// on its own goroutine. It returns when ctx ends or Close is called, after
// every connection's goroutine has ended, and the server is then closed.
// It returns nil then, or the error that made accepting fail.
func (s *Server) Serve(ctx context.Context, h Handler) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Closing the listener is what wakes Accept when ctx ends.
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()

	var wg sync.WaitGroup
	var serveErr error
	var delay time.Duration
	for {
		c, err := s.ln.AcceptUnix()
		if err == nil {
			delay = 0
			wg.Go(func() { s.serveConn(ctx, c, h) })
			continue
		}
		if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
			break
		}
		if !errors.Is(err, syscall.EMFILE) && !errors.Is(err, syscall.ENFILE) &&
			!errors.Is(err, syscall.ENOBUFS) && !errors.Is(err, syscall.ENOMEM) {
			serveErr = fmt.Errorf("control socket %s: %w", s.path, err)
			break
		}
		// Out of descriptors or memory: wait for some to be freed rather
		// than spin or give up, as net/http does.
		delay = min(max(2*delay, 5*time.Millisecond), time.Second)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	cancel() // ends every handler's ctx and wakes blocked reads
	wg.Wait()
	if err := s.Close(); serveErr == nil {
		serveErr = err
	}
	return serveErr
}

func (s *Server) serveConn(ctx context.Context, c *net.UnixConn, h Handler) {
	defer c.Close()
	uid, err := peerUID(c)
	if err != nil {
		fail(c, fmt.Sprintf("cannot check who is connecting: %v", err))
		return
	}
	if !trustedUID(uid, s.euid) {
		if s.OnRefused != nil {
			s.OnRefused(uid)
		}
		fail(c, fmt.Sprintf("permission denied: uid %d may not control this herd (owner uid %d)", uid, s.euid))
		return
	}
	br := bufio.NewReader(c)
	req, err := s.readRequest(ctx, c, br)
	if err != nil {
		fail(c, err.Error())
		return
	}
	s.handle(ctx, c, br, req, h)
}

// fail sends the final error line. Nothing was sent before it, so it fits
// in the client's socket buffer; the deadline guards against the rest.
func fail(c net.Conn, msg string) {
	c.SetWriteDeadline(time.Now().Add(closeGrace))
	writeLine(c, errorLine{msg})
}

type errorLine struct {
	Error string `json:"error"`
}

type dataLine struct {
	Data any `json:"data"`
}

func writeLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func (s *Server) readRequest(ctx context.Context, c *net.UnixConn, br *bufio.Reader) (Request, error) {
	limit := s.MaxRequest
	if limit <= 0 {
		limit = DefaultMaxRequest
	}
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	// A read deadline in the past wakes the blocked read when the client
	// is too slow or the server stops.
	stop := context.AfterFunc(rctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	line, err := readLine(br, limit, "request")
	if !stop() {
		if ctx.Err() != nil {
			return Request{}, errors.New("herd is shutting down")
		}
		return Request{}, fmt.Errorf("no request received within %v", requestTimeout)
	}
	if err != nil {
		return Request{}, err
	}
	return parseRequest(line)
}

func parseRequest(line []byte) (Request, error) {
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		return Request{}, fmt.Errorf("malformed request: %v", err)
	}
	if req.Cmd == "" {
		return Request{}, errors.New(`malformed request: no "cmd"`)
	}
	if string(req.Args) == "null" {
		req.Args = nil
	}
	if len(req.Args) > 0 && req.Args[0] != '{' {
		return Request{}, errors.New(`malformed request: "args" is not a JSON object`)
	}
	return req, nil
}

// readLine reads a '\n'-terminated line of at most limit bytes (newline
// excluded) and returns it without the newline. It stops as soon as the
// line is known to be too long, so it never holds much more than limit.
func readLine(r *bufio.Reader, limit int, what string) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		n := len(line) + len(chunk)
		if err == nil {
			n-- // the newline
		}
		if n > limit {
			return nil, fmt.Errorf("%s is longer than %d bytes", what, limit)
		}
		line = append(line, chunk...)
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF) && len(line) > 0:
			return nil, fmt.Errorf("reading the %s: %w", what, io.ErrUnexpectedEOF)
		default:
			return nil, fmt.Errorf("reading the %s: %w", what, err)
		}
	}
}

// handle runs h for req and sends its replies and final line.
func (s *Server) handle(ctx context.Context, c *net.UnixConn, br *bufio.Reader, req Request, h Handler) {
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// When the server stops, hctx ends, but a reply blocked writing to a
	// client that does not read would not notice: the deadline wakes it,
	// and still gives the final line closeGrace to get out.
	stop := context.AfterFunc(ctx, func() { c.SetWriteDeadline(time.Now().Add(closeGrace)) })
	defer stop()
	// The client sends nothing after its request, so this read ends only
	// when it goes away (EOF: Ctrl-C on herd logs -f) or the connection is
	// closed; either way the handler is done for.
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		io.Copy(io.Discard, br)
		cancel()
	}()

	w := &replier{c: c, ctx: hctx}
	w.finish(call(h, hctx, req, w.reply, s.OnPanic))
	c.Close() // ends the watcher's read
	<-watched
}

// call runs h, turning a panic into the command's error: a bug in one
// command must not take the primary, and every worker with it, down (as
// net/http recovers a handler's panic).
func call(h Handler, ctx context.Context, req Request, reply func(any) error, onPanic func(string, any, []byte)) (err error) {
	defer func() {
		if v := recover(); v != nil {
			if onPanic != nil {
				onPanic(req.Cmd, v, debug.Stack())
			}
			err = fmt.Errorf("internal error: command %q failed (%v); herd goes on", req.Cmd, v)
		}
	}()
	return h(ctx, req, reply)
}

// replier serializes a handler's lines and refuses them once it is over.
type replier struct {
	c    net.Conn
	ctx  context.Context
	mu   sync.Mutex
	done bool
}

func (w *replier) reply(v any) error {
	b, err := json.Marshal(dataLine{v})
	if err != nil {
		return fmt.Errorf("control reply: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return errors.New("control reply: the handler has already returned")
	}
	if err := w.ctx.Err(); err != nil {
		return fmt.Errorf("control reply: the client is gone or herd is stopping: %w", err)
	}
	_, err = w.c.Write(append(b, '\n'))
	return err
}

func (w *replier) finish(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done = true
	if err == nil {
		w.c.Write([]byte("{\"ok\":true}\n"))
		return
	}
	msg := err.Error()
	if msg == "" {
		msg = "failed" // a final line must say something
	}
	writeLine(w.c, errorLine{msg})
}
