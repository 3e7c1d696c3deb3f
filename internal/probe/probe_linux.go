package probe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// Supported says whether Accepting can tell anything on this system: it
// can on Linux.
const Supported = true

// wait is what a blocked syscall can be waiting for, as waitOf (one per
// architecture) classifies it.
type wait int

const (
	waitNone   wait = iota
	waitAccept      // accept, accept4: argument 1 is the listening fd
	waitPoll        // poll, ppoll: arguments 1 and 2 are a struct pollfd array and its length
	waitSelect      // select, pselect6: argument 1 is nfds, argument 2 the readfds set
)

const (
	// pollIn is POLLIN|POLLRDNORM, and EPOLLIN|EPOLLRDNORM (same bits):
	// asking for either is waiting for a connection on a listening socket.
	pollIn = 0x1 | 0x40
	// maxPollFds bounds how much of a poll array is read; a server polling
	// more fds than this is not worth 512 KiB of reads every few ms.
	maxPollFds = 1 << 16
	// pollChunk is how many pollfd entries (8 bytes each) one
	// process_vm_readv call reads.
	pollChunk = 512
)

// scan is the state of one Accepting call.
type scan struct {
	pgid int
	left map[uint64]bool // inodes not yet seen waited on
	buf  []byte          // contents of the /proc file read last
	dent []byte          // getdents buffer
	mem  []byte          // memory read from another process
	err  error           // first error that may have hidden a waiter
}

func accepting(pgid int, inodes []uint64) (bool, error) {
	return newScan(pgid, inodes).walk((*scan).process)
}

// walk calls visit for the processes of the group until every inode has
// been found, and reports whether they were. The leader is the worker
// itself, which nearly always is the process that accepts: looking at it
// first makes the answer for a ready worker cost one process's reads
// instead of a walk of all of /proc.
func (s *scan) walk(visit func(s *scan, pid int)) (bool, error) {
	if s.member(s.pgid) {
		visit(s, s.pgid)
	}
	if !s.done() {
		s.others(visit)
	}
	if s.done() {
		return true, nil
	}
	return false, s.err
}

func newScan(pgid int, inodes []uint64) *scan {
	s := &scan{
		pgid: pgid,
		left: make(map[uint64]bool, len(inodes)),
		buf:  make([]byte, 4096),
		dent: make([]byte, 8192),
	}
	for _, ino := range inodes {
		s.left[ino] = true
	}
	return s
}

func (s *scan) done() bool { return len(s.left) == 0 }

// note keeps the first error worth reporting. A process or thread that
// exits while it is looked at gives ENOENT or ESRCH: that is no error, it
// just waits on nothing any more.
func (s *scan) note(what string, err error) {
	if err == nil || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		return
	}
	if s.err == nil {
		s.err = fmt.Errorf("probe: %s: %w", what, err)
	}
}

// others visits every process of the group but its leader. There is no
// way to list a process group but to ask every process for its own.
func (s *scan) others(visit func(s *scan, pid int)) {
	names, err := s.list(unix.AT_FDCWD, "/proc")
	if err != nil {
		s.note("/proc", err)
		return
	}
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid == s.pgid {
			continue
		}
		if s.member(pid) {
			visit(s, pid)
			if s.done() {
				return
			}
		}
	}
}

// member reports whether pid is a process of the group. getpgid(2) asks
// the kernel directly, at a fraction of the cost of reading
// /proc/PID/stat. A zombie still counts, but has no fds left to look at.
func (s *scan) member(pid int) bool {
	pgid, err := unix.Getpgid(pid)
	return err == nil && pgid == s.pgid
}

// process looks at one process of the group: its epoll instances first
// (most servers), then what its threads are blocked in, if it holds one
// of the sockets still missing (a syscall can only name its own fds).
func (s *scan) process(pid int) {
	base, dir, ok := s.openProc(pid)
	if !ok {
		return
	}
	defer unix.Close(dir)
	held, epolls := s.fds(base, dir)
	for _, fd := range epolls {
		s.epoll(base, dir, fd)
		if s.done() {
			return
		}
	}
	for _, ino := range held {
		if s.left[ino] {
			s.threads(pid, base, dir, held)
			return
		}
	}
}

// openProc opens /proc/PID and returns its path and descriptor, for the
// caller to close; a failure is noted, and ok is false.
func (s *scan) openProc(pid int) (base string, dir int, ok bool) {
	base = "/proc/" + strconv.Itoa(pid)
	dir, err := unix.Open(base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		s.note(base, err)
		return base, -1, false
	}
	return base, dir, true
}

// fds returns the process's fds that are sockets still missing (fd to
// inode) and the fds that are epoll instances, from the links in
// /proc/PID/fd ("socket:[123]", "anon_inode:[eventpoll]").
func (s *scan) fds(base string, dir int) (held map[int]uint64, epolls []int) {
	fdDir, err := unix.Openat(dir, "fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		s.note(base+"/fd", err)
		return nil, nil
	}
	defer unix.Close(fdDir)
	names, err := s.list(fdDir, ".")
	if err != nil {
		s.note(base+"/fd", err)
		return nil, nil
	}
	var link [64]byte
	for _, name := range names {
		n, err := unix.Readlinkat(fdDir, name, link[:])
		if err != nil {
			continue // closed since the listing
		}
		target := link[:n]
		fd, _ := strconv.Atoi(name)
		switch {
		case string(target) == "anon_inode:[eventpoll]":
			epolls = append(epolls, fd)
		case bytes.HasPrefix(target, []byte("socket:[")):
			ino, err := strconv.ParseUint(string(bytes.Trim(target[len("socket:["):], "]")), 10, 64)
			if err == nil && s.left[ino] {
				if held == nil {
					held = make(map[int]uint64)
				}
				held[fd] = ino
			}
		}
	}
	return held, epolls
}

// epoll marks the sockets that epoll instance fd watches for input. Its
// /proc/PID/fdinfo has one line per watched file:
//
//	tfd:       19 events:       19 data: 13  pos:0 ino:c754cc sdev:9
//
// with events and ino in hex. A one-shot entry that fired and was not
// re-armed shows no EPOLLIN, so it does not count, as it should not.
func (s *scan) epoll(base string, dir, fd int) {
	name := "fdinfo/" + strconv.Itoa(fd)
	b, err := s.read(dir, name)
	if err != nil {
		s.note(base+"/"+name, err)
		return
	}
	for line := range bytes.Lines(b) {
		if !bytes.HasPrefix(line, []byte("tfd:")) {
			continue
		}
		var events, ino uint64
		f := bytes.Fields(line)
		for i, field := range f {
			switch {
			case string(field) == "events:" && i+1 < len(f):
				events, _ = strconv.ParseUint(string(f[i+1]), 16, 32)
			case bytes.HasPrefix(field, []byte("ino:")):
				ino, _ = strconv.ParseUint(string(field[len("ino:"):]), 16, 64)
			}
		}
		if events&pollIn != 0 && s.left[ino] {
			delete(s.left, ino)
		}
	}
}

// threads marks the sockets in held that a thread of the process is
// blocked on in accept, poll or select.
func (s *scan) threads(pid int, base string, dir int, held map[int]uint64) {
	tids, err := s.list(dir, "task")
	if err != nil {
		s.note(base+"/task", err)
		return
	}
	for _, tid := range tids {
		name := "task/" + tid + "/syscall"
		b, err := s.read(dir, name)
		if err != nil {
			s.note(base+"/"+name, err)
			continue
		}
		nr, args, ok := parseSyscall(b)
		if !ok {
			continue
		}
		var inos []uint64
		switch waitOf(nr) {
		case waitAccept:
			if ino, ok := held[int(args[0])]; ok {
				inos = append(inos, ino)
			}
		case waitPoll:
			inos, err = s.polled(pid, uintptr(args[0]), args[1], held)
		case waitSelect:
			inos, err = s.selected(pid, args[0], uintptr(args[1]), held)
		default:
			continue
		}
		if err != nil {
			s.note(fmt.Sprintf("read memory of pid %d", pid), err)
			continue
		}
		if len(inos) == 0 {
			continue
		}
		// The memory was read after the syscall's arguments: believe it
		// only if the thread is still in the same call (same arguments,
		// same stack and instruction pointers), not in a later one that
		// reuses the memory for something else.
		if waitOf(nr) != waitAccept {
			before := string(b)
			if b, err := s.read(dir, name); err != nil || string(b) != before {
				continue
			}
		}
		for _, ino := range inos {
			delete(s.left, ino)
		}
		if s.done() {
			return
		}
	}
}

// polled returns the inodes of the sockets in held that the struct pollfd
// array at addr (nfds entries of int32 fd, int16 events, int16 revents, in
// pid's memory) asks input for.
func (s *scan) polled(pid int, addr uintptr, nfds uint64, held map[int]uint64) ([]uint64, error) {
	var inos []uint64
	nfds = min(nfds, maxPollFds)
	for off := uint64(0); off < nfds; off += pollChunk {
		n := min(nfds-off, pollChunk)
		b, err := s.peek(pid, addr+uintptr(off*8), int(n*8))
		if err != nil || b == nil {
			return inos, err
		}
		for e := b; len(e) >= 8; e = e[8:] {
			fd := int32(binary.NativeEndian.Uint32(e))
			events := binary.NativeEndian.Uint16(e[4:])
			if ino, ok := held[int(fd)]; ok && fd >= 0 && events&pollIn != 0 {
				inos = append(inos, ino)
			}
		}
	}
	return inos, nil
}

// selected returns the inodes of the sockets in held whose bit is set in
// the readfds set at addr in pid's memory (nfds bits in 64-bit words, as
// on every architecture waitOf knows).
func (s *scan) selected(pid int, nfds uint64, addr uintptr, held map[int]uint64) ([]uint64, error) {
	top := -1
	for fd := range held {
		if uint64(fd) < nfds {
			top = max(top, fd)
		}
	}
	if addr == 0 || top < 0 {
		return nil, nil
	}
	b, err := s.peek(pid, addr, (top/64+1)*8)
	if err != nil || b == nil {
		return nil, err
	}
	var inos []uint64
	for fd, ino := range held {
		if fd <= top && binary.NativeEndian.Uint64(b[fd/64*8:])>>(fd%64)&1 != 0 {
			inos = append(inos, ino)
		}
	}
	return inos, nil
}

// peek reads n bytes at addr in pid's memory. A read cut short or refused
// with EFAULT means the thread has moved on and unmapped the memory: not
// an error, just nothing to see (nil, nil).
func (s *scan) peek(pid int, addr uintptr, n int) ([]byte, error) {
	if len(s.mem) < n {
		s.mem = make([]byte, n)
	}
	b := s.mem[:n]
	local := []unix.Iovec{{Base: &b[0]}}
	local[0].SetLen(n)
	remote := []unix.RemoteIovec{{Base: addr, Len: n}}
	got, err := unix.ProcessVMReadv(pid, local, remote, 0)
	if errors.Is(err, unix.EFAULT) || (err == nil && got < n) {
		return nil, nil
	}
	return b, err
}

// parseSyscall parses /proc/PID/task/TID/syscall: "nr arg1 ... arg6 sp pc"
// (nr in decimal, the rest in hex) while the thread is blocked in a
// syscall; "-1 sp pc" or "running" otherwise, for which ok is false.
func parseSyscall(b []byte) (nr int64, args [6]uint64, ok bool) {
	f := bytes.Fields(b)
	if len(f) < 7 {
		return 0, args, false
	}
	nr, err := strconv.ParseInt(string(f[0]), 10, 64)
	if err != nil || nr < 0 {
		return 0, args, false
	}
	for i := range args {
		if args[i], err = strconv.ParseUint(string(bytes.TrimPrefix(f[i+1], []byte("0x"))), 16, 64); err != nil {
			return 0, args, false
		}
	}
	return nr, args, true
}

// read returns the whole of file name (relative to directory fd dir, or a
// path with unix.AT_FDCWD) in s.buf, valid until the next read.
func (s *scan) read(dir int, name string) ([]byte, error) {
	fd, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	n := 0
	for {
		if n == len(s.buf) {
			s.buf = append(s.buf, make([]byte, len(s.buf))...)
		}
		m, err := unix.Read(fd, s.buf[n:])
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return nil, err
		case m == 0:
			return s.buf[:n], nil
		}
		n += m
	}
}

// list returns the names in directory name (relative to dir), without "."
// and "..".
func (s *scan) list(dir int, name string) ([]string, error) {
	fd, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var names []string
	for {
		n, err := unix.ReadDirent(fd, s.dent)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(s.dent[:n], -1, names)
	}
}
