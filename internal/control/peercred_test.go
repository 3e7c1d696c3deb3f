package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The tests here run this test binary again as another user (TestMain
// sends it to runHelper), to see what the kernel and the server let
// through. They need root to switch users.
const (
	helperEnv     = "HERD_CONTROL_TEST_HELPER" // "call" or "listen"
	helperPathEnv = "HERD_CONTROL_TEST_PATH"
	nobody        = 65534
)

// helperResult is what a "call" helper reports on stdout.
type helperResult struct {
	Err              string
	Remote, Perm, NR bool
}

func runHelper(mode string) int {
	path := os.Getenv(helperPathEnv)
	switch mode {
	case "call":
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var res helperResult
		if err := Call(ctx, path, "status", nil, nil); err != nil {
			res = helperResult{err.Error(), errors.Is(err, ErrRemote), errors.Is(err, fs.ErrPermission), errors.Is(err, ErrNotRunning)}
		}
		json.NewEncoder(os.Stdout).Encode(res)
		return 0
	case "listen":
		// A plain socket of this user, not a Server: what a socket planted
		// by someone else looks like to a client.
		ln, err := net.Listen("unix", path)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		os.Chmod(path, 0o666)
		fmt.Println("ready")
		c, err := ln.Accept()
		if err != nil {
			fmt.Println(err)
			return 1
		}
		n, _ := io.Copy(io.Discard, c)
		fmt.Printf("received %d bytes\n", n)
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
	return 2
}

// helperBase makes a directory every user can traverse, holding a copy of
// this test binary that every user can run (go test's own build directory
// is private to us).
func helperBase(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs a client as another uid to check the socket's permissions and peer credentials")
	}
	base, err := os.MkdirTemp("/tmp", "herd-control-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o711); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(base, "helper.test"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	return base
}

func helperCmd(ctx context.Context, base string, uid uint32, mode, path string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(base, "helper.test"))
	cmd.Dir = base
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperPathEnv+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}}
	cmd.Stderr = os.Stderr
	return cmd
}

func callAs(t *testing.T, base string, uid uint32, path string) helperResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := helperCmd(ctx, base, uid, "call", path).Output()
	if err != nil {
		t.Fatalf("client helper as uid %d: %v (output %q)", uid, err, out)
	}
	var res helperResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("client helper output %q: %v", out, err)
	}
	return res
}

func TestOtherUserIsRefused(t *testing.T) {
	base := helperBase(t)
	path := filepath.Join(base, "ctl", "h.sock")
	s := listen(t, path)
	var refused atomic.Int64
	refused.Store(-1)
	s.OnRefused = func(uid int) { refused.Store(int64(uid)) }
	var ran atomic.Bool
	start(t, s, func(ctx context.Context, req Request, reply func(any) error) error {
		ran.Store(true)
		return nil
	})

	// With the modes Listen sets, the kernel stops another user at once.
	res := callAs(t, base, nobody, path)
	if !res.Perm || !strings.Contains(res.Err, "control socket "+path+": permission denied") {
		t.Errorf("with the default modes: got %+v, want a permission error naming the path", res)
	}
	if refused.Load() != -1 {
		t.Errorf("OnRefused ran for a client that could not even connect")
	}

	// Open the directory and the socket to everyone: now only the peer
	// credential check stands in the way.
	if err := os.Chmod(filepath.Dir(path), 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	res = callAs(t, base, nobody, path)
	want := fmt.Sprintf("permission denied: uid %d may not control this herd (owner uid 0)", nobody)
	if !res.Remote || res.Err != want {
		t.Errorf("with open modes: got %+v, want the server's refusal %q", res, want)
	}
	if got := refused.Load(); got != nobody {
		t.Errorf("OnRefused got uid %d, want %d", got, nobody)
	}
	if ran.Load() {
		t.Errorf("the handler ran for a refused peer")
	}

	// The owner is still served.
	if err := Call(context.Background(), path, "status", nil, nil); err != nil || !ran.Load() {
		t.Errorf("the owner's call: %v (handler ran: %v)", err, ran.Load())
	}
}

// A client must not send its request to a socket served by another
// (non-root) user: someone may have planted it.
func TestClientRefusesForeignServer(t *testing.T) {
	base := helperBase(t)
	dir := filepath.Join(base, "foreign")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "f.sock")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := helperCmd(ctx, base, nobody, "listen", path)
	out, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Wait()
	defer cancel() // kills the helper if the test fails before it is done
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("server helper: %q %v", lines.Text(), lines.Err())
	}

	res := callAs(t, base, nobody-1, path)
	want := fmt.Sprintf("control socket %s is served by uid %d, not by you (uid %d) or root: refusing to talk to it", path, nobody, nobody-1)
	if res.Err != want {
		t.Errorf("got %+v, want %q", res, want)
	}
	if !lines.Scan() || lines.Text() != "received 0 bytes" {
		t.Errorf("the foreign server got %q (%v), want nothing", lines.Text(), lines.Err())
	}
}
