package sockets

import "net"

// A probe connection names the slot it is for in its source address: the
// probe of slot s connects from 127.254.(s>>8).(s&255), so the low 16 bits
// of the address are the slot number (slot 0 is 127.254.0.0, slot 1
// 127.254.0.1, slot 258 127.254.1.2). Linux routes all of 127.0.0.0/8 to
// the loopback interface, so these addresses need no setup, and no real
// client connects from them; herd reserves 127.254.0.0/16 for its probes.
const (
	// probeNet is the upper half of every probe source address, 127.254.
	probeNet = 127<<8 | 254
	// maxProbeSlots is the number of slots the low half can name.
	maxProbeSlots = 1 << 16
)

// probeSource returns the address the probe of slot binds, port 0.
func probeSource(slot int) *net.TCPAddr {
	return &net.TCPAddr{IP: net.IPv4(127, 254, byte(slot>>8), byte(slot))}
}

// ProbeTarget says how a health or readiness probe of one worker slot
// reaches that worker through listener group (an index into Groups).
//
// remote is the address to connect to: the listener's address, with an
// unspecified host (0.0.0.0, or [::], which herd always opens dual-stack)
// replaced by 127.0.0.1. local is the address the probe must bind before
// connecting, or nil when any will do. ok reports whether a connection
// from local to remote is accepted by slot's socket and no other.
//
// In reuseport mode local is slot's address in 127.254.0.0/16 and the
// group's steering program sends the connection to that slot's socket,
// live or not. IPv4-mapped connections to a dual-stack socket arrive as
// IPv4, so this also works on [::]. ok is false, and remote the listener's
// address with local nil, when the probe can only reach whichever worker
// the kernel picks:
//   - in shared mode with more than one slot: every worker accepts from
//     the one socket;
//   - on a listener bound to a specific IPv6 address (such as [::1]):
//     IPv6 has a single loopback address, so there are no spare source
//     addresses to name slots with, and an IPv4 probe cannot reach an
//     IPv6-only socket;
//   - when the kernel refused the steering program (see Steer).
//
// A unix: listener has no TCP address: remote is nil and ok false. So is
// an out-of-range group or slot.
//
// ProbeTarget may be called concurrently with Steer, not after Close.
func (s *Set) ProbeTarget(group, slot int) (remote, local *net.TCPAddr, ok bool) {
	slots := int(s.slots.Load())
	if group < 0 || group >= len(s.Groups) || slot < 0 || slot >= slots {
		return nil, nil, false
	}
	g := s.Groups[group]
	addr, isTCP := g.Addr.(*net.TCPAddr)
	if !isTCP {
		return nil, nil, false
	}
	remote = &net.TCPAddr{IP: addr.IP, Port: addr.Port, Zone: addr.Zone}
	if addr.IP.IsUnspecified() {
		remote.IP, remote.Zone = net.IPv4(127, 0, 0, 1), ""
	}
	if g.Sockets() == 1 {
		// One socket for the whole group: every connection reaches it, and
		// it is slot's own only when the cluster has a single slot.
		return remote, nil, slots == 1
	}
	if remote.IP.To4() == nil || slot >= maxProbeSlots || !g.steered.Load() {
		return remote, nil, false
	}
	return remote, probeSource(slot), true
}
