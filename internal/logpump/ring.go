package logpump

import (
	"context"
	"strings"
	"sync"
	"time"
)

const (
	// DefaultRingLines is how many lines NewRing keeps by default.
	DefaultRingLines = 1000
	// DefaultRingBytes is how many bytes of text NewRing keeps by default.
	DefaultRingBytes = 1 << 20
)

// Line is one line of a worker's output, as the worker wrote it.
type Line struct {
	Time   time.Time
	Worker int
	PID    int
	Stream string // "stdout" or "stderr"
	Text   string // the raw line, without newline, tag or JSON
}

// Ring keeps the most recent worker lines, for `herd logs`, bounded both
// by count and by bytes of text, and lets followers read new lines as they
// come. It is safe for concurrent use.
//
// Followers read from the ring itself rather than from a queue of their
// own, so a follower costs no memory and no goroutine, and adding a line
// never waits for one: a follower that falls so far behind that its next
// line has left the ring skips ahead and is told how many lines it missed.
type Ring struct {
	maxLines, maxBytes int

	mu    sync.Mutex
	buf   []Line // circular; grows up to maxLines
	head  int    // index in buf of the oldest line
	n     int    // lines held
	bytes int    // bytes of Text held
	next  uint64 // sequence number of the next line added
	// wake is closed when a line is added, to wake blocked followers; nil
	// while nobody waits, so that Add allocates nothing then.
	wake chan struct{}
}

// NewRing returns a ring that keeps at most maxLines lines and maxBytes
// bytes of text; zero or less picks DefaultRingLines or DefaultRingBytes.
// The byte bound counts Text only: the count bound limits the rest.
func NewRing(maxLines, maxBytes int) *Ring {
	if maxLines <= 0 {
		maxLines = DefaultRingLines
	}
	if maxBytes <= 0 {
		maxBytes = DefaultRingBytes
	}
	return &Ring{maxLines: maxLines, maxBytes: maxBytes}
}

// Add appends l, dropping the oldest lines as the bounds require. A line
// whose text alone is over the byte bound is cut to it. Add never blocks
// on followers.
func (r *Ring) Add(l Line) {
	if len(l.Text) > r.maxBytes {
		l.Text = strings.Clone(l.Text[:r.maxBytes]) // not pinning the rest
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.n > 0 && (r.n == r.maxLines || r.bytes+len(l.Text) > r.maxBytes) {
		r.bytes -= len(r.buf[r.head].Text)
		r.buf[r.head] = Line{} // let the text be collected
		r.head = (r.head + 1) % len(r.buf)
		r.n--
	}
	if r.n == len(r.buf) {
		r.grow()
	}
	r.buf[(r.head+r.n)%len(r.buf)] = l
	r.n++
	r.bytes += len(l.Text)
	r.next++
	if r.wake != nil {
		close(r.wake)
		r.wake = nil
	}
}

// grow makes room for more lines, below maxLines. Growing as lines come
// rather than allocating maxLines at once keeps a quiet cluster small.
func (r *Ring) grow() {
	nb := make([]Line, min(max(2*len(r.buf), 16), r.maxLines))
	r.copyLast(nb[:r.n], r.n)
	r.buf, r.head = nb, 0
}

// copyLast copies the last k lines held into dst (len k); r.mu is held.
func (r *Ring) copyLast(dst []Line, k int) {
	for i := range k {
		dst[i] = r.buf[(r.head+r.n-k+i)%len(r.buf)]
	}
}

// Last returns the most recent n lines held (all of them when n is larger
// than that), oldest first.
func (r *Ring) Last(n int) []Line {
	r.mu.Lock()
	defer r.mu.Unlock()
	n = max(min(n, r.n), 0)
	out := make([]Line, n)
	r.copyLast(out, n)
	return out
}

// Follow returns a follower that reads, first, the last backlog lines held
// (fewer if the ring holds fewer), then every line added after.
func (r *Ring) Follow(backlog int) *Follower {
	r.mu.Lock()
	defer r.mu.Unlock()
	return &Follower{r: r, seq: r.next - uint64(max(min(backlog, r.n), 0))}
}

// A Follower reads a Ring's lines in order. It holds nothing in the ring
// and needs no closing. Its methods must not be called concurrently.
type Follower struct {
	r   *Ring
	seq uint64 // sequence number of the next line to read
}

// Next returns the lines added since the last call (at most the ring's
// bound), waiting until there is at least one or ctx ends, in which case
// it returns ctx's error. dropped is how many lines the follower missed
// since the last call because they left the ring before it read them.
func (f *Follower) Next(ctx context.Context) (lines []Line, dropped int, err error) {
	r := f.r
	for {
		if err := ctx.Err(); err != nil {
			return nil, dropped, err
		}
		r.mu.Lock()
		if oldest := r.next - uint64(r.n); f.seq < oldest {
			dropped += int(oldest - f.seq)
			f.seq = oldest
		}
		if k := int(r.next - f.seq); k > 0 {
			lines = make([]Line, k)
			r.copyLast(lines, k)
			f.seq = r.next
			r.mu.Unlock()
			return lines, dropped, nil
		}
		if r.wake == nil {
			r.wake = make(chan struct{})
		}
		wake := r.wake
		r.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
		}
	}
}
