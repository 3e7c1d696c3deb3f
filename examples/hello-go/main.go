// Command hello-go is a minimal HTTP server that runs as a herd worker.
//
// Under herd it takes its listening sockets from the environment
// (systemd socket activation: fds 3.., LISTEN_FDS, LISTEN_PID) and serves
// all of them:
//
//	go build -o hello-go ./examples/hello-go
//	herd run -w 4 -l 127.0.0.1:8080 -- ./hello-go
//	curl http://127.0.0.1:8080/
//
// Without LISTEN_FDS it listens on -addr itself. With -reuseport it sets
// SO_REUSEPORT, so several copies can share one port when started by hand:
//
//	./hello-go -addr 127.0.0.1:8080 -reuseport &
//	./hello-go -addr 127.0.0.1:8080 -reuseport &
//
// On SIGTERM or SIGINT it stops accepting, waits up to 10s for in-flight
// requests and exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on when not socket-activated")
	reuseport := flag.Bool("reuseport", false, "set SO_REUSEPORT on the -addr listener")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("hello-go: ")

	lns, err := listeners(*addr, *reuseport)
	if err != nil {
		log.Fatal(err)
	}

	body := fmt.Sprintf("hello from worker %s pid %d\n", os.Getenv("HERD_WORKER_ID"), os.Getpid())
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprint(w, body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}

	errc := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { errc <- srv.Serve(ln) }()
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	select {
	case err := <-errc:
		log.Fatal(err)
	case <-ctx.Done():
	}

	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Fatal(err)
	}
}

// listeners returns the sockets passed by herd (or systemd), or a fresh
// listener on addr when the process was not socket-activated.
func listeners(addr string, reuseport bool) ([]net.Listener, error) {
	if os.Getenv("LISTEN_FDS") != "" {
		all, err := activation.Listeners() // checks LISTEN_PID
		if err != nil {
			return nil, err
		}
		var lns []net.Listener
		for _, ln := range all {
			if ln != nil {
				lns = append(lns, ln)
			}
		}
		if len(lns) == 0 {
			return nil, errors.New("LISTEN_FDS is set but no listening sockets were received (LISTEN_PID mismatch?)")
		}
		return lns, nil
	}

	var lc net.ListenConfig
	if reuseport {
		lc.Control = func(network, address string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	return []net.Listener{ln}, nil
}
