package herdtest

import (
	"bytes"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"
)

// WireExample is one example line of docs/protocol.md.
type WireExample struct {
	// Dir is '>' for a line the primary sends a worker, '<' for one a
	// worker sends the primary, 0 for a line quoted in the text.
	Dir byte
	// Line is the JSON object, exactly as the document spells it, without
	// the newline that ends it on the wire.
	Line string
	// Block counts the document's fenced code blocks, from 1, for a line
	// in one; 0 for a line quoted in the text.
	Block int
	// Where says where the document has it ("line 123").
	Where string
}

// ProtocolExamples returns the example wire lines of the protocol
// document at path, in document order. The document marks them two ways:
//
//   - in a fenced code block (```), a line that begins with "> " (primary
//     to worker) or "< " (worker to primary) followed by a JSON object;
//     whatever follows the object on that line is a remark, such as
//     "(+ the descriptor)";
//   - in the text, a code span (`...`) that holds nothing but a JSON
//     object (it begins with `{"`).
//
// The first block with such lines is the example conversation.
//
// Anything else in the document (tables, placeholders like "data":N) is
// not an example. It fails the test if the document cannot be read or
// holds no examples at all, so that a change of markup cannot make the
// tests that check the examples pass on nothing.
func ProtocolExamples(t testing.TB, path string) []WireExample {
	t.Helper()
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the protocol document: %v", err)
	}
	var out []WireExample
	fenced, block := false, 0
	for i, line := range strings.Split(string(doc), "\n") {
		where := "line " + strconv.Itoa(i+1)
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
			if fenced {
				block++
			}
			continue
		}
		if fenced {
			if len(line) > 2 && (line[0] == '>' || line[0] == '<') && line[1] == ' ' {
				obj := firstObject(strings.TrimSpace(line[2:]))
				if obj == "" {
					t.Fatalf("%s:%s: %q is marked as a wire line but holds no JSON object", path, where, line)
				}
				out = append(out, WireExample{Dir: line[0], Line: obj, Block: block, Where: where})
			}
			continue
		}
		spans := strings.Split(line, "`")
		for k := 1; k < len(spans); k += 2 {
			if strings.HasPrefix(spans[k], `{"`) {
				if obj := firstObject(spans[k]); obj == spans[k] {
					out = append(out, WireExample{Line: obj, Where: where})
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no example wire lines found (see herdtest.ProtocolExamples for how they are marked)", path)
	}
	return out
}

// ProtocolConversation returns the wire lines of the protocol document's
// example conversation (its first fenced block of wire lines), in order.
func ProtocolConversation(t testing.TB, path string) []WireExample {
	t.Helper()
	var out []WireExample
	for _, ex := range ProtocolExamples(t, path) {
		if ex.Block > 0 && (len(out) == 0 || ex.Block == out[0].Block) {
			out = append(out, ex)
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no example conversation found", path)
	}
	return out
}

// firstObject returns the JSON object s begins with, byte for byte, or ""
// if s does not begin with one.
func firstObject(s string) string {
	if !strings.HasPrefix(s, "{") {
		return ""
	}
	dec := json.NewDecoder(strings.NewReader(s))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return ""
	}
	obj := s[:dec.InputOffset()]
	if !bytes.Equal(raw, []byte(obj)) {
		return ""
	}
	return obj
}
