package healthcheck

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve runs an HTTP server with handler on l until the test ends, and
// returns the address to probe. release is closed first, for handlers
// that hang until then.
func serve(t *testing.T, l net.Listener, release chan struct{}, handler http.HandlerFunc) *net.TCPAddr {
	t.Helper()
	srv := &http.Server{Handler: handler}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	t.Cleanup(func() {
		close(release)
		srv.Close()
		<-done
	})
	return l.Addr().(*net.TCPAddr)
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestHTTPStatuses(t *testing.T) {
	release := make(chan struct{})
	addr := serve(t, listen(t), release, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("User-Agent") != UserAgent || !r.Close || r.Method != http.MethodGet {
			http.Error(w, "not a herd probe", http.StatusBadRequest)
			return
		}
		switch r.URL.Path {
		case "/ok":
			w.Write([]byte("fine"))
		case "/no-content":
			w.WriteHeader(http.StatusNoContent)
		case "/early-hints":
			w.Header().Set("Link", "</app.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Write([]byte("fine"))
		case "/moved":
			http.Redirect(w, r, "/ok", http.StatusMovedPermanently)
		case "/sick":
			http.Error(w, "database down", http.StatusServiceUnavailable)
		case "/hang":
			<-release
		case "/stall":
			// The status is sent, then the body never completes.
			w.Header().Set("Content-Length", "1000")
			w.Write([]byte("partial"))
			w.(http.Flusher).Flush()
			<-release
		case "/query":
			if r.URL.RawQuery != "full=1" {
				http.Error(w, "no query", http.StatusBadRequest)
			}
		default:
			http.NotFound(w, r)
		}
	})
	prefix := "GET %s on worker socket " + addr.String()
	for _, c := range []struct {
		path, want string
	}{
		{"/ok", ""},
		{"/no-content", ""},
		{"/early-hints", ""},
		{"/query?full=1", ""},
		{"/stall", ""},
		{"/moved", "status 301"},
		{"/sick", "status 503"},
		{"/missing", "status 404"},
		{"/hang", "timeout after 300ms"},
		{"health", "the path must start with /"},
	} {
		// Two seconds for an answer, so that a slow machine does not time
		// out; a stalled body must not hold the probe anywhere near that.
		limit := 2 * time.Second
		if c.path == "/hang" {
			limit = 300 * time.Millisecond
		}
		start := time.Now()
		err := HTTP(timeout(t, limit), addr, nil, c.path)
		took := time.Since(start)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.path, err)
		case c.want != "" && (err == nil || err.Error() != strings.Replace(prefix, "%s", c.path, 1)+": "+c.want):
			t.Errorf("%s: error %v, want %q", c.path, err, c.want)
		}
		if took > time.Second {
			t.Errorf("%s took %v", c.path, took)
		}
	}
	err := HTTP(timeout(t, 100*time.Millisecond), addr, nil, "/hang")
	var te *TimeoutError
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &te) || te.After != 100*time.Millisecond {
		t.Errorf("a hung worker: %v, want a TimeoutError matching context.DeadlineExceeded", err)
	}
}

func TestHTTPIsCancelledWithItsContext(t *testing.T) {
	addr := serve(t, listen(t), make(chan struct{}), func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	err := HTTP(ctx, addr, nil, "/hang")
	if !errors.Is(err, context.Canceled) || !strings.HasSuffix(err.Error(), ": context canceled") {
		t.Fatalf("cancelled probe: %v", err)
	}
}

func TestHTTPConnectionClosedWithoutAnswer(t *testing.T) {
	l := listen(t)
	defer l.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err == nil {
			c.Close()
		}
	}()
	addr := l.Addr().(*net.TCPAddr)
	err := HTTP(timeout(t, 2*time.Second), addr, nil, "/health")
	<-done
	if err == nil || !strings.HasPrefix(err.Error(), "GET /health on worker socket "+addr.String()+": connection closed before a response") {
		t.Fatalf("got %v", err)
	}
}

func TestTCP(t *testing.T) {
	l := listen(t)
	addr := l.Addr().(*net.TCPAddr)
	if err := TCP(timeout(t, time.Second), addr, nil); err != nil {
		t.Fatalf("listening socket: %v", err)
	}
	l.Close()
	err := TCP(timeout(t, time.Second), addr, nil)
	want := "TCP probe of worker socket " + addr.String() + ": connect: connection refused"
	if err == nil || err.Error() != want {
		t.Fatalf("closed socket: %v, want %q", err, want)
	}
}
