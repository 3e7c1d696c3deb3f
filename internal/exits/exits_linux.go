package exits

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// pfExiting is PF_EXITING in the flags of /proc/PID/stat: the task is in
// the kernel's exit path, from which there is no way back.
const pfExiting = 0x4

// Notifier reports processes that have begun to exit. It is safe for
// concurrent use.
type Notifier struct {
	f      *os.File // the taskstats netlink socket, read by read
	family uint16   // the taskstats generic netlink family id
	mask   string   // the CPUs registered for, as a cpulist

	mu      sync.Mutex
	watched map[int]chan struct{}

	reading sync.WaitGroup
}

// Open registers a taskstats listener for every CPU and starts reading
// it. It fails without CAP_NET_ADMIN in the host's namespaces, or on a
// kernel without taskstats.
func Open() (*Notifier, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("exits: netlink socket: %w", err)
	}
	n := &Notifier{watched: make(map[int]chan struct{})}
	if err := n.register(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	// Non-blocking, so that the runtime's poller reads it and Close
	// interrupts the reader.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("exits: %w", err)
	}
	n.f = os.NewFile(uintptr(fd), "taskstats")
	n.reading.Go(n.read)
	return n, nil
}

// register finds the taskstats family and asks for exit records of every
// CPU, on the still blocking socket fd (a reply is bounded by a timeout).
func (n *Notifier) register(fd int) error {
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("exits: bind netlink socket: %w", err)
	}
	tv := unix.NsecToTimeval(time.Second.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("exits: %w", err)
	}
	// A burst of exits (a whole pool killed) must not overflow the
	// socket at once; a record lost all the same is only a late notice.
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)

	buf := make([]byte, 64<<10)
	family := uint16(0)
	err := request(fd, buf, unix.GENL_ID_CTRL, unix.CTRL_CMD_GETFAMILY, 1,
		nlAttr(unix.CTRL_ATTR_FAMILY_NAME, unix.TASKSTATS_GENL_NAME+"\x00"),
		func(msg []byte) {
			attrs(msg, func(typ uint16, v []byte) {
				if typ == unix.CTRL_ATTR_FAMILY_ID && len(v) >= 2 {
					family = binary.NativeEndian.Uint16(v)
				}
			})
		})
	if err != nil {
		return fmt.Errorf("exits: find the taskstats netlink family: %w", err)
	}
	if family == 0 {
		return errors.New("exits: find the taskstats netlink family: no id in the answer")
	}
	mask, err := os.ReadFile("/sys/devices/system/cpu/possible")
	if err != nil {
		return fmt.Errorf("exits: %w", err)
	}
	n.family, n.mask = family, strings.TrimSpace(string(mask))
	err = request(fd, buf, family, unix.TASKSTATS_CMD_GET, unix.TASKSTATS_VERSION,
		nlAttr(unix.TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, n.mask+"\x00"), nil)
	if err != nil {
		return fmt.Errorf("exits: register a taskstats listener (needs CAP_NET_ADMIN in the host's namespaces): %w", err)
	}
	return nil
}

// request sends one generic netlink request with an ack asked for, hands
// the attributes of each answer of that family to answer (if not nil), and
// returns the error the ack carries. Exit records arriving meanwhile are
// skipped.
func request(fd int, buf []byte, family uint16, cmd, version uint8, attr []byte, answer func([]byte)) error {
	const seq = 1
	msg := genlMsg(family, unix.NLM_F_REQUEST|unix.NLM_F_ACK, seq, cmd, version, attr)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	for {
		k, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		for b := buf[:k]; len(b) >= nlmsgHdrLen; {
			size := int(binary.NativeEndian.Uint32(b))
			if size < nlmsgHdrLen || size > len(b) {
				break
			}
			typ, got := binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint32(b[8:])
			switch {
			case got != seq:
			case typ == unix.NLMSG_ERROR && size >= nlmsgHdrLen+4:
				if errno := -int32(binary.NativeEndian.Uint32(b[nlmsgHdrLen:])); errno != 0 {
					return unix.Errno(errno)
				}
				return nil
			case typ == family && answer != nil && size >= nlmsgHdrLen+genlHdrLen:
				answer(b[nlmsgHdrLen+genlHdrLen : size])
			}
			b = b[align(size, len(b)):]
		}
	}
}

// genlMsg encodes one generic netlink message.
func genlMsg(family, flags uint16, seq uint32, cmd, version uint8, attr []byte) []byte {
	msg := make([]byte, nlmsgHdrLen+genlHdrLen+len(attr))
	binary.NativeEndian.PutUint32(msg, uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], family)
	binary.NativeEndian.PutUint16(msg[6:], flags)
	binary.NativeEndian.PutUint32(msg[8:], seq)
	msg[nlmsgHdrLen], msg[nlmsgHdrLen+1] = cmd, version
	copy(msg[nlmsgHdrLen+genlHdrLen:], attr)
	return msg
}

// nlAttr encodes one netlink attribute.
func nlAttr(typ uint16, value string) []byte {
	b := make([]byte, (nlaHdrLen+len(value)+3)&^3)
	binary.NativeEndian.PutUint16(b, uint16(nlaHdrLen+len(value)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[nlaHdrLen:], value)
	return b
}

// Watch returns a channel closed once process pid (a child of the caller,
// not yet reaped) has begun to exit. Call Forget when it no longer
// matters, at the latest once pid is reaped.
func (n *Notifier) Watch(pid int) <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	ch, ok := n.watched[pid]
	if !ok {
		ch = make(chan struct{})
		n.watched[pid] = ch
	}
	return ch
}

// Forget stops watching pid.
func (n *Notifier) Forget(pid int) {
	n.mu.Lock()
	delete(n.watched, pid)
	n.mu.Unlock()
}

// Close deregisters the listener and waits for the reader to end.
// Channels not closed yet stay open.
func (n *Notifier) Close() error {
	// Without this the kernel drops the listener only when a send to the
	// closed socket fails.
	if rc, err := n.f.SyscallConn(); err == nil {
		msg := genlMsg(n.family, unix.NLM_F_REQUEST, 0, unix.TASKSTATS_CMD_GET, unix.TASKSTATS_VERSION,
			nlAttr(unix.TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK, n.mask+"\x00"))
		rc.Write(func(fd uintptr) bool {
			unix.Sendto(int(fd), msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
			return true
		})
	}
	err := n.f.Close()
	n.reading.Wait()
	return err
}

// read reads exit records until the socket is closed. A receive queue
// that overflowed (ENOBUFS) lost records, which waitid still covers; any
// other error ends the notices.
func (n *Notifier) read() {
	buf := make([]byte, 64<<10)
	for {
		k, err := n.f.Read(buf)
		if errors.Is(err, unix.ENOBUFS) {
			continue
		}
		if err != nil {
			return
		}
		parse(buf[:k], n.family, n.record)
	}
}

// record closes the channel of the process r is about, if it is watched
// and /proc confirms it is exiting.
func (n *Notifier) record(r record) {
	pid, group := r.tgid, true
	if pid == 0 {
		pid, group = r.pid, false
	}
	n.mu.Lock()
	ch, ok := n.watched[pid]
	n.mu.Unlock()
	if !ok || !exiting(pid, group) {
		return
	}
	n.mu.Lock()
	if n.watched[pid] == ch {
		delete(n.watched, pid)
		close(ch)
	}
	n.mu.Unlock()
}

// exiting checks a record against /proc: the process must be exiting
// (PF_EXITING, a zombie, or reaped already), which also rules out a
// record left over from a previous owner of the pid. A record for one
// thread (group false) speaks for the process only if that thread is its
// last one: a leader thread can end while the others go on.
func exiting(pid int, group bool) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return false
	}
	// From the state (field 3) on: flags is field 9, num_threads 20.
	f := strings.Fields(s[i+1:])
	if len(f) < 18 {
		return false
	}
	if f[0] == "Z" || f[0] == "X" {
		return true
	}
	flags, err := strconv.ParseUint(f[6], 10, 64)
	if err != nil || flags&pfExiting == 0 {
		return false
	}
	return group || f[17] == "1"
}
