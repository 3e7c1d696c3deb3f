package main

import (
	"bufio"
	"fmt"
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
	c := herdtest.NewClient(false)
	const n = 60
	ok2 := 0
	deadline := time.Now().Add(20 * time.Second)
	for ok2 < n && time.Now().Before(deadline) {
		if _, err := herdtest.Get(c, "http://"+addr+"/"); err == nil {
			ok2++
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}
	c.CloseIdleConnections()
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
	if total != ok2 {
		t.Errorf("total %d, but %d requests were answered", total, ok2)
	}
	sum := 0
	for _, l := range rest[1:] {
		var id, k int
		if _, err := fmt.Sscanf(l, "worker %d: %d", &id, &k); err == nil {
			sum += k
		}
	}
	if sum != total {
		t.Errorf("per-worker counts add up to %d, total says %d", sum, total)
	}
}
