package sockets

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

func mustOpen(t *testing.T, mode Mode, slots int, addrs ...string) *Set {
	t.Helper()
	specs, err := ParseSpecs(addrs)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(specs, mode, slots)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// bothPrograms runs test with each steering program: the round-robin
// one (skipped where the kernel refuses it) and the classic one.
func bothPrograms(t *testing.T, test func(t *testing.T, classic bool)) {
	if runtime.GOOS != "linux" {
		t.Skip("reuseport steering is Linux only")
	}
	t.Run("round-robin", func(t *testing.T) { test(t, false) })
	t.Run("classic", func(t *testing.T) { test(t, true) })
}

// openProgram opens a reuseport set steered by the round-robin program, or
// with classic by the classic one.
func openProgram(t *testing.T, classic bool, slots int, addrs ...string) *Set {
	t.Helper()
	specs, err := ParseSpecs(addrs)
	if err != nil {
		t.Fatal(err)
	}
	s, err := open(specs, Reuseport, slots, classic)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	want := "round-robin"
	if classic {
		want = "flow hash"
	}
	for _, g := range s.Groups {
		if got := g.Steering(); got != "" && got != want {
			if !classic && got == "flow hash" {
				t.Skipf("the kernel refused the round-robin program (%v): only the classic one is tested here", g.rrErr)
			}
			t.Fatalf("listener %s is steered by %q, want %q", g.Spec.Name, got, want)
		}
	}
	return s
}

// accepted counts the connections waiting on each socket of g.
func accepted(t *testing.T, g *Group) []int {
	t.Helper()
	counts := make([]int, len(g.files))
	for i, f := range g.files {
		l, err := net.FileListener(f) // a copy of the fd
		if err != nil {
			t.Fatal(err)
		}
		tl := l.(*net.TCPListener)
		for {
			tl.SetDeadline(time.Now().Add(50 * time.Millisecond))
			c, err := tl.Accept()
			if err != nil {
				break
			}
			c.Close()
			counts[i]++
		}
		l.Close()
	}
	return counts
}

func dialN(t *testing.T, addr string, n int) {
	t.Helper()
	for range n {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		c.Close()
	}
}

// Steer must route by slot: socket i of a group is slot i.
func TestSteerSendsNewConnectionsToLiveSlotsOnly(t *testing.T) {
	bothPrograms(t, testSteerSendsNewConnectionsToLiveSlotsOnly)
}

func testSteerSendsNewConnectionsToLiveSlotsOnly(t *testing.T, classic bool) {
	if runtime.GOOS != "linux" {
		t.Skip("reuseport steering is Linux only")
	}
	s := openProgram(t, classic, 3, "127.0.0.1:0")
	g := s.Groups[0]
	addr := g.Addr.String()
	for _, live := range [][]int{{1}, {2}, {0, 2}} {
		if err := s.Steer(live); err != nil {
			t.Fatal(err)
		}
		dialN(t, addr, 40)
		counts := accepted(t, g)
		total := 0
		for slot, n := range counts {
			total += n
			isLive := false
			for _, l := range live {
				isLive = isLive || l == slot
			}
			if n > 0 && !isLive {
				t.Errorf("live %v: %d connections went to slot %d", live, n, slot)
			}
			if n == 0 && isLive && len(live) > 1 {
				t.Errorf("live %v: slot %d got none of 40", live, slot)
			}
		}
		if total != 40 {
			t.Errorf("live %v: %d of 40 connections accepted", live, total)
		}
	}
	// No live slot: every socket takes its share again.
	if err := s.Steer(nil); err != nil {
		t.Fatal(err)
	}
	dialN(t, addr, 60)
	for slot, n := range accepted(t, g) {
		if n == 0 {
			t.Errorf("no live slot: slot %d got none of 60", slot)
		}
	}
}

func TestReuseportRefusesAPortAlreadyInUse(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reuseport is Linux only")
	}
	first := mustOpen(t, Reuseport, 2, "127.0.0.1:0")
	addr := first.Groups[0].Addr.String()
	// Without the probe a second group of the same user would silently
	// share the port.
	specs, _ := ParseSpecs([]string{addr})
	_, err := Open(specs, Reuseport, 2)
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "listen tcp "+addr) {
		t.Fatalf("second reuseport group on %s: %v, want address in use naming it", addr, err)
	}
}

func TestSharedGivesEverySlotTheSameSocket(t *testing.T) {
	s := mustOpen(t, Shared, 4, "127.0.0.1:0", "unix:"+filepath.Join(t.TempDir(), "s"))
	for slot := range 4 {
		files, names := s.Files(slot)
		if len(files) != 2 || files[0] != s.Groups[0].files[0] || names[0] != "listen0" || names[1] != "listen1" {
			t.Fatalf("slot %d: %v %v", slot, files, names)
		}
	}
}

func TestUnixSockets(t *testing.T) {
	dir := t.TempDir()
	t.Run("stale socket is replaced", func(t *testing.T) {
		path := filepath.Join(dir, "stale.sock")
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close() // the file stays, nobody listens: a dead primary's socket
		s := mustOpen(t, Shared, 1, "unix:"+path)
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("dial the new socket: %v", err)
		}
		c.Close()
		s.Close()
		if _, err := os.Lstat(path); !os.IsNotExist(err) {
			t.Fatalf("socket file left after Close: %v", err)
		}
	})
	t.Run("live socket is not stolen", func(t *testing.T) {
		path := filepath.Join(dir, "live.sock")
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		specs, _ := ParseSpecs([]string{"unix:" + path})
		if _, err := Open(specs, Shared, 1); err == nil || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("Open over a live socket: %v", err)
		}
	})
	t.Run("a regular file is left alone", func(t *testing.T) {
		path := filepath.Join(dir, "file")
		os.WriteFile(path, []byte("data"), 0o644)
		specs, _ := ParseSpecs([]string{"unix:" + path})
		if _, err := Open(specs, Shared, 1); err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("Open over a regular file: %v", err)
		}
		if b, _ := os.ReadFile(path); string(b) != "data" {
			t.Fatal("the file was touched")
		}
	})
	t.Run("a socket replaced by someone else is not removed", func(t *testing.T) {
		path := filepath.Join(dir, "swapped.sock")
		s := mustOpen(t, Shared, 1, "unix:"+path)
		os.Remove(path)
		os.WriteFile(path, nil, 0o644)
		s.Close()
		if _, err := os.Lstat(path); err != nil {
			t.Fatalf("Close removed a file that was not its socket: %v", err)
		}
	})
}

func TestOpenFailureLeavesNothingOpen(t *testing.T) {
	before, _ := os.ReadDir("/proc/self/fd")
	specs, _ := ParseSpecs([]string{"127.0.0.1:0", "unix:/nonexistent/dir/x.sock"})
	if _, err := Open(specs, Reuseport, 3); err == nil || !strings.Contains(err.Error(), "listener listen1") {
		t.Fatalf("err = %v", err)
	}
	after, _ := os.ReadDir("/proc/self/fd")
	if len(after) != len(before) {
		t.Fatalf("fds %d after a failed Open, %d before", len(after), len(before))
	}
}
