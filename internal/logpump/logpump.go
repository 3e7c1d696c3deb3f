// Package logpump copies worker output to the primary's own stdout and
// stderr a line at a time, tagged with the worker's slot and pid.
//
// A Sink never blocks the reader of a worker's pipe for long: lines wait in
// a queue bounded in bytes, one goroutine writes them out, and when the
// destination is slower than the workers the newest lines are dropped and
// counted (a notice says how many), so a slow reader of herd's output can
// never stop a worker forever nor grow the primary's memory without bound.
package logpump

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"
)

// Format is how lines are written.
type Format int

const (
	// Text writes "w1 12345 | line".
	Text Format = iota
	// JSON writes one object per line: time, worker, pid, stream, line.
	JSON
)

// ParseFormat parses "text" or "json".
func ParseFormat(s string) (Format, error) {
	switch s {
	case "", "text":
		return Text, nil
	case "json":
		return JSON, nil
	}
	return Text, fmt.Errorf("unknown log format %q (want text or json)", s)
}

const (
	// MaxLine is the longest line kept whole; a longer one is written in
	// MaxLine pieces, each tagged, with no byte lost.
	MaxLine = 1 << 20
	// DefaultQueueBytes bounds the bytes waiting to be written per sink.
	DefaultQueueBytes = 8 << 20
	// closeWait bounds how long Close waits for a stuck destination.
	closeWait = 2 * time.Second
)

// Sink writes tagged lines to one destination.
type Sink struct {
	w      io.Writer
	format Format
	stream string
	ring   *Ring // if set, every worker line is kept there too

	mu       sync.Mutex
	queue    [][]byte
	queued   int // bytes in queue
	maxBytes int
	closed   bool
	wake     chan struct{} // capacity 1: there is something to write
	done     chan struct{} // closed when the writer goroutine ends
}

// NewSink starts a sink writing to w. stream ("stdout" or "stderr") is
// what JSON lines report.
func NewSink(w io.Writer, format Format, stream string, maxBytes int) *Sink {
	if maxBytes <= 0 {
		maxBytes = DefaultQueueBytes
	}
	s := &Sink{
		w: w, format: format, stream: stream, maxBytes: maxBytes,
		wake: make(chan struct{}, 1), done: make(chan struct{}),
	}
	go s.writeLoop()
	return s
}

// Write queues p as it is (it must hold whole lines); it is how the
// primary's own log records share the destination without interleaving
// with worker lines. It never blocks on the destination.
func (s *Sink) Write(p []byte) (int, error) {
	if !s.enqueue(append([]byte(nil), p...)) {
		return 0, errors.New("log output is not keeping up; record dropped")
	}
	return len(p), nil
}

func (s *Sink) enqueue(b []byte) bool { return s.put(b, false) }

// put queues b; force skips the byte bound (for one notice per stream).
func (s *Sink) put(b []byte, force bool) bool {
	s.mu.Lock()
	if s.closed || (!force && s.queued+len(b) > s.maxBytes) {
		s.mu.Unlock()
		return false
	}
	s.queue = append(s.queue, b)
	s.queued += len(b)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return true
}

func (s *Sink) writeLoop() {
	defer close(s.done)
	var batch [][]byte
	for range s.wake {
		for {
			s.mu.Lock()
			batch, s.queue = s.queue, batch[:0]
			closed := s.closed
			s.mu.Unlock()
			if len(batch) == 0 {
				if closed {
					return
				}
				break
			}
			n := 0
			for _, b := range batch {
				s.w.Write(b) // a failing destination cannot be helped here
				n += len(b)
			}
			clear(batch)
			s.mu.Lock()
			s.queued -= n
			s.mu.Unlock()
		}
	}
}

// Close writes what is queued and stops the sink. It waits a bounded time
// for a destination that does not accept writes.
func (s *Sink) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	select {
	case <-s.done:
	case <-time.After(closeWait):
		// The destination is stuck in Write; the writer goroutine ends
		// when it returns.
	}
}

// SetRing makes the sink keep every worker line Pump reads in ring too,
// for `herd logs`: the raw line with its worker, pid and stream, even when
// the destination is too slow and the line is dropped from it. Lines given
// to Write (herd's own log) are not worker lines and are not kept. Call it
// before any Pump; several sinks may share one ring.
func (s *Sink) SetRing(ring *Ring) { s.ring = ring }

// Pump reads r line by line until it ends and queues each line tagged with
// worker and pid. A final line without a newline is written whole.
func (s *Sink) Pump(r io.Reader, worker, pid int) {
	br := bufio.NewReaderSize(r, 64<<10)
	var long []byte // a line longer than the reader's buffer, so far
	dropped := 0
	// flushNotice says how many lines were lost, once there is room again
	// (or at the end of the stream, room or not: the count must not be
	// lost, and it is one short line).
	flushNotice := func(force bool) bool {
		if dropped == 0 {
			return true
		}
		notice := fmt.Sprintf("herd: dropped %d lines of this worker's output: it was not read fast enough", dropped)
		if !s.put(s.format1(worker, pid, []byte(notice)), force) {
			return false
		}
		dropped = 0
		return true
	}
	emit := func(line []byte) {
		if s.ring != nil {
			s.ring.Add(Line{Time: time.Now(), Worker: worker, PID: pid, Stream: s.stream, Text: string(line)})
		}
		if !flushNotice(false) || !s.enqueue(s.format1(worker, pid, line)) {
			dropped++
		}
	}
	for {
		chunk, err := br.ReadSlice('\n')
		switch {
		case err == nil:
			chunk = chunk[:len(chunk)-1]
			if long != nil {
				emit(append(long, chunk...))
				long = nil
			} else {
				emit(chunk)
			}
		case errors.Is(err, bufio.ErrBufferFull):
			long = append(long, chunk...)
			if len(long) >= MaxLine {
				emit(long[:MaxLine])
				long = append(long[:0], long[MaxLine:]...)
			}
		default:
			if rest := append(long, chunk...); len(rest) > 0 {
				emit(rest)
			}
			flushNotice(true)
			return
		}
	}
}

// format1 renders one line; the result is owned by the caller.
func (s *Sink) format1(worker, pid int, line []byte) []byte {
	if s.format == JSON {
		b, _ := json.Marshal(struct {
			Time   string `json:"time"`
			Worker int    `json:"worker"`
			PID    int    `json:"pid"`
			Stream string `json:"stream"`
			Line   string `json:"line"`
		}{time.Now().Format(time.RFC3339Nano), worker, pid, s.stream, string(line)})
		return append(b, '\n')
	}
	b := make([]byte, 0, len(line)+24)
	b = append(b, 'w')
	b = strconv.AppendInt(b, int64(worker), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(pid), 10)
	b = append(b, " | "...)
	b = append(b, line...)
	return append(b, '\n')
}
