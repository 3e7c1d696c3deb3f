package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The peer credential tests run this binary as another user.
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode))
	}
	goleak.VerifyTestMain(m)
}

// sockPath is a socket path whose directory does not exist yet.
func sockPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "ctl", "t.sock")
}

func listen(t *testing.T, path string) *Server {
	t.Helper()
	s, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// start runs s.Serve until the test ends (or stop is called) and checks
// that it returns nil, promptly.
func start(t *testing.T, s *Server, h Handler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, h) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Errorf("Serve did not return within 5s of its ctx ending")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// echo answers "echo" with three values (the last one its args), and
// "fail" with an error; "panic" panics.
func echo(ctx context.Context, req Request, reply func(any) error) error {
	switch req.Cmd {
	case "echo":
		for _, v := range []any{1, "two", req.Args} {
			if err := reply(v); err != nil {
				return err
			}
		}
		return nil
	case "fail":
		return errors.New("boom: no such worker")
	case "panic":
		var m map[string]int
		m["x"] = 1 // a handler bug
	}
	return fmt.Errorf("unknown command %q", req.Cmd)
}

// exchange sends raw bytes as a client and returns everything the server
// says until it closes the connection.
func exchange(t *testing.T, path, send string) string {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	// Written on the side: the server may stop reading (and close) before
	// a long request is all sent.
	go c.Write([]byte(send))
	got, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("reading the answer to %.40q: %v (got %q)", send, err, got)
	}
	return string(got)
}

func TestDefaultPath(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	if got, err := DefaultPath("web"); err != nil || got != "/run/user/1000/herd/web.sock" {
		t.Errorf("with XDG_RUNTIME_DIR: got %q, %v", got, err)
	}
	tmp := fmt.Sprintf("/tmp/herd-%d/web.sock", os.Geteuid())
	for _, xdg := range []string{"", "run/user/1000"} { // unset, and relative (ignored)
		t.Setenv("XDG_RUNTIME_DIR", xdg)
		if got, err := DefaultPath("web"); err != nil || got != tmp {
			t.Errorf("XDG_RUNTIME_DIR=%q: got %q, %v; want %q", xdg, got, err, tmp)
		}
	}
	if _, err := DefaultPath(strings.Repeat("a", 64)); err != nil {
		t.Errorf("a 64-byte name: %v", err)
	}
	for _, name := range []string{"", ".hidden", "a/b", "..", "a b", "ü", "a\x00", strings.Repeat("a", 65)} {
		_, err := DefaultPath(name)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("invalid herd name %q", name)) {
			t.Errorf("DefaultPath(%q): got %v, want an error naming it", name, err)
		}
	}
}

func TestSanitizeName(t *testing.T) {
	for in, want := range map[string]string{
		"node":                         "node",
		"python3.12":                   "python3.12",
		"my app":                       "my-app",
		".hidden":                      "hidden",
		"--x--":                        "x",
		"":                             "herd",
		"...":                          "herd",
		"日本":                           "herd",
		strings.Repeat("a", 100):       strings.Repeat("a", 64),
		strings.Repeat("a", 63) + " b": strings.Repeat("a", 63),
	} {
		got := SanitizeName(in)
		if got != want {
			t.Errorf("SanitizeName(%q) = %q, want %q", in, got, want)
		}
		if err := checkName(got); err != nil {
			t.Errorf("SanitizeName(%q) = %q is not a valid name: %v", in, got, err)
		}
	}
}

func TestListenModes(t *testing.T) {
	// umask 0 would leave the socket 0777 without Listen's chmod; umask
	// 0277 would leave a created directory 0500.
	for _, umask := range []int{0, 0o277} {
		t.Run(fmt.Sprintf("umask %04o", umask), func(t *testing.T) {
			path := sockPath(t)
			old := syscall.Umask(umask)
			s, err := Listen(path)
			syscall.Umask(old)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != fs.ModeSocket|0o600 {
				t.Errorf("socket mode %v, want %v", fi.Mode(), fs.ModeSocket|0o600)
			}
			di, err := os.Stat(filepath.Dir(path))
			if err != nil {
				t.Fatal(err)
			}
			if di.Mode() != fs.ModeDir|0o700 {
				t.Errorf("directory mode %v, want %v", di.Mode(), fs.ModeDir|0o700)
			}
		})
	}
}

func TestListenRefusesUnsafeDirectory(t *testing.T) {
	for _, mode := range []fs.FileMode{0o770, 0o702, 0o777} {
		dir := filepath.Join(t.TempDir(), "ctl")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		os.Chmod(dir, mode)
		path := filepath.Join(dir, "t.sock")
		_, err := Listen(path)
		if err == nil || !strings.Contains(err.Error(), dir+" is writable by group or others") {
			t.Errorf("directory mode %04o: got %v, want a refusal naming it", mode, err)
		}
		if _, err := os.Lstat(path); err == nil {
			t.Errorf("directory mode %04o: a socket was created anyway", mode)
		}
	}

	t.Run("existing private directory and trusted symlink", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "ctl")
		os.Mkdir(dir, 0o755)
		link := filepath.Join(t.TempDir(), "link")
		if err := os.Symlink(dir, link); err != nil {
			t.Fatal(err)
		}
		s := listen(t, filepath.Join(link, "t.sock"))
		if _, err := os.Lstat(filepath.Join(dir, "t.sock")); err != nil {
			t.Errorf("no socket in the symlinked directory: %v", err)
		}
		s.Close()
		if di, _ := os.Stat(dir); di.Mode().Perm() != 0o755 {
			t.Errorf("an existing directory's mode was changed to %v", di.Mode())
		}
	})

	t.Run("directory or symlink of another user", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to chown a directory to another user")
		}
		dir := filepath.Join(t.TempDir(), "ctl")
		os.Mkdir(dir, 0o700)
		if err := os.Chown(dir, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		_, err := Listen(filepath.Join(dir, "t.sock"))
		if err == nil || !strings.Contains(err.Error(), dir+" is owned by uid 65534, not by uid 0") {
			t.Errorf("foreign directory: got %v", err)
		}

		own := filepath.Join(t.TempDir(), "own")
		os.Mkdir(own, 0o700)
		link := filepath.Join(t.TempDir(), "link")
		os.Symlink(own, link)
		if err := os.Lchown(link, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		_, err = Listen(filepath.Join(link, "t.sock"))
		if err == nil || !strings.Contains(err.Error(), link+" is a symlink owned by uid 65534") {
			t.Errorf("foreign symlink: got %v", err)
		}
	})
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := sockPath(t)
	os.Mkdir(filepath.Dir(path), 0o700)
	// A killed herd leaves its socket file behind.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if err := Call(context.Background(), path, "echo", nil, nil); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Call on a stale socket: got %v, want ErrNotRunning", err)
	}

	s := listen(t, path)
	start(t, s, echo)
	if err := Call(context.Background(), path, "echo", nil, nil); err != nil {
		t.Errorf("Call after replacing the stale socket: %v", err)
	}
}

func TestListenDoesNotStealLiveSocket(t *testing.T) {
	path := sockPath(t)
	s := listen(t, path)
	start(t, s, echo)

	_, err := Listen(path)
	if !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("second Listen: got %v, want ErrAlreadyRunning", err)
	}
	if want := "another herd is already running with control socket " + path; err.Error() != want {
		t.Errorf("got %q, want %q", err, want)
	}
	if err := Call(context.Background(), path, "echo", nil, nil); err != nil {
		t.Errorf("the first server is no longer reachable: %v", err)
	}
}

func TestListenRefusesNonSocket(t *testing.T) {
	path := sockPath(t)
	os.Mkdir(filepath.Dir(path), 0o700)
	os.WriteFile(path, []byte("keep me"), 0o600)
	_, err := Listen(path)
	if err == nil || !strings.Contains(err.Error(), path+" exists and is not a socket") {
		t.Errorf("got %v, want a refusal naming the file", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "keep me" {
		t.Errorf("the file was changed: %q", b)
	}
}

func TestPathTooLong(t *testing.T) {
	path := filepath.Join(t.TempDir(), strings.Repeat("a", 120)+".sock")
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "bytes long, more than the") {
		t.Errorf("Listen: got %v", err)
	}
	if err := Call(context.Background(), path, "x", nil, nil); err == nil || !strings.Contains(err.Error(), "a Unix socket allows") {
		t.Errorf("Call: got %v", err)
	}
}

// Of herds starting at once over a stale socket, exactly one must win and
// the others must see it running: none may delete the winner's socket.
func TestConcurrentListen(t *testing.T) {
	path := sockPath(t)
	os.Mkdir(filepath.Dir(path), 0o700)
	for round := range 20 {
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ln.SetUnlinkOnClose(false)
		ln.Close()

		servers := make(chan *Server, 8)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				s, err := Listen(path)
				if err != nil && !errors.Is(err, ErrAlreadyRunning) {
					t.Errorf("round %d: %v", round, err)
				}
				if s != nil {
					servers <- s
				}
			})
		}
		wg.Wait()
		close(servers)
		var won []*Server
		for s := range servers {
			won = append(won, s)
		}
		if len(won) != 1 {
			t.Fatalf("round %d: %d servers listen, want 1", round, len(won))
		}
		// The winner's socket is the one in place: Close removes it.
		won[0].Close()
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("round %d: the winner's socket was replaced (%v)", round, err)
		}
	}
}

func TestCloseRemovesOnlyItsOwnSocket(t *testing.T) {
	path := sockPath(t)
	s := listen(t, path)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Close left the socket: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}

	s = listen(t, path)
	os.Remove(path) // someone replaced it
	other, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	s.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("Close removed a socket that was not its own: %v", err)
	}
}

func TestRoundTrip(t *testing.T) {
	path := sockPath(t)
	s := listen(t, path)
	if s.Path() != path {
		t.Errorf("Path() = %q, want %q", s.Path(), path)
	}
	start(t, s, echo)

	var got []string
	collect := func(v json.RawMessage) error { got = append(got, string(v)); return nil }
	if err := Call(context.Background(), path, "echo", map[string]int{"n": 3}, collect); err != nil {
		t.Fatal(err)
	}
	if want := []string{`1`, `"two"`, `{"n":3}`}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("streamed %q, want %q", got, want)
	}

	err := Call(context.Background(), path, "fail", nil, nil)
	var re *RemoteError
	if !errors.Is(err, ErrRemote) || !errors.As(err, &re) || re.Msg != "boom: no such worker" {
		t.Errorf("got %#v, want a RemoteError with the handler's text", err)
	}

	// The exact bytes, as documented.
	if got, want := exchange(t, path, `{"cmd":"echo","args":{"a":1}}`+"\n"),
		`{"data":1}`+"\n"+`{"data":"two"}`+"\n"+`{"data":{"a":1}}`+"\n"+`{"ok":true}`+"\n"; got != want {
		t.Errorf("wire: got %q, want %q", got, want)
	}
	if got, want := exchange(t, path, `{"cmd":"fail"}`+"\n"), `{"error":"boom: no such worker"}`+"\n"; got != want {
		t.Errorf("wire: got %q, want %q", got, want)
	}
}

// A handler that panics fails its command, and the server goes on serving.
func TestHandlerPanicFailsOnlyItsCommand(t *testing.T) {
	path := sockPath(t)
	s := listen(t, path)
	var panicked atomic.Value
	s.OnPanic = func(cmd string, v any, stack []byte) { panicked.Store(cmd) }
	start(t, s, echo)

	err := Call(context.Background(), path, "panic", nil, nil)
	var re *RemoteError
	if !errors.As(err, &re) || !strings.Contains(re.Msg, `command "panic" failed`) {
		t.Fatalf("got %v, want a RemoteError saying the command failed", err)
	}
	if got := panicked.Load(); got != "panic" {
		t.Errorf("OnPanic got %v, want the command", got)
	}
	if err := Call(context.Background(), path, "echo", map[string]int{"n": 1}, func(json.RawMessage) error { return nil }); err != nil {
		t.Fatalf("after a panic: %v", err)
	}
}

func TestCallNotRunning(t *testing.T) {
	path := filepath.Join(t.TempDir(), "none.sock")
	err := Call(context.Background(), path, "status", nil, nil)
	want := "no herd is running with control socket " + path + " (is the name right? use --name or --control)"
	if !errors.Is(err, ErrNotRunning) || err.Error() != want {
		t.Errorf("got %v, want %q", err, want)
	}
}

func TestMalformedRequests(t *testing.T) {
	path := sockPath(t)
	s := listen(t, path)
	var ran atomic.Int32
	start(t, s, func(ctx context.Context, req Request, reply func(any) error) error {
		ran.Add(1)
		return nil
	})
	for send, want := range map[string]string{
		"not json\n":                       `{"error":"malformed request: invalid character`,
		"{\"args\":{}}\n":                  `{"error":"malformed request: no \"cmd\""}`,
		"{\"cmd\":\"x\",\"args\":[1]}\n":   `{"error":"malformed request: \"args\" is not a JSON object"}`,
		"{\"cmd\":\"x\"} trailing\n":       `{"error":"malformed request: invalid character 't' after top-level value"}`,
		"{\"cmd\":\"x\",\"args\":\"s\"}\n": `{"error":"malformed request: \"args\" is not a JSON object"}`,
	} {
		got := exchange(t, path, send)
		if !strings.HasPrefix(got, want) || strings.Count(got, "\n") != 1 {
			t.Errorf("%q: got %q, want one line starting %q", send, got, want)
		}
	}
	if n := ran.Load(); n != 0 {
		t.Errorf("the handler ran %d times for malformed requests", n)
	}
	// null args are no args.
	if got := exchange(t, path, `{"cmd":"x","args":null}`+"\n"); got != `{"ok":true}`+"\n" {
		t.Errorf("null args: got %q", got)
	}
}

func TestRequestLimit(t *testing.T) {
	path := sockPath(t)
	s := listen(t, path)
	s.MaxRequest = 1024
	var ran atomic.Int32
	start(t, s, func(ctx context.Context, req Request, reply func(any) error) error {
		ran.Add(1)
		return nil
	})
	line := func(n int) string { // a request of exactly n bytes
		l := fmt.Sprintf(`{"cmd":"x","args":{"s":"%s"}}`, strings.Repeat("y", n-len(`{"cmd":"x","args":{"s":""}}`)))
		if len(l) != n {
			t.Fatalf("built %d bytes, want %d", len(l), n)
		}
		return l + "\n"
	}
	if got := exchange(t, path, line(1024)); got != `{"ok":true}`+"\n" {
		t.Errorf("a request of exactly MaxRequest bytes: got %q", got)
	}
	if got, want := exchange(t, path, line(1025)), `{"error":"request is longer than 1024 bytes"}`+"\n"; got != want {
		t.Errorf("one byte over: got %q, want %q", got, want)
	}
	// Through Call, much longer: the server stops reading and answers.
	err := Call(context.Background(), path, "x", map[string]string{"s": strings.Repeat("y", 1<<20)}, nil)
	if !errors.Is(err, ErrRemote) || err.Error() != "request is longer than 1024 bytes" {
		t.Errorf("Call with a 1 MiB request: got %v", err)
	}
	if n := ran.Load(); n != 1 {
		t.Errorf("the handler ran %d times, want once (for the request that fits)", n)
	}

	// The default limit.
	s.MaxRequest = 0
	err = Call(context.Background(), path, "x", map[string]string{"s": strings.Repeat("y", 3<<20)}, nil)
	if err == nil || err.Error() != fmt.Sprintf("request is longer than %d bytes", DefaultMaxRequest) {
		t.Errorf("Call with a 3 MiB request: got %v", err)
	}
}

// A client that connects and never sends its request must not keep Serve
// from returning (it would, for requestTimeout, if only a deadline let go).
func TestSilentClientDoesNotBlockServe(t *testing.T) {
	path := sockPath(t)
	s := listen(t, path)
	stop := start(t, s, echo)
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(50 * time.Millisecond) // let the server accept it

	began := time.Now()
	stop()
	if d := time.Since(began); d > 2*time.Second {
		t.Errorf("Serve took %v to return", d)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	got, _ := io.ReadAll(c)
	if want := `{"error":"herd is shutting down"}` + "\n"; string(got) != want {
		t.Errorf("the silent client got %q, want %q", got, want)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the socket is still there after Serve returned: %v", err)
	}
}

func TestCloseStopsServe(t *testing.T) {
	s := listen(t, sockPath(t))
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), echo) }()
	time.Sleep(20 * time.Millisecond)
	s.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
}

// waitHandler replies once and then waits, like logs -f with no new
// lines, so that only the client going away can end it.
func waitHandler(ended chan<- error) Handler {
	return func(ctx context.Context, req Request, reply func(any) error) error {
		if err := reply("hello"); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			ended <- reply("late") // must fail: the client is gone
			return ctx.Err()
		case <-time.After(5 * time.Second):
			ended <- errors.New("the handler's ctx did not end")
			return nil
		}
	}
}

func TestClientGoneCancelsHandler(t *testing.T) {
	path := sockPath(t)
	s := listen(t, path)
	ended := make(chan error, 1)
	start(t, s, waitHandler(ended))

	t.Run("ctx cancelled (Ctrl-C)", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		err := Call(ctx, path, "logs", nil, func(json.RawMessage) error { cancel(); return nil })
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), path) {
			t.Errorf("Call: got %v, want context.Canceled naming the path", err)
		}
		if err := <-ended; err == nil || !strings.Contains(err.Error(), "client is gone") {
			t.Errorf("handler: %v; want its ctx ended and reply failing", err)
		}
	})
	t.Run("onData fails", func(t *testing.T) {
		errStop := errors.New("stop")
		err := Call(context.Background(), path, "logs", nil, func(json.RawMessage) error { return errStop })
		if !errors.Is(err, errStop) {
			t.Errorf("Call: got %v, want onData's error", err)
		}
		if err := <-ended; err == nil || !strings.Contains(err.Error(), "client is gone") {
			t.Errorf("handler: %v; want its ctx ended and reply failing", err)
		}
	})
}

// When the server stops, a streaming handler's ctx ends and its final
// line still reaches the client.
func TestShutdownSendsFinalLine(t *testing.T) {
	path := sockPath(t)
	s := listen(t, path)
	stop := start(t, s, func(ctx context.Context, req Request, reply func(any) error) error {
		reply("started")
		<-ctx.Done()
		return errors.New("herd is stopping")
	})
	got := make(chan error, 1)
	go func() {
		got <- Call(context.Background(), path, "logs", nil, func(json.RawMessage) error {
			go stop()
			return nil
		})
	}()
	select {
	case err := <-got:
		if !errors.Is(err, ErrRemote) || err.Error() != "herd is stopping" {
			t.Errorf("got %v, want the handler's final error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Call did not return")
	}
}

// A client that stops reading while a handler streams to it must not keep
// Serve from returning: the handler's blocked reply is woken.
func TestShutdownWithClientNotReading(t *testing.T) {
	path := sockPath(t)
	s := listen(t, path)
	blocked := make(chan struct{})
	stop := start(t, s, func(ctx context.Context, req Request, reply func(any) error) error {
		chunk := strings.Repeat("x", 64<<10)
		for {
			sent := make(chan error, 1)
			go func() { sent <- reply(chunk) }()
			select {
			case err := <-sent:
				if err != nil {
					return err
				}
				continue
			case <-time.After(200 * time.Millisecond):
			}
			close(blocked) // the socket buffers are full
			return <-sent
		}
	})
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte(`{"cmd":"logs"}` + "\n"))
	select {
	case <-blocked:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's replies never blocked")
	}
	began := time.Now()
	stop()
	if d := time.Since(began); d > closeGrace+time.Second {
		t.Errorf("Serve took %v to return", d)
	}
}
