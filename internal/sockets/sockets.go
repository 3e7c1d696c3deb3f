package sockets

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Mode says how the sockets of one listener are shared by worker slots.
type Mode int

const (
	// Shared gives every slot the same listening socket; whichever worker
	// accepts first wins the connection.
	Shared Mode = iota
	// Reuseport opens one SO_REUSEPORT socket per slot on the same address,
	// so that the kernel spreads new connections across slots.
	Reuseport
)

// ErrUnsupported is returned for a feature this platform lacks.
var ErrUnsupported = errors.New("not supported on this platform")

// ErrNotPermitted is returned for a feature this process lacks the
// privilege for.
var ErrNotPermitted = errors.New("not permitted")

// Group is every socket the primary holds for one listener spec.
type Group struct {
	Spec Spec
	// Addr is the bound address, with the port resolved when 0 was asked.
	Addr net.Addr
	// mu guards files, which grows when the cluster scales up.
	mu sync.RWMutex
	// files holds one socket per slot in reuseport mode, else one socket.
	files []*os.File
	// unixIno identifies the socket file we created, so Close removes it
	// only if it is still ours.
	unixIno uint64
	// steered is set once the kernel has taken a steering program for this
	// reuseport group. Every such program sends probes to the slot they
	// name (see ProbeTarget), and a program stays attached until the next
	// one replaces it, so once set it stays set.
	steered atomic.Bool
	// rr is the round-robin program steering the group, when the kernel
	// took it; rrErr why it did not (the classic program steers then).
	rr    *roundRobin
	rrErr error
}

// Set is every listening socket of a cluster. The primary opens it before
// any worker starts and closes it after the last worker has exited.
type Set struct {
	Groups  []*Group
	mode    Mode
	classic bool         // never try the round-robin program
	slots   atomic.Int64 // slots the sockets are open for
	// live is the last live set given to Steer, for Grow to re-steer with.
	liveMu sync.Mutex
	live   []int
}

// Open opens every listener for slots worker slots. On error nothing is
// left open and the error names the address.
func Open(specs []Spec, mode Mode, slots int) (*Set, error) {
	return open(specs, mode, slots, false)
}

// open is Open; with classic, reuseport groups are steered by the classic
// program even where the round-robin one would load (for its tests).
func open(specs []Spec, mode Mode, slots int, classic bool) (*Set, error) {
	if mode == Reuseport && !reuseportSupported {
		return nil, fmt.Errorf("--balance reuseport: %w (SO_REUSEPORT balancing needs Linux); use --balance shared", ErrUnsupported)
	}
	s := &Set{mode: mode, classic: classic}
	s.slots.Store(int64(slots))
	for _, spec := range specs {
		g, err := openGroup(spec, mode, slots)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("listener %s: %w", spec.Name, err)
		}
		s.Groups = append(s.Groups, g)
	}
	if mode == Reuseport {
		// Attach the program at once, spreading over every slot, so that
		// health and readiness probes reach the slot they name from the
		// first worker's start on, before any Steer. A kernel that refuses
		// it still balances by its own hashing: the cluster can run, the
		// same error comes back from every Steer, whose caller reports it,
		// and ProbeTarget says that probes cannot pick their slot.
		_ = s.Steer(nil)
	}
	return s, nil
}

func openGroup(spec Spec, mode Mode, slots int) (*Group, error) {
	g := &Group{Spec: spec}
	if spec.Network == "unix" {
		f, ino, addr, err := openUnix(spec.Address)
		if err != nil {
			return nil, err
		}
		g.files, g.unixIno, g.Addr = []*os.File{f}, ino, addr
		return g, nil
	}
	n := 1
	if mode == Reuseport {
		n = slots
		// Sockets with SO_REUSEPORT silently join a group another process
		// of this user already holds on the port; bind once without it
		// first so that an address in use is an error, as in shared mode.
		if _, port, _ := net.SplitHostPort(spec.Address); port != "0" {
			if err := probeFree(spec.Address); err != nil {
				return nil, err
			}
		}
	}
	address := spec.Address
	for i := 0; i < n; i++ {
		f, addr, err := listenTCP(address, mode == Reuseport)
		if err != nil {
			g.close()
			return nil, err
		}
		g.files = append(g.files, f)
		if i == 0 {
			g.Addr = addr
			// Later sockets of the group must bind the port the first got.
			host, _, _ := net.SplitHostPort(spec.Address)
			address = net.JoinHostPort(host, strconv.Itoa(addr.(*net.TCPAddr).Port))
		}
	}
	return g, nil
}

// listenTCP opens a listening socket and returns it as a file; the
// net.Listener used to make it is closed so that exactly one fd remains.
func listenTCP(address string, reuseport bool) (*os.File, net.Addr, error) {
	const op = "listen tcp "
	lc := net.ListenConfig{}
	// Go listens with MPTCP by default where the kernel has it; such
	// sockets take no reuseport BPF program, and workers expect plain TCP.
	lc.SetMultipathTCP(false)
	if reuseport {
		lc.Control = setReuseport
	}
	l, err := lc.Listen(context.Background(), "tcp", address)
	if err != nil {
		return nil, nil, err
	}
	addr := l.Addr()
	f, err := detach(l.(*net.TCPListener), op+address)
	if err != nil {
		return nil, nil, fmt.Errorf("%s%s: %w", op, address, err)
	}
	return f, addr, nil
}

func openUnix(path string) (*os.File, uint64, net.Addr, error) {
	abstract := path[0] == '@'
	if !abstract {
		if err := clearStaleUnix(path); err != nil {
			return nil, 0, nil, err
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, 0, nil, err
	}
	ul := l.(*net.UnixListener)
	// The file stays bound after this listener is closed; Set.Close
	// removes it at the end of the run.
	ul.SetUnlinkOnClose(false)
	addr := ul.Addr()
	f, err := detach(ul, "listen unix "+path)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("listen unix %s: %w", path, err)
	}
	var ino uint64
	if !abstract {
		if fi, err := os.Lstat(path); err == nil {
			ino = inode(fi)
		}
	}
	return f, ino, addr, nil
}

// clearStaleUnix removes a socket file left by a process that is gone, and
// refuses to touch a live socket or a file that is not a socket.
func clearStaleUnix(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listen unix %s: %w", path, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("listen unix %s: a file that is not a socket is in the way", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("listen unix %s: address already in use (a live process listens there)", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("listen unix %s: checking the existing socket: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("listen unix %s: removing stale socket: %w", path, err)
	}
	return nil
}

// Files returns the sockets a worker in slot gets, in LISTEN_FDS order,
// and their names for LISTEN_FDNAMES.
func (s *Set) Files(slot int) ([]*os.File, []string) {
	files := make([]*os.File, 0, len(s.Groups))
	names := make([]string, 0, len(s.Groups))
	for _, g := range s.Groups {
		files = append(files, g.file(slot))
		names = append(names, g.Spec.Name)
	}
	return files, names
}

func (g *Group) file(slot int) *os.File {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if len(g.files) == 1 {
		return g.files[0]
	}
	return g.files[slot%len(g.files)]
}

// Sockets reports how many sockets the primary holds for this listener.
func (g *Group) Sockets() int {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return len(g.files)
}

// Steering says how the kernel spreads new connections over the group's
// sockets: "round-robin" (herd's eBPF program), "flow hash" (herd's
// classic BPF program, where the kernel refused the eBPF one), "kernel
// hash" (no program: the kernel refused both), or "" for a group of one
// socket, which has nothing to spread.
func (g *Group) Steering() string {
	g.mu.RLock()
	defer g.mu.RUnlock()
	switch {
	case len(g.files) < 2:
		return ""
	case g.rr != nil:
		return "round-robin"
	case g.steered.Load():
		return "flow hash"
	}
	return "kernel hash"
}

// RoundRobinErr says why the kernel did not take the round-robin program
// (where Steering is "flow hash"), nil if it did or was not asked.
func (g *Group) RoundRobinErr() error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.rrErr
}

// Grow opens the sockets of slots up to n in reuseport mode (shared mode
// needs none), when the cluster scales up. Sockets are never closed while
// the cluster runs, so a scale-down followed by a scale-up reuses them and
// socket index i stays slot i.
func (s *Set) Grow(n int) error {
	if s.mode != Reuseport || int64(n) <= s.slots.Load() {
		return nil
	}
	for _, g := range s.Groups {
		if g.Spec.Network != "tcp" {
			continue
		}
		if err := g.grow(n); err != nil {
			return fmt.Errorf("listener %s: %w", g.Spec.Name, err)
		}
	}
	s.slots.Store(int64(n))
	s.liveMu.Lock()
	live := s.live
	s.liveMu.Unlock()
	// The program knows how many sockets there are (for probes).
	return s.Steer(live)
}

func (g *Group) grow(n int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	host, _, _ := net.SplitHostPort(g.Spec.Address)
	address := net.JoinHostPort(host, strconv.Itoa(g.Addr.(*net.TCPAddr).Port))
	for len(g.files) < n {
		f, _, err := listenTCP(address, true)
		if err != nil {
			return err
		}
		g.files = append(g.files, f)
	}
	return nil
}

// Close closes every socket and removes the Unix socket files it created.
func (s *Set) Close() error {
	var errs []error
	for _, g := range s.Groups {
		errs = append(errs, g.close())
	}
	return errors.Join(errs...)
}

func (g *Group) close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	var errs []error
	for _, f := range g.files {
		errs = append(errs, f.Close())
	}
	g.files = nil
	g.rr.close()
	g.rr = nil
	if g.Spec.Network == "unix" && g.unixIno != 0 {
		if fi, err := os.Lstat(g.Spec.Address); err == nil && inode(fi) == g.unixIno {
			if err := os.Remove(g.Spec.Address); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
