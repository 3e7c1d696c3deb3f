package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herd-sh/herd/internal/herdtest"
)

// portApps are the unmodified servers of examples/: they bind $PORT and
// know nothing of herd.
func portApps(t *testing.T) []struct{ name, bin, file string } {
	root, _ := filepath.Abs("../..")
	return []struct{ name, bin, file string }{
		{"python", "python3", filepath.Join(root, "examples/python/port.py")},
		{"node", "node", filepath.Join(root, "examples/node/port.js")},
	}
}

// Proxy mode serves apps that only bind a port, with large bodies intact
// both ways.
func TestProxyModeServesUnmodifiedApps(t *testing.T) {
	t.Parallel()
	for _, app := range portApps(t) {
		t.Run(app.name, func(t *testing.T) {
			t.Parallel()
			if _, err := exec.LookPath(app.bin); err != nil {
				t.Skipf("%s is not installed: skipping its proxy test", app.bin)
			}
			h := startHerd(t, nil, "-w", "2", "--balance", "proxy", "-l", "127.0.0.1:0", "--", app.bin, app.file)
			waitServing(t, h, 2)
			base := "http://" + h.Addr("listen0")
			c := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			ports := map[string]bool{}
			for range 20 {
				resp, err := c.Get(base + "/")
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if !strings.HasPrefix(string(b), "hello from port ") {
					t.Fatalf("answer %q", b)
				}
				ports[strings.Fields(string(b))[3]] = true
			}
			if len(ports) != 2 {
				t.Errorf("answers came from ports %v, want both workers'", ports)
			}

			// 64 MiB up and back.
			body := make([]byte, 64<<20)
			rand.Read(body)
			resp, err := c.Post(base+"/echo", "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			got := sha256.New()
			n, err := io.Copy(got, resp.Body)
			resp.Body.Close()
			if err != nil || n != int64(len(body)) || !bytes.Equal(got.Sum(nil), sha(body)) {
				t.Fatalf("echo of 64 MiB: %d bytes back, err %v, checksum match %v", n, err, bytes.Equal(got.Sum(nil), sha(body)))
			}
			// 64 MiB down, the pattern checked byte for byte.
			const size = 64 << 20
			resp, err = c.Get(fmt.Sprintf("%s/bytes/%d", base, size))
			if err != nil {
				t.Fatal(err)
			}
			down, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || len(down) != size {
				t.Fatalf("download: %d bytes, %v", len(down), err)
			}
			for i, b := range down {
				if b != byte(i%251) {
					t.Fatalf("download byte %d is %d, want %d", i, b, i%251)
				}
			}
			h.Signal(syscall.SIGTERM)
			if code := h.Wait(20 * time.Second); code != 0 {
				t.Fatalf("exit %d", code)
			}
		})
	}
}

func sha(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

// kill -9 of a worker under load in proxy mode: the proxy tries the next
// worker when one refuses, so no connection that starts after the kill
// fails, and none hangs.
func TestProxyKilledWorkerFailsNoNewConnection(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 is not installed")
	}
	app := portApps(t)[0]
	h := startHerd(t, nil, "-w", "2", "--balance", "proxy", "-l", "127.0.0.1:0", "--", app.bin, app.file)
	waitServing(t, h, 2)
	ctl := controlOf(t, h)
	for round := range 3 {
		st := waitWorkers(t, ctl, 2)
		load := herdtest.StartLoad(h.Addr("listen0"), 4, false)
		time.Sleep(300 * time.Millisecond)
		victim := st.Workers[round%2].PID
		killed := time.Now()
		syscall.Kill(victim, syscall.SIGKILL)
		time.Sleep(500 * time.Millisecond)
		r := load.Stop()
		// A request the worker had accepted dies with it (at most one per
		// client), and so does one proxied to it while it was dying, before
		// the kernel closed its socket. herd sees the exit only after that:
		// none that started once herd logged it may fail.
		gone := loggedAt(t, h.WaitLog(fmt.Sprintf(`pid=%d status="signal: killed"`, victim), 10*time.Second))
		if n := r.FailedSince(gone); n > 0 {
			var when []string
			for _, at := range r.FailedAt {
				when = append(when, at.Sub(killed).String())
			}
			t.Errorf("round %d: %d requests that started after herd saw the worker exit (%v after the kill) failed (started at %v from the kill): %v",
				round, n, gone.Sub(killed), when, r.Errors)
		}
		if r.Failed > 4 || r.OK < 20 {
			t.Errorf("round %d: %d answers, %d failed", round, r.OK, r.Failed)
		}
		if r.Slowest > 5*time.Second {
			t.Errorf("round %d: a request took %v: stranded", round, r.Slowest)
		}
	}
}

// loggedAt is the time of a log line of herd's, rounded up to the next
// millisecond (the log has milliseconds).
func loggedAt(t *testing.T, line string) time.Time {
	t.Helper()
	m := regexp.MustCompile(`time=(\S+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no time in log line %q", line)
	}
	at, err := time.Parse(time.RFC3339Nano, m[1])
	if err != nil {
		t.Fatalf("log line %q: %v", line, err)
	}
	return at.Add(time.Millisecond)
}

// The hand-over examples take connections from the channel: Python with
// recv_fds, Node as net.Socket handles on its own IPC channel.
func TestHandoffExamples(t *testing.T) {
	t.Parallel()
	root, _ := filepath.Abs("../..")
	for _, app := range []struct{ name, bin, file string }{
		{"python", "python3", filepath.Join(root, "examples/python/handoff.py")},
		{"node", "node", filepath.Join(root, "examples/node/handoff.js")},
	} {
		t.Run(app.name, func(t *testing.T) {
			t.Parallel()
			if _, err := exec.LookPath(app.bin); err != nil {
				t.Skipf("%s is not installed", app.bin)
			}
			h := startHerd(t, nil, "-w", "2", "--balance", "round-robin", "-l", "127.0.0.1:0", "--", app.bin, app.file)
			waitServing(t, h, 2)
			seen := map[int]int{}
			for _, r := range replies(t, "http://"+h.Addr("listen0")+"/", 40, 4) {
				seen[r.ID]++
			}
			if seen[0] != 20 || seen[1] != 20 {
				t.Errorf("round-robin over 40 connections: %v, want 20 each", seen)
			}
			keep := herdtest.StartLoad(h.Addr("listen0"), 4, true)
			time.Sleep(300 * time.Millisecond)
			if code, _, stderr := herdCtl(t, controlOf(t, h), "reload"); code != 0 {
				t.Fatalf("reload: %s", stderr)
			}
			time.Sleep(300 * time.Millisecond)
			if r := keep.Stop(); r.Failed != 0 || r.OK < 20 {
				t.Errorf("keep-alive load over a reload: %d ok, %d failed: %v", r.OK, r.Failed, r.Errors)
			}
			h.Signal(syscall.SIGTERM)
			if code := h.Wait(20 * time.Second); code != 0 {
				t.Fatalf("exit %d", code)
			}
		})
	}
}
