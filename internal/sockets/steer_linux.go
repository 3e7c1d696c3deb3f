package sockets

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

const reuseportSupported = true

// Classic BPF offsets (linux/filter.h). A reuseport program runs with the
// packet's data pointer past the TCP header; these negative offsets (as
// unsigned 32-bit numbers) reach other parts of the packet.
const (
	// skfAdOff starts the ancillary loads, which read skb fields.
	skfAdOff    = 0xfffff000 // SKF_AD_OFF, -0x1000
	skfAdRxhash = 32         // SKF_AD_RXHASH: the flow hash
	skfAdRandom = 56         // SKF_AD_RANDOM: a random number
	// skfNetOff+k reads byte k of the network (IP) header, wherever the
	// data pointer is: the kernel resolves it against the skb's network
	// header (bpf_skb_load_helper_convert_offset in current kernels,
	// bpf_internal_load_pointer_neg_helper in older ones), which for a
	// TCP packet in socket lookup lies in the skb's linear part.
	skfNetOff = 0xfff00000 // SKF_NET_OFF, -0x100000
)

// Offsets in an IP header (RFC 791, RFC 8200).
const (
	ipVersionOff = 0  // IPv4 and IPv6 alike: the version is the high nibble
	ipv4SrcOff   = 12 // source address, big-endian
)

// Steer limits new connections on every reuseport listener to the sockets
// of the live slots. Without it the kernel keeps hashing a share of new
// connections to the socket of a slot whose worker is down (crash-looping,
// in backoff), where they would wait for that slot's next start. An empty
// live set spreads connections over every socket again.
//
// Where the kernel takes an eBPF program (CAP_BPF), the live slots take
// new connections in turn (see roundRobin); elsewhere a classic program
// spreads them by flow hash (see steeringProgram).
//
// Probe connections (see ProbeTarget) are not steered by live: they reach
// the slot they name, live or not, because a probe must answer for that
// slot's worker even while clients are kept away from it.
//
// The kernel indexes a reuseport group's sockets in the order they started
// listening; Open creates them in slot order and the primary never closes
// one while the group lives, so socket index i is slot i.
func (s *Set) Steer(live []int) error {
	if s.mode != Reuseport {
		return nil
	}
	s.liveMu.Lock()
	s.live = append(s.live[:0], live...)
	s.liveMu.Unlock()
	var errs []error
	for _, g := range s.Groups {
		if err := g.steer(live, s.classic); err != nil {
			errs = append(errs, fmt.Errorf("steer %s: %w", g.Spec.Name, err))
		}
	}
	return errors.Join(errs...)
}

func (g *Group) steer(live []int, classic bool) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	// One socket (a group of one slot, or a unix: listener) has nothing
	// to choose between.
	if len(g.files) < 2 {
		return nil
	}
	targets := make([]uint32, 0, len(live))
	for _, slot := range live {
		if slot >= 0 && slot < len(g.files) {
			targets = append(targets, uint32(slot))
		}
	}
	if len(targets) == 0 {
		for i := range g.files {
			targets = append(targets, uint32(i))
		}
	}
	// Sorted, consecutive slots make runs, which keep the program short
	// (see steeringProgram).
	slices.Sort(targets)
	targets = slices.Compact(targets)
	// The round-robin program when the kernel takes it (see roundRobin),
	// else the classic one.
	if g.rrErr == nil && !classic {
		if g.rr == nil {
			g.rr, g.rrErr = newRoundRobin(g.files, targets)
		} else {
			g.rrErr = g.rr.update(g.files, targets)
		}
		if g.rrErr == nil {
			g.steered.Store(true)
			return nil
		}
		g.rr.close()
		g.rr = nil
	}
	return g.attach(steeringProgram(len(g.files), targets))
}

// attach replaces the group's steering program with prog.
func (g *Group) attach(prog []unix.SockFilter) error {
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	// The program belongs to the group, so attaching it through one socket
	// steers them all.
	raw, err := g.files[0].SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog)
	}); err != nil {
		return err
	}
	if serr != nil {
		return os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_CBPF", serr)
	}
	g.steered.Store(true)
	return nil
}

// steeringProgram returns the classic BPF program for a reuseport group of
// n sockets. The kernel runs it on the first packet of each new connection
// (the SYN, or the ACK of a SYN cookie) and gives the connection to the
// socket whose index it returns.
//
// A probe connection, an IPv4 packet from 127.254.0.0/16, goes to the slot
// its source address names, when the group has that slot. Anything else
// (clients, native IPv6, a probe of a slot the group lacks) goes to one of
// targets, which must be sorted and distinct: by the flow hash when the
// packet has one (so that a connection's packets agree), else by a random
// number.
//
// A load the kernel cannot satisfy ends a classic program with 0, which
// would pick slot 0; the loads here all lie in the linear part of a TCP
// packet that has reached socket lookup, so that does not happen.
func steeringProgram(n int, targets []uint32) []unix.SockFilter {
	const (
		ldW  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		ldH  = unix.BPF_LD | unix.BPF_H | unix.BPF_ABS
		ldB  = unix.BPF_LD | unix.BPF_B | unix.BPF_ABS
		rshK = unix.BPF_ALU | unix.BPF_RSH | unix.BPF_K
		addK = unix.BPF_ALU | unix.BPF_ADD | unix.BPF_K
		modK = unix.BPF_ALU | unix.BPF_MOD | unix.BPF_K
		jeqK = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jgeK = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
		retA = unix.BPF_RET | unix.BPF_A
	)
	// Probes. Jump offsets count the instructions skipped; each failed
	// test skips to the end of this block, where balancing starts.
	p := []unix.SockFilter{
		{Code: ldB, K: skfNetOff + ipVersionOff},   // 0: A = version << 4 | header length
		{Code: rshK, K: 4},                         // 1: A = IP version
		{Code: jeqK, Jt: 0, Jf: 5, K: 4},           // 2: not IPv4 (native IPv6): balance
		{Code: ldH, K: skfNetOff + ipv4SrcOff},     // 3: A = source address >> 16
		{Code: jeqK, Jt: 0, Jf: 3, K: probeNet},    // 4: not from 127.254.0.0/16: balance
		{Code: ldH, K: skfNetOff + ipv4SrcOff + 2}, // 5: A = source address & 0xffff, the slot
		{Code: jgeK, Jt: 1, Jf: 0, K: uint32(n)},   // 6: no such socket: balance
		{Code: retA},                               // 7: the probed slot
	}
	// Balancing: A = an index into targets.
	p = append(p,
		unix.SockFilter{Code: ldW, K: skfAdOff + skfAdRxhash},
		unix.SockFilter{Code: jeqK, Jt: 0, Jf: 1, K: 0}, // no flow hash: use a random number
		unix.SockFilter{Code: ldW, K: skfAdOff + skfAdRandom},
		unix.SockFilter{Code: modK, K: uint32(len(targets))},
	)
	// Index i goes to targets[i]. The sorted targets fall into runs of
	// consecutive slots, and within a run the slot is the index plus a
	// constant, so a run costs three instructions however long it is: a
	// classic program has at most 4096, and live slots are all slots but
	// the few whose worker is down. With every slot live the whole
	// mapping is "add 0, return".
	for lo := 0; lo < len(targets); {
		hi := lo + 1
		for hi < len(targets) && targets[hi] == targets[hi-1]+1 {
			hi++
		}
		if hi < len(targets) {
			// Index past this run: on to the next.
			p = append(p, unix.SockFilter{Code: jgeK, Jt: 2, Jf: 0, K: uint32(hi)})
		}
		p = append(p,
			unix.SockFilter{Code: addK, K: targets[lo] - uint32(lo)},
			unix.SockFilter{Code: retA},
		)
		lo = hi
	}
	return p
}
