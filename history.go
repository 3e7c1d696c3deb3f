package herd

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"time"

	"github.com/herd-sh/herd/internal/logpump"
)

// StreamLog is the OutputLine stream of the supervisor's own log records
// (a worker started, exited, a reload failed and why), kept with the
// workers' lines so that `herd logs` tells the whole story in order, as
// `pm2 logs` shows PM2's own lines beside the app's.
const StreamLog = "log"

// historyWriter adds each record a slog handler writes (one Write per
// record) to the ring as a line of the primary's.
type historyWriter struct {
	ring *logpump.Ring
	pid  int
}

func (w historyWriter) Write(p []byte) (int, error) {
	w.ring.Add(logpump.Line{
		Time:   time.Now(),
		Worker: -1,
		PID:    w.pid,
		Stream: StreamLog,
		Text:   string(bytes.TrimSuffix(p, []byte("\n"))),
	})
	return len(p), nil
}

// teeHandler passes every record to two handlers.
type teeHandler struct{ a, b slog.Handler }

// withHistory returns log, whose records also go to ring, as text.
func withHistory(log *slog.Logger, ring *logpump.Ring) *slog.Logger {
	history := slog.NewTextHandler(historyWriter{ring: ring, pid: os.Getpid()}, nil)
	return slog.New(teeHandler{log.Handler(), history})
}

func (h teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.a.Enabled(ctx, l) || h.b.Enabled(ctx, l)
}

func (h teeHandler) Handle(ctx context.Context, r slog.Record) error {
	var errA, errB error
	if h.a.Enabled(ctx, r.Level) {
		errA = h.a.Handle(ctx, r.Clone())
	}
	if h.b.Enabled(ctx, r.Level) {
		errB = h.b.Handle(ctx, r)
	}
	return errors.Join(errA, errB)
}

func (h teeHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return teeHandler{h.a.WithAttrs(attrs), h.b.WithAttrs(attrs)}
}

func (h teeHandler) WithGroup(name string) slog.Handler {
	return teeHandler{h.a.WithGroup(name), h.b.WithGroup(name)}
}
