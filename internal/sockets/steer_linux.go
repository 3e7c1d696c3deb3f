package sockets

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

const reuseportSupported = true

// Classic BPF ancillary loads (linux/filter.h).
const (
	skfAdOff    = 0xfffff000 // SKF_AD_OFF as an unsigned offset
	skfAdRxhash = 32
	skfAdRandom = 56
)

// Steer limits new connections on every reuseport listener to the sockets
// of the live slots. Without it the kernel keeps hashing a share of new
// connections to the socket of a slot whose worker is down (crash-looping,
// in backoff), where they would wait for that slot's next start. An empty
// live set spreads connections over every socket again.
//
// The kernel indexes a reuseport group's sockets in the order they started
// listening; Open creates them in slot order and the primary never closes
// one while the group lives, so socket index i is slot i.
func (s *Set) Steer(live []int) error {
	if s.mode != Reuseport {
		return nil
	}
	for _, g := range s.Groups {
		if len(g.files) < 2 {
			continue
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
		prog := steeringProgram(targets)
		fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
		// The program belongs to the group, so attaching it through one
		// socket steers them all.
		raw, err := g.files[0].SyscallConn()
		if err != nil {
			return fmt.Errorf("steer %s: %w", g.Spec.Name, err)
		}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog)
		}); err != nil {
			return fmt.Errorf("steer %s: %w", g.Spec.Name, err)
		}
		if serr != nil {
			return fmt.Errorf("steer %s: %w", g.Spec.Name, os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_CBPF", serr))
		}
	}
	return nil
}

// steeringProgram returns a classic BPF program that maps a connection to
// one of targets: by the flow hash when the packet has one (so a
// connection's packets agree), else by a random number.
func steeringProgram(targets []uint32) []unix.SockFilter {
	const (
		ldAbs  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		modK   = unix.BPF_ALU | unix.BPF_MOD | unix.BPF_K
		jeqK   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		retK   = unix.BPF_RET | unix.BPF_K
		retLen = 1
	)
	p := []unix.SockFilter{
		{Code: ldAbs, K: skfAdOff + skfAdRxhash},
		{Code: jeqK, Jt: 0, Jf: 1, K: 0}, // no flow hash: use a random number
		{Code: ldAbs, K: skfAdOff + skfAdRandom},
		{Code: modK, K: uint32(len(targets))},
	}
	for i, t := range targets {
		p = append(p,
			unix.SockFilter{Code: jeqK, Jt: 0, Jf: retLen, K: uint32(i)},
			unix.SockFilter{Code: retK, K: t},
		)
	}
	return append(p, unix.SockFilter{Code: retK, K: targets[0]})
}
