package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herd-sh/herd/internal/testworker"
)

// A replacement passes --ready http only with its own answer. The worker
// it replaces shares the slot's socket until then (reuseport; in shared
// mode every worker shares the one socket) and answers whatever reaches
// it; were its 2xx taken for the new worker's, a reload to a version that
// never serves would stop the old worker and leave nothing serving.
func TestReadyHTTPIsTheNewWorkersOwnAnswer(t *testing.T) {
	t.Parallel()
	for _, balance := range []string{"reuseport", "shared"} {
		t.Run(balance, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			broken := filepath.Join(dir, "broken")
			// The broken version holds its socket and never accepts.
			script := filepath.Join(dir, "worker.sh")
			body := fmt.Sprintf("#!/bin/sh\nif [ -e %q ]; then exec %q %s sleep; fi\nexec %q %s http\n",
				broken, os.Args[0], testworker.Marker, os.Args[0], testworker.Marker)
			if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
				t.Fatal(err)
			}
			h := startHerd(t, nil, "-w", "1", "-l", "127.0.0.1:0", "--balance", balance,
				"--ready", "http:/health", "--ready-timeout", "1s", "--stop-timeout", "1s", "--", script)
			ctl := controlOf(t, h)
			old := waitWorkers(t, ctl, 1).Workers[0].PID
			url := "http://" + h.Addr("listen0") + "/"

			if err := os.WriteFile(broken, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			code, _, stderr := herdCtl(t, ctl, "reload")
			if code != 1 || !strings.Contains(stderr, "not ready within 1s (--ready http:/health)") {
				t.Fatalf("reload to a version that never serves: exit %d, stderr %q; want 1 and the readiness timeout", code, stderr)
			}
			if n := h.Count(`msg="worker ready"`); n != 1 {
				t.Errorf("%d workers were ready, want 1 (the first); herd's log:\n%s", n, h.Stderr())
			}
			for _, r := range replies(t, url, 10, 2) {
				if r.PID != old {
					t.Errorf("answer from pid %d after the failed reload, want the old worker %d", r.PID, old)
				}
			}

			// A version that serves passes, by its own answer.
			if err := os.Remove(broken); err != nil {
				t.Fatal(err)
			}
			if code, _, stderr := herdCtl(t, ctl, "reload"); code != 0 {
				t.Fatalf("reload to a version that serves: exit %d, stderr %q", code, stderr)
			}
			for _, r := range replies(t, url, 10, 2) {
				if r.PID == old {
					t.Errorf("answer from the old worker %d after a good reload", old)
				}
			}
		})
	}
}

// herd.ready counts only under --ready message (and auto): with another
// rule, that rule decides, even for a worker that says it is ready.
func TestReadyRuleOverridesTheWorkersWord(t *testing.T) {
	t.Parallel()
	h := startHerd(t, nil, argv("-w", "1", "-l", "127.0.0.1:0", "--ready", "delay:1500ms", worker("lib"))...)
	line := h.WaitLog(`msg="worker ready"`, 10*time.Second)
	_, after, _ := strings.Cut(line, "after=")
	if d, err := time.ParseDuration(strings.Fields(after + " ")[0]); err != nil || d < 1500*time.Millisecond {
		t.Errorf("a worker that says herd.ready was ready after %q under --ready delay:1500ms (line %q)", after, line)
	}
}
