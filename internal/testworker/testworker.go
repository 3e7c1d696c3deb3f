// Package testworker holds the Go worker programs that herd's tests run
// under a real primary. A test binary's TestMain calls Main first: when the
// binary was started as a worker ("TESTBIN __worker ROLE"), Main runs that
// role and exits; otherwise it returns and the tests run.
package testworker

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
)

// Marker is the first argument of a test binary started as a worker.
const Marker = "__worker"

// Command returns the argv that runs role from the current test binary.
func Command(role string, args ...string) []string {
	return append([]string{os.Args[0], Marker, role}, args...)
}

// Main runs the worker role named by the arguments, if any, and exits.
func Main() {
	if len(os.Args) < 3 || os.Args[1] != Marker {
		return
	}
	role, args := os.Args[2], os.Args[3:]
	if role == "byslot" {
		// TEST_SLOT<id>="role args..." gives each slot its own part.
		fields := strings.Fields(os.Getenv("TEST_SLOT" + os.Getenv("HERD_WORKER_ID")))
		if len(fields) == 0 {
			fields = []string{"rawipc"}
		}
		role, args = fields[0], fields[1:]
	}
	var err error
	switch role {
	case "http":
		err = serveHTTP()
	case "exit":
		code, _ := strconv.Atoi(firstOr(args, "3"))
		os.Exit(code)
	case "print":
		err = printLines(args)
	case "orphans":
		err = makeOrphans()
	case "sleep":
		signal.Ignore(syscall.SIGTERM)
		time.Sleep(time.Hour)
	case "lib":
		err = libWorker()
	case "lines":
		err = lineWorker()
	case "tasks":
		err = taskWorker()
	case "rawipc":
		err = rawIPC(args)
	default:
		err = fmt.Errorf("unknown test worker role %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "test worker:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func firstOr(args []string, def string) string {
	if len(args) > 0 {
		return args[0]
	}
	return def
}

// serveHTTP answers on every inherited listener with who it is. Knobs from
// the environment:
//
//	TEST_CRASH_SLOT=N   slot N exits at once (a crash-looping slot)
//	TEST_IGNORE_TERM=1  SIGTERM is ignored (to test the stop deadline)
//	TEST_SAY_SIGNAL=1   print "got signal NAME" on stdout for each SIGTERM
//	                    or SIGINT it gets (with TEST_IGNORE_TERM=1 it then
//	                    goes on serving)
//	TEST_CHILD=1        start a grandchild (sleep) in the worker's group
//	TEST_CHILD=setsid   the same in a session (and group) of its own
//	TEST_SLOW=DUR       each request takes this long
//	TEST_EXIT_AFTER=DUR exit with status 3 this long after it started serving
//	TEST_HEAP_MB=N      hold N MiB of touched memory (a process whose
//	                    teardown at exit takes the kernel a while)
func serveHTTP() error {
	id := os.Getenv("HERD_WORKER_ID")
	if os.Getenv("TEST_CRASH_SLOT") == id {
		os.Exit(7)
	}
	var heap []byte
	if mb, err := strconv.Atoi(os.Getenv("TEST_HEAP_MB")); err == nil && mb > 0 {
		heap = make([]byte, mb<<20)
		for i := 0; i < len(heap); i += 4096 {
			heap[i] = 1
		}
	}
	defer runtime.KeepAlive(heap)
	fds, names := os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES")
	// activation.Listeners checks LISTEN_PID == getpid, as systemd
	// clients do (and then unsets the variables).
	ls, err := activation.Listeners()
	if err != nil {
		return err
	}
	if len(ls) == 0 {
		return fmt.Errorf("no listeners (LISTEN_PID=%q pid=%d LISTEN_FDS=%q)", os.Getenv("LISTEN_PID"), os.Getpid(), os.Getenv("LISTEN_FDS"))
	}
	child := 0
	if tc := os.Getenv("TEST_CHILD"); tc == "1" || tc == "setsid" {
		c := exec.Command("sleep", "3600")
		if tc == "setsid" {
			c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		}
		if err := c.Start(); err != nil {
			return err
		}
		child = c.Process.Pid
	}
	slow, _ := time.ParseDuration(os.Getenv("TEST_SLOW"))
	body := fmt.Sprintf("id=%s pid=%d child=%d fds=%s names=%s workers=%s\n", id, os.Getpid(), child, fds, names, os.Getenv("HERD_WORKERS"))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slow > 0 {
			time.Sleep(slow)
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, body)
	})}
	sigs := make(chan os.Signal, 1)
	say := os.Getenv("TEST_SAY_SIGNAL") == "1"
	switch {
	case os.Getenv("TEST_IGNORE_TERM") == "1" && say:
		heard := make(chan os.Signal, 4)
		signal.Notify(heard, syscall.SIGTERM, syscall.SIGINT)
		go func() {
			for sig := range heard {
				sayStopSignal(sig)
			}
		}()
	case os.Getenv("TEST_IGNORE_TERM") == "1":
		signal.Ignore(syscall.SIGTERM, syscall.SIGINT)
	default:
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	}
	if d, err := time.ParseDuration(os.Getenv("TEST_EXIT_AFTER")); err == nil {
		time.AfterFunc(d, func() { os.Exit(3) })
	}
	fmt.Printf("serving id=%s pid=%d\n", id, os.Getpid())
	var wg sync.WaitGroup
	for _, l := range ls {
		wg.Go(func() { srv.Serve(l) })
	}
	sig := <-sigs
	if say {
		sayStopSignal(sig)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = srv.Shutdown(ctx)
	wg.Wait()
	return err
}

// sayStopSignal prints which stop signal the worker got (TEST_SAY_SIGNAL).
func sayStopSignal(sig os.Signal) {
	name := sig.String()
	switch sig {
	case syscall.SIGTERM:
		name = "SIGTERM"
	case syscall.SIGINT:
		name = "SIGINT"
	}
	fmt.Printf("got signal %s\n", name)
}

// printLines writes what the args describe to stdout, then exits:
// "long:N" a line of N 'x' bytes, "partial:TEXT" TEXT without a newline,
// anything else as a line.
func printLines(args []string) error {
	for _, a := range args {
		switch {
		case strings.HasPrefix(a, "long:"):
			n, _ := strconv.Atoi(strings.TrimPrefix(a, "long:"))
			os.Stdout.WriteString(strings.Repeat("x", n) + "\n")
		case strings.HasPrefix(a, "partial:"):
			os.Stdout.WriteString(strings.TrimPrefix(a, "partial:"))
		case strings.HasPrefix(a, "stderr:"):
			os.Stderr.WriteString(strings.TrimPrefix(a, "stderr:") + "\n")
		default:
			os.Stdout.WriteString(a + "\n")
		}
	}
	// Stay until stopped, so the test decides when output ends.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	<-sigs
	return nil
}

// makeOrphans leaves children whose parent (a short-lived shell) is gone,
// so they are re-parented to PID 1 and become its zombies when they exit,
// then keeps running.
func makeOrphans() error {
	for range 5 {
		if err := exec.Command("sh", "-c", "sleep 0.2 & exit 0").Run(); err != nil {
			return err
		}
	}
	fmt.Println("orphans made")
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	<-sigs
	return nil
}
