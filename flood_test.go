package herd_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/internal/herdtest"
	"github.com/herd-sh/herd/worker"
)

// floodEnv, set to a number of messages, makes this test binary a part of
// TestFloodIsHeldBackByASlowHandler: the primary under test (a process of
// its own, so that its memory is its own), or, self-forked by that
// primary, the worker that floods it.
const floodEnv = "HERD_TEST_FLOOD"

// floodLine is the size of one flood message, newline included.
const floodLine = 1024

// floodMain plays that part, if this process has one, and exits.
func floodMain() {
	n, err := strconv.Atoi(os.Getenv(floodEnv))
	if err != nil {
		return
	}
	if worker.IsWorker() {
		err = floodWorker(n)
	} else {
		err = floodPrimary()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "flood test:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// floodWorker writes n messages {"type":"flood","data":[SEQ,"xx…"]} of
// floodLine bytes each on its channel, as fast as the socket takes them,
// in 64 KiB writes, then {"type":"flood-done"}, and waits to be stopped
// (by SIGTERM: it does not say herd.hello). It reads nothing.
func floodWorker(n int) error {
	fd, err := strconv.Atoi(os.Getenv("HERD_IPC_FD"))
	if err != nil {
		return fmt.Errorf("HERD_IPC_FD: %v", err)
	}
	ch := os.NewFile(uintptr(fd), "ipc")
	buf := make([]byte, 0, 80<<10)
	pad := bytes.Repeat([]byte("x"), floodLine)
	for seq := range n {
		start := len(buf)
		buf = strconv.AppendInt(append(buf, `{"type":"flood","data":[`...), int64(seq), 10)
		buf = append(buf, `,"`...)
		buf = append(buf, pad[:floodLine-(len(buf)-start)-4]...)
		buf = append(buf, "\"]}\n"...)
		if len(buf) >= 64<<10 || seq == n-1 {
			if _, err := ch.Write(buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
	}
	if _, err := ch.Write([]byte(`{"type":"flood-done"}` + "\n")); err != nil {
		return err
	}
	time.Sleep(time.Hour)
	return nil
}

// floodPrimary runs a cluster of one flooding worker (a copy of this
// program) whose messages go to a slow handler: it takes no message at all
// until "release" comes on stdin. It prints "worker PID" when the worker
// starts and, for each "report" on stdin, "handled N gaps G done D": how
// many flood messages the handler took, how many times a message's
// sequence number was not the one after the last (a message lost or out
// of order), and whether flood-done came. End of stdin stops the cluster.
func floodPrimary() error {
	gate := make(chan struct{})
	var mu sync.Mutex
	handled, gaps, next, done := 0, 0, 0, false
	s, err := herd.New(herd.Options{
		Workers: 1, // no Command: copies of this program
		Stdout:  io.Discard,
		OnEvent: func(ev herd.Event) {
			switch {
			case ev.Kind == herd.EventStarted:
				fmt.Printf("worker %d\n", ev.PID)
			case ev.Kind == herd.EventMessage && ev.Message.Type == "flood":
				<-gate
				d := ev.Message.Data // [SEQ,"xx…"]
				seq, err := strconv.Atoi(string(d[1:bytes.IndexByte(d, ',')]))
				mu.Lock()
				if err != nil || seq != next {
					gaps++
				}
				next, handled = seq+1, handled+1
				mu.Unlock()
			case ev.Kind == herd.EventMessage && ev.Message.Type == "flood-done":
				mu.Lock()
				done = true
				mu.Unlock()
			}
		},
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer cancel()
		released := false
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			switch sc.Text() {
			case "release":
				if !released {
					released = true
					close(gate)
				}
			case "report":
				mu.Lock()
				fmt.Printf("handled %d gaps %d done %v\n", handled, gaps, done)
				mu.Unlock()
			}
		}
		if !released {
			close(gate)
		}
	}()
	return s.Run(ctx)
}

// procField returns a number field of /proc/PID/FILE ("VmHWM" of status,
// in kB there; "wchar" of io, in bytes).
func procField(t *testing.T, pid int, file, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
	if err != nil {
		t.Skipf("cannot read /proc/%d/%s: %v", pid, file, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("/proc/%d/%s: %q", pid, file, line)
			}
			return n
		}
	}
	t.Fatalf("/proc/%d/%s has no %s", pid, file, field)
	return 0
}

// A worker floods its primary with 300 MB of messages, far more than the
// primary may hold, and the primary's handler takes none of them until
// the test releases it: the primary reads a worker's channel only as fast
// as its handler takes the messages (docs/protocol.md, "Bad input, limits
// and flow control"), so the worker is held back by its socket buffer
// filling up, having written a tiny part of the flood, while the
// primary's memory stays far below the flood's size. Once released, the
// handler gets every message, in order: the sender was slowed down,
// nothing was dropped, and the primary's peak memory over the whole flood
// stays bounded.
func TestFloodIsHeldBackByASlowHandler(t *testing.T) {
	const (
		n     = 300_000
		flood = n * floodLine // 300 MB
		// What the primary may hold at its peak: its own few MB and the
		// race detector's share; an unbounded read-ahead queue would hold
		// what the worker had written, hundreds of MB.
		peakBound = 100 << 20
		// What the worker may write while nothing is taken: the socket's
		// buffers and the primary's read buffer, well under 1 MB here.
		writtenBound = 16 << 20
	)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), floodEnv+"="+strconv.Itoa(n))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	}()
	log := func() string { b, _ := os.ReadFile(logFile.Name()); return string(b) }
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	readLine := func() string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if ok {
				return l
			}
		case <-time.After(30 * time.Second):
		}
		t.Fatalf("the primary said nothing more; its log:\n%s", log())
		return ""
	}
	var pid int
	if _, err := fmt.Sscanf(readLine(), "worker %d", &pid); err != nil {
		t.Fatal(err)
	}
	primary := cmd.Process.Pid

	// Held back: the worker stops writing, with a tiny part of the flood
	// written.
	var written int64
	stopped := herdtest.Eventually(30*time.Second, func() bool {
		before := procField(t, pid, "io", "wchar")
		time.Sleep(300 * time.Millisecond)
		written = procField(t, pid, "io", "wchar")
		return written == before && written > 0
	})
	if !stopped {
		t.Fatalf("the worker never stopped writing: %d MiB written while the handler took nothing", written>>20)
	}
	if written > writtenBound {
		t.Errorf("the worker wrote %d MiB of its %d MiB flood while the handler took nothing: the primary read ahead of its handler", written>>20, flood>>20)
	}
	if peak := procField(t, primary, "status", "VmHWM") << 10; peak > peakBound {
		t.Errorf("the primary peaked at %d MiB while its handler took nothing (%d MiB written to it)", peak>>20, written>>20)
	}

	// Released: every message arrives, in order.
	report := func() (handled, gaps int, done bool) {
		t.Helper()
		fmt.Fprintln(stdin, "report")
		l := readLine()
		if _, err := fmt.Sscanf(l, "handled %d gaps %d done %t", &handled, &gaps, &done); err != nil {
			t.Fatalf("report %q: %v", l, err)
		}
		return
	}
	if handled, _, _ := report(); handled != 0 {
		t.Fatalf("the handler took %d messages before it was released", handled)
	}
	fmt.Fprintln(stdin, "release")
	var handled, gaps int
	var done bool
	herdtest.Eventually(120*time.Second, func() bool {
		handled, gaps, done = report()
		return done || gaps > 0
	})
	if handled != n || gaps != 0 || !done {
		t.Errorf("the handler took %d of %d messages, %d out of order or after a gap, flood-done %v: want every message, in order", handled, n, gaps, done)
	}
	if total := procField(t, pid, "io", "wchar"); total < flood {
		t.Errorf("the worker wrote %d MiB in all, want the whole %d MiB flood", total>>20, flood>>20)
	}
	if peak := procField(t, primary, "status", "VmHWM") << 10; peak > peakBound {
		t.Errorf("the primary peaked at %d MiB during a %d MiB flood", peak>>20, flood>>20)
	}

	stdin.Close() // stops the cluster
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Errorf("the primary: %v; its log:\n%s", err, log())
		}
	case <-time.After(30 * time.Second):
		t.Errorf("the primary did not stop; its log:\n%s", log())
	}
}
