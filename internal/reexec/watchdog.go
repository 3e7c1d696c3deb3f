package reexec

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
)

// Watchdog is the client side of the watchdog process. The primary tells
// it which worker process groups exist; when the primary dies, even by
// SIGKILL, the watchdog's stdin reaches end-of-file and it kills every group
// it was told about, then exits. On a clean stop the primary unwatches
// every group and calls Close, and the watchdog exits without killing.
type Watchdog struct {
	cmd *exec.Cmd
	mu  sync.Mutex
	w   *os.File
	err error // the first write error; the watchdog is gone after it
}

// StartWatchdog starts the watchdog process, in a process group of its own
// so that a signal meant for the primary's group does not reach it.
func StartWatchdog() (*Watchdog, error) {
	me, err := Self()
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start watchdog: %w", err)
	}
	defer r.Close()
	cmd := &exec.Cmd{
		Path:        me,
		Args:        []string{"herd-watchdog"},
		Env:         append(os.Environ(), roleEnv+"="+roleWatchdog),
		Stdin:       r,
		Stderr:      os.Stderr,
		SysProcAttr: watchdogAttr(),
	}
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, fmt.Errorf("start watchdog: %w", err)
	}
	return &Watchdog{cmd: cmd, w: w}, nil
}

// Watch asks the watchdog to kill process group pgid if the primary dies.
func (d *Watchdog) Watch(pgid int) error { return d.send('+', pgid) }

// Unwatch tells the watchdog that process group pgid is gone.
func (d *Watchdog) Unwatch(pgid int) error { return d.send('-', pgid) }

func (d *Watchdog) send(op byte, pgid int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return nil // reported once already
	}
	line := append([]byte{op}, strconv.Itoa(pgid)...)
	if _, err := d.w.Write(append(line, '\n')); err != nil {
		d.err = fmt.Errorf("watchdog: %w", err)
		return d.err
	}
	return nil
}

// Close ends the watchdog and waits for it. Call it once every watched
// group has been unwatched.
func (d *Watchdog) Close() error {
	d.mu.Lock()
	d.w.Close()
	d.mu.Unlock()
	if err := d.cmd.Wait(); err != nil {
		return fmt.Errorf("watchdog: %w", err)
	}
	return nil
}

// watchdogMain is the watchdog role: it reads "+PGID" and "-PGID" lines and
// kills what is left when its input ends.
func watchdogMain(in io.Reader) int {
	ignoreStopSignals()
	groups := make(map[int]bool)
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		line := sc.Text()
		if len(line) < 2 {
			continue
		}
		pgid, err := strconv.Atoi(line[1:])
		if err != nil || pgid <= 1 {
			continue
		}
		switch line[0] {
		case '+':
			groups[pgid] = true
		case '-':
			delete(groups, pgid)
		}
	}
	for pgid := range groups {
		killGroup(pgid)
	}
	return 0
}

// Pid is the watchdog process's pid.
func (d *Watchdog) Pid() int { return d.cmd.Process.Pid }
