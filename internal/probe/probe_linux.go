package probe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
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

// How a scan that keeps its state between calls (a Watcher's) saves work,
// and how far it lets an answer lag (it never makes one up):
const (
	// walkEvery: the leader, the processes seen in the group before and
	// the children of those are looked at on every call; the rest of
	// /proc only on every walkEvery-th call (the first included). That
	// walk finds what the children lists cannot name: a child forked by
	// a thread other than the main one, a grandchild whose parent exited.
	walkEvery = 8
	// relinkEvery: an fd whose link was read on a call and that is still
	// open on the next is taken to be the same file, unless the process
	// opened or closed some fd meanwhile; all links are read again at
	// least every relinkEvery calls, as an fd closed and opened again
	// between two calls (with nothing else changing) goes unseen.
	relinkEvery = 8
)

// scan is the state of one look at a process group (Accepting, TakenBy),
// or of the repeated looks of one Watcher.
type scan struct {
	pgid   int
	inodes []uint64
	left   map[uint64]bool // inodes not yet seen waited on
	err    error           // first error that may have hidden a waiter
	calls  uint64          // calls so far, this one included

	procs map[int]*proc // group members looked at before, by pid
	queue []int         // pids to look at in this call, besides the leader

	buf    []byte         // contents of the /proc file read last
	dent   []byte         // getdents buffer
	mem    []byte         // memory read from another process
	held   map[int]uint64 // fds of the process looked at that are sockets still missing
	epolls []int          // fds of the process looked at that are epoll instances
	found  []int          // fds a thread is blocked on

	pids, tids, fdList []int // listings of /proc, task and fd directories
}

// proc is what a scan keeps of one process of the group between calls.
type proc struct {
	pid int
	// dir, fdDir and taskDir are /proc/PID, /proc/PID/fd and
	// /proc/PID/task, kept open (taskDir from its first use, else -1):
	// they name this very process even if it exits and its pid is
	// reused, and rewinding a directory costs less than opening it again.
	dir, fdDir, taskDir int
	// files are the process's /proc files read on every call, kept open
	// for the same reason: each read from the start of such a file makes
	// its contents anew (the kernel looks up the thread, or the fd, again).
	files      map[fileKey]keptFile
	fds        map[int]fdEntry // what each open fd was, at its last readlink
	listed     []int           // the fds of the last listing, in order
	sinceLinks int             // calls since every link was read
	seen       uint64          // the last call that looked at the process
	gone       bool            // the kept directories are of a process that exited
}

// fdEntry is what one fd of a process was when its link was read.
type fdEntry struct {
	kind fdKind
	ino  uint64 // for fdSocket
	read uint64 // the call that read the link
}

// fileKey names a file of a process: task/N/syscall, fdinfo/N or
// task/N/children.
type fileKey struct {
	kind fileKind
	n    int
}

type fileKind uint8

const (
	fileSyscall fileKind = iota
	fileFdinfo
	fileChildren
)

func (k fileKey) name() string {
	switch k.kind {
	case fileSyscall:
		return "task/" + strconv.Itoa(k.n) + "/syscall"
	case fileFdinfo:
		return "fdinfo/" + strconv.Itoa(k.n)
	default:
		return "task/" + strconv.Itoa(k.n) + "/children"
	}
}

// keptFile is an open file of fileKey's, and the last call that read it.
type keptFile struct {
	fd   int
	used uint64
}

// maxKept bounds the files kept open per process: a process with
// hundreds of threads should not cost the primary hundreds of fds.
const maxKept = 64

type fdKind uint8

const (
	fdOther fdKind = iota
	fdEpoll
	fdSocket
)

func newScan(pgid int, inodes []uint64) *scan {
	return &scan{
		pgid:   pgid,
		inodes: inodes,
		left:   make(map[uint64]bool, len(inodes)),
		procs:  make(map[int]*proc),
		held:   make(map[int]uint64),
		buf:    make([]byte, 4096),
		dent:   make([]byte, 8192),
	}
}

// close releases the fds kept for the group's processes.
func (s *scan) close() {
	for pid := range s.procs {
		s.forget(pid)
	}
}

func (s *scan) accepting() (bool, error) {
	return s.walk((*scan).process)
}

// walk calls visit for the processes of the group until every inode has
// been found, and reports whether they were. The leader is the worker
// itself, which nearly always is the process that accepts: looking at it
// first makes the answer for a ready worker cost one process's reads
// instead of a walk of all of /proc.
//
// There is no way to list a process group but to ask every process for
// its own, and that walk of /proc costs more than the rest of a call. A
// scan that is called again (a Watcher's) does it only every walkEvery
// calls, or when the leader is gone; in between, it looks at the
// members that earlier calls found and at the children of every member
// it looks at, which is where a worker that accepts outside its leader
// (sh -c, npm start, a pre-forking server) nearly always does.
func (s *scan) walk(visit func(s *scan, p *proc)) (bool, error) {
	s.calls++
	s.err = nil
	clear(s.left)
	for _, ino := range s.inodes {
		s.left[ino] = true
	}
	all := (s.calls-1)%walkEvery == 0
	s.queue = s.queue[:0]
	if s.member(s.pgid) {
		s.visit(s.pgid, visit, !all)
	} else {
		all = true // no leader whose children to follow
	}
	if all {
		if !s.done() {
			s.others(visit)
		}
	} else {
		for pid := range s.procs {
			s.queue = append(s.queue, pid)
		}
		// Visiting appends the children of the visited to the queue.
		for i := 0; i < len(s.queue) && !s.done(); i++ {
			if pid := s.queue[i]; !s.visited(pid) {
				if s.member(pid) {
					s.visit(pid, visit, true)
				} else {
					s.forget(pid)
				}
			}
		}
	}
	// Release what is kept of processes that left the group or exited.
	for pid := range s.procs {
		if !s.visited(pid) && !s.member(pid) {
			s.forget(pid)
		}
	}
	if s.done() {
		return true, nil
	}
	return false, s.err
}

// visited reports whether process pid was visited in this call.
func (s *scan) visited(pid int) bool {
	p := s.procs[pid]
	return p != nil && p.seen == s.calls
}

// visit calls visit for process pid of the group and, with children,
// queues its children (those of its main thread: /proc lists children
// per thread) to be looked at next.
func (s *scan) visit(pid int, visit func(s *scan, p *proc), children bool) {
	for range 2 {
		kept := s.procs[pid] != nil
		p := s.open(pid)
		if p == nil {
			return
		}
		p.seen = s.calls
		visit(s, p)
		if p.gone {
			// The process whose directories were kept exited: pid, a
			// member of the group still, is a new process, worth a look.
			s.forget(pid)
			if kept {
				continue
			}
			return
		}
		if children && !s.done() {
			s.children(p)
		}
		return
	}
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

// others visits every process of the group not visited yet in this call.
func (s *scan) others(visit func(s *scan, p *proc)) {
	pids, err := s.listDir(s.pids[:0], unix.AT_FDCWD, "/proc")
	s.pids = pids
	if err != nil {
		s.note("/proc", err)
		return
	}
	for _, pid := range pids {
		if s.visited(pid) {
			continue
		}
		if s.member(pid) {
			s.visit(pid, visit, false)
			if s.done() {
				return
			}
		}
	}
}

// children queues the children of p's main thread.
func (s *scan) children(p *proc) {
	key := fileKey{fileChildren, p.pid}
	b, err := s.readFile(p, key)
	if err != nil {
		s.note(procPath(p.pid, key.name()), err)
		return
	}
	for f := range bytes.FieldsSeq(b) {
		if pid, ok := atoi(f); ok {
			s.queue = append(s.queue, pid)
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

// open returns the kept state of process pid, opening its /proc
// directories if it has none; nil (and the failure noted) if it cannot.
func (s *scan) open(pid int) *proc {
	if p := s.procs[pid]; p != nil {
		return p
	}
	base := procPath(pid, "")
	dir, err := unix.Open(base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		s.note(base, err)
		return nil
	}
	fdDir, err := unix.Openat(dir, "fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(dir)
		s.note(base+"/fd", err)
		return nil
	}
	p := &proc{
		pid: pid, dir: dir, fdDir: fdDir, taskDir: -1,
		files: make(map[fileKey]keptFile),
		fds:   make(map[int]fdEntry),
	}
	s.procs[pid] = p
	return p
}

// forget drops the state kept of process pid.
func (s *scan) forget(pid int) {
	if p := s.procs[pid]; p != nil {
		for _, f := range p.files {
			unix.Close(f.fd)
		}
		if p.taskDir >= 0 {
			unix.Close(p.taskDir)
		}
		unix.Close(p.fdDir)
		unix.Close(p.dir)
		delete(s.procs, pid)
	}
}

func procPath(pid int, name string) string {
	if name == "" {
		return "/proc/" + strconv.Itoa(pid)
	}
	return "/proc/" + strconv.Itoa(pid) + "/" + name
}

// process looks at one process of the group: its epoll instances first
// (most servers), then what its threads are blocked in, if it holds one
// of the sockets still missing (a syscall can only name its own fds).
func (s *scan) process(p *proc) {
	s.fds(p)
	for _, fd := range s.epolls {
		s.epoll(p, fd)
		if s.done() {
			return
		}
	}
	for _, ino := range s.held {
		if s.left[ino] {
			s.threads(p)
			return
		}
	}
}

// fds sets s.held to the process's fds that are sockets still missing (fd
// to inode) and s.epolls to its fds that are epoll instances, from the
// links in /proc/PID/fd ("socket:[123]", "anon_inode:[eventpoll]").
//
// Links read on an earlier call are believed while the process's fds
// stay the same ones (see relinkEvery). A stale belief can only hide a
// waiter for a while, never show one that is not there: an fd believed to
// be an epoll instance is read, and says what it watches, whatever it is
// now; an fd believed to be a missing socket is read again before a
// thread blocked on it counts (see confirm).
func (s *scan) fds(p *proc) {
	clear(s.held)
	s.epolls = s.epolls[:0]
	fds, err := s.rewind(s.fdList[:0], p.fdDir)
	s.fdList = fds
	if err != nil {
		p.gone = errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
		s.note(procPath(p.pid, "fd"), err)
		return
	}
	p.sinceLinks++
	relink := p.sinceLinks >= relinkEvery || !slices.Equal(fds, p.listed)
	if relink {
		p.sinceLinks = 0
		clear(p.fds)
		// Files not read for a while are of threads or fds that are no
		// more, or no longer of interest.
		for k, f := range p.files {
			if f.used+relinkEvery < s.calls {
				unix.Close(f.fd)
				delete(p.files, k)
			}
		}
	}
	p.listed = append(p.listed[:0], fds...)
	for _, fd := range fds {
		e, ok := p.fds[fd]
		if !ok {
			if e, ok = s.link(p, fd); !ok {
				continue // closed since the listing
			}
			p.fds[fd] = e
		}
		switch {
		case e.kind == fdEpoll:
			s.epolls = append(s.epolls, fd)
		case e.kind == fdSocket && s.left[e.ino]:
			s.held[fd] = e.ino
		}
	}
}

// link reads what fd of p is now.
func (s *scan) link(p *proc, fd int) (fdEntry, bool) {
	var link [64]byte
	n, err := unix.Readlinkat(p.fdDir, strconv.Itoa(fd), link[:])
	if err != nil {
		return fdEntry{}, false
	}
	e := fdEntry{read: s.calls}
	target := link[:n]
	switch {
	case string(target) == "anon_inode:[eventpoll]":
		e.kind = fdEpoll
	case bytes.HasPrefix(target, []byte("socket:[")) && bytes.HasSuffix(target, []byte("]")):
		if ino, err := strconv.ParseUint(string(target[len("socket:["):n-1]), 10, 64); err == nil {
			e.kind, e.ino = fdSocket, ino
		}
	}
	return e, true
}

// confirm reports whether fd of p is still the socket ino, reading its
// link again unless that was done in this call.
func (s *scan) confirm(p *proc, fd int, ino uint64) bool {
	if e := p.fds[fd]; e.read == s.calls {
		return e.kind == fdSocket && e.ino == ino
	}
	e, ok := s.link(p, fd)
	if !ok {
		delete(p.fds, fd)
		return false
	}
	p.fds[fd] = e
	return e.kind == fdSocket && e.ino == ino
}

// epoll marks the sockets that epoll instance fd of p watches for input.
// Its /proc/PID/fdinfo has one line per watched file:
//
//	tfd:       19 events:       19 data: 13  pos:0 ino:c754cc sdev:9
//
// with events and ino in hex. A one-shot entry that fired and was not
// re-armed shows no EPOLLIN, so it does not count, as it should not. Only
// an epoll instance's fdinfo has tfd lines.
func (s *scan) epoll(p *proc, fd int) {
	key := fileKey{fileFdinfo, fd}
	b, err := s.readFile(p, key)
	if err != nil {
		s.note(procPath(p.pid, key.name()), err)
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

// threads marks the sockets in s.held that a thread of p is blocked on in
// accept, poll or select.
func (s *scan) threads(p *proc) {
	if p.taskDir < 0 {
		fd, err := unix.Openat(p.dir, "task", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			s.note(procPath(p.pid, "task"), err)
			return
		}
		p.taskDir = fd
	}
	tids, err := s.rewind(s.tids[:0], p.taskDir)
	s.tids = tids
	if err != nil {
		s.note(procPath(p.pid, "task"), err)
		return
	}
	for _, tid := range tids {
		key := fileKey{fileSyscall, tid}
		b, err := s.readFile(p, key)
		if err != nil {
			s.note(procPath(p.pid, key.name()), err)
			continue
		}
		nr, args, ok := parseSyscall(b)
		if !ok {
			continue
		}
		fds := s.found[:0]
		switch waitOf(nr) {
		case waitAccept:
			if _, ok := s.held[int(args[0])]; ok {
				fds = append(fds, int(args[0]))
			}
		case waitPoll:
			fds, err = s.polled(fds, p.pid, uintptr(args[0]), args[1])
		case waitSelect:
			fds, err = s.selected(fds, p.pid, args[0], uintptr(args[1]))
		default:
			continue
		}
		s.found = fds
		if err != nil {
			s.note(fmt.Sprintf("read memory of pid %d", p.pid), err)
			continue
		}
		if len(fds) == 0 {
			continue
		}
		// The memory was read after the syscall's arguments: believe it
		// only if the thread is still in the same call (same arguments,
		// same stack and instruction pointers), not in a later one that
		// reuses the memory for something else.
		if waitOf(nr) != waitAccept {
			before := string(b)
			if b, err := s.readFile(p, key); err != nil || string(b) != before {
				continue
			}
		}
		for _, fd := range fds {
			if ino := s.held[fd]; s.confirm(p, fd, ino) {
				delete(s.left, ino)
			}
		}
		if s.done() {
			return
		}
	}
}

// polled appends to fds those in s.held that the struct pollfd array at
// addr (nfds entries of int32 fd, int16 events, int16 revents, in pid's
// memory) asks input for.
func (s *scan) polled(fds []int, pid int, addr uintptr, nfds uint64) ([]int, error) {
	nfds = min(nfds, maxPollFds)
	for off := uint64(0); off < nfds; off += pollChunk {
		n := min(nfds-off, pollChunk)
		b, err := s.peek(pid, addr+uintptr(off*8), int(n*8))
		if err != nil || b == nil {
			return fds, err
		}
		for e := b; len(e) >= 8; e = e[8:] {
			fd := int32(binary.NativeEndian.Uint32(e))
			events := binary.NativeEndian.Uint16(e[4:])
			if _, ok := s.held[int(fd)]; ok && fd >= 0 && events&pollIn != 0 {
				fds = append(fds, int(fd))
			}
		}
	}
	return fds, nil
}

// selected appends to fds those in s.held whose bit is set in the readfds
// set at addr in pid's memory (nfds bits in 64-bit words, as on every
// architecture waitOf knows).
func (s *scan) selected(fds []int, pid int, nfds uint64, addr uintptr) ([]int, error) {
	top := -1
	for fd := range s.held {
		if uint64(fd) < nfds {
			top = max(top, fd)
		}
	}
	if addr == 0 || top < 0 {
		return fds, nil
	}
	b, err := s.peek(pid, addr, (top/64+1)*8)
	if err != nil || b == nil {
		return fds, err
	}
	for fd := range s.held {
		if fd <= top && binary.NativeEndian.Uint64(b[fd/64*8:])>>(fd%64)&1 != 0 {
			fds = append(fds, fd)
		}
	}
	return fds, nil
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

// readFile returns the whole of p's file key in s.buf, valid until the
// next read, keeping the file open for the next calls (up to maxKept
// files). A kept file that fails is opened again before giving up.
func (s *scan) readFile(p *proc, key fileKey) ([]byte, error) {
	if f, ok := p.files[key]; ok {
		b, err := s.readAt(f.fd)
		if err == nil {
			p.files[key] = keptFile{fd: f.fd, used: s.calls}
			return b, nil
		}
		// Most likely the thread exited and its tid names a new one:
		// open the file again.
		unix.Close(f.fd)
		delete(p.files, key)
	}
	fd, err := unix.Openat(p.dir, key.name(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	b, err := s.readAt(fd)
	if err != nil || len(p.files) >= maxKept {
		unix.Close(fd)
		return b, err
	}
	p.files[key] = keptFile{fd: fd, used: s.calls}
	return b, nil
}

// readAt returns the whole of the open file fd, read from its start, in
// s.buf, valid until the next read.
func (s *scan) readAt(fd int) ([]byte, error) {
	n := 0
	for {
		if n == len(s.buf) {
			s.buf = append(s.buf, make([]byte, len(s.buf))...)
		}
		m, err := unix.Pread(fd, s.buf[n:], int64(n))
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

// listDir appends the numeric names in directory name (relative to dir)
// to dst: pids in /proc, tids in task, fds in fd.
func (s *scan) listDir(dst []int, dir int, name string) ([]int, error) {
	fd, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return dst, err
	}
	defer unix.Close(fd)
	return s.names(dst, fd)
}

// rewind appends the numeric names in the open directory fd to dst,
// listing it again from its start.
func (s *scan) rewind(dst []int, fd int) ([]int, error) {
	if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
		return dst, err
	}
	return s.names(dst, fd)
}

// names appends the numeric names read from directory fd to dst, parsing
// the linux_dirent64 records (ino 8 bytes, off 8, reclen 2, type 1, then
// the name and a NUL) itself: unix.ParseDirent would make a string of
// every name.
func (s *scan) names(dst []int, fd int) ([]int, error) {
	const nameOff = 19
	for {
		n, err := unix.Getdents(fd, s.dent)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return dst, err
		}
		if n == 0 {
			return dst, nil
		}
		for b := s.dent[:n]; len(b) > nameOff; {
			reclen := int(binary.NativeEndian.Uint16(b[16:]))
			if reclen <= nameOff || reclen > len(b) {
				break
			}
			name := b[nameOff:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if v, ok := atoi(name); ok {
				dst = append(dst, v)
			}
			b = b[reclen:]
		}
	}
}

// atoi parses a decimal name: a pid, tid or fd.
func atoi(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 10 {
		return 0, false
	}
	v := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	return v, true
}
