package sockets

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// landings accepts the n connections just made to g, on whichever of its
// sockets they wait, and reports how many each socket (slot) took.
func landings(t *testing.T, g *Group, n int) []int {
	t.Helper()
	counts := make([]int, len(g.files))
	fds := make([]unix.PollFd, len(g.files))
	for i, f := range g.files {
		fds[i] = unix.PollFd{Fd: int32(f.Fd()), Events: unix.POLLIN}
	}
	deadline := time.Now().Add(5 * time.Second)
	for total := 0; total < n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d connections reached the group; per slot %v", total, n, counts)
		}
		if _, err := unix.Poll(fds, 100); err != nil && !errors.Is(err, unix.EINTR) {
			t.Fatal(err)
		}
		for i := range fds {
			if fds[i].Revents&unix.POLLIN == 0 {
				continue
			}
			// Poll said a connection waits and nothing else accepts here.
			c, _, err := unix.Accept4(int(fds[i].Fd), unix.SOCK_CLOEXEC)
			if err != nil {
				t.Fatalf("accept on slot %d: %v", i, err)
			}
			unix.Close(c)
			counts[i]++
			total++
		}
	}
	return counts
}

// dialFrom makes n connections from local (nil: the kernel's choice) to
// remote and closes them; they stay queued on the listening socket.
func dialFrom(t *testing.T, local *net.TCPAddr, remote string, n int) {
	t.Helper()
	d := net.Dialer{Timeout: 2 * time.Second}
	if local != nil {
		d.LocalAddr = local
	}
	for range n {
		c, err := d.Dial("tcp", remote)
		if err != nil {
			t.Fatalf("dial %s from %v: %v", remote, local, err)
		}
		c.Close()
	}
}

// probeSlot probes slot of group 0 n times and fails unless every
// connection reached that slot's socket.
func probeSlot(t *testing.T, s *Set, slot, n int) {
	t.Helper()
	remote, local, ok := s.ProbeTarget(0, slot)
	if !ok {
		t.Fatalf("ProbeTarget(0, %d) = %v, %v, not ok", slot, remote, local)
	}
	dialFrom(t, local, remote.String(), n)
	counts := landings(t, s.Groups[0], n)
	if counts[slot] != n {
		t.Fatalf("probe of slot %d from %v: per slot %v, want all %d on slot %d", slot, local, nonZero(counts), n, slot)
	}
}

// nonZero shows the slots that took connections, for large groups.
func nonZero(counts []int) map[int]int {
	m := map[int]int{}
	for slot, n := range counts {
		if n > 0 {
			m[slot] = n
		}
	}
	return m
}

// clientsSpread makes n ordinary connections from local and fails unless
// they all reached live slots, and every live slot took some.
func clientsSpread(t *testing.T, s *Set, local *net.TCPAddr, remote string, live []int, n int) {
	t.Helper()
	dialFrom(t, local, remote, n)
	counts := landings(t, s.Groups[0], n)
	for slot, got := range counts {
		isLive := slices.Contains(live, slot)
		if got > 0 && !isLive {
			t.Errorf("from %v: %d of %d connections went to slot %d, not live (live %v, per slot %v)", local, got, n, slot, live, counts)
		}
		if got == 0 && isLive && n >= 20*len(live) {
			t.Errorf("from %v: live slot %d got none of %d (per slot %v)", local, slot, n, counts)
		}
	}
}

func TestProbesReachTheSlotTheyName(t *testing.T) { bothPrograms(t, testProbesReachTheSlotTheyName) }

func testProbesReachTheSlotTheyName(t *testing.T, classic bool) {
	s := openProgram(t, classic, 4, "127.0.0.1:0")
	port := s.Groups[0].Addr.(*net.TCPAddr).Port
	for slot := range 4 {
		remote, local, ok := s.ProbeTarget(0, slot)
		wantLocal := fmt.Sprintf("127.254.0.%d:0", slot)
		if !ok || remote.String() != fmt.Sprintf("127.0.0.1:%d", port) || local.String() != wantLocal {
			t.Fatalf("ProbeTarget(0, %d) = %v, %v, %v; want 127.0.0.1:%d, %s, true", slot, remote, local, ok, port, wantLocal)
		}
	}
	addr := s.Groups[0].Addr.String()

	// Open attached the program: no Steer has been called yet.
	for slot := range 4 {
		probeSlot(t, s, slot, 25)
	}
	clientsSpread(t, s, nil, addr, []int{0, 1, 2, 3}, 80)

	// Clients are kept off dead slots; probes still reach every slot.
	live := []int{1, 3}
	if err := s.Steer(live); err != nil {
		t.Fatal(err)
	}
	clientsSpread(t, s, nil, addr, live, 60)
	for slot := range 4 {
		probeSlot(t, s, slot, 25)
	}
	// Sources just outside 127.254.0.0/16, and probes of slots this group
	// does not have, are ordinary clients. 127.253.0.0 and 127.255.0.2
	// would read as slots 0 and 2 were the prefix test wrong.
	for _, src := range []string{"127.253.0.0", "127.255.0.2", "127.254.0.4", "127.254.0.9", "127.254.1.0", "127.0.0.2"} {
		clientsSpread(t, s, &net.TCPAddr{IP: net.ParseIP(src)}, addr, live, 20)
	}

	// Back to every slot.
	if err := s.Steer(nil); err != nil {
		t.Fatal(err)
	}
	clientsSpread(t, s, nil, addr, []int{0, 1, 2, 3}, 80)
	for slot := range 4 {
		probeSlot(t, s, slot, 10)
	}
}

// Slot numbers above 255 use the third byte of the address.
func TestProbesOfSlotsAbove255(t *testing.T) { bothPrograms(t, testProbesOfSlotsAbove255) }

func testProbesOfSlotsAbove255(t *testing.T, classic bool) {
	const slots = 300
	s := openProgram(t, classic, slots, "127.0.0.1:0")
	if _, local, _ := s.ProbeTarget(0, 258); local.String() != "127.254.1.2:0" {
		t.Fatalf("slot 258 probes from %v, want 127.254.1.2:0", local)
	}
	if err := s.Steer([]int{5}); err != nil {
		t.Fatal(err)
	}
	for _, slot := range []int{0, 1, 5, 255, 256, 258, slots - 1} {
		probeSlot(t, s, slot, 10)
	}
	clientsSpread(t, s, nil, s.Groups[0].Addr.String(), []int{5}, 20)
}

// On a dual-stack [::] listener IPv4 probes still pick their slot, and
// native IPv6 clients (whose header the probe test must not misread) are
// balanced over the live slots.
func TestProbesOnADualStackListener(t *testing.T) { bothPrograms(t, testProbesOnADualStackListener) }

func testProbesOnADualStackListener(t *testing.T, classic bool) {
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 here: %v", err)
	}
	l.Close()
	s := openProgram(t, classic, 4, "[::]:0")
	addr := s.Groups[0].Addr.(*net.TCPAddr)
	if !addr.IP.Equal(net.IPv6unspecified) {
		t.Fatalf("listener address %v, want [::] (dual-stack)", addr)
	}
	remote, _, _ := s.ProbeTarget(0, 0)
	if want := fmt.Sprintf("127.0.0.1:%d", addr.Port); remote.String() != want {
		t.Fatalf("probe remote %v, want %s", remote, want)
	}
	live := []int{0, 2}
	if err := s.Steer(live); err != nil {
		t.Fatal(err)
	}
	for slot := range 4 {
		probeSlot(t, s, slot, 20)
	}
	v6 := fmt.Sprintf("[::1]:%d", addr.Port)
	clientsSpread(t, s, nil, v6, live, 60)
	clientsSpread(t, s, nil, fmt.Sprintf("127.0.0.1:%d", addr.Port), live, 60)
}

// A listener on one non-loopback IPv4 address is probed on that address,
// still from 127.254.0.0/16.
func TestProbesOnASpecificAddress(t *testing.T) { bothPrograms(t, testProbesOnASpecificAddress) }

func testProbesOnASpecificAddress(t *testing.T, classic bool) {
	var ip net.IP
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			ip = n.IP.To4()
			break
		}
	}
	if ip == nil {
		t.Skip("no non-loopback IPv4 address here")
	}
	s := openProgram(t, classic, 3, net.JoinHostPort(ip.String(), "0"))
	remote, _, _ := s.ProbeTarget(0, 1)
	if !remote.IP.Equal(ip) {
		t.Fatalf("probe remote %v, want %v", remote, ip)
	}
	if err := s.Steer([]int{0}); err != nil {
		t.Fatal(err)
	}
	for slot := range 3 {
		probeSlot(t, s, slot, 15)
	}
	clientsSpread(t, s, nil, s.Groups[0].Addr.String(), []int{0}, 20)
}

func TestProbeTargetWithoutPerSlotSteering(t *testing.T) {
	check := func(t *testing.T, s *Set, group, slot int, wantRemote string, wantOK bool) {
		t.Helper()
		remote, local, ok := s.ProbeTarget(group, slot)
		got := "<nil>"
		if remote != nil {
			got = remote.String()
		}
		if got != wantRemote || local != nil || ok != wantOK {
			t.Errorf("ProbeTarget(%d, %d) = %v, %v, %v; want %s, <nil>, %v", group, slot, got, local, ok, wantRemote, wantOK)
		}
	}
	t.Run("shared", func(t *testing.T) {
		s := mustOpen(t, Shared, 2, "127.0.0.1:0", "0.0.0.0:0")
		check(t, s, 0, 1, s.Groups[0].Addr.String(), false)
		port := s.Groups[1].Addr.(*net.TCPAddr).Port
		check(t, s, 1, 0, fmt.Sprintf("127.0.0.1:%d", port), false)
	})
	t.Run("one slot", func(t *testing.T) {
		for _, mode := range []Mode{Shared, Reuseport} {
			s := mustOpen(t, mode, 1, "127.0.0.1:0")
			check(t, s, 0, 0, s.Groups[0].Addr.String(), true)
		}
	})
	t.Run("unix", func(t *testing.T) {
		s := mustOpen(t, Reuseport, 2, "unix:"+filepath.Join(t.TempDir(), "s"))
		check(t, s, 0, 0, "<nil>", false)
	})
	t.Run("out of range", func(t *testing.T) {
		s := mustOpen(t, Reuseport, 2, "127.0.0.1:0")
		check(t, s, 0, 2, "<nil>", false)
		check(t, s, 0, -1, "<nil>", false)
		check(t, s, 1, 0, "<nil>", false)
	})
	t.Run("IPv6 only", func(t *testing.T) {
		l, err := net.Listen("tcp6", "[::1]:0")
		if err != nil {
			t.Skipf("no IPv6 here: %v", err)
		}
		l.Close()
		s := mustOpen(t, Reuseport, 2, "[::1]:0")
		check(t, s, 0, 1, s.Groups[0].Addr.String(), false)
	})
}

// Live sets in any order, with gaps: each run of consecutive live slots
// takes its share, and probes still reach every slot.
func TestSteerMapsRunsOfLiveSlots(t *testing.T) { bothPrograms(t, testSteerMapsRunsOfLiveSlots) }

func testSteerMapsRunsOfLiveSlots(t *testing.T, classic bool) {
	s := openProgram(t, classic, 8, "127.0.0.1:0")
	addr := s.Groups[0].Addr.String()
	for _, live := range [][]int{{0, 1, 3, 4, 5, 7}, {7, 5, 3, 3}, {6}, {1, 2, 3, 4, 5, 6, 7}} {
		if err := s.Steer(live); err != nil {
			t.Fatal(err)
		}
		clientsSpread(t, s, nil, addr, live, 40*len(live))
		for _, slot := range []int{0, 2, 6} {
			probeSlot(t, s, slot, 5)
		}
	}
}

// A group near herd's 4096-worker limit with one worker down: a program
// with one test per live slot would pass the kernel's 4096 instructions.
func TestSteerALargeGroup(t *testing.T) { bothPrograms(t, testSteerALargeGroup) }

func testSteerALargeGroup(t *testing.T, classic bool) {
	const slots = 3000
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < slots+200 {
		t.Skipf("open files limit %d is too low for %d sockets", lim.Cur, slots)
	}
	s := openProgram(t, classic, slots, "127.0.0.1:0")
	live := make([]int, 0, slots)
	for i := range slots {
		if i != 1500 {
			live = append(live, i)
		}
	}
	if err := s.Steer(live); err != nil {
		t.Fatal(err)
	}
	dialFrom(t, nil, s.Groups[0].Addr.String(), 300)
	if counts := landings(t, s.Groups[0], 300); counts[1500] != 0 {
		t.Fatalf("slot 1500 is down but took %d connections", counts[1500])
	}
	probeSlot(t, s, 1500, 5)
}
