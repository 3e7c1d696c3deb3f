// Package herdtest has helpers for tests that run a real herd primary as
// a child process and talk to its workers over loopback.
package herdtest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ControlPath returns a fresh control socket path in a short directory
// of its own (socket paths are limited to 107 bytes, and t.TempDir's can
// be longer), removed at the end of the test.
func ControlPath(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir + "/ctl.sock"
}

// Proc is a running primary.
type Proc struct {
	t    testing.TB
	Cmd  *exec.Cmd
	mu   sync.Mutex
	out  []string // stdout lines
	errs []string // stderr lines
	done chan struct{}
	pump sync.WaitGroup
}

// Start runs argv (a herd primary) with extra environment, collecting its
// output. The primary is killed at the end of the test if still running.
func Start(t testing.TB, env []string, argv ...string) *Proc {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start herd: %v", err)
	}
	p := &Proc{t: t, Cmd: cmd, done: make(chan struct{})}
	p.pump.Go(func() { p.collect(stdout, &p.out) })
	p.pump.Go(func() { p.collect(stderr, &p.errs) })
	go func() {
		p.pump.Wait()
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("herd stdout:\n%s\nherd stderr:\n%s", p.Stdout(), p.Stderr())
		}
	})
	return p
}

func (p *Proc) collect(r io.Reader, dst *[]string) {
	br := bufio.NewReaderSize(r, 1<<20)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			p.mu.Lock()
			*dst = append(*dst, strings.TrimSuffix(line, "\n"))
			p.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// Stdout returns the primary's stdout so far.
func (p *Proc) Stdout() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.out, "\n")
}

// Stderr returns the primary's stderr so far.
func (p *Proc) Stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.errs, "\n")
}

// StdoutLines returns the primary's stdout lines so far.
func (p *Proc) StdoutLines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.out...)
}

// Count counts stderr lines that contain substr.
func (p *Proc) Count(substr string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.errs {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// WaitLog waits until a stderr line contains substr and returns it.
func (p *Proc) WaitLog(substr string, timeout time.Duration) string {
	p.t.Helper()
	var line string
	ok := Eventually(timeout, func() bool {
		exited := p.Exited() // before reading: an exited primary has written all
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, l := range p.errs {
			if strings.Contains(l, substr) {
				line = l
				return true
			}
		}
		return exited
	})
	if !ok || line == "" {
		p.t.Fatalf("herd did not log %q within %v (exited: %v)", substr, timeout, p.Exited())
	}
	return line
}

var addrRE = regexp.MustCompile(`msg=listening name=(\S+) addr=(\S+)`)

// Addr returns the bound address of listener name, from the primary's log.
func (p *Proc) Addr(name string) string {
	p.t.Helper()
	line := p.WaitLog("msg=listening name="+name+" ", 10*time.Second)
	m := addrRE.FindStringSubmatch(line)
	if m == nil {
		p.t.Fatalf("cannot parse listening line %q", line)
	}
	return m[2]
}

// Signal sends sig to the primary.
func (p *Proc) Signal(sig os.Signal) {
	if err := p.Cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal herd: %v", err)
	}
}

// Wait waits for the primary to exit and returns its exit code.
func (p *Proc) Wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("herd did not exit within %v", timeout)
	}
	return p.Cmd.ProcessState.ExitCode()
}

// Exited reports whether the primary has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed when the primary has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Eventually polls cond every 10ms until it holds or timeout passes.
func Eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Reply is what the test http worker answers.
type Reply struct {
	ID, PID, Child int
	FDs            int
	Names          string
	Workers        int // HERD_WORKERS
}

var replyRE = regexp.MustCompile(`id=(\d+) pid=(\d+) child=(\d+) fds=(\d+) names=(\S*) workers=(\d+)`)

// ParseReply parses a test worker's answer (or the examples' "hello from
// worker N pid P").
func ParseReply(body string) (Reply, error) {
	if m := replyRE.FindStringSubmatch(body); m != nil {
		var r Reply
		r.ID, _ = strconv.Atoi(m[1])
		r.PID, _ = strconv.Atoi(m[2])
		r.Child, _ = strconv.Atoi(m[3])
		r.FDs, _ = strconv.Atoi(m[4])
		r.Names = m[5]
		r.Workers, _ = strconv.Atoi(m[6])
		return r, nil
	}
	var r Reply
	if _, err := fmt.Sscanf(body, "hello from worker %d pid %d", &r.ID, &r.PID); err == nil {
		return r, nil
	}
	// The port examples (proxy mode) answer with their port: it is their
	// ID here.
	if _, err := fmt.Sscanf(body, "hello from port %d pid %d", &r.ID, &r.PID); err == nil {
		return r, nil
	}
	return Reply{}, fmt.Errorf("unexpected reply %q", body)
}

// NewClient returns an HTTP client that opens a new connection for every
// request (so each request is a new accept) unless keepAlive.
func NewClient(keepAlive bool) *http.Client {
	tr := &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 64}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// Get fetches url and parses the worker's reply.
func Get(c *http.Client, url string) (Reply, error) {
	resp, err := c.Get(url)
	if err != nil {
		return Reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return Reply{}, err
	}
	if resp.StatusCode != 200 {
		return Reply{}, fmt.Errorf("status %s", resp.Status)
	}
	return ParseReply(string(b))
}

// Ask sends GET / on c, with Connection: close if close, and returns the
// body of the answer, read from br. The tests that use it hold their own
// connections (keep-alive, a chosen local address).
func Ask(c net.Conn, br *bufio.Reader, close bool) (string, error) {
	req := "GET / HTTP/1.1\r\nHost: herd\r\n"
	if close {
		req += "Connection: close\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// AskFrom makes one request (Ask) on a new connection from local (nil:
// any address) to addr, and returns the body of the answer.
func AskFrom(local *net.TCPAddr, addr string) (string, error) {
	d := net.Dialer{LocalAddr: local, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return Ask(c, bufio.NewReader(c), true)
}

// Alive reports whether pid exists and is not a zombie.
func Alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// Freeze stops pid with SIGSTOP and returns once every thread of it has
// stopped. kill returns before that: a thread that is running, or woken
// by input, can still run user code until the group stop reaches it, and
// on a loaded machine that is long enough to serve a connection.
func Freeze(t testing.TB, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("stop %d: %v", pid, err)
	}
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	if _, err := os.Stat(dir); err != nil {
		return // no /proc here: the signal is all there is
	}
	stopped := func() bool {
		tasks, err := os.ReadDir(dir)
		if err != nil {
			return false
		}
		for _, task := range tasks {
			b, err := os.ReadFile(dir + "/" + task.Name() + "/stat")
			if err != nil {
				continue // the thread is gone
			}
			s := string(b)
			if i := strings.LastIndexByte(s, ')'); i < 0 || i+2 >= len(s) || s[i+2] != 'T' {
				return false
			}
		}
		return true
	}
	if !Eventually(10*time.Second, stopped) {
		t.Fatalf("process %d did not stop within 10s of SIGSTOP", pid)
	}
}

// SyncBuffer is a bytes.Buffer safe for concurrent use: a place for a
// supervisor's log or its workers' output, read by the test meanwhile.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns what was written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Logged counts the lines of a test worker's TEST_LOG file equal to task,
// or all of them if task is "" (none if there is no file yet).
func Logged(file, task string) int {
	b, _ := os.ReadFile(file)
	n := 0
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if strings.HasSuffix(l, "\n") && (task == "" || l == task+"\n") {
			n++
		}
	}
	return n
}

// OpenGate lets a test worker's gated task (TEST_GATE, or a {"gate":FILE}
// task) go on.
func OpenGate(gate string) { os.WriteFile(gate, nil, 0o644) }
