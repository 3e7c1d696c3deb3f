package herd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"
)

// MapOptions configure Map. The zero value of every field is useful.
type MapOptions struct {
	// Options are the workers': Command (required here: a line worker),
	// Workers, Env, Dir, restart policy, Stderr (their stderr, tagged),
	// Logger. Listen and Balance do not apply.
	Options
	// Inflight is how many tasks a worker may hold; 0 means 16.
	Inflight int
	// Retries is how many times a task whose worker died or hung is given
	// to another worker before it fails; 0 means 2, negative none.
	Retries int
	// TaskTimeout, when positive, kills a worker that has not answered its
	// oldest task this long after it was given it or answered the one
	// before (its tasks go to other workers).
	TaskTimeout time.Duration
	// Unordered writes results as they come instead of in input order.
	Unordered bool
	// JSON checks that every task and every result is one JSON value; a
	// task that is not fails at once, and a result that is an object with
	// an "error" member counts as a failed task. A '\r' before a line's
	// newline is dropped then (it is white space); without JSON, lines go
	// through byte for byte.
	JSON bool
	// MaxLine bounds a task or result line; 0 means 16 MiB.
	MaxLine int
	// Progress, if set, is called about once a second and at the end.
	Progress func(MapStats)
}

// MapStats says how far a Map got.
type MapStats struct {
	// Tasks read, Done (answered or failed), Failed, and Retries (tasks
	// given to another worker after theirs died or hung).
	Tasks, Done, Failed, Retries int
	// Elapsed since the start.
	Elapsed time.Duration
	// InputRead and InputSize are bytes of input read and its size when
	// known (a regular file), else 0: for an ETA.
	InputRead, InputSize int64
}

// ErrTasksFailed is returned by Map when some tasks failed for good.
var ErrTasksFailed = errors.New("tasks failed")

// Map runs each line of in as a task on workers that read tasks on their
// stdin, one per line, and answer each with one line on their stdout, in
// the order they got them; it writes the answers to out, one per line, in
// input order (or as they come, with Unordered). Workers are persistent: a
// task costs a line each way, not a process. A task whose worker dies or
// hangs goes to another worker; one that fails for good gets, in its
// place, the line {"error":"why","task":TASK}. Memory stays bounded: input
// is read only as fast as answers are written.
//
// Map returns when every task has its answer, or ctx ends (what was
// answered is written first): an error wrapping ErrTasksFailed when some
// failed, the context's cause, or what stopped the workers.
func Map(ctx context.Context, opts MapOptions, in io.Reader, out io.Writer) (MapStats, error) {
	if len(opts.Command) == 0 {
		return MapStats{}, fmt.Errorf("%w: map needs a worker command", ErrBadOptions)
	}
	if opts.Inflight <= 0 {
		opts.Inflight = 16
	}
	switch {
	case opts.Retries == 0:
		opts.Retries = 2
	case opts.Retries < 0:
		opts.Retries = 0
	}
	if opts.MaxLine <= 0 {
		opts.MaxLine = 16 << 20
	}
	f := newFarm(opts.Inflight, opts.Retries, opts.TaskTimeout, !opts.Unordered)
	lines := &lineWorkers{f: f, json: opts.JSON, max: opts.MaxLine, stdins: map[*lineStdin]bool{}}
	f.send, f.flush, f.kill = lines.send, lines.flush, (*process).kill

	sopts := opts.Options
	sopts.Listen, sopts.Balance = nil, ""
	sopts.lines = lines
	if sopts.Logger == nil {
		// Workers starting and stopping is not news here; trouble is.
		sopts.Logger = slog.New(slog.NewTextHandler(orDefault(sopts.Stderr, os.Stderr), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	sup, err := New(sopts)
	if err != nil {
		return MapStats{}, err
	}
	sup.procEvents = func(p *process, ev Event) {
		switch ev.Kind {
		case EventStarted:
			f.up(p)
		case EventExited:
			f.lost(p, "its worker exited ("+ev.Status+")")
		}
	}

	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	runErr := make(chan error, 1)
	go func() { runErr <- sup.Run(runCtx) }()

	begin := time.Now()
	src := newTaskReader(in, opts.MaxLine, opts.JSON)
	bw := bufio.NewWriterSize(out, 64<<10)
	progressAt := time.Now()
	report := func(final bool) {
		if opts.Progress == nil || !final && time.Since(progressAt) < time.Second {
			return
		}
		progressAt = time.Now()
		st := f.stats
		st.Elapsed, st.InputRead, st.InputSize = time.Since(begin), src.read, src.size
		opts.Progress(st)
	}
	emit := func(t *farmTask) error {
		if t.err != "" {
			line, _ := json.Marshal(map[string]any{"error": t.err, "task": taskValue(t.input, opts.JSON)})
			bw.Write(line)
		} else {
			bw.Write(t.result)
			if opts.JSON && isErrorObject(t.result) {
				f.stats.Failed++
			}
		}
		if err := bw.WriteByte('\n'); err != nil {
			return fmt.Errorf("write results: %w", err)
		}
		report(false)
		return nil
	}
	next := func() ([]byte, string, bool, error) {
		line, err := src.next()
		switch {
		case err == io.EOF:
			return nil, "", false, nil
		case err != nil:
			return nil, "", false, err
		case opts.JSON && !json.Valid(line):
			return line, "the task is not one JSON value", true, nil
		}
		return line, "", true, nil
	}
	err = f.run(ctx, sup.opts.Workers, next, emit, func() { bw.Flush() })
	if ferr := bw.Flush(); err == nil && ferr != nil {
		err = fmt.Errorf("write results: %w", ferr)
	}
	lines.closeAll()
	stop()
	if rerr := <-runErr; err == nil && rerr != nil {
		err = rerr
	}
	report(true)
	st := f.stats
	st.Elapsed, st.InputRead, st.InputSize = time.Since(begin), src.read, src.size
	if err == nil && st.Failed > 0 {
		err = fmt.Errorf("%w: %d of %d", ErrTasksFailed, st.Failed, st.Tasks)
	}
	return st, err
}

func taskValue(input []byte, isJSON bool) any {
	if isJSON && json.Valid(input) {
		return json.RawMessage(input)
	}
	return string(input)
}

func isErrorObject(b []byte) bool {
	var obj map[string]json.RawMessage
	if len(b) == 0 || b[0] != '{' || json.Unmarshal(b, &obj) != nil {
		return false
	}
	_, ok := obj["error"]
	return ok
}

// taskReader reads tasks, a line each, at most max bytes long. Only the
// newline is framing: a line is the bytes before it, whatever they are
// (plain mode passes lines through byte for byte). With trimCR, a '\r'
// before the newline goes too (JSON mode: it is white space there, and
// input with CRLF line ends is common).
type taskReader struct {
	br     *bufio.Reader
	max    int
	trimCR bool
	read   int64
	size   int64
}

func newTaskReader(in io.Reader, max int, trimCR bool) *taskReader {
	r := &taskReader{br: bufio.NewReaderSize(in, 64<<10), max: max, trimCR: trimCR}
	if f, ok := in.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			r.size = fi.Size()
		}
	}
	return r
}

// next returns the next line without its newline (a copy), io.EOF at the
// end. A line over the limit is an error: its task cannot be read whole.
func (r *taskReader) next() ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.br.ReadSlice('\n')
		r.read += int64(len(chunk))
		line = append(line, chunk...)
		if len(line) > r.max+1 {
			return nil, fmt.Errorf("input line longer than %d bytes", r.max)
		}
		switch {
		case err == nil:
			line = line[:len(line)-1]
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			// The last line, without its newline.
		default:
			return nil, err
		}
		if r.trimCR {
			line = bytes.TrimSuffix(line, []byte{'\r'})
		}
		return line, nil
	}
}

// lineWorkers is the stdin/stdout side of Map's workers.
type lineWorkers struct {
	f    *farm
	json bool
	max  int

	mu     sync.Mutex
	stdins map[*lineStdin]bool // not closed yet
}

// lineStdin feeds one worker process its tasks from a goroutine of its
// own, so that a worker slow to read its stdin never blocks the farm.
// Tasks are appended to a buffer and written in one go when the farm has
// handed out a round (flush).
type lineStdin struct {
	l      *lineWorkers
	p      *process
	mu     sync.Mutex
	buf    []byte
	closed bool
	wake   chan struct{} // capacity 1
	done   chan struct{}
	once   sync.Once
}

func (l *lineWorkers) attach(p *process, stdin *os.File) io.Closer {
	s := &lineStdin{l: l, p: p, wake: make(chan struct{}, 1), done: make(chan struct{})}
	l.mu.Lock()
	l.stdins[s] = true
	l.mu.Unlock()
	go s.write(stdin)
	return s
}

func (s *lineStdin) write(stdin *os.File) {
	defer stdin.Close()
	var out []byte
	for {
		select {
		case <-s.wake:
		case <-s.done:
			return
		}
		s.mu.Lock()
		out, s.buf = s.buf, out[:0]
		s.mu.Unlock()
		if _, err := stdin.Write(out); err != nil {
			// The worker stopped reading (it is exiting): its tasks
			// come back through the farm when it has.
			s.mu.Lock()
			s.closed = true
			s.mu.Unlock()
			return
		}
	}
}

// Close ends the feeding (the worker exited, or the map is over).
func (s *lineStdin) Close() error {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.done)
		s.l.mu.Lock()
		delete(s.l.stdins, s)
		s.l.mu.Unlock()
	})
	return nil
}

func (l *lineWorkers) send(w *farmWorker, _ int, task []byte) bool {
	s, _ := w.p.stdin.(*lineStdin)
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.buf = append(append(s.buf, task...), '\n')
	return true
}

// flush wakes w's writer for what send queued.
func (l *lineWorkers) flush(w *farmWorker) {
	if s, _ := w.p.stdin.(*lineStdin); s != nil {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// read takes a worker's answers, a line each, until its stdout ends.
func (l *lineWorkers) read(p *process, stdout io.Reader) {
	r := newTaskReader(stdout, l.max, l.json)
	for {
		line, err := r.next()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, os.ErrClosed) {
				// A line too long to keep: it fails its task, and the rest
				// of the worker's output cannot be trusted to line up.
				l.f.answered(p, nil, err.Error())
				io.Copy(io.Discard, stdout)
			}
			return
		}
		if l.json && !json.Valid(line) {
			l.f.answered(p, nil, "the worker's answer is not one JSON value")
			continue
		}
		l.f.answered(p, line, "")
	}
}

func (l *lineWorkers) closeAll() {
	l.mu.Lock()
	all := make([]*lineStdin, 0, len(l.stdins))
	for s := range l.stdins {
		all = append(all, s)
	}
	l.mu.Unlock()
	for _, s := range all {
		// A worker may see the end of its input and exit before the
		// supervisor's stop reaches its slot: that exit is not a crash.
		s.p.inputEnded.Store(true)
		s.Close()
	}
}
