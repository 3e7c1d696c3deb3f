package ipc

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func intp(i int) *int { return &i }

func TestWireBytes(t *testing.T) {
	// The exact bytes docs/protocol.md shows.
	cases := []struct {
		m    Message
		want string
	}{
		{Message{Type: TypeHello, V: Version, ID: intp(0), Workers: 4}, `{"type":"herd.hello","v":1,"id":0,"workers":4}` + "\n"},
		{Message{Type: TypeReady}, `{"type":"herd.ready"}` + "\n"},
		{Message{Type: "count", Data: json.RawMessage(`{"n":3}`)}, `{"type":"count","data":{"n":3}}` + "\n"},
		{Message{Type: TypeTo, To: intp(2), Data: json.RawMessage(`"hi"`)}, `{"type":"herd.to","data":"hi","to":2}` + "\n"},
		{Message{Type: TypeMessage, From: intp(1), Data: json.RawMessage(`[1,2]`)}, `{"type":"herd.message","data":[1,2],"from":1}` + "\n"},
	}
	for _, tc := range cases {
		got, err := Append(nil, tc.m)
		if err != nil || string(got) != tc.want {
			t.Errorf("Append(%+v) = %q, %v; want %q", tc.m, got, err, tc.want)
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

func TestDecodeRejects(t *testing.T) {
	for in, want := range map[string]string{
		``:                           "not a JSON object",
		`[1]`:                        "not a JSON object",
		`"type"`:                     "not a JSON object",
		`{"data":1}`:                 `no "type"`,
		`{"type":""}`:                `no "type"`,
		`{"type":1}`:                 "cannot unmarshal",
		`{"type":"a"} {"type":"b"}`:  "more than one JSON value",
		`{"type":"a"`:                "unexpected EOF",
		`{"type":"herd.to"}`:         "herd.to without",
		`{"type":"herd.to","to":-1}`: "herd.to without",
		"{\"type\":\"\xff\"}":        "not UTF-8",
	} {
		_, err := Decode([]byte(in))
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), want) {
			t.Errorf("Decode(%q) = %v, want ErrMalformed with %q", in, err, want)
		}
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

func TestAllocationsPerMessage(t *testing.T) {
	var b []byte
	m := Message{Type: "tick", Data: json.RawMessage(`{"n":1}`)}
	allocs := testing.AllocsPerRun(1000, func() { b, _ = Append(b[:0], m) })
	t.Logf("Append: %.1f allocations per message", allocs)
}

// FuzzDecode: any line either decodes into a message whose encoding decodes
// to the same message, or is rejected as malformed; never a panic.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"type":"herd.ready"}`, `{"type":"count","data":{"n":3}}`, `{"type":"herd.to","to":2,"data":"hi"}`,
		`{"type":"herd.hello","v":1,"id":0,"workers":4}`, `{}`, `[]`, `{"type":"a","data":}`, "{\"type\":\"\\u0000\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		m, err := Decode(line)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode(%q): %v is not ErrMalformed", line, err)
			}
			return
		}
		enc, err := Append(nil, m)
		if err != nil {
			t.Fatalf("Append(%+v): %v", m, err)
		}
		if bytes.Count(enc, []byte("\n")) != 1 {
			t.Fatalf("encoding of %q is not one line: %q", line, enc)
		}
		back, err := Decode(bytes.TrimSuffix(enc, []byte("\n")))
		if err != nil {
			t.Fatalf("re-decoding %q: %v", enc, err)
		}
		enc2, _ := Append(nil, back)
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("not stable: %q then %q", enc, enc2)
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
