package herdtest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// Load sends HTTP requests to a cluster from several connections until
// stopped, and counts what failed. It is strict, as wrk is: it never
// retries, so a request the server dropped (a keep-alive connection closed
// under it, a refused or reset connection) counts as a failure.
type Load struct {
	addr      string
	keepAlive bool
	stop      chan struct{}
	wg        sync.WaitGroup

	mu       sync.Mutex
	ok       int
	failed   int
	errs     []string
	pids     map[int]int
	failedAt []time.Time // when each failed request started
	slowest  time.Duration
}

// LoadResult is what a Load saw.
type LoadResult struct {
	OK, Failed int
	// Errors holds the first few failures.
	Errors []string
	// PIDs counts answers by worker pid.
	PIDs map[int]int
	// FailedAt holds when each failed request started.
	FailedAt []time.Time
	// Slowest is the longest a request took, failed or not.
	Slowest time.Duration
}

// FailedSince counts the failed requests that started after t.
func (r LoadResult) FailedSince(t time.Time) int {
	n := 0
	for _, at := range r.FailedAt {
		if at.After(t) {
			n++
		}
	}
	return n
}

// StartLoad starts conns clients against addr. With keepAlive each client
// keeps its connection for as long as the server does (reconnecting when a
// response says Connection: close); else each request is a new connection.
func StartLoad(addr string, conns int, keepAlive bool) *Load {
	l := &Load{addr: addr, keepAlive: keepAlive, stop: make(chan struct{}), pids: map[int]int{}}
	for range conns {
		l.wg.Go(l.client)
	}
	return l
}

// Stop ends the load and returns what it saw.
func (l *Load) Stop() LoadResult {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return LoadResult{OK: l.ok, Failed: l.failed, Errors: l.errs, PIDs: l.pids, FailedAt: l.failedAt, Slowest: l.slowest}
}

// Counts returns the answers and failures so far.
func (l *Load) Counts() (ok, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok, l.failed
}

func (l *Load) record(pid int, began time.Time, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.slowest = max(l.slowest, time.Since(began))
	if err != nil {
		l.failed++
		l.failedAt = append(l.failedAt, began)
		if len(l.errs) < 10 {
			l.errs = append(l.errs, err.Error())
		}
		return
	}
	l.ok++
	l.pids[pid]++
}

func (l *Load) client() {
	var c net.Conn
	var br *bufio.Reader
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		began := time.Now()
		if c == nil {
			var err error
			c, err = net.DialTimeout("tcp", l.addr, 5*time.Second)
			if err != nil {
				l.record(0, began, fmt.Errorf("dial: %w", err))
				c = nil
				time.Sleep(10 * time.Millisecond)
				continue
			}
			br = bufio.NewReader(c)
		}
		pid, closeAfter, err := l.roundTrip(c, br)
		l.record(pid, began, err)
		if err != nil || closeAfter || !l.keepAlive {
			c.Close()
			c = nil
		}
	}
}

func (l *Load) roundTrip(c net.Conn, br *bufio.Reader) (int, bool, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET / HTTP/1.1\r\nHost: herd\r\n"
	if !l.keepAlive {
		req += "Connection: close\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		return 0, false, fmt.Errorf("write: %w", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, false, fmt.Errorf("read: %w", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, false, fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != 200 {
		return 0, false, fmt.Errorf("status %s", resp.Status)
	}
	r, err := ParseReply(string(body))
	if err != nil {
		return 0, false, err
	}
	return r.PID, resp.Close, nil
}
