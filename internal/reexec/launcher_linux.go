package reexec

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// loadTiny puts the tiny trampoline in a memfd, or says why it cannot run
// here.
func (l *Launcher) loadTiny() error {
	if tinyTramp == "" {
		return fmt.Errorf("no tiny exec trampoline for %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	// Before Linux 5.11 there is no CLOSE_RANGE_CLOEXEC, and the tiny
	// trampoline has no other way to keep stray fds from the worker. The
	// range holds no fd: only the call is tried.
	if err := unix.CloseRange(1<<32-1, 1<<32-1, unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fmt.Errorf("close_range: %w", err)
	}
	const flags = unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING
	// MFD_EXEC keeps vm.memfd_noexec=1 from sealing it non-executable;
	// kernels before 6.3 do not know it, and their memfds are executable.
	fd, err := unix.MemfdCreate("herd-exec", flags|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) {
		fd, err = unix.MemfdCreate("herd-exec", flags)
	}
	if err != nil {
		return fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "herd-exec")
	if err := l.fill(f); err != nil {
		f.Close()
		return err
	}
	l.memfd = f
	return nil
}

func (l *Launcher) fill(f *os.File) error {
	fd := int(f.Fd())
	if _, err := f.WriteString(tinyTramp); err != nil {
		return fmt.Errorf("write the tiny exec trampoline to a memfd: %w", err)
	}
	// What every worker start runs cannot be changed under it.
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		return fmt.Errorf("seal the tiny exec trampoline's memfd: %w", err)
	}
	// The path must lead to this memfd (a /proc of another pid namespace
	// would not) and be executable (noexec, vm.memfd_noexec=2 without
	// MFD_EXEC).
	pid := os.Getpid()
	path := fmt.Sprintf("/proc/%d/fd/%d", pid, fd)
	var want, got unix.Stat_t
	if err := unix.Fstat(fd, &want); err != nil {
		return fmt.Errorf("stat the tiny exec trampoline's memfd: %w", err)
	}
	if err := unix.Stat(path, &got); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if got.Dev != want.Dev || got.Ino != want.Ino {
		return fmt.Errorf("%s is not the tiny exec trampoline's memfd (/proc from another pid namespace?)", path)
	}
	if err := unix.Access(path, unix.X_OK); err != nil {
		return fmt.Errorf("the tiny exec trampoline's memfd cannot be executed: %w", err)
	}
	l.path, l.selfExe = path, fmt.Sprintf("/proc/%d/exe", pid)
	return nil
}
