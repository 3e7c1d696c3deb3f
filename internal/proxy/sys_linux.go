package proxy

import (
	"encoding/binary"
	"net/netip"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The event loops' system calls, made with RawSyscall. Every one of them
// is on a non-blocking socket (or creates one) and returns without
// waiting, so the runtime need not be told of them: unix.Read and the
// rest go through Syscall, which marks the goroutine as in a system call
// and keeps sysmon watching for one that blocks, a cost on every call
// that here bought nothing (sysmon was a tenth of the primary's CPU).

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func rawRead(fd int, p []byte) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

func rawWrite(fd int, p []byte) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

func rawSplice(in, out int, n int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

func rawShutdown(fd, how int) error {
	_, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
	return errnoErr(e)
}

func rawClose(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

func rawSetsockoptInt(fd, level, opt, value int) {
	v := int32(value)
	unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&v)), 4, 0)
}

// rawSoError returns the socket's pending error (a connect's outcome).
func rawSoError(fd int) error {
	var v int32
	l := uint32(4)
	_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_ERROR, uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return e
	}
	return errnoErr(unix.Errno(v))
}

// rawConnect makes a non-blocking socket and starts connecting it to ap;
// the connect finishes later (EINPROGRESS is not an error here).
func rawConnect(ap netip.AddrPort) (int, error) {
	var (
		sa4    unix.RawSockaddrInet4
		sa6    unix.RawSockaddrInet6
		ptr    unsafe.Pointer
		size   uintptr
		family = unix.AF_INET
	)
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], ap.Port())
	if a := ap.Addr().Unmap(); a.Is4() {
		sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
		sa4.Port = *(*uint16)(unsafe.Pointer(&port))
		ptr, size = unsafe.Pointer(&sa4), unsafe.Sizeof(sa4)
	} else {
		family = unix.AF_INET6
		sa6 = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
		sa6.Port = *(*uint16)(unsafe.Pointer(&port))
		ptr, size = unsafe.Pointer(&sa6), unsafe.Sizeof(sa6)
	}
	r, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(family), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		return -1, os.NewSyscallError("socket", e)
	}
	fd := int(r)
	rawSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if _, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(ptr), size); e != 0 && e != unix.EINPROGRESS {
		rawClose(fd)
		return -1, os.NewSyscallError("connect", e)
	}
	return fd, nil
}
