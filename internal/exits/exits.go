// Package exits tells the primary that a worker has begun to die, before
// the kernel reports its exit to its parent.
//
// A process killed by a signal is reported to its parent (SIGCHLD,
// waitid, a pidfd) only at the very end of its exit, after the kernel has
// torn down its memory and closed its files: for a Node worker with a
// 60 MB heap that is 4–7 ms after the kill on a small machine, and more
// for bigger processes. The primary restarts a crashed worker at once, so
// those milliseconds are part of the time its clients wait for a
// replacement.
//
// Linux's taskstats interface (the netlink family behind delay accounting
// and getdelays) sends a record for every task as it begins to exit,
// before any of that teardown. A Notifier listens to those records and
// closes the channel of a watched process when its record arrives and
// /proc confirms the process is exiting (a record can name a thread that
// exits alone, or come from a pid's earlier owner): only a process that
// is past the point of no return is ever reported.
//
// Registering a taskstats listener needs CAP_NET_ADMIN in the host's user
// and pid namespaces (root outside a container). Open fails otherwise, and
// off Linux; the caller then waits for the parent notification alone, as
// before. A listener receives a record for every task that exits on the
// machine (a few hundred bytes each, read and dropped unless watched).
package exits

import (
	"encoding/binary"
	"errors"
)

// ErrUnsupported is wrapped by Open's error off Linux.
var ErrUnsupported = errors.New("exits: not supported on this system")

// record is what one taskstats message says: the thread that exits, and
// the thread group when that thread is the last of it (the whole process
// is exiting).
type record struct {
	pid  int // TASKSTATS_TYPE_PID (a thread id; the pid for its leader)
	tgid int // TASKSTATS_TYPE_TGID, or 0
}

// The netlink and taskstats numbers parse needs: part of the kernel's ABI
// (linux/netlink.h, linux/genetlink.h, linux/taskstats.h), written out so
// that the parser builds, and is fuzzed, everywhere.
const (
	nlmsgHdrLen  = 16
	genlHdrLen   = 4
	nlaHdrLen    = 4
	nlaTypeMask  = 0x3fff // without NLA_F_NESTED and NLA_F_NET_BYTEORDER
	typePID      = 1      // TASKSTATS_TYPE_PID
	typeTGID     = 2      // TASKSTATS_TYPE_TGID
	typeAggrPID  = 4      // TASKSTATS_TYPE_AGGR_PID
	typeAggrTGID = 5      // TASKSTATS_TYPE_AGGR_TGID
)

// parse calls f for each exit record in b, one datagram read from the
// taskstats socket (one or more netlink messages). Messages of other types
// than family (acks, errors) and malformed parts are skipped: a record
// that cannot be read is one the primary learns of from waitid instead.
func parse(b []byte, family uint16, f func(record)) {
	for len(b) >= nlmsgHdrLen {
		n := int(binary.NativeEndian.Uint32(b))
		if n < nlmsgHdrLen || n > len(b) {
			return
		}
		if binary.NativeEndian.Uint16(b[4:]) == family && n >= nlmsgHdrLen+genlHdrLen {
			var r record
			attrs(b[nlmsgHdrLen+genlHdrLen:n], func(typ uint16, v []byte) {
				switch typ {
				case typeAggrPID:
					r.pid = u32Attr(v, typePID)
				case typeAggrTGID:
					r.tgid = u32Attr(v, typeTGID)
				}
			})
			if r.pid > 0 || r.tgid > 0 {
				f(r)
			}
		}
		b = b[align(n, len(b)):]
	}
}

// attrs calls f for each netlink attribute in b.
func attrs(b []byte, f func(typ uint16, v []byte)) {
	for len(b) >= nlaHdrLen {
		n := int(binary.NativeEndian.Uint16(b))
		if n < nlaHdrLen || n > len(b) {
			return
		}
		f(binary.NativeEndian.Uint16(b[2:])&nlaTypeMask, b[nlaHdrLen:n])
		b = b[align(n, len(b)):]
	}
}

// u32Attr returns the value of the u32 attribute typ nested in b, or 0.
func u32Attr(b []byte, typ uint16) int {
	v := 0
	attrs(b, func(t uint16, a []byte) {
		if t == typ && len(a) >= 4 {
			v = int(binary.NativeEndian.Uint32(a))
		}
	})
	return v
}

// align rounds a netlink length up to 4 bytes, within max.
func align(n, max int) int { return min((n+3)&^3, max) }
