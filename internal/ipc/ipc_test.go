package ipc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/herd-sh/herd/internal/herdtest"
)

func intp(i int) *int { return &i }

func TestWireBytes(t *testing.T) {
	// The exact bytes docs/protocol.md shows: type first, data last.
	cases := []struct {
		m    Message
		want string
	}{
		{Message{Type: TypeHello, V: Version, ID: intp(0), Workers: 2, Max: DefaultMaxMessage}, `{"type":"herd.hello","v":1,"id":0,"workers":2,"max":1048576}`},
		{Message{Type: TypeHello, V: Version}, `{"type":"herd.hello","v":1}`},
		{Message{Type: TypeReady}, `{"type":"herd.ready"}`},
		{Message{Type: "hits", Data: json.RawMessage(`{"n":3}`)}, `{"type":"hits","data":{"n":3}}`},
		{Message{Type: TypeTo, To: intp(1), Data: json.RawMessage(`"hi"`)}, `{"type":"herd.to","to":1,"data":"hi"}`},
		{Message{Type: TypeMessage, From: intp(1), Data: json.RawMessage(`{"cache":"flush"}`)}, `{"type":"herd.message","from":1,"data":{"cache":"flush"}}`},
		{Message{Type: "all", From: intp(-1), To: intp(2), V: -3, ID: intp(4), Workers: 5, Max: 6, Data: json.RawMessage(`[1,2]`)},
			`{"type":"all","from":-1,"to":2,"v":-3,"id":4,"workers":5,"max":6,"data":[1,2]}`},
	}
	for _, tc := range cases {
		got, err := Append(nil, tc.m)
		if err != nil || string(got) != tc.want+"\n" {
			t.Errorf("Append(%+v) = %q, %v; want %q", tc.m, got, err, tc.want+"\n")
		}
		back, err := Decode(bytes.TrimSuffix(got, []byte("\n")))
		if err != nil {
			t.Fatalf("Decode(%q): %v", got, err)
		}
		if diff := cmp.Diff(tc.m, back); diff != "" {
			t.Errorf("round trip of %q (-want +got):\n%s", got, diff)
		}
	}
}

func TestAppendEscapesAndCompacts(t *testing.T) {
	for _, tc := range []struct {
		m    Message
		want string
	}{
		{Message{Type: "q\"b\\s/"}, `{"type":"q\"b\\s/"}`},
		{Message{Type: "\x00\x01\b\f\n\r\t\x1f\x7f"}, `{"type":"\u0000\u0001\b\f\n\r\t\u001f` + "\x7f" + `"}`},
		{Message{Type: "<&>é\u2028\u2029😀"}, `{"type":"<&>é\u2028\u2029😀"}`},
		{Message{Type: "a\xffb\xe2\x80"}, `{"type":"a\ufffdb\ufffd\ufffd"}`},
		{Message{Type: "d", Data: json.RawMessage(" {\"a\" :\t[1, \"x y\\\"\" ]\r\n} ")}, `{"type":"d","data":{"a":[1,"x y\""]}}`},
		{Message{Type: "d", Data: json.RawMessage("null")}, `{"type":"d","data":null}`},
	} {
		got, err := Append(nil, tc.m)
		if err != nil || string(got) != tc.want+"\n" {
			t.Errorf("Append(%+v) = %q, %v; want %q", tc.m, got, err, tc.want+"\n")
		}
	}
}

func TestAppendRejects(t *testing.T) {
	deep := `{"type":"x","data":` + strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth) + "}"
	for _, m := range []Message{
		{},
		{Data: json.RawMessage(`1`)},
		{Type: "x", Data: json.RawMessage(`{`)},
		{Type: "x", Data: json.RawMessage(`1 2`)},
		{Type: "x", Data: json.RawMessage(`1,"to":2`)},
		{Type: "x", Data: json.RawMessage(" ")},
		{Type: "x", Data: json.RawMessage("\"\xff\"")},
		{Type: "x", Data: json.RawMessage(deep[len(`{"type":"x","data":`) : len(deep)-1])},
	} {
		b := []byte("keep")
		got, err := Append(b, m)
		if !errors.Is(err, ErrMalformed) || string(got) != "keep" {
			t.Errorf("Append(%+v) = %q, %v; want ErrMalformed and b as it was", m, got, err)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	for in, want := range map[string]string{
		``:                                       "not a JSON object",
		` `:                                      "not a JSON object",
		`[1]`:                                    "not a JSON object",
		`"type"`:                                 "not a JSON object",
		`null`:                                   "not a JSON object",
		`{"data":1}`:                             `no "type"`,
		`{"type":""}`:                            `no "type"`,
		`{"type":null}`:                          `no "type"`,
		`{"type":"a","type":null}`:               `no "type"`,
		`{"Type":"a"}`:                           `no "type"`,
		`{"type":1}`:                             `"type" is not a string`,
		`{"type":"a","v":1.0}`:                   `"v" is not an integer`,
		`{"type":"a","id":"1"}`:                  `"id" is not an integer`,
		`{"type":"a","to":1e3}`:                  `"to" is not an integer`,
		`{"type":"a","from":true}`:               `"from" is not an integer`,
		`{"type":"a","max":1e999}`:               `"max" is not an integer`,
		`{"type":"a","max":1 }x`:                 `invalid character 'x' at offset 21`,
		`{"type":"a","id":-9223372036854775809}`: `"id" is out of range`,
		`{"type":"a"} {"type":"b"}`:              "more than one JSON value",
		`{"type":"a"}}`:                          "invalid character '}' at offset 12",
		`{"type":"a"`:                            "unexpected end of line",
		`{"type":"a",}`:                          "invalid character '}' at offset 12",
		`{"type":"a","x":01}`:                    "invalid character '1' at offset 17",
		`{"type":"a","x":NaN}`:                   "invalid character 'N' at offset 16",
		`{"type":"a","x":tru}`:                   "invalid character '}' at offset 19",
		`{"type":"a","x":"\x"}`:                  "invalid escape",
		"{\"type\":\"a\tb\"}":                    "control character",
		`{"type":"herd.to"}`:                     "herd.to without",
		`{"type":"herd.to","to":-1}`:             "herd.to without",
		`{"type":"herd.to","to":null}`:           "herd.to without",
		"{\"type\":\"\xff\"}":                    "not UTF-8",
		"{\"type\":\"a\"}\xff":                   "not UTF-8",
		"\xef\xbb\xbf{\"type\":\"a\"}":           "not a JSON object",
		"\v{\"type\":\"a\"}":                     "not a JSON object",
		`{"type":"a","data":` + strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth) + `}`: "nested more than 10000 deep",
	} {
		_, err := Decode([]byte(in))
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), want) {
			t.Errorf("Decode(%.80q) = %v, want ErrMalformed with %q", in, err, want)
		}
		checkDecode(t, []byte(in))
	}
}

// Lines at the edges of the grammar, each decoded by Decode and by the
// encoding/json reference, which must agree.
var edgeLines = []string{
	`{"cmd":"NODE_HANDLE_ACK"}`,
	`{"type":"","cmd":"NODE_HANDLE_NACK","from":1}`,
	`{"cmd":1}`,
	`{"type":"herd.conn","listener":"web"}`,
	`{"type":"herd.conn","listener":"w\u0065b","data":null}`,
	`{"type":"herd.conn","listener":7}`,
	`{"type":"herd.hello","v":1,"id":0,"workers":2,"max":1048576,"heartbeat":333}`,
	`{"type":"n","data":123}`,
	" \t\r\n{ \"type\" : \"a\" , \"data\" : { \"b\" : [ 1 , 2 ] } }\n\r\t ",
	`{"ty\u0070e":"a","\u0064ata":1,"\u0066rom":2,"t\u006f":3,"\u0076":4,"\u0069d":5,"\u0077orkers":6,"\u006dax":7}`,
	`{"\u0074\u0079\u0070\u0065\u0074":"a","type":"b"}`,
	`{"type":"a","type":"b","data":1,"data":2}`,
	`{"type":1,"type":"a","v":0.0,"v":1,"from":"x","from":null,"to":{},"to":2,"data":[1],"data":null}`,
	`{"type":"a","v":1,"v":0.5}`,
	`{"type":"a","data":null}`,
	`{"type":"a","data":1,"data":null}`,
	`{"type":"a","from":1,"from":null,"v":1,"v":null,"id":null,"workers":null,"max":null,"to":null}`,
	`{"type":"a","v":-0,"from":-0}`,
	`{"type":"herd.to","to":0}`,
	`{"type":"herd.to","to":-0}`,
	`{"type":"a","v":9223372036854775807,"id":-9223372036854775808}`,
	`{"type":"a","v":9223372036854775808}`,
	`{"type":"a","v":1.5}`,
	`{"type":"a","v":"1"}`,
	`{"type":"a","v":[1]}`,
	`{"type":"a","v":{}}`,
	`{"type":"a","type":1}`,
	`{"type":["a"]}`,
	`{"type":"\u0000"}`,
	`{"type":"\ud800"}`,
	`{"type":"\udc00\ud800\udc00x"}`,
	`{"type":"\ud83d\ude00\ud83d\u0041\ud83d"}`,
	`{"type":"\ud83d\ud83d\ude00"}`,
	`{"type":"\"\\\/\b\f\n\r\t\u00e9\u2028"}`,
	`{"type":"a","x":"\ud800","y":[true,false,null,-1.5e+3,0.0,1E-2,"",{}],"z":{"":{"":[]}}}`,
	`{"type":"a","data":"` + "\u2028é😀" + `"}`,
	`{"type":"a","data":-0.0e-0}`,
	`{"type":"a","data":[}`,
	`{"type":"a","data":[1,]}`,
	`{"type":"a","data":{"a"}}`,
	`{"type":"a","data":{"a":1,}}`,
	`{"type":"a","data":{1:1}}`,
	`{"type":"a","data":[1 2]}`,
	`{"type":"a","data":.5}`,
	`{"type":"a","data":1.}`,
	`{"type":"a","data":1e}`,
	`{"type":"a","data":-}`,
	`{"type":"a","data":+1}`,
	`{"type":"a","data":nul}`,
	`{"type":"a","data":nulll}`,
	`{"type":"a","data":'a'}`,
	`{"type":"a","data":"\u12"}`,
	`{"type":"a","data":"\u12G4"}`,
	"{\"type\":\"a\",\"data\":\"\x7f\"}",
	"{\"type\":\"a\",\"data\":\"\x1f\"}",
	"{\"type\":\"a\",\"d\xc3\xa9\":1}",
	"{\"type\":\"a\",\"data\":\"\xed\xa0\x80\"}",
	"{\"type\":\"a\"\x00}",
	`{"type":"a"}{}`,
	`{"type":"a"} 1`,
	`{"type":"a"}]`,
	`{}`,
	`{`,
	`{"type"`,
	`{"type":`,
	`{"type":"a",`,
	`{"type":"a","data"`,
	`{"type":"a","data":`,
	`{"type":"a","data":"`,
	`{"type":"a","data":"\`,
	`{"type":"a","data":[[`,
	`{"type":"a","data":{"b":`,
	`{"type":"herd.to","to":1}`,
	`{"type":"herd.tO","to":-1}`,
	`{"type":"a","data":` + strings.Repeat("[", maxDepth-1) + strings.Repeat("]", maxDepth-1) + `}`,
	`{"type":"a","data":` + strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth) + `}`,
	`{"type":"a","x":` + strings.Repeat(`{"":`, maxDepth-1) + "0" + strings.Repeat("}", maxDepth-1) + `}`,
	`{"type":"a","x":` + strings.Repeat(`{"":`, maxDepth) + "0" + strings.Repeat("}", maxDepth) + `}`,
	`{"type":"a","x":` + strings.Repeat(`[{"":`, maxDepth/2) + "0" + strings.Repeat("}]", maxDepth/2) + `}`,
	`{"type":"a","data":` + strings.Repeat("[", 1<<20) + `}`,
	strings.Repeat("[", 1<<20),
}

func TestDecodeMatchesReference(t *testing.T) {
	for _, line := range edgeLines {
		checkDecode(t, []byte(line))
	}
}

func TestDecodeDataIsTheValueAsWritten(t *testing.T) {
	line := []byte(`{"type":"a", "data" :  {"b" : [1, 2]}  , "v":1}`)
	m, err := Decode(line)
	if err != nil || string(m.Data) != `{"b" : [1, 2]}` {
		t.Fatalf("Decode = %+v, %v", m, err)
	}
	// It shares the line's memory: documented, and what saves a copy.
	line[bytes.IndexByte(line, 'b')] = 'c'
	if string(m.Data) != `{"c" : [1, 2]}` {
		t.Errorf("Data %q does not alias the line", m.Data)
	}
}

func TestAllocationsPerMessage(t *testing.T) {
	var d Decoder
	small := []byte(`{"type":"n","data":123}`)
	if allocs := testing.AllocsPerRun(1000, func() {
		if _, err := d.Decode(small); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Errorf("Decoder.Decode(%s): %.1f allocations per message, want 0", small, allocs)
	}
	escaped := []byte(`{"ty\u0070e":"\u006e","data":[1,{"a":"b\n"}]}`)
	if allocs := testing.AllocsPerRun(1000, func() { _, _ = d.Decode(escaped) }); allocs != 0 {
		t.Errorf("Decoder.Decode(%s): %.1f allocations per message, want 0", escaped, allocs)
	}
	b := make([]byte, 0, 256)
	for _, m := range []Message{
		{Type: "tick", Data: json.RawMessage(`{"n":1}`)},
		{Type: TypeHello, V: Version, ID: intp(3), Workers: 4, Max: DefaultMaxMessage},
		{Type: "é\n\"", Data: json.RawMessage(`{ "n" : 1 }`)},
	} {
		if allocs := testing.AllocsPerRun(1000, func() { b, _ = Append(b[:0], m) }); allocs != 0 {
			t.Errorf("Append(%+v): %.1f allocations per message, want 0", m, allocs)
		}
	}
}

func TestDecoderKeepsABoundedNumberOfTypes(t *testing.T) {
	var d Decoder
	for i := range 1000 {
		m, err := d.Decode(fmt.Appendf(nil, `{"type":"t%d"}`, i))
		if err != nil || m.Type != fmt.Sprint("t", i) {
			t.Fatalf("Decode: %+v, %v", m, err)
		}
	}
	if len(d.types) != maxInterned {
		t.Errorf("%d types kept, want %d", len(d.types), maxInterned)
	}
	long := `{"type":"` + strings.Repeat("x", maxInternedLen+1) + `"}`
	var e Decoder
	if m, err := e.Decode([]byte(long)); err != nil || len(m.Type) != maxInternedLen+1 || len(e.types) != 0 {
		t.Errorf("a long type: %v, %d kept", err, len(e.types))
	}
}

func TestReaderSkipsOverlongLinesWithoutHoldingThem(t *testing.T) {
	huge := strings.Repeat("x", 5<<20)
	input := `{"type":"a"}` + "\n" + `{"type":"big","data":"` + huge + `"}` + "\n" + `{"type":"b"}` + "\n" + `{"type":"tail"}`
	r := NewReader(strings.NewReader(input), 1<<10)
	var got []string
	tooLong := 0
	for {
		line, err := r.ReadLine()
		if errors.Is(err, io.EOF) {
			break
		}
		if errors.Is(err, ErrTooLong) {
			tooLong++
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		m, err := Decode(line)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m.Type)
	}
	if diff := cmp.Diff([]string{"a", "b", "tail"}, got); diff != "" || tooLong != 1 || r.Skipped != 1 {
		t.Fatalf("types %v (diff %s), %d too long, Skipped %d", got, diff, tooLong, r.Skipped)
	}
}

var xs = bytes.Repeat([]byte("x"), 64<<10)

// endlessLine streams a line of n 'x' bytes and then the lines of tail,
// without ever holding the long line: a worker writing a huge message.
type endlessLine struct {
	n    int
	tail string
}

func (r *endlessLine) Read(p []byte) (int, error) {
	if r.n > 0 {
		k := copy(p[:min(len(p), r.n)], xs)
		r.n -= k
		return k, nil
	}
	if r.tail == "" {
		return 0, io.EOF
	}
	k := copy(p, r.tail)
	r.tail = r.tail[k:]
	return k, nil
}

// A line hundreds of times longer than the limit streams past the Reader
// in pieces: its buffer stays within the limit, and all it allocates while
// skipping the line is of the order of the limit, not of the line (a
// Reader that held the line would allocate all 256 MiB of it).
func TestReaderSkipsOverlongLinesInBoundedMemory(t *testing.T) {
	const line = 256 << 20
	for _, limit := range []int{4 << 10, 64 << 10, 1 << 20} {
		r := NewReader(&endlessLine{n: line, tail: "\n" + `{"type":"after"}` + "\n"}, limit)
		if size := r.br.Size(); size > limit+1 {
			t.Errorf("limit %d: a buffer of %d bytes", limit, size)
		}
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := r.ReadLine()
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrTooLong) {
			t.Fatalf("limit %d: the long line read as %v, want ErrTooLong", limit, err)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > uint64(8*limit+64<<10) {
			t.Errorf("limit %d: skipping a %d MiB line allocated %d KiB, want a few times the limit at most", limit, line>>20, grew>>10)
		}
		if size := r.br.Size(); size > limit+1 {
			t.Errorf("limit %d: the buffer grew to %d bytes", limit, size)
		}
		next, err := r.ReadLine()
		if err != nil || string(next) != `{"type":"after"}` {
			t.Errorf("limit %d: the line after the long one: %q, %v", limit, next, err)
		}
	}
}

func TestReaderAcceptsALineOfExactlyTheLimit(t *testing.T) {
	line := `{"type":"x","data":"` + strings.Repeat("y", 100) + `"}`
	for _, max := range []int{len(line), len(line) - 1} {
		r := NewReader(strings.NewReader(line+"\n"), max)
		_, err := r.ReadLine()
		if fits := max >= len(line); fits != (err == nil) {
			t.Errorf("limit %d, line %d: err %v", max, len(line), err)
		}
	}
}

// referenceDecode is Decode built on encoding/json, as the protocol
// describes it: the line is one JSON object in UTF-8, read as a map so
// that names are exact and the last duplicate wins, and a member that is
// null is absent.
func referenceDecode(line []byte) (Message, error) {
	var m Message
	if !utf8.Valid(line) || !json.Valid(line) {
		return m, ErrMalformed
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(line, &members); err != nil {
		return m, ErrMalformed
	}
	for name, dst := range map[string]any{
		"type": &m.Type, "from": &m.From, "to": &m.To, "v": &m.V,
		"id": &m.ID, "workers": &m.Workers, "max": &m.Max, "heartbeat": &m.Heartbeat,
		"listener": &m.Listener, "cmd": &m.Cmd,
	} {
		if raw, ok := members[name]; ok {
			if err := json.Unmarshal(raw, dst); err != nil {
				return Message{}, ErrMalformed
			}
		}
	}
	if raw := members["data"]; string(raw) != "null" {
		m.Data = raw
	}
	if m.Type == "" && m.Cmd != "" {
		// Node's internal messages: a cmd and nothing else that counts.
		return Message{Cmd: m.Cmd}, nil
	}
	if m.Type == "" || m.Type == TypeTo && (m.To == nil || *m.To < 0) {
		return Message{}, ErrMalformed
	}
	return m, nil
}

// referenceAppend is Append built on encoding/json (without its HTML
// escaping, which Append does not do), for Data that Append accepts.
func referenceAppend(m Message) []byte {
	wire := struct {
		Type      string          `json:"type"`
		From      *int            `json:"from,omitempty"`
		To        *int            `json:"to,omitempty"`
		V         int             `json:"v,omitempty"`
		ID        *int            `json:"id,omitempty"`
		Workers   int             `json:"workers,omitempty"`
		Max       int             `json:"max,omitempty"`
		Heartbeat int             `json:"heartbeat,omitempty"`
		Listener  string          `json:"listener,omitempty"`
		Cmd       string          `json:"cmd,omitempty"`
		Data      json.RawMessage `json:"data,omitempty"`
	}{m.Type, m.From, m.To, m.V, m.ID, m.Workers, m.Max, m.Heartbeat, m.Listener, m.Cmd, m.Data}
	var v any = wire
	if m.Type == "" && m.Cmd != "" {
		v = struct {
			Cmd string `json:"cmd"`
		}{m.Cmd}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// checkDecode holds Decode and Decoder.Decode to the reference on line,
// and checks that what they decode survives a round trip through Append.
func checkDecode(t *testing.T, line []byte) {
	t.Helper()
	want, wantErr := referenceDecode(line)
	got, err := Decode(line)
	var d Decoder
	got2, err2 := d.Decode(line)
	if err != nil {
		if !errors.Is(err, ErrMalformed) || !errors.Is(err2, ErrMalformed) {
			t.Fatalf("Decode(%.200q): %v, %v; want ErrMalformed", line, err, err2)
		}
		if wantErr == nil {
			t.Fatalf("Decode(%.200q): %v; the reference decodes %+v", line, err, want)
		}
		return
	}
	if wantErr != nil || err2 != nil {
		t.Fatalf("Decode(%.200q) = %+v, Decoder: %v; the reference fails", line, got, err2)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Decode(%.200q) (-reference +got):\n%s", line, diff)
	}
	if diff := cmp.Diff(got, got2); diff != "" {
		t.Fatalf("Decoder.Decode(%.200q) differs from Decode:\n%s", line, diff)
	}

	enc, err := Append(nil, got)
	if err != nil {
		t.Fatalf("Append(%+v): %v", got, err)
	}
	if ref := referenceAppend(got); !bytes.Equal(enc, ref) {
		t.Fatalf("Append(%+v) = %q, the reference %q", got, enc, ref)
	}
	back, err := Decode(bytes.TrimSuffix(enc, []byte("\n")))
	if err != nil {
		t.Fatalf("re-decoding %q: %v", enc, err)
	}
	if got.Data != nil {
		var compact bytes.Buffer
		if err := json.Compact(&compact, got.Data); err != nil {
			t.Fatal(err)
		}
		got.Data = compact.Bytes()
	}
	if diff := cmp.Diff(got, back); diff != "" {
		t.Fatalf("round trip of %q (-want +got):\n%s", enc, diff)
	}
	if enc2, _ := Append(nil, back); !bytes.Equal(enc, enc2) {
		t.Fatalf("not stable: %q then %q", enc, enc2)
	}
}

// FuzzDecode: Decode accepts exactly what the encoding/json reference
// accepts, decodes the same message, and what it decodes survives a round
// trip through Append.
func FuzzDecode(f *testing.F) {
	for _, s := range edgeLines {
		if len(s) < 1000 {
			f.Add([]byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		checkDecode(t, line)
		// Most lines are not messages; the same bytes as a member's
		// name or value get past the outer object and into the
		// scanner's corners, often enough to make a message.
		for _, wrap := range [][2]string{
			{`{"type":"a","data":`, `}`},
			{`{"type":"a","x":`, `,"v":1}`},
			{`{"type":`, `}`},
			{`{"type":"herd.to","to":`, `}`},
			{`{`, `:1,"type":"a"}`},
			// The short path for the form Append writes.
			{`{"type":"herd.result","id":`, `}`},
			{`{"type":"herd.task","id":7,"data":`, `}`},
			{`{"type":"`, `","id":1,"data":2}`},
		} {
			checkDecode(t, slices.Concat([]byte(wrap[0]), line, []byte(wrap[1])))
		}
	})
}

// FuzzAppend: whatever the type and data, Append writes what encoding/json
// would, or refuses data that encoding/json would refuse or that Decode
// could not read back; and what it writes is one line that decodes back.
func FuzzAppend(f *testing.F) {
	f.Add("tick", []byte(`{"n":1}`), 1)
	f.Add("a\xffb\x00\u2028<>&\"\\", []byte(" [1, \"\u2028\" ] "), -1)
	f.Add(TypeTo, []byte("null"), 0)
	f.Add("", []byte(nil), 2)
	f.Add("x", []byte("\"\xff\""), 3)
	f.Fuzz(func(t *testing.T, typ string, data []byte, n int) {
		m := Message{Type: typ, Data: data, From: &n, V: n, Max: n}
		if typ == TypeTo {
			m.To = intp(1)
		}
		enc, err := Append([]byte("prefix"), m)
		accept := typ != "" && (len(data) == 0 ||
			utf8.Valid(data) && json.Valid(data) && json.Valid([]byte(`{"data":`+string(data)+`}`)))
		if err != nil {
			if !errors.Is(err, ErrMalformed) || string(enc) != "prefix" || accept {
				t.Fatalf("Append(%+v) = %q, %v", m, enc, err)
			}
			return
		}
		if !accept {
			t.Fatalf("Append(%+v) = %q; the reference refuses it", m, enc)
		}
		enc = bytes.TrimPrefix(enc, []byte("prefix"))
		if ref := referenceAppend(m); !bytes.Equal(enc, ref) {
			t.Fatalf("Append(%+v) = %q, the reference %q", m, enc, ref)
		}
		line, ok := bytes.CutSuffix(enc, []byte("\n"))
		if !ok || bytes.IndexByte(line, '\n') >= 0 || !json.Valid(line) {
			t.Fatalf("Append(%+v) = %q: not one line of JSON", m, enc)
		}
		checkDecode(t, line)
		back, err := Decode(line)
		if err != nil {
			t.Fatal(err)
		}
		var wantType string
		quoted, _ := json.Marshal(typ)
		if err := json.Unmarshal(quoted, &wantType); err != nil || back.Type != wantType {
			t.Fatalf("type %q came back as %q, want %q (%v)", typ, back.Type, wantType, err)
		}
		// AppendIDData writes what Append does, given compact data.
		if len(data) > 0 {
			var compact bytes.Buffer
			if json.Compact(&compact, data) == nil {
				want, err := Append(nil, Message{Type: TypeResult, ID: &n, Data: compact.Bytes()})
				if got := AppendIDData(nil, TypeResult, n, compact.Bytes()); err != nil || !bytes.Equal(got, want) {
					t.Fatalf("AppendIDData(%d, %q) = %q, Append %q (%v)", n, compact.Bytes(), got, want, err)
				}
			}
		}
	})
}

// FuzzReader: whatever the stream, lines come back within the limit.
func FuzzReader(f *testing.F) {
	f.Add([]byte("{\"type\":\"a\"}\n{\"type\":\"b\"}"), 16)
	f.Add([]byte(strings.Repeat("z", 300)+"\nshort\n"), 8)
	f.Fuzz(func(t *testing.T, stream []byte, max int) {
		if max <= 0 || max > 1<<16 {
			return
		}
		r := NewReader(bytes.NewReader(stream), max)
		for range len(stream) + 2 {
			line, err := r.ReadLine()
			if errors.Is(err, io.EOF) {
				return
			}
			if err == nil && len(line) > max {
				t.Fatalf("line of %d bytes over the limit %d", len(line), max)
			}
		}
		t.Fatal("reader did not reach the end")
	})
}

// A message of about 200 bytes, as an application might send.
const mediumMessage = `{"type":"order.placed","data":{"id":"ord_8f3a2c","user":{"id":48213,"name":"Zoë \"Z\" Müller"},` +
	`"items":[{"sku":"A-100","qty":2,"price":19.99},{"sku":"B-7","qty":1,"price":5.5}],"paid":true,"note":null}}`

func BenchmarkDecode(b *testing.B) {
	for _, bc := range []struct{ name, line string }{
		{"small", `{"type":"n","data":123}`},
		{"result", `{"type":"herd.result","id":12345,"data":24690}`},
		{"medium", mediumMessage},
	} {
		line := []byte(bc.line)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(line)))
			var d Decoder
			for b.Loop() {
				if _, err := d.Decode(line); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkAppend(b *testing.B) {
	medium, err := Decode([]byte(mediumMessage))
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		m    Message
	}{
		{"small", Message{Type: "n", Data: json.RawMessage(`123`)}},
		{"hello", Message{Type: TypeHello, V: Version, ID: intp(3), Workers: 4, Max: DefaultMaxMessage}},
		{"medium", medium},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]byte, 0, 512)
			for b.Loop() {
				buf, err = Append(buf[:0], bc.m)
				if err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(int64(len(buf)))
		})
	}
}

// BenchmarkReader reads a stream of small messages, as the primary does
// from a busy worker: ReadLine alone, and with Decoder.Decode.
func BenchmarkReader(b *testing.B) {
	stream := bytes.Repeat([]byte(`{"type":"n","data":123}`+"\n"), 10000)
	for _, decode := range []bool{false, true} {
		b.Run(map[bool]string{false: "ReadLine", true: "ReadLine+Decode"}[decode], func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(stream) / 10000))
			src := bytes.NewReader(stream)
			r := NewReader(src, 0)
			var d Decoder
			for b.Loop() {
				line, err := r.ReadLine()
				if err == io.EOF {
					src.Reset(stream)
					line, err = r.ReadLine()
				}
				if err != nil {
					b.Fatal(err)
				}
				if decode {
					if _, err := d.Decode(line); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// Every example line of docs/protocol.md (herdtest.ProtocolExamples says
// how the document marks them) decodes, and the ones made only of members
// a Message holds encode back to the very same bytes: the document shows
// what Append writes. Node's NODE_HANDLE line, with its "msg" member, is
// written by hand (handoff.go), so it is only decoded here. The exact
// bytes the primary and the worker library send in the document's
// conversation are checked against it in the root package
// (TestProtocolDocConversation) and in package worker.
func TestProtocolDocExamples(t *testing.T) {
	known := map[string]bool{}
	mt := reflect.TypeFor[Message]()
	for i := range mt.NumField() {
		name, _, _ := strings.Cut(mt.Field(i).Tag.Get("json"), ",")
		known[name] = true
	}
	examples := herdtest.ProtocolExamples(t, "../../docs/protocol.md")
	encoded := map[string]bool{}
	for _, ex := range examples {
		m, err := Decode([]byte(ex.Line))
		if err != nil {
			t.Errorf("docs/protocol.md %s: %s does not decode: %v", ex.Where, ex.Line, err)
			continue
		}
		var members map[string]json.RawMessage
		if err := json.Unmarshal([]byte(ex.Line), &members); err != nil {
			t.Fatalf("docs/protocol.md %s: %v", ex.Where, err)
		}
		modeled := true
		for name := range members {
			modeled = modeled && known[name]
		}
		if !modeled {
			continue
		}
		got, err := Append(nil, m)
		if err != nil || string(got) != ex.Line+"\n" {
			t.Errorf("docs/protocol.md %s: %s decodes to %+v, which Append writes as %q (%v)", ex.Where, ex.Line, m, got, err)
		}
		encoded[ex.Line] = true
	}
	// The document has the conversation and the relayed lines; a change of
	// its markup that hid them would otherwise leave nothing checked.
	for _, want := range []string{
		`{"type":"herd.hello","v":1,"id":0,"workers":2,"max":1048576}`,
		`{"type":"herd.hello","v":1}`,
		`{"type":"herd.ready"}`,
		`{"type":"herd.shutdown"}`,
		`{"type":"herd.message","from":0,"data":"hi"}`,
	} {
		if !encoded[want] {
			t.Errorf("docs/protocol.md: no example %s found and checked", want)
		}
	}
}
