// Command hello-go is a minimal HTTP server that runs as a herd worker.
//
// Under herd it uses the herd worker library: it serves the sockets herd
// hands it (systemd socket activation: fds 3.., LISTEN_FDS, LISTEN_PID),
// says it is ready, and on a stop request (SIGTERM, or herd.shutdown)
// drains without failing a request — see worker.Serve:
//
//	go build -o hello-go ./examples/hello-go
//	herd run -w 4 -l 127.0.0.1:8080 -- ./hello-go
//	curl http://127.0.0.1:8080/
//
// Run by hand it listens on -addr itself. With -reuseport it sets
// SO_REUSEPORT, so several copies can share one port (the benchmarks'
// "independent reuseport servers"):
//
//	./hello-go -addr 127.0.0.1:8080 -reuseport &
//	./hello-go -addr 127.0.0.1:8080 -reuseport &
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/herd-sh/herd/worker"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on when not run by herd")
	reuseport := flag.Bool("reuseport", false, "set SO_REUSEPORT on the -addr listener")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("hello-go: ")

	body := fmt.Sprintf("hello from worker %s pid %d\n", os.Getenv("HERD_WORKER_ID"), os.Getpid())
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprint(w, body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}

	// Under herd (with sockets from it) the library serves; run by hand
	// (even with HERD_WORKER_ID set, as the benchmarks do) it listens itself.
	if worker.IsWorker() && os.Getenv("LISTEN_FDS") != "" {
		w, err := worker.Start(worker.Options{})
		if err != nil {
			log.Fatal(err)
		}
		defer w.Close()
		if err := w.Serve(srv); err != nil {
			log.Fatal(err)
		}
		return
	}

	ln, err := listen(*addr, *reuseport)
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(ln)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Fatal(err)
	}
}

// listen opens addr, with SO_REUSEPORT if asked.
func listen(addr string, reuseport bool) (net.Listener, error) {
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
	return lc.Listen(context.Background(), "tcp", addr)
}
