package testworker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/herd-sh/herd/worker"
)

// lineWorker answers each line n of stdin with 2n (herd map). Knobs:
//
//	TEST_CRASH_ON=S   exit 3 on the task S (a task that always crashes)
//	TEST_CRASH_ONCE=S with TEST_MARKER=FILE: exit 3 on the task S the
//	                  first time any worker meets it (FILE remembers); the
//	                  task then succeeds on its retry
//	TEST_HANG_ON=S    hang on the task S
//	TEST_SLOW=DUR     take this long per task
//	TEST_ECHO=1       answer with the line itself
//	TEST_STDERR=1     also write "note TASK" on stderr for each task
//	TEST_BAD_ANSWER=S answer the task S with a line that is not JSON
func lineWorker() error {
	in := bufio.NewReaderSize(os.Stdin, 64<<10)
	out := bufio.NewWriterSize(os.Stdout, 64<<10)
	defer out.Flush()
	slow, _ := time.ParseDuration(os.Getenv("TEST_SLOW"))
	crashOnce := os.Getenv("TEST_CRASH_ONCE")
	marker := os.Getenv("TEST_MARKER")
	for {
		line, err := in.ReadString('\n')
		if err != nil {
			return nil // stdin closed: the map is over
		}
		task := strings.TrimSuffix(line, "\n")
		switch {
		case task == os.Getenv("TEST_CRASH_ON"):
			if os.Getenv("TEST_CRASH_UNFLUSHED") != "1" {
				out.Flush()
			} // else the answers written before are lost, as a buffered stdout's are
			os.Exit(3)
		case task == crashOnce && marker != "":
			if _, err := os.Stat(marker); err != nil {
				os.WriteFile(marker, nil, 0o644)
				out.Flush()
				os.Exit(3)
			}
		case task == os.Getenv("TEST_HANG_ON"):
			out.Flush()
			time.Sleep(time.Hour)
		}
		if slow > 0 {
			time.Sleep(slow)
		}
		if os.Getenv("TEST_STDERR") == "1" {
			fmt.Fprintf(os.Stderr, "note %s\n", task)
		}
		if task == os.Getenv("TEST_BAD_ANSWER") {
			out.WriteString("not json {\n")
			continue
		}
		if os.Getenv("TEST_ECHO") == "1" {
			out.WriteString(task + "\n")
		} else {
			n, err := strconv.ParseInt(task, 10, 64)
			if err != nil {
				fmt.Fprintf(out, "{\"error\":%q}\n", "not a number")
			} else {
				fmt.Fprintf(out, "%d\n", 2*n)
			}
		}
		if in.Buffered() == 0 || os.Getenv("TEST_FLUSH_EACH") == "1" {
			out.Flush()
		}
	}
}

// taskWorker serves a herd.Pool's tasks with worker.ServeTasks: a number n
// gives 2n; "fail" fails; "crash" exits; "hang" hangs.
func taskWorker() error {
	w, err := worker.Start(worker.Options{})
	if err != nil {
		return err
	}
	defer w.Close()
	return w.ServeTasks(func(ctx context.Context, task json.RawMessage) (any, error) {
		switch string(task) {
		case `"fail"`:
			return nil, errors.New("asked to fail")
		case `"crash"`:
			os.Exit(3)
		case `"hang"`:
			<-ctx.Done()
			return nil, ctx.Err()
		}
		if len(task) > 100 && task[0] == '"' {
			return len(task), nil // a long string: its encoded length
		}
		var n int
		if err := json.Unmarshal(task, &n); err != nil {
			return nil, err
		}
		return 2 * n, nil
	})
}
