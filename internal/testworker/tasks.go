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

// lineWorker answers each line n of stdin with 2n (herd map). Knobs (a
// knob naming a task applies only when set, so an empty line is a task
// like any other):
//
//	TEST_CRASH_ON=S   exit 3 on the task S (a task that always crashes)
//	TEST_CRASH_ONCE=S with TEST_MARKER=FILE: exit 3 on the task S the
//	                  first time any worker meets it (FILE remembers); the
//	                  task then succeeds on its retry
//	TEST_HANG_ON=S    hang on the task S
//	TEST_GATE_ON=S    with TEST_GATE=FILE: answer nothing from the task S
//	                  on until FILE exists, but keep reading (and logging)
//	                  the tasks that follow it; they are answered after it
//	TEST_LOG=FILE     append each task, a line each, to FILE as it is read
//	                  (before it crashes or hangs): to count tries
//	TEST_SLOW=DUR     take this long per task
//	TEST_ECHO=1       answer with the line itself (byte for byte)
//	TEST_STDERR=1     also write "note TASK" on stderr for each task
//	TEST_BAD_ANSWER=S answer the task S with a line that is not JSON
func lineWorker() error {
	// Tasks are read on a goroutine of their own, so that a gated worker
	// keeps reading what herd gives it.
	lines := make(chan string, 256)
	go func() {
		in := bufio.NewReaderSize(os.Stdin, 64<<10)
		for {
			line, err := in.ReadString('\n')
			if err != nil {
				close(lines) // stdin closed: the map is over
				return
			}
			lines <- strings.TrimSuffix(line, "\n")
		}
	}()
	out := bufio.NewWriterSize(os.Stdout, 64<<10)
	defer out.Flush()
	slow, _ := time.ParseDuration(os.Getenv("TEST_SLOW"))
	crashOn, crashOnce, marker := knob("TEST_CRASH_ON"), knob("TEST_CRASH_ONCE"), os.Getenv("TEST_MARKER")
	hangOn, gateOn, gate, badAnswer := knob("TEST_HANG_ON"), knob("TEST_GATE_ON"), os.Getenv("TEST_GATE"), knob("TEST_BAD_ANSWER")
	echo, notes, flushEach := os.Getenv("TEST_ECHO") == "1", os.Getenv("TEST_STDERR") == "1", os.Getenv("TEST_FLUSH_EACH") == "1"
	var held []string // tasks read while gated, not answered yet
	for {
		var task string
		if len(held) > 0 {
			task, held = held[0], held[1:]
		} else {
			var ok bool
			select {
			case task, ok = <-lines:
			default:
				out.Flush() // nothing more to read now: the answers go out
				task, ok = <-lines
			}
			if !ok {
				return nil
			}
			logTask(task)
		}
		switch {
		case task == crashOn:
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
		case task == hangOn:
			out.Flush()
			time.Sleep(time.Hour)
		case task == gateOn && gate != "":
			out.Flush()
			for !exists(gate) {
				select {
				case t, ok := <-lines:
					if !ok {
						return nil
					}
					logTask(t)
					held = append(held, t)
				case <-time.After(5 * time.Millisecond):
				}
			}
		}
		if slow > 0 {
			time.Sleep(slow)
		}
		if notes {
			fmt.Fprintf(os.Stderr, "note %s\n", task)
		}
		switch {
		case task == badAnswer:
			out.WriteString("not json {\n")
		case echo:
			out.WriteString(task + "\n")
		default:
			n, err := strconv.ParseInt(task, 10, 64)
			if err != nil {
				fmt.Fprintf(out, "{\"error\":%q}\n", "not a number")
			} else {
				fmt.Fprintf(out, "%d\n", 2*n)
			}
		}
		if flushEach {
			out.Flush()
		}
	}
}

// knob returns the task an environment variable names, or a string no
// task can be (a line has no newline) when it is not set.
func knob(name string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return "\n(unset)"
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

var taskLog *os.File

// logTask appends task to $TEST_LOG, if set: one write, so the lines of
// several workers do not mix.
func logTask(task string) {
	if taskLog == nil {
		name := os.Getenv("TEST_LOG")
		if name == "" {
			return
		}
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return
		}
		taskLog = f
	}
	taskLog.WriteString(task + "\n")
}

// taskWorker serves a herd.Pool's tasks with worker.ServeTasks: a number n
// gives 2n; "fail" fails; "crash" exits; "hang" hangs; "crash-once" exits
// the first time any worker runs it (with TEST_MARKER=FILE, which
// remembers) and gives "recovered" after; {"gate":FILE} waits until FILE
// exists and gives "gated". With TEST_LOG=FILE each task is appended to
// FILE when its handler starts; with TEST_STDOUT=1 the worker writes "log
// TASK" on its stdout for each.
func taskWorker() error {
	w, err := worker.Start(worker.Options{})
	if err != nil {
		return err
	}
	defer w.Close()
	toStdout := os.Getenv("TEST_STDOUT") == "1"
	return w.ServeTasks(func(ctx context.Context, task json.RawMessage) (any, error) {
		logTask(string(task))
		if toStdout {
			fmt.Printf("log %s\n", task)
		}
		switch string(task) {
		case `"fail"`:
			return nil, errors.New("asked to fail")
		case `"crash"`:
			os.Exit(3)
		case `"crash-once"`:
			marker := os.Getenv("TEST_MARKER")
			if !exists(marker) {
				os.WriteFile(marker, nil, 0o644)
				os.Exit(3)
			}
			return "recovered", nil
		case `"hang"`:
			<-ctx.Done()
			return nil, ctx.Err()
		}
		var gate struct{ Gate string }
		if len(task) > 0 && task[0] == '{' && json.Unmarshal(task, &gate) == nil && gate.Gate != "" {
			for !exists(gate.Gate) {
				select {
				case <-ctx.Done():
					return nil, ctx.Err()
				case <-time.After(5 * time.Millisecond):
				}
			}
			return "gated", nil
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
