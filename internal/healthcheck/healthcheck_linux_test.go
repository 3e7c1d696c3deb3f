package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/herd-sh/herd/internal/sockets"
	"golang.org/x/sys/unix"
)

// Each slot of a real reuseport group runs its own HTTP server, which
// answers 2xx only on /slot/N for its own N, and only to a probe coming
// from its own 127.254.0.N: a probe that lands on another slot fails.
func TestHTTPProbesReachTheirSlot(t *testing.T) {
	specs, err := sockets.ParseSpecs([]string{"127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	set, err := sockets.Open(specs, sockets.Reuseport, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { set.Close() }) // after the servers' cleanups
	const (
		healthy = iota
		empty   // 204
		sick    // 503
		hung
	)
	for slot, behaviour := range []int{healthy, empty, sick, hung} {
		files, _ := set.Files(slot)
		l, err := net.FileListener(files[0]) // a dup: the set keeps its own
		if err != nil {
			t.Fatal(err)
		}
		release := make(chan struct{})
		serve(t, l, release, func(w http.ResponseWriter, r *http.Request) {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			if r.URL.Path != fmt.Sprintf("/slot/%d", slot) || host != fmt.Sprintf("127.254.0.%d", slot) {
				http.Error(w, fmt.Sprintf("this is slot %d, asked %s by %s", slot, r.URL.Path, r.RemoteAddr), http.StatusNotFound)
				return
			}
			switch behaviour {
			case healthy:
				fmt.Fprintf(w, "slot %d", slot)
			case empty:
				w.WriteHeader(http.StatusNoContent)
			case sick:
				http.Error(w, "sick", http.StatusServiceUnavailable)
			case hung:
				<-release
			}
		})
	}
	probe := func(slot int, d time.Duration) error {
		t.Helper()
		remote, local, ok := set.ProbeTarget(0, slot)
		if !ok {
			t.Fatalf("slot %d cannot be probed", slot)
		}
		return HTTP(timeout(t, d), remote, local, fmt.Sprintf("/slot/%d", slot))
	}
	socket := set.Groups[0].Addr.String()
	check := func() {
		t.Helper()
		for range 15 {
			for slot := range 2 {
				if err := probe(slot, time.Second); err != nil {
					t.Fatalf("slot %d: %v", slot, err)
				}
			}
			want := "GET /slot/2 on worker socket " + socket + ": status 503"
			if err := probe(2, time.Second); err == nil || err.Error() != want {
				t.Fatalf("slot 2: %v, want %q", err, want)
			}
		}
		want := "GET /slot/3 on worker socket " + socket + ": timeout after 200ms"
		if err := probe(3, 200*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) || err.Error() != want {
			t.Fatalf("slot 3: %v, want %q", err, want)
		}
	}
	check()
	// Clients are steered away from every slot but 0; probes are not.
	if err := set.Steer([]int{0}); err != nil {
		t.Fatal(err)
	}
	check()
}

// A TCP probe fails only when the kernel does not complete the handshake:
// here, a socket whose accept queue (backlog 0: one connection) is full.
func TestTCPTimesOutOnAFullAcceptQueue(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*unix.SockaddrInet4).Port}
	local := &net.TCPAddr{IP: net.IPv4(127, 254, 0, 7)}
	if err := TCP(timeout(t, time.Second), addr, local); err != nil {
		t.Fatalf("first connection: %v", err)
	}
	err = TCP(timeout(t, 200*time.Millisecond), addr, local)
	want := "TCP probe of worker socket " + addr.String() + ": timeout after 200ms"
	if !errors.Is(err, context.DeadlineExceeded) || err.Error() != want {
		t.Fatalf("full queue: %v, want %q", err, want)
	}
}
