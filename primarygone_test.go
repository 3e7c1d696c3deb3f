package herd_test

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herd-sh/herd/internal/testworker"
)

// A worker whose primary is gone exits: the channel ending is how it
// learns (docs/protocol.md, "The socket"). Each worker runs as a plain
// process with its channel's other end held by the test, which waits until
// the worker has said all it says at start (so that the end it sees is a
// clean end of stream, not a reset), closes its end, and expects the
// worker to exit 0 by itself. A worker that ignored the end would still be
// running when the (generous) bound passes, and is killed.
func TestWorkersExitWhenTheChannelEnds(t *testing.T) {
	root, _ := filepath.Abs(".")
	for _, tc := range []struct {
		name string
		cmd  []string
		last string // the last line the worker sends before it waits
	}{
		{"go", testworker.Command("lib"), `{"type":"herd.ready"}`},
		{"python3", []string{"python3", filepath.Join(root, "examples/python/chat.py")}, `"type":"herd.broadcast"`},
		{"node", []string{"node", filepath.Join(root, "examples/node/chat.js")}, `"type":"herd.broadcast"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := exec.LookPath(tc.cmd[0]); err != nil {
				t.Skipf("%s is not installed: skipping the test that its example worker exits with its primary", tc.cmd[0])
			}
			// Close-on-exec at once (under the fork lock: SOCK_CLOEXEC is
			// Linux's), so that no other test's child inherits an end.
			syscall.ForkLock.RLock()
			fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
			if err == nil {
				syscall.CloseOnExec(fds[0])
				syscall.CloseOnExec(fds[1])
			}
			syscall.ForkLock.RUnlock()
			if err != nil {
				t.Fatal(err)
			}
			mine := os.NewFile(uintptr(fds[0]), "primary-end")
			theirs := os.NewFile(uintptr(fds[1]), "worker-end")
			conn, err := net.FileConn(mine)
			mine.Close()
			if err != nil {
				theirs.Close()
				t.Fatal(err)
			}
			defer conn.Close()

			cmd := exec.Command(tc.cmd[0], tc.cmd[1:]...)
			cmd.Env = append(os.Environ(), "HERD_IPC_FD=3", "HERD_WORKER_ID=0", "HERD_WORKERS=1")
			cmd.ExtraFiles = []*os.File{theirs} // fd 3
			outFile, err := os.Create(filepath.Join(t.TempDir(), "output"))
			if err != nil {
				t.Fatal(err)
			}
			defer outFile.Close()
			output := func() string { b, _ := os.ReadFile(outFile.Name()); return string(b) }
			cmd.Stdout, cmd.Stderr = outFile, outFile
			err = cmd.Start()
			theirs.Close() // the worker holds the only copy of its end now
			if err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			defer func() {
				cmd.Process.Kill()
				<-exited
			}()

			conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			br := bufio.NewReader(conn)
			var said []string
			for len(said) == 0 || !strings.Contains(said[len(said)-1], tc.last) {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("the worker said %q, then: %v (want a line with %s); output:\n%s", said, err, tc.last, output())
				}
				said = append(said, strings.TrimSuffix(line, "\n"))
			}
			if br.Buffered() > 0 {
				t.Fatalf("the worker said more than expected at start: %q", said)
			}

			conn.Close() // the primary is gone
			select {
			case err := <-exited:
				exited <- err // for the deferred wait
				if code := cmd.ProcessState.ExitCode(); code != 0 {
					t.Errorf("the worker exited with %v after its channel ended, want status 0; output:\n%s", err, output())
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("the worker was still running 20s after its channel ended; output:\n%s", output())
			}
		})
	}
}
