// Package ipc is the wire format of the channel between a herd primary and
// its workers: one JSON object per line (UTF-8, '\n'-terminated), each with
// a string "type"; user messages carry their payload in "data", and types
// that begin with "herd." are reserved for the protocol. docs/protocol.md
// is the reference for other languages.
//
// The Reader never buffers more than the maximum message size: a longer
// line is skipped as it streams past, and counted.
package ipc

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Version is the protocol version the primary announces in its first
// message (herd.hello). Fields are only ever added within a version.
const Version = 1

// DefaultMaxMessage is the default limit on one message's encoded size.
const DefaultMaxMessage = 1 << 20

// Reserved message types.
const (
	TypeHello     = "herd.hello"     // primary → worker, first message: v, id, workers
	TypeReady     = "herd.ready"     // worker → primary: serving
	TypeHeartbeat = "herd.heartbeat" // worker → primary: alive
	TypeShutdown  = "herd.shutdown"  // primary → worker: stop accepting, finish in-flight work
	TypeBroadcast = "herd.broadcast" // worker → primary: relay data to every other worker
	TypeTo        = "herd.to"        // worker → primary: relay data to worker "to"
	TypeMessage   = "herd.message"   // primary → worker: a relayed message, with "from"
)

// ReservedPrefix starts every protocol type.
const ReservedPrefix = "herd."

// Message is one message on the channel.
type Message struct {
	// Type says what the message is; required.
	Type string `json:"type"`
	// Data is the payload of user and relayed messages, as JSON.
	Data json.RawMessage `json:"data,omitempty"`
	// From is the sender's worker id on relayed messages; absent when
	// the primary itself sends.
	From *int `json:"from,omitempty"`
	// To is the target worker of herd.to.
	To *int `json:"to,omitempty"`
	// V, ID and Workers are set in herd.hello.
	V       int  `json:"v,omitempty"`
	ID      *int `json:"id,omitempty"`
	Workers int  `json:"workers,omitempty"`
}

// Errors a Reader and Decode return; tell them apart with errors.Is.
var (
	ErrTooLong   = errors.New("message longer than the limit")
	ErrMalformed = errors.New("malformed message")
)

// Decode parses and checks one line (without its newline).
func Decode(line []byte) (Message, error) {
	var m Message
	if !utf8.Valid(line) {
		return m, fmt.Errorf("%w: not UTF-8", ErrMalformed)
	}
	trimmed := bytes.TrimSpace(line)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return m, fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	if err := dec.Decode(&m); err != nil {
		return Message{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if dec.More() {
		return Message{}, fmt.Errorf("%w: more than one JSON value on the line", ErrMalformed)
	}
	if m.Type == "" {
		return Message{}, fmt.Errorf("%w: no \"type\"", ErrMalformed)
	}
	if m.Type == TypeTo && (m.To == nil || *m.To < 0) {
		return Message{}, fmt.Errorf("%w: herd.to without a worker \"to\"", ErrMalformed)
	}
	return m, nil
}

// Reserved reports whether t is a protocol type.
func Reserved(t string) bool { return strings.HasPrefix(t, ReservedPrefix) }

// Append appends m's encoding, newline included, to b.
func Append(b []byte, m Message) ([]byte, error) {
	if m.Type == "" {
		return b, fmt.Errorf("%w: no \"type\"", ErrMalformed)
	}
	enc, err := json.Marshal(m)
	if err != nil {
		return b, err
	}
	// json.Marshal never emits a raw newline, so a message is one line.
	return append(append(b, enc...), '\n'), nil
}

// Reader splits a stream into messages no longer than a limit.
type Reader struct {
	br  *bufio.Reader
	max int
	// Skipped counts lines dropped for being too long.
	Skipped int
}

// NewReader reads messages of at most max bytes (0: DefaultMaxMessage)
// from r.
func NewReader(r io.Reader, max int) *Reader {
	if max <= 0 {
		max = DefaultMaxMessage
	}
	return &Reader{br: bufio.NewReaderSize(r, min(max+1, 64<<10)), max: max}
}

// ReadLine returns the next line that fits the limit, without its newline.
// The slice is valid until the next call. A line over the limit is
// consumed in pieces, never held whole, and reported as ErrTooLong; the
// next call goes on with the following line. A last line without a
// newline is returned at end of stream (the writer may have died).
func (r *Reader) ReadLine() ([]byte, error) {
	var long []byte // a line longer than the buffer, while it fits the limit
	tooLong := false
	for {
		chunk, err := r.br.ReadSlice('\n')
		switch {
		case err == nil || (errors.Is(err, io.EOF) && len(chunk) > 0):
			chunk = bytes.TrimSuffix(chunk, []byte{'\n'})
			if tooLong || len(long)+len(chunk) > r.max {
				r.Skipped++
				return nil, fmt.Errorf("%w (%d bytes)", ErrTooLong, r.max)
			}
			if long != nil {
				return append(long, chunk...), nil
			}
			return chunk, nil
		case errors.Is(err, bufio.ErrBufferFull):
			if !tooLong && len(long)+len(chunk) <= r.max {
				long = append(long, chunk...)
			} else {
				tooLong, long = true, nil // stop keeping it
			}
		default:
			return nil, err
		}
	}
}
