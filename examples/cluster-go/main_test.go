package main

import (
	"bufio"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herd-sh/herd/internal/herdtest"
)

// The test binary runs the example's main when EXAMPLE_MAIN is set; the
// example's self-forked workers are copies of it and inherit the variable.
func TestMain(m *testing.M) {
	if os.Getenv("EXAMPLE_MAIN") == "1" {
		os.Args = append(os.Args[:1], strings.Fields(os.Getenv("EXAMPLE_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestPrimaryCountsTheWorkersRequests(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "EXAMPLE_MAIN=1", "EXAMPLE_ARGS=-addr 127.0.0.1:0 -workers 2", "GORACE=atexit_sleep_ms=0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	first := <-lines
	addr, ok := strings.CutPrefix(first, "listening on ")
	if !ok {
		t.Fatalf("first line %q", first)
	}
	// Every request is answered (a failure is retried until the deadline,
	// which only a cluster that serves nothing reaches); count the answers
	// of each worker.
	c := herdtest.NewClient(false)
	const n = 60
	answered := map[int]int{}
	ok2, failed := 0, 0
	var lastErr error
	deadline := time.Now().Add(20 * time.Second)
	for ok2 < n && time.Now().Before(deadline) {
		if r, err := herdtest.Get(c, "http://"+addr+"/"); err == nil {
			ok2++
			answered[r.ID]++
		} else {
			failed++
			lastErr = err
			time.Sleep(20 * time.Millisecond)
		}
	}
	c.CloseIdleConnections()
	if ok2 != n {
		t.Errorf("%d of %d requests answered (%d attempts failed, the last with %v)", ok2, n, failed, lastErr)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	var rest []string
	for l := range lines {
		rest = append(rest, l)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("example exited with %v; output %q", err, rest)
	}
	re := regexp.MustCompile(`^total (\d+) requests$`)
	if len(rest) == 0 || !re.MatchString(rest[0]) {
		t.Fatalf("output %q, want a total", rest)
	}
	total, _ := strconv.Atoi(re.FindStringSubmatch(rest[0])[1])
	if total != ok2 || total == 0 {
		t.Errorf("total %d, but %d requests were answered", total, ok2)
	}
	// A line per worker that answered, with as many as it answered.
	printed := map[int]int{}
	for _, l := range rest[1:] {
		var id, k int
		if _, err := fmt.Sscanf(l, "worker %d: %d", &id, &k); err != nil {
			t.Errorf("output line %q is not \"worker ID: N\"", l)
			continue
		}
		printed[id] = k
	}
	if !maps.Equal(printed, answered) {
		t.Errorf("the example printed per-worker counts %v (output %q); the workers answered %v", printed, rest, answered)
	}
}
