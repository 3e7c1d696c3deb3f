// Package ipc is the wire format of the channel between a herd primary and
// its workers: one JSON object per line (UTF-8, '\n'-terminated), each with
// a string "type"; user messages carry their payload in "data", and types
// that begin with "herd." are reserved for the protocol. docs/protocol.md
// is the reference for other languages.
//
// The primary has to keep up with workers that send well over a million
// small messages a second, so the codec is written by hand rather than
// with encoding/json's reflection: Decode and Append accept and produce
// exactly what encoding/json would (the fuzz tests hold them to a
// reference built on it), and a Decoder and a reused buffer make the
// common message cost no allocation at all.
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
	"math"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Version is the protocol version the primary announces in its first
// message (herd.hello). Fields are only ever added within a version.
const Version = 1

// DefaultMaxMessage is the default limit on one message's encoded size.
const DefaultMaxMessage = 1 << 20

// Reserved message types.
const (
	TypeHello     = "herd.hello"     // primary → worker, first message: v, id, workers, max
	TypeReady     = "herd.ready"     // worker → primary: serving
	TypeHeartbeat = "herd.heartbeat" // worker → primary: alive
	TypeShutdown  = "herd.shutdown"  // primary → worker: stop accepting, finish in-flight work
	TypeBroadcast = "herd.broadcast" // worker → primary: relay data to every other worker
	TypeTo        = "herd.to"        // worker → primary: relay data to worker "to"
	TypeMessage   = "herd.message"   // primary → worker: a relayed message, with "from"
	TypeConn      = "herd.conn"      // primary → worker: a connection (its fd attached), with "listener"
	TypeTook      = "herd.took"      // worker → primary: data connections received
	TypeDeclined  = "herd.declined"  // worker → primary: data connections left to others
	TypeClosed    = "herd.closed"    // worker → primary: data handed connections closed
	TypeTask      = "herd.task"      // primary → worker: task data, with "id"
	TypeResult    = "herd.result"    // worker → primary: the result data of task "id"
	TypeFailed    = "herd.failed"    // worker → primary: task "id" failed, data says why
)

// ReservedPrefix starts every protocol type.
const ReservedPrefix = "herd."

// Message is one message on the channel.
//
// The struct tags name the members on the wire; Decode and Append
// implement them by hand, so encoding/json is not needed to read or write
// a message. Append writes the members in the order type, from, to, v,
// id, workers, max, heartbeat, listener, cmd, data: the small fixed members first, so that a reader
// sees what a message is before its payload.
type Message struct {
	// Type says what the message is; required.
	Type string `json:"type"`
	// Data is the payload of user and relayed messages, as JSON; nil when
	// absent (a "data" of null decodes as absent too). After Decode it
	// shares memory with the decoded line.
	Data json.RawMessage `json:"data,omitempty"`
	// From is the sender's worker id on relayed messages; absent when
	// the primary itself sends.
	From *int `json:"from,omitempty"`
	// To is the target worker of herd.to.
	To *int `json:"to,omitempty"`
	// V, ID, Workers and Max are set in herd.hello; Max is the limit on a
	// message's length in bytes, so that a worker knows what the primary
	// will drop before it sends.
	V       int  `json:"v,omitempty"`
	ID      *int `json:"id,omitempty"`
	Workers int  `json:"workers,omitempty"`
	Max     int  `json:"max,omitempty"`
	// Heartbeat, in herd.hello, asks the worker to send herd.heartbeat
	// every that many milliseconds (0: no heartbeats needed).
	Heartbeat int `json:"heartbeat,omitempty"`
	// Listener names the listener a connection handed over with herd.conn
	// came to.
	Listener string `json:"listener,omitempty"`
	// Cmd is set, instead of Type, on the internal messages of Node's own
	// IPC channel ({"cmd":"NODE_HANDLE_ACK"}), which Node workers whose
	// channel is herd's send by themselves: Decode accepts a message with
	// a cmd and no type (and keeps nothing else of it).
	Cmd string `json:"cmd,omitempty"`
}

// Errors a Reader and Decode return; tell them apart with errors.Is.
var (
	ErrTooLong   = errors.New("message longer than the limit")
	ErrMalformed = errors.New("malformed message")
)

// maxDepth is how deeply arrays and objects may nest in a message, the
// outer object included: encoding/json's limit, so that both accept the
// same lines, and a bound that keeps a line of "[[[[..." cheap to reject.
const maxDepth = 10000

// Interning limits of a Decoder: enough for the handful of types a
// program uses, while a worker that sends a new type in every message
// cannot make the cache grow without bound.
const (
	maxInterned    = 64
	maxInternedLen = 128
)

// malformedError is ErrMalformed with the reason; its own type so that
// Append can say the reason is about Data.
type malformedError struct{ reason string }

func (e *malformedError) Error() string { return ErrMalformed.Error() + ": " + e.reason }
func (e *malformedError) Unwrap() error { return ErrMalformed }

func malformed(format string, args ...any) error {
	return &malformedError{fmt.Sprintf(format, args...)}
}

// Decode parses and checks one line (without its newline): one JSON
// object in UTF-8, whitespace around it allowed, with a non-empty string
// "type"; "from", "to", "v", "id", "workers" and "max" must be integers
// that fit an int, and a herd.to needs a "to" of at least 0. Member names
// are case-sensitive, the last of duplicate members counts, unknown
// members are skipped, and a member that is null is absent. What is JSON
// is what encoding/json says, nesting limit included.
//
// The returned Data is a slice of line, not a copy: it is valid only as
// long as line is (for a Reader's line, until the next ReadLine).
func Decode(line []byte) (Message, error) { return decode(line, nil) }

// A Decoder decodes like Decode, and in addition keeps the strings of the
// first few message types it sees so that a stream of messages with
// repeating types does not allocate a new Type string for each one. The
// zero value is ready to use. A Decoder is not safe for concurrent use:
// give each reading goroutine its own.
type Decoder struct {
	types map[string]string
	last  string // the previous message's type, the likeliest next one
	ints  []int  // where the pointers of From, To and ID point, a block at a time
}

// intPtr returns a pointer to a copy of n. A Decoder hands out pointers
// into a block of ints, one allocation per block instead of per message
// with an "id" (tasks and results each have one); a block stays alive as
// long as any of its pointers does.
func (d *Decoder) intPtr(n int) *int {
	if d == nil {
		p := new(int) // not &n: that would put every n on the heap
		*p = n
		return p
	}
	if len(d.ints) == 0 {
		d.ints = make([]int, 256)
	}
	p := &d.ints[0]
	*p = n
	d.ints = d.ints[1:]
	return p
}

// Decode is the package's Decode, with the Decoder's type strings.
func (d *Decoder) Decode(line []byte) (Message, error) { return decode(line, d) }

// stringMember reads a member that must be a string (or null, or absent:
// ""), interned like types, since listener names and Node's cmds repeat.
func (d *Decoder) stringMember(raw []byte, name string) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	if raw[0] != '"' {
		return "", malformed("%q is not a string", name)
	}
	raw = raw[1 : len(raw)-1]
	if bytes.IndexByte(raw, '\\') >= 0 {
		var buf [64]byte
		return d.intern(unescape(buf[:0], raw)), nil
	}
	return d.intern(raw), nil
}

// intern returns b as a string, the same string each time for a type it
// keeps; d may be nil, to keep nothing.
func (d *Decoder) intern(b []byte) string {
	if d == nil {
		return string(b)
	}
	if string(b) == d.last {
		return d.last
	}
	s, ok := d.types[string(b)]
	if !ok {
		s = string(b)
		if len(d.types) >= maxInterned || len(s) > maxInternedLen {
			return s
		}
		if d.types == nil {
			d.types = make(map[string]string)
		}
		d.types[s] = s
	}
	d.last = s
	return s
}

func decode(line []byte, d *Decoder) (Message, error) {
	var m Message
	if err := decodeObject(&m, line, d); err != nil {
		if !utf8.Valid(line) {
			// Only scanned strings are checked as they go; a failed
			// line is rare enough to look at whole, for the most
			// useful reason.
			err = malformed("not UTF-8")
		}
		return Message{}, err
	}
	return m, nil
}

// decodeObject is Decode without the UTF-8 check of what it did not scan:
// when it succeeds it has scanned the whole line, and so checked it. It
// fills in m rather than returning it, which saves copies of a Message on
// the way out.
func decodeObject(m *Message, line []byte, d *Decoder) error {
	if decodeCommon(m, line, d) {
		return nil
	}
	s := scanner{b: line}
	s.skipSpace()
	if !s.consume('{') {
		return malformed("not a JSON object")
	}
	// Only the last of duplicate members counts, whatever the earlier
	// ones hold (as long as it is JSON), so values are only kept while
	// scanning, and looked at once the object is complete.
	var values [memberCount][]byte
	s.skipSpace()
	if !s.consume('}') {
		for {
			if s.peek() != '"' {
				return s.unexpected()
			}
			name, escaped, err := s.scanString()
			if err != nil {
				return err
			}
			s.skipSpace()
			if !s.consume(':') {
				return s.unexpected()
			}
			s.skipSpace()
			start := s.pos
			if err := s.skipValue(1); err != nil {
				return err
			}
			// Unknown members go to values[memberUnknown], never read.
			values[memberOf(name, escaped)] = line[start:s.pos]
			s.skipSpace()
			if s.consume(',') {
				s.skipSpace()
				continue
			}
			if s.consume('}') {
				break
			}
			return s.unexpected()
		}
	}
	s.skipSpace()
	if s.pos < len(line) {
		if strings.IndexByte(`{["-0123456789tfn`, line[s.pos]) >= 0 {
			return malformed("more than one JSON value on the line")
		}
		return s.unexpected()
	}

	typ := values[memberType]
	noType := len(typ) == 0 || string(typ) == "null" || string(typ) == `""`
	if !noType && typ[0] != '"' {
		return malformed("\"type\" is not a string")
	}
	var err error
	m.From = d.optInt(values[memberFrom], "from", &err)
	m.To = d.optInt(values[memberTo], "to", &err)
	m.ID = d.optInt(values[memberID], "id", &err)
	m.V = intOrZero(values[memberV], "v", &err)
	m.Workers = intOrZero(values[memberWorkers], "workers", &err)
	m.Max = intOrZero(values[memberMax], "max", &err)
	m.Heartbeat = intOrZero(values[memberHeartbeat], "heartbeat", &err)
	if err != nil {
		return err
	}
	if data := values[memberData]; string(data) != "null" {
		m.Data = data
	}
	if m.Listener, err = d.stringMember(values[memberListener], "listener"); err != nil {
		return err
	}
	if m.Cmd, err = d.stringMember(values[memberCmd], "cmd"); err != nil {
		return err
	}
	if noType {
		// Node's internal messages have a cmd and no type; nothing else
		// of them counts.
		if m.Cmd == "" {
			return malformed("no \"type\"")
		}
		*m = Message{Cmd: m.Cmd}
		return nil
	}
	// The type string comes last, so that only messages that pass get
	// their type into the Decoder's keeping.
	typ = typ[1 : len(typ)-1]
	if bytes.IndexByte(typ, '\\') >= 0 {
		var buf [64]byte
		m.Type = d.intern(unescape(buf[:0], typ))
	} else {
		m.Type = d.intern(typ)
	}
	if m.Type == TypeTo && (m.To == nil || *m.To < 0) {
		return malformed("herd.to without a worker \"to\"")
	}
	return nil
}

// decodeCommon reads the commonest messages, written as Append writes
// them: {"type":"T"} with an optional "id" and an optional "data" after
// it, in that order, no whitespace, T plain ASCII. It reports false,
// having touched nothing, for anything else, which the general path then
// reads (and, if it is wrong, explains). Streams of user messages, tasks
// and results are all of this form, and reading them without the general
// member loop halves what a message costs.
func decodeCommon(m *Message, line []byte, d *Decoder) bool {
	const prefix = `{"type":"`
	if len(line) < len(prefix)+3 || string(line[:len(prefix)]) != prefix {
		return false
	}
	i := len(prefix)
	j := i
	for ; j < len(line); j++ {
		c := line[j]
		if c == '"' {
			break
		}
		if c < 0x20 || c == '\\' || c >= utf8.RuneSelf {
			return false
		}
	}
	if j == i || j >= len(line) {
		return false
	}
	typ := line[i:j]
	i = j + 1
	var id *int
	if const_ := `,"id":`; len(line)-i > len(const_) && string(line[i:i+len(const_)]) == const_ {
		i += len(const_)
		s := scanner{b: line, pos: i}
		if s.scanNumber() != nil {
			return false
		}
		var err error
		n := parseInt(line[i:s.pos], "id", &err)
		if err != nil {
			return false
		}
		id, i = d.intPtr(n), s.pos
	}
	var data []byte
	if const_ := `,"data":`; len(line)-i > len(const_) && string(line[i:i+len(const_)]) == const_ {
		i += len(const_)
		s := scanner{b: line, pos: i}
		if s.skipValue(1) != nil {
			return false
		}
		data, i = line[i:s.pos], s.pos
		if string(data) == "null" {
			data = nil
		}
	}
	if i != len(line)-1 || line[i] != '}' {
		return false
	}
	if string(typ) == TypeTo {
		return false // needs its "to"
	}
	*m = Message{Type: d.intern(typ), ID: id, Data: data}
	return true
}

type member int

const (
	memberUnknown member = iota
	memberType
	memberData
	memberFrom
	memberTo
	memberV
	memberID
	memberWorkers
	memberMax
	memberHeartbeat
	memberListener
	memberCmd
	memberCount
)

// memberOf identifies a member by its name as written between the quotes.
func memberOf(name []byte, escaped bool) member {
	if escaped {
		// Whoever escapes a plain member name gets no fast path, but
		// the same answer. None of ours is longer than "heartbeat"
		// written all in \u escapes.
		if len(name) > len(`\u0000`)*len("heartbeat") {
			return memberUnknown
		}
		var buf [64]byte
		name = unescape(buf[:0], name)
	}
	switch string(name) {
	case "type":
		return memberType
	case "data":
		return memberData
	case "from":
		return memberFrom
	case "to":
		return memberTo
	case "v":
		return memberV
	case "id":
		return memberID
	case "workers":
		return memberWorkers
	case "max":
		return memberMax
	case "heartbeat":
		return memberHeartbeat
	case "listener":
		return memberListener
	case "cmd":
		return memberCmd
	}
	return memberUnknown
}

// scanner reads JSON from b, at pos. Its methods expect pos to be at the
// first byte of what they read, never at whitespace, and leave it just
// after it.
type scanner struct {
	b   []byte
	pos int
	// spaced records that skipSpace skipped something: a value that
	// never had any is already compact.
	spaced bool
}

func (s *scanner) peek() byte {
	if s.pos < len(s.b) {
		return s.b[s.pos]
	}
	return 0
}

func (s *scanner) consume(c byte) bool {
	if s.pos < len(s.b) && s.b[s.pos] == c {
		s.pos++
		return true
	}
	return false
}

// skipSpace skips JSON's whitespace, which is only these four bytes.
func (s *scanner) skipSpace() {
	start := s.pos
	for s.pos < len(s.b) {
		switch s.b[s.pos] {
		case ' ', '\t', '\r', '\n':
			s.pos++
			continue
		}
		break
	}
	if s.pos != start {
		s.spaced = true
	}
}

// unexpected is the error for the byte at pos, which is not what the
// grammar allows there.
func (s *scanner) unexpected() error {
	if s.pos >= len(s.b) {
		return malformed("unexpected end of line")
	}
	r, _ := utf8.DecodeRune(s.b[s.pos:])
	return malformed("invalid character %q at offset %d", r, s.pos)
}

// scanString reads a string and returns what is between its quotes, and
// whether that has escapes to resolve. It checks the escapes and the
// UTF-8 of what it reads.
func (s *scanner) scanString() (contents []byte, escaped bool, err error) {
	b := s.b
	start := s.pos + 1 // after the quote
	i := start
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			s.pos = i + 1
			return b[start:i], escaped, nil
		case c == '\\':
			escaped = true
			if i+1 >= len(b) {
				i++
				break
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
				continue
			case 'u':
				if hex4(b[i+2:min(i+6, len(b))]) >= 0 {
					i += 6
					continue
				}
			}
			s.pos = i
			return nil, false, malformed("invalid escape in a string at offset %d", i)
		case c < 0x20:
			s.pos = i
			return nil, false, malformed("control character in a string at offset %d", i)
		case c >= utf8.RuneSelf:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				return nil, false, malformed("not UTF-8")
			}
			i += size
		default:
			i++
		}
	}
	s.pos = len(b)
	return nil, false, malformed("unexpected end of line in a string")
}

// scanNumber reads a number.
func (s *scanner) scanNumber() error {
	b, i := s.b, s.pos
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++ // JSON has no leading zeros: a digit after this one ends the number
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		i, _ = skipDigits(b, i)
	default:
		s.pos = i
		return s.unexpected()
	}
	ok := true
	if i < len(b) && b[i] == '.' {
		if i, ok = skipDigits(b, i+1); !ok {
			s.pos = i
			return s.unexpected()
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i, ok = skipDigits(b, i); !ok {
			s.pos = i
			return s.unexpected()
		}
	}
	s.pos = i
	return nil
}

// skipDigits returns the index after the digits at b[i:], and whether
// there was at least one.
func skipDigits(b []byte, i int) (int, bool) {
	start := i
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	return i, i > start
}

// scanLiteral reads true, false or null.
func (s *scanner) scanLiteral() error {
	var lit string
	switch s.peek() {
	case 't':
		lit = "true"
	case 'f':
		lit = "false"
	case 'n':
		lit = "null"
	default:
		return s.unexpected()
	}
	for i := range len(lit) {
		if s.peek() != lit[i] {
			return s.unexpected()
		}
		s.pos++
	}
	return nil
}

// skipValue reads any value, at depth open arrays and objects. It keeps
// its own stack of what is open rather than recursing, so that how deep a
// line nests costs memory only up to maxDepth.
func (s *scanner) skipValue(depth int) error {
	var small [64]byte
	open := small[:0] // '{' or '[' for each array and object we are in
	for {
		// At the start of a value.
		switch c := s.peek(); c {
		case '{', '[':
			if depth+len(open) >= maxDepth {
				return malformed("nested more than %d deep at offset %d", maxDepth, s.pos)
			}
			s.pos++
			s.skipSpace()
			open = append(open, c)
			if c == '[' {
				if !s.consume(']') {
					continue // to the first element
				}
				open = open[:len(open)-1]
			} else {
				if !s.consume('}') {
					if err := s.memberName(); err != nil {
						return err
					}
					continue // to the first member's value
				}
				open = open[:len(open)-1]
			}
		case '"':
			if _, _, err := s.scanString(); err != nil {
				return err
			}
		case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
			if err := s.scanNumber(); err != nil {
				return err
			}
		default:
			if err := s.scanLiteral(); err != nil {
				return err
			}
		}
		// After a value: close what it ends, up to the next value.
		for {
			if len(open) == 0 {
				return nil
			}
			s.skipSpace()
			inner := open[len(open)-1]
			if s.consume(',') {
				s.skipSpace()
				if inner == '{' {
					if err := s.memberName(); err != nil {
						return err
					}
				}
				break
			}
			if inner == '{' && s.consume('}') || inner == '[' && s.consume(']') {
				open = open[:len(open)-1]
				continue
			}
			return s.unexpected()
		}
	}
}

// memberName reads `"name" :` and the space after it.
func (s *scanner) memberName() error {
	if s.peek() != '"' {
		return s.unexpected()
	}
	if _, _, err := s.scanString(); err != nil {
		return err
	}
	s.skipSpace()
	if !s.consume(':') {
		return s.unexpected()
	}
	s.skipSpace()
	return nil
}

// optInt is the value of an optional integer member, nil if it is
// absent or null. Like intOrZero, it leaves *err as it is when it has
// none, so that a run of members needs one check.
func (d *Decoder) optInt(value []byte, name string, err *error) *int {
	if value == nil || string(value) == "null" {
		return nil
	}
	return d.intPtr(parseInt(value, name, err))
}

// intOrZero is the value of an integer member, 0 if it is absent or
// null.
func intOrZero(value []byte, name string, err *error) int {
	if value == nil || string(value) == "null" {
		return 0
	}
	return parseInt(value, name, err)
}

// parseInt reads a JSON value that must be an integer that fits an int,
// as encoding/json requires to decode into one: not 1.0, not 1e3, not
// "1".
func parseInt(value []byte, name string, err *error) int {
	digits := value
	neg := digits[0] == '-'
	limit := uint64(math.MaxInt)
	if neg {
		digits = digits[1:]
		limit++
	}
	var n uint64
	for _, c := range digits {
		if c < '0' || c > '9' {
			*err = malformed("%q is not an integer", name)
			return 0
		}
		d := uint64(c - '0')
		if n > (limit-d)/10 {
			*err = malformed("%q is out of range", name)
			return 0
		}
		n = n*10 + d
	}
	if neg {
		return int(-n)
	}
	return int(n)
}

// unescape appends the contents of a checked JSON string, escapes
// resolved, to dst. As encoding/json does, a \u escape of half a
// surrogate pair that is not followed by the other half is U+FFFD.
func unescape(dst, s []byte) []byte {
	for i := 0; i < len(s); {
		if s[i] != '\\' {
			j := bytes.IndexByte(s[i:], '\\')
			if j < 0 {
				j = len(s) - i
			}
			dst = append(dst, s[i:i+j]...)
			i += j
			continue
		}
		c := s[i+1]
		i += 2
		switch c {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := hex4(s[i:])
			i += 4
			if utf16.IsSurrogate(r) {
				r2 := rune(-1)
				if i+6 <= len(s) && s[i] == '\\' && s[i+1] == 'u' {
					r2 = hex4(s[i+2:])
				}
				r = utf16.DecodeRune(r, r2)
				if r != utf8.RuneError {
					i += 6
				}
			}
			dst = utf8.AppendRune(dst, r)
		default: // '"', '\\', '/'
			dst = append(dst, c)
		}
	}
	return dst
}

// hex4 is the value of four hex digits, or -1.
func hex4(b []byte) rune {
	if len(b) < 4 {
		return -1
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return -1
		}
		r = r<<4 | rune(c)
	}
	return r
}

// Reserved reports whether t is a protocol type.
func Reserved(t string) bool { return strings.HasPrefix(t, ReservedPrefix) }

// Append appends m's encoding, one compact line with its newline, to b.
// Data is checked, and compacted if it has whitespace: Data that is not
// JSON, is not UTF-8, or nests so deep that Decode would refuse the
// message is ErrMalformed, so what Append writes can always be read
// back. So is an empty Type. On error b is returned as it was.
//
// The Type string is escaped as encoding/json escapes it, except that <,
// > and & are left alone: they are harmless on this channel.
func Append(b []byte, m Message) ([]byte, error) {
	if m.Type == "" {
		if m.Cmd == "" {
			return b, malformed("no \"type\"")
		}
		// A message of Node's own, which has nothing but its cmd.
		b = append(b, `{"cmd":`...)
		b = appendString(b, m.Cmd)
		return append(b, '}', '\n'), nil
	}
	start := len(b)
	b = append(b, `{"type":`...)
	b = appendString(b, m.Type)
	b = appendIntPtr(b, `,"from":`, m.From)
	b = appendIntPtr(b, `,"to":`, m.To)
	b = appendInt(b, `,"v":`, m.V)
	b = appendIntPtr(b, `,"id":`, m.ID)
	b = appendInt(b, `,"workers":`, m.Workers)
	b = appendInt(b, `,"max":`, m.Max)
	b = appendInt(b, `,"heartbeat":`, m.Heartbeat)
	if m.Listener != "" {
		b = append(b, `,"listener":`...)
		b = appendString(b, m.Listener)
	}
	if m.Cmd != "" {
		b = append(b, `,"cmd":`...)
		b = appendString(b, m.Cmd)
	}
	if len(m.Data) > 0 {
		b = append(b, `,"data":`...)
		s := scanner{b: m.Data}
		s.skipSpace()
		err := s.skipValue(1)
		s.skipSpace()
		if err == nil && s.pos < len(m.Data) {
			err = s.unexpected()
		}
		if err != nil {
			return b[:start], malformed("data: %s", err.(*malformedError).reason)
		}
		if s.spaced {
			b = appendCompact(b, m.Data)
		} else {
			b = append(b, m.Data...)
		}
	}
	return append(b, '}', '\n'), nil
}

// AppendIDData appends the message {"type":typ,"id":id,"data":data}, as
// Append would, for the streams of tasks and results: typ must be a plain
// protocol type (no escapes needed) and data one JSON value, already
// checked and compact (encoding/json's Marshal and Compact write such),
// which is not looked at again.
func AppendIDData(b []byte, typ string, id int, data []byte) []byte {
	b = append(b, `{"type":"`...)
	b = append(b, typ...)
	b = append(b, `","id":`...)
	b = strconv.AppendInt(b, int64(id), 10)
	b = append(b, `,"data":`...)
	b = append(b, data...)
	return append(b, '}', '\n')
}

func appendInt(b []byte, member string, n int) []byte {
	if n == 0 {
		return b
	}
	return strconv.AppendInt(append(b, member...), int64(n), 10)
}

func appendIntPtr(b []byte, member string, n *int) []byte {
	if n == nil {
		return b
	}
	return strconv.AppendInt(append(b, member...), int64(*n), 10)
}

const hexDigits = "0123456789abcdef"

// appendString appends s quoted. Besides what JSON requires, it escapes
// U+2028 and U+2029, which JavaScript once did not allow in strings, and
// writes U+FFFD for bytes that are not UTF-8, all as encoding/json does.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(append(b, s[start:i]...), `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(append(b, s[start:i]...), '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	return append(append(b, s[start:]...), '"')
}

// appendCompact appends checked JSON without the whitespace between its
// tokens, which is all the whitespace it has outside strings.
func appendCompact(b, data []byte) []byte {
	inString := false
	for i := 0; i < len(data); i++ {
		c := data[i]
		switch {
		case inString && c == '\\':
			b = append(b, c, data[i+1])
			i++
			continue
		case c == '"':
			inString = !inString
		case !inString && (c == ' ' || c == '\t' || c == '\r' || c == '\n'):
			continue
		}
		b = append(b, c)
	}
	return b
}

// Reader splits a stream into messages no longer than a limit.
type Reader struct {
	br  *bufio.Reader
	max int
	// Skipped counts lines dropped for being too long.
	Skipped int
}

// SetMax changes the limit for the lines read from now on (a worker learns
// the primary's limit from herd.hello). Call it between ReadLine calls.
func (r *Reader) SetMax(max int) {
	if max > 0 {
		r.max = max
	}
}

// NewReader reads messages of at most max bytes (0: DefaultMaxMessage)
// from r.
func NewReader(r io.Reader, max int) *Reader {
	if max <= 0 {
		max = DefaultMaxMessage
	}
	return &Reader{br: bufio.NewReaderSize(r, min(max+1, 64<<10)), max: max}
}

// Pending reports whether a whole line has been read from the stream and
// not yet returned: if not, the next ReadLine waits for the stream.
func (r *Reader) Pending() bool {
	b, _ := r.br.Peek(r.br.Buffered())
	return bytes.IndexByte(b, '\n') >= 0
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
