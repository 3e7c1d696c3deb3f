// Package channel runs one end of the message channel between a herd
// primary and a worker (the wire format is package ipc): an outbound queue
// bounded in bytes, drained by one writer goroutine that sends whatever has
// accumulated in a single write, and a read loop.
//
// Batching is what makes the channel fast under load: a sender only
// appends to the queue, so while the writer is in a write, every message
// sent meanwhile joins the next one. Latency is what matters when the
// channel is quiet, so a message sent after a pause, or after a message
// arrived (an answer), is written at once by its sender, with one
// non-blocking write and no goroutine to wake; what the socket does not
// take goes to the queue. A few protocol messages that must not wait behind
// a backlog (SendUrgent) go ahead of the queue, at the next message
// boundary.
package channel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/herd-sh/herd/internal/ipc"
)

// Errors of Send, TrySend and Relay.
var (
	// ErrClosed: the channel is closed (the other side is gone, or Close).
	ErrClosed = errors.New("channel closed")
	// ErrFull: the queue has no room (TrySend).
	ErrFull = errors.New("channel queue full")
	// ErrStalled: the other side has not read for a while; relays to it
	// are dropped until it catches up.
	ErrStalled = errors.New("receiver is not reading its channel")
	// ErrTooBig: the message is longer than the limit.
	ErrTooBig = errors.New("message longer than the limit")
)

const (
	// MinQueue is the least number of bytes a queue holds.
	MinQueue = 4 << 20
	// RelayWait is how long a relay waits for room before the receiver is
	// marked stalled.
	RelayWait = time.Second
	// writeChunk bounds one write, so room frees up as a large backlog
	// drains instead of only at its end.
	writeChunk = 256 << 10
	// RelaySlack is how much longer than the limit a relayed message may
	// be: the primary wraps a worker's herd.broadcast or herd.to (which
	// the limit applies to) in a herd.message with a "from" member.
	RelaySlack = 64
	// directGap is the pause after which a message is written by its
	// sender rather than queued for the writer: long enough that a stream
	// of messages is batched, short enough that a request/reply exchange
	// (tens of microseconds per round trip) never waits for the writer.
	directGap = 5 * time.Microsecond
)

// Conn is one end of a channel. Make it with New; Close it.
type Conn struct {
	conn net.Conn
	raw  syscall.RawConn // for the sender's own write; nil if none
	max  int             // longest message, newline excluded
	// readMax is the longest message the read loop accepts: the worker's
	// end accepts relays, which may be RelaySlack longer.
	readMax int
	rd      *ipc.Reader // the read loop's, for SetMax
	// drained is set while the read loop waits for bytes from the socket,
	// which it does only once it has handled every message it read.
	drained atomic.Bool
	// acceptFDs says descriptors passed by the other side are kept for
	// TakeFD (the worker's end); the primary's end closes any it gets.
	acceptFDs bool
	// fdsPerWrite bounds the descriptors sent with one write: Node takes
	// at most one per read, so for a Node worker it is 1.
	fdsPerWrite int
	fdMu        sync.Mutex
	fds         []int     // received, not yet taken, oldest first
	limit       int       // bytes queued or being written
	epoch       time.Time // lastSend counts from here (monotonic)

	mu       sync.Mutex
	out      []byte   // queued, not yet taken by the writer
	marks    []fdMark // the messages in out that carry a descriptor
	spare    []byte   // the writer's previous buffer, reused
	inflight int      // bytes taken by a write and not written yet
	busy     bool     // a write is in progress (the writer's or a sender's)
	lastSend time.Duration
	room     chan struct{}
	waiting  bool // someone waits on room
	stalled  bool
	closed   bool
	err      error // why the channel closed

	// urgent holds the messages of SendUrgent, which are written ahead of
	// out at the next message boundary; its first may be partly written.
	urgent []byte
	// urgentQueued and urgentDone count the bytes of urgent messages ever
	// queued and ever written: a sender waits for its own to be written.
	urgentQueued, urgentDone uint64
	// midOut: the socket's stream ends inside a message of out (a
	// sender's write left the rest of it at the front of out), which must
	// be finished before an urgent message can go.
	midOut bool

	wake       chan struct{} // capacity 1: out has bytes
	writerDone chan struct{}

	// reads counts the messages the read loop has delivered; readsSeen
	// (under mu) is its value when the last write began. A message sent
	// after a read is likely an answer to it, which is written at once
	// (see put).
	reads     atomic.Uint64
	readsSeen uint64
}

// New starts the writer of a channel over c. maxMessage (0: the default)
// is the longest message either side may send; the queue holds
// max(MinQueue, 2*maxMessage) bytes.
func New(c net.Conn, maxMessage int) *Conn {
	if maxMessage <= 0 {
		maxMessage = ipc.DefaultMaxMessage
	}
	ch := &Conn{
		conn:       c,
		max:        maxMessage,
		readMax:    maxMessage,
		limit:      max(MinQueue, 2*maxMessage),
		epoch:      time.Now(),
		room:       make(chan struct{}),
		wake:       make(chan struct{}, 1),
		writerDone: make(chan struct{}),

		fdsPerWrite: maxFDsPerWrite,
	}
	if sc, ok := c.(syscall.Conn); ok {
		ch.raw, _ = sc.SyscallConn()
	}
	go ch.writeLoop()
	return ch
}

// FromFD makes the worker's end of a channel from the inherited socket fd.
// The fd itself is closed: the channel uses a close-on-exec copy, so that
// programs the worker starts do not inherit it.
func FromFD(fd int, maxMessage int) (*Conn, error) {
	f := os.NewFile(uintptr(fd), "herd-ipc")
	if f == nil {
		return nil, fmt.Errorf("channel fd %d: not a valid descriptor", fd)
	}
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("channel fd %d: %w", fd, err)
	}
	if _, ok := c.(*net.UnixConn); !ok {
		c.Close()
		return nil, fmt.Errorf("channel fd %d: not a Unix socket", fd)
	}
	ch := New(c, maxMessage)
	ch.readMax = ch.max + RelaySlack
	ch.acceptFDs = true
	return ch, nil
}

// Max is the message size limit.
func (c *Conn) Max() int { return c.max }

// Send queues m, waiting for room while the queue is full, until ctx ends.
func (c *Conn) Send(ctx context.Context, m ipc.Message) error {
	for {
		room, err := c.enqueue(m, false)
		if room == nil {
			return err
		}
		select {
		case <-room:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// TrySend queues m if there is room now.
func (c *Conn) TrySend(m ipc.Message) error {
	room, err := c.enqueue(m, false)
	if room != nil {
		return ErrFull
	}
	return err
}

// Relay queues m for a message relayed from another worker. It waits for
// room up to RelayWait, which slows the sender down to the pace of this
// reader. A reader that made no room in that time is marked stalled, and
// relays fail at once with ErrStalled until its queue has drained to half.
func (c *Conn) Relay(m ipc.Message) error {
	var timer *time.Timer
	for {
		room, err := c.enqueue(m, true)
		if room == nil {
			if timer != nil {
				timer.Stop()
			}
			return err
		}
		if timer == nil {
			timer = time.NewTimer(RelayWait)
		}
		select {
		case <-room:
		case <-timer.C:
			c.mu.Lock()
			c.stalled = true
			c.mu.Unlock()
			return ErrStalled
		}
	}
}

// SendUrgent writes m ahead of the messages queued and not yet written,
// at the next message boundary, and waits until the socket has taken it,
// the channel is closed, or ctx ends. It waits behind at most the write at
// hand and the rest of the message in it, never behind the queue. It is
// for the small protocol messages that must not be dropped nor wait
// behind a backlog (the worker's herd.took): it never fails for want of
// room, so its callers bound what they send. Urgent messages keep their
// order among themselves.
func (c *Conn) SendUrgent(ctx context.Context, m ipc.Message) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	before := len(c.urgent)
	u, err := ipc.Append(c.urgent, m)
	if err != nil {
		c.urgent = u[:before]
		c.mu.Unlock()
		return err
	}
	if n := len(u) - before - 1; n > c.max {
		c.urgent = u[:before]
		c.mu.Unlock()
		return fmt.Errorf("%w (%d bytes, limit %d)", ErrTooBig, n, c.max)
	}
	c.urgent = u
	c.urgentQueued += uint64(len(u) - before)
	target := c.urgentQueued
	if !c.busy && !c.midOut && c.raw != nil {
		c.writeUrgentNow()
	} else {
		// The writer, or whoever is writing, takes it at the next message
		// boundary (see writeBatch).
		c.wakeWriter()
	}
	for c.urgentDone < target {
		if c.closed {
			c.mu.Unlock()
			return ErrClosed
		}
		if err := c.waitForRoom(ctx); err != nil {
			return err
		}
		c.mu.Lock()
	}
	c.mu.Unlock()
	return nil
}

// writeUrgentNow writes the urgent messages from the sender's goroutine,
// with a single non-blocking write; what the socket does not take is left
// for the writer, first. c.mu is held, released during the write, and
// held again on return.
func (c *Conn) writeUrgentNow() {
	buf := c.urgent
	c.urgent = nil
	c.busy = true
	c.mu.Unlock()

	n := c.writeRaw(buf, nil)

	c.mu.Lock()
	c.busy = false
	c.urgentDone += uint64(n)
	if n < len(buf) {
		c.urgent = append(buf[n:], c.urgent...)
	}
	if len(c.urgent) > 0 || len(c.out) > 0 {
		c.wakeWriter()
	}
	c.freed()
}

// writeUrgent writes the urgent messages, those queued meanwhile too,
// from the writer (c.busy is the writer's; the stream is at a message
// boundary, or inside an urgent message partly written).
func (c *Conn) writeUrgent() error {
	for {
		c.mu.Lock()
		u := c.urgent
		c.urgent = nil
		c.mu.Unlock()
		if len(u) == 0 {
			return nil
		}
		n, err := c.conn.Write(u)
		c.mu.Lock()
		c.urgentDone += uint64(max(n, 0))
		c.freed()
		c.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// fdMark says that the message at offset off of the queue carries fd
// (SCM_RIGHTS): it is sent with that message's first byte, or earlier.
type fdMark struct{ off, fd int }

// maxFDsPerWrite bounds the descriptors sent with one write (the kernel
// takes at most 253).
const maxFDsPerWrite = 64

// OneFDPerWrite makes the channel send each descriptor in a write of its
// own, for a peer that takes at most one descriptor per read (Node: its
// channel attaches the descriptor of a read to the one NODE_HANDLE
// message it expects in it). Call it before the first SendConn.
func (c *Conn) OneFDPerWrite() { c.fdsPerWrite = 1 }

// SendConn queues line, one complete message ending in '\n', with the
// descriptor fd attached, unless more than maxQueued bytes wait already
// (ErrFull): a worker slow to read gets no more connections while others
// can take them. It never waits. fd stays the caller's: the channel sends
// a copy and never closes it.
func (c *Conn) SendConn(line []byte, fd int, maxQueued int) error {
	_, err := c.put(nil, line, fd, false, maxQueued)
	return err
}

// SendLines queues b, whole messages ending in '\n' (already encoded,
// each within the limit), waiting while the queue is full. A batch longer
// than the limit goes in pieces cut at message ends.
func (c *Conn) SendLines(b []byte) error {
	for len(b) > 0 {
		n := len(b)
		if n > c.max {
			n = bytes.LastIndexByte(b[:c.max], '\n') + 1
			if n <= 0 {
				return fmt.Errorf("%w (a message of more than %d bytes)", ErrTooBig, c.max)
			}
		}
		for {
			room, err := c.put(nil, b[:n], -1, false, 0)
			if err != nil {
				return err
			}
			if room == nil {
				break
			}
			<-room
		}
		b = b[n:]
	}
	return nil
}

// Queue queues b, whole messages ending in '\n' (already encoded, each
// within the limit), for the writer, whatever the queue holds already: it
// is for a sender that bounds what it has outstanding itself (a task pool
// gives a worker at most so many tasks), so that it need never wait nor
// be refused. It never writes from the caller's goroutine: a sender that
// has much to do between batches would pay for the write itself.
func (c *Conn) Queue(b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	if len(b) == 0 {
		return nil
	}
	first := len(c.out) == 0
	c.out = append(c.out, b...)
	c.lastSend = time.Since(c.epoch)
	if first {
		c.wakeWriter()
	}
	return nil
}

// enqueue appends m to the queue, or writes it at once when the channel
// was quiet. It returns a channel to wait on when the queue has no room,
// else the result.
func (c *Conn) enqueue(m ipc.Message, relay bool) (<-chan struct{}, error) {
	return c.put(&m, nil, -1, relay, 0)
}

// put queues m encoded, or line as it is, with fd attached when fd >= 0.
// With maxQueued > 0 it fails with ErrFull instead of waiting for room.
func (c *Conn) put(m *ipc.Message, line []byte, fd int, relay bool, maxQueued int) (<-chan struct{}, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	if relay && c.stalled {
		c.mu.Unlock()
		return nil, ErrStalled
	}
	before := len(c.out)
	if maxQueued > 0 && before+c.inflight > maxQueued {
		c.mu.Unlock()
		return nil, ErrFull
	}
	var out []byte
	if m != nil {
		var err error
		if out, err = ipc.Append(c.out, *m); err != nil {
			c.out = out[:before]
			c.mu.Unlock()
			return nil, err
		}
	} else {
		out = append(c.out, line...)
	}
	n := len(out) - before
	if limit := c.max; n-1 > limit && (!relay || n-1 > limit+RelaySlack) {
		c.out = out[:before]
		c.mu.Unlock()
		return nil, fmt.Errorf("%w (%d bytes, limit %d)", ErrTooBig, n-1, c.max)
	}
	// An empty queue takes any message that fits the limit.
	if before+c.inflight > 0 && before+c.inflight+n > c.limit {
		c.out = out[:before]
		if maxQueued > 0 {
			c.mu.Unlock()
			return nil, ErrFull
		}
		c.waiting = true
		room := c.room
		c.mu.Unlock()
		return room, nil
	}
	c.out = out
	if fd >= 0 {
		c.marks = append(c.marks, fdMark{before, fd})
	}
	// Straight out, from the sender's goroutine, when nothing else is
	// being written and this is not part of a stream: the channel was
	// quiet, or a message arrived since the last write (an answer: in a
	// request/reply exchange the last write can end only microseconds
	// before the next, because the kernel may run the whole round trip
	// inside it, and waking the writer would cost a thread hand-off each
	// time).
	now := time.Since(c.epoch)
	quiet := now-c.lastSend > directGap || c.reads.Load() != c.readsSeen
	c.lastSend = now
	if before == 0 && quiet && !c.busy && len(c.urgent) == 0 && c.raw != nil {
		c.writeNow() // unlocks
		return nil, nil
	}
	if before == 0 {
		c.wakeWriter()
	}
	c.mu.Unlock()
	return nil, nil
}

// writeNow writes the queue (one message) from the sender's goroutine
// with a single non-blocking write; what the socket does not take is left
// for the writer. c.mu is held, and released.
func (c *Conn) writeNow() {
	buf, marks := c.out, c.marks
	c.out, c.spare = c.spare[:0], nil
	c.marks = nil
	c.busy, c.inflight = true, len(buf)
	c.readsSeen = c.reads.Load()
	c.mu.Unlock()

	n := c.writeRaw(buf, marks)

	c.mu.Lock()
	c.busy, c.inflight = false, 0
	c.midOut = n > 0 && buf[n-1] != '\n'
	// The gap that makes the next message go straight out counts from the
	// end of this write: a write can take longer than the gap, and then
	// every message of a stream would look like the first after a pause.
	c.lastSend = time.Since(c.epoch)
	if rest := buf[n:]; len(rest) > 0 {
		// Unwritten bytes go before whatever was queued meanwhile, with
		// their descriptors if none went out.
		for i := range c.marks {
			c.marks[i].off += len(rest)
		}
		if n == 0 {
			c.marks = append(marks, c.marks...)
		}
		c.out = append(append(make([]byte, 0, len(rest)+len(c.out)), rest...), c.out...)
	}
	c.spare = buf[:0]
	if len(c.out) > 0 || len(c.urgent) > 0 {
		c.wakeWriter()
	}
	c.freed()
	c.mu.Unlock()
}

// writeRaw makes a single non-blocking write of buf, with the
// descriptors of marks, from the sender's goroutine, and returns how much
// the socket took; the rest is the writer's.
func (c *Conn) writeRaw(buf []byte, marks []fdMark) int {
	n := 0
	c.raw.Write(func(fd uintptr) bool {
		for {
			var m int
			var err error
			if len(marks) > 0 {
				m, err = unix.SendmsgN(int(fd), buf, rights(marks), nil, 0)
			} else {
				m, err = syscall.Write(int(fd), buf)
			}
			if err == syscall.EINTR {
				continue
			}
			n = max(m, 0)
			return true // never wait: the writer does that
		}
	})
	return n
}

// rights is the SCM_RIGHTS message for marks.
func rights(marks []fdMark) []byte {
	fds := make([]int, len(marks))
	for i, m := range marks {
		fds[i] = m.fd
	}
	return unix.UnixRights(fds...)
}

// wakeWriter makes sure the writer looks at the queue. c.mu is held.
func (c *Conn) wakeWriter() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *Conn) writeLoop() {
	defer close(c.writerDone)
	for range c.wake {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return
		}
		if c.busy || len(c.out) == 0 && len(c.urgent) == 0 {
			// A sender is writing; it wakes the writer if it leaves bytes.
			c.mu.Unlock()
			continue
		}
		buf, marks := c.out, c.marks
		c.out, c.spare = c.spare[:0], nil
		c.marks = nil
		c.busy, c.inflight = true, len(buf)
		c.readsSeen = c.reads.Load()
		mid, urgent := c.midOut, len(c.urgent) > 0
		c.mu.Unlock()

		werr := c.writeBatch(buf, marks, mid, urgent)
		c.mu.Lock()
		c.busy = false
		c.midOut = false // all of buf is written (or the channel is done)
		c.spare = buf[:0:cap(buf)]
		if len(c.out) > 0 || len(c.urgent) > 0 {
			c.wakeWriter()
		}
		c.mu.Unlock()
		if werr != nil {
			c.shut(fmt.Errorf("write: %w", werr))
			return
		}
	}
}

// writeBatch writes buf, sending the descriptors of marks with the first
// byte of their messages (several at a time), and frees room as it goes.
// Urgent messages go in between, at the first message boundary after they
// were queued: mid says the stream begins inside a message of buf (its
// first bytes are the rest of it), urgent that some are waiting already.
func (c *Conn) writeBatch(buf []byte, marks []fdMark, mid, urgent bool) error {
	pos := 0
	written := func(n int) {
		pos += n
		c.mu.Lock()
		c.inflight = len(buf) - pos
		c.freed()
		urgent = len(c.urgent) > 0
		c.mu.Unlock()
	}
	for {
		if urgent && !mid {
			if err := c.writeUrgent(); err != nil {
				return err
			}
			urgent = false
		}
		if pos >= len(buf) {
			return nil
		}
		end := len(buf)
		fds := len(marks) > 0 && marks[0].off == pos
		if fds {
			if k := min(len(marks), c.fdsPerWrite); k < len(marks) {
				end = marks[k].off
			}
		} else {
			if len(marks) > 0 {
				end = marks[0].off
			}
			end = min(end, pos+writeChunk)
		}
		if urgent {
			// Only to the end of the message at hand: the urgent ones
			// go next. (Descriptors may come before their messages.)
			if i := bytes.IndexByte(buf[pos:end], '\n'); i >= 0 {
				end = pos + i + 1
			}
		}
		if fds {
			k := min(len(marks), c.fdsPerWrite)
			uc, ok := c.conn.(*net.UnixConn)
			if !ok {
				return errors.New("descriptors can only be passed on a Unix socket")
			}
			n, _, err := uc.WriteMsgUnix(buf[pos:end], rights(marks[:k]), nil)
			marks = marks[k:]
			written(n)
			if err != nil {
				return err
			}
			if pos < end { // a short write: the rest goes plain
				if _, err := c.conn.Write(buf[pos:end]); err != nil {
					return err
				}
				written(end - pos)
			}
		} else {
			if _, err := c.conn.Write(buf[pos:end]); err != nil {
				return err
			}
			written(end - pos)
		}
		mid = buf[pos-1] != '\n'
	}
}

// freed wakes senders waiting for room and clears a stall once the queue
// has drained to half. c.mu is held.
func (c *Conn) freed() {
	if c.stalled && len(c.out)+c.inflight <= c.limit/2 {
		c.stalled = false
	}
	if c.waiting {
		close(c.room)
		c.room = make(chan struct{})
		c.waiting = false
	}
}

// shut marks the channel closed for err and wakes every waiter.
func (c *Conn) shut(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed, c.err = true, err
	c.out, c.marks, c.urgent = nil, nil, nil
	close(c.room)
	c.room = make(chan struct{})
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Flush waits until everything queued so far has been written, the
// channel closed, or ctx ended.
func (c *Conn) Flush(ctx context.Context) error {
	for {
		c.mu.Lock()
		if c.closed {
			err := c.err
			c.mu.Unlock()
			if err == nil {
				return ErrClosed
			}
			return err
		}
		if len(c.out)+c.inflight == 0 && c.urgentDone == c.urgentQueued {
			c.mu.Unlock()
			return nil
		}
		if err := c.waitForRoom(ctx); err != nil {
			return err
		}
	}
}

// waitForRoom waits until room is freed (or the channel closed), or ctx
// ends. c.mu is held, and released.
func (c *Conn) waitForRoom(ctx context.Context) error {
	c.waiting = true
	room := c.room
	c.mu.Unlock()
	select {
	case <-room:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Close closes the channel, dropping what is still queued (descriptors
// queued with SendConn stay the caller's), closes the descriptors received
// and not taken, and waits for the writer to end.
func (c *Conn) Close() error {
	c.shut(nil)
	err := c.conn.Close()
	<-c.writerDone
	c.fdMu.Lock()
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	c.fds = nil
	c.fdMu.Unlock()
	return err
}

// Handler receives what a read loop reads.
type Handler interface {
	// Message is called for each well-formed message, in order. Its Data
	// aliases the read buffer: copy it to keep it.
	Message(m ipc.Message)
	// Bad is called for each line that was dropped: too long (an error
	// wrapping ipc.ErrTooLong) or malformed (ipc.ErrMalformed).
	Bad(err error)
}

// BatchHandler is a Handler told when the read loop has delivered every
// message read so far and is about to wait for more: a handler that
// gathers the messages of a read can act on them once per read, not per
// message (one wake-up of whoever waits for them, one lock).
type BatchHandler interface {
	Handler
	EndBatch()
}

// ReadLoop reads messages from r (the channel's socket, or a reader over
// it that also collects passed descriptors) until it ends, calling h for
// each. It returns nil at end of stream and when the channel is closed.
func (c *Conn) ReadLoop(r io.Reader, h Handler) error {
	if r == nil {
		r = c.conn
		if uc, ok := c.conn.(*net.UnixConn); ok {
			r = &fdReader{c: c, uc: uc, oob: make([]byte, unix.CmsgSpace(4*maxFDsPerWrite))}
		}
	}
	rd := ipc.NewReader(drainReader{r, &c.drained}, c.readMax)
	c.rd = rd
	var dec ipc.Decoder
	bh, _ := h.(BatchHandler)
	if bh != nil {
		defer bh.EndBatch()
	}
	for {
		if bh != nil && !rd.Pending() {
			bh.EndBatch()
		}
		line, err := rd.ReadLine()
		if err != nil {
			if errors.Is(err, ipc.ErrTooLong) {
				h.Bad(err)
				continue
			}
			// A reset is how the other side's end closes with data of
			// ours unread (a worker that died): as good as end of stream.
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) {
				return nil
			}
			return err
		}
		m, err := dec.Decode(line)
		if err != nil {
			h.Bad(err)
			continue
		}
		c.reads.Add(1)
		h.Message(m)
	}
}

// Idle reports whether the read loop has handled everything the other side
// has sent so far: it waits for more, and the socket holds nothing unread.
// False before the read loop starts. (Bytes a read has just taken from the
// socket, in the instant before it returns them, are not seen.)
func (c *Conn) Idle() bool { return c.drained.Load() && c.Pending() == 0 }

// drainReader marks the time the read loop spends waiting in its reader's
// Read, which its ipc.Reader calls only with no complete message left
// undelivered.
type drainReader struct {
	r       io.Reader
	drained *atomic.Bool
}

func (d drainReader) Read(b []byte) (int, error) {
	d.drained.Store(true)
	n, err := d.r.Read(b)
	d.drained.Store(false)
	return n, err
}

// fdReader reads the channel's bytes and keeps the descriptors that come
// with them, in order, for TakeFD.
type fdReader struct {
	c   *Conn
	uc  *net.UnixConn
	oob []byte
}

func (r *fdReader) Read(b []byte) (int, error) {
	n, oobn, _, _, err := r.uc.ReadMsgUnix(b, r.oob)
	if oobn > 0 {
		r.c.keepFDs(r.oob[:oobn])
	}
	if n < 0 {
		n = 0
	}
	if n == 0 && err == nil {
		err = io.EOF // the other end closed: recvmsg returns 0 without an error
	}
	return n, err
}

// keepFDs takes the descriptors out of a control message (received
// close-on-exec: Go asks for MSG_CMSG_CLOEXEC).
func (c *Conn) keepFDs(oob []byte) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	for i := range msgs {
		fds, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			continue
		}
		if !c.acceptFDs {
			for _, fd := range fds {
				unix.Close(fd)
			}
			continue
		}
		c.fdMu.Lock()
		c.fds = append(c.fds, fds...)
		c.fdMu.Unlock()
	}
}

// TakeFD returns the oldest descriptor received and not yet taken. The
// descriptors of a message arrive no later than the message itself, so a
// handler that takes one per herd.conn gets each connection's own.
func (c *Conn) TakeFD() (int, bool) {
	c.fdMu.Lock()
	defer c.fdMu.Unlock()
	if len(c.fds) == 0 {
		return -1, false
	}
	fd := c.fds[0]
	c.fds = c.fds[1:]
	return fd, true
}

// SetMax changes the message size limit of the worker's end to the one
// the primary announced. Call it from the read loop (a Handler method).
func (c *Conn) SetMax(n int) {
	if n <= 0 {
		return
	}
	c.mu.Lock()
	c.max = n
	c.limit = max(MinQueue, 2*n)
	c.mu.Unlock()
	c.readMax = n + RelaySlack
	if c.rd != nil {
		c.rd.SetMax(c.readMax)
	}
}

// SetReadDeadline bounds the read loop.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.conn.SetReadDeadline(t) }

// Raw is the underlying connection.
func (c *Conn) Raw() net.Conn { return c.conn }
