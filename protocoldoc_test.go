package herd_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/internal/herdtest"
)

// docWorker plays a worker of the conversation in docs/protocol.md with
// nothing but the shell, so that every byte it sends is the document's
// and every byte it receives is recorded as it came. It records each line
// it receives in $DOC_DIR/got.ID and exits 0 on herd.shutdown. Worker 0
// says $DOC_HELLO at once and $DOC_AFTER when the "config" message comes;
// worker 1 says hello and ready at once, and broadcasts {"cache":"flush"}
// when worker 0's "hi" comes.
const docWorker = `
eval "exec <&$HERD_IPC_FD >&$HERD_IPC_FD"
out="$DOC_DIR/got.$HERD_WORKER_ID"
: > "$out"
if [ "$HERD_WORKER_ID" = 0 ]; then printf '%s\n' "$DOC_HELLO"; else printf '%s\n' '{"type":"herd.hello","v":1}' '{"type":"herd.ready"}'; fi
while IFS= read -r line; do
	printf '%s\n' "$line" >> "$out"
	case "$HERD_WORKER_ID:$line" in
	0:*'"type":"config"'*) printf '%s\n' "$DOC_AFTER" ;;
	1:*'"type":"herd.message"'*'"data":"hi"'*) printf '%s\n' '{"type":"herd.broadcast","data":{"cache":"flush"}}' ;;
	*'"type":"herd.shutdown"'*) exit 0 ;;
	esac
done
exit 3
`

// The primary holds up its half of the conversation in docs/protocol.md
// byte for byte. Worker 0 sends the document's "<" lines (hello and ready
// at once, the rest when the "config" message comes), worker 1 broadcasts
// {"cache":"flush"} once it has heard from worker 0; the test sends
// "config" to worker 1, then to worker 0 (so that each worker's queue
// has it before any relay), and then stops the cluster. Worker 0 must
// receive exactly the document's ">" lines, in order: the primary's own
// herd.hello (worker 0 of 2, the default limit), the config, the relay of
// worker 1's broadcast, herd.shutdown. Worker 1 must receive the two
// relays the document says worker 1 received, and the primary's handler
// the "hits".
func TestProtocolDocConversation(t *testing.T) {
	root, _ := filepath.Abs(".")
	conv := herdtest.ProtocolConversation(t, filepath.Join(root, "docs/protocol.md"))
	var hello, after, toWorker0 []string
	for _, ex := range conv {
		switch {
		case ex.Dir == '>':
			toWorker0 = append(toWorker0, ex.Line)
		case len(after) == 0 && (strings.Contains(ex.Line, `"type":"herd.hello"`) || strings.Contains(ex.Line, `"type":"herd.ready"`)):
			hello = append(hello, ex.Line)
		default:
			after = append(after, ex.Line)
		}
	}
	var toWorker1 []string
	for _, ex := range herdtest.ProtocolExamples(t, filepath.Join(root, "docs/protocol.md")) {
		if ex.Block == 0 && strings.HasPrefix(ex.Line, `{"type":"herd.message","from":0,`) {
			toWorker1 = append(toWorker1, ex.Line)
		}
	}
	if len(hello) != 2 || len(toWorker0) != 4 || len(toWorker1) != 2 {
		t.Fatalf("the document's conversation changed: worker 0 says %q first, then %q, and receives %q; worker 1 receives %q", hello, after, toWorker0, toWorker1)
	}

	dir := t.TempDir()
	ev := &events{}
	s, stop := start(t, herd.Options{
		Command: []string{"sh", "-c", docWorker},
		Workers: 2,
		Env: append(os.Environ(), "DOC_DIR="+dir,
			"DOC_HELLO="+strings.Join(hello, "\n"), "DOC_AFTER="+strings.Join(after, "\n")),
		OnEvent: ev.add,
	})
	ev.waitFor(t, "both workers ready", func() bool { return ev.count(herd.EventReady) >= 2 })
	for _, id := range []int{1, 0} {
		if err := s.Send(context.Background(), id, "config", map[string]string{"level": "debug"}); err != nil {
			t.Fatal(err)
		}
	}
	got := func(id int) []string {
		b, _ := os.ReadFile(filepath.Join(dir, "got."+strconv.Itoa(id)))
		return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	}
	ev.waitFor(t, "the relays and the hits", func() bool {
		return len(got(0)) >= 3 && len(got(1)) >= 4 && len(ev.messages("hits")[0]) >= 1
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if g := got(0); !slices.Equal(g, toWorker0) {
		t.Errorf("worker 0 received\n%s\nwant the document's lines\n%s", strings.Join(g, "\n"), strings.Join(toWorker0, "\n"))
	}
	if g := got(1); len(g) != 5 || g[0] != strings.Replace(toWorker0[0], `"id":0`, `"id":1`, 1) || !slices.Equal(g[2:4], toWorker1) || g[1] != toWorker0[1] || g[4] != toWorker0[3] {
		t.Errorf("worker 1 received\n%s\nwant its hello, the config, then the document's\n%s\nthen herd.shutdown", strings.Join(g, "\n"), strings.Join(toWorker1, "\n"))
	}
	if hits := ev.messages("hits")[0]; len(hits) != 1 || string(hits[0]) != `{"n":3}` {
		t.Errorf("the primary's handler got hits %q from worker 0, want one with {\"n\":3}", hits)
	}
	for _, e := range ev.failedExits() {
		t.Errorf("worker %d ended with %s, want exit 0 on herd.shutdown", e.Worker, e.Status)
	}
}
