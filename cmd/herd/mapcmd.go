package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/herd-sh/herd"
)

type mapFlags struct {
	workers     int
	inflight    int
	retries     int
	taskTimeout time.Duration
	unordered   bool
	json        bool
	quiet       bool
	input       string
	output      string
	stopTimeout time.Duration
}

func newMapCmd() *cobra.Command {
	var f mapFlags
	cmd := &cobra.Command{
		Use:   "map [flags] -- command [args...]",
		Short: "Run each input line as a task on persistent workers",
		Long: `Run each line of the input as a task on a pool of persistent workers: a
task is written to a worker's stdin, and each line the worker writes to
its stdout answers its oldest unanswered task. Answers are written in
input order (or as they come with --unordered). A task whose worker dies
or hangs is given to another worker, up to --retries times; after that
its answer is {"error":"why","task":TASK} and herd exits 1, saying how many
failed. Memory stays bounded: input is read only as fast as answers are
written.`,
		Example: `  herd map -w 4 -- python3 score.py < tasks.jsonl > results.jsonl
  herd map --json --task-timeout 30s --input tasks.jsonl --output out.jsonl -- ./worker`,
		RunE: func(cmd *cobra.Command, args []string) error { return runMap(cmd, f, args) },
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false)
	fl.IntVarP(&f.workers, "workers", "w", 0, "number of workers (default: number of CPUs)")
	fl.IntVar(&f.inflight, "inflight", 16, "tasks a worker may hold at once")
	fl.IntVar(&f.retries, "retries", 2, "times a task whose worker died or hung is given to another worker")
	fl.DurationVar(&f.taskTimeout, "task-timeout", 0, "kill a worker that works on one task longer than this (0: never)")
	fl.BoolVar(&f.unordered, "unordered", false, "write answers as they come, not in input order")
	fl.BoolVar(&f.json, "json", false, "tasks and answers are JSON values; an answer with an \"error\" member counts as a failed task")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "no progress and no summary on stderr")
	fl.StringVar(&f.input, "input", "", "read tasks from this file (default: stdin)")
	fl.StringVar(&f.output, "output", "", "write answers to this file (default: stdout)")
	fl.DurationVar(&f.stopTimeout, "stop-timeout", 10*time.Second, "time workers get to exit at the end before they are killed")
	return cmd
}

func runMap(cmd *cobra.Command, f mapFlags, args []string) error {
	if len(args) == 0 {
		return usageError{errors.New("missing worker command (usage: herd map [flags] -- command [args...])")}
	}
	fl := cmd.Flags()
	switch {
	case fl.Changed("workers") && f.workers < 1:
		return usageError{fmt.Errorf("--workers must be at least 1, got %d", f.workers)}
	case f.inflight < 1:
		return usageError{fmt.Errorf("--inflight must be at least 1, got %d", f.inflight)}
	case f.retries < 0:
		return usageError{fmt.Errorf("--retries must not be negative, got %d", f.retries)}
	case f.taskTimeout < 0:
		return usageError{fmt.Errorf("--task-timeout must not be negative, got %v", f.taskTimeout)}
	case f.stopTimeout <= 0:
		return usageError{fmt.Errorf("--stop-timeout must be positive, got %v", f.stopTimeout)}
	}
	var in io.Reader = os.Stdin
	if f.input != "" {
		file, err := os.Open(f.input)
		if err != nil {
			return fmt.Errorf("--input: %w", err)
		}
		defer file.Close()
		in = file
	}
	var out io.Writer = cmd.OutOrStdout()
	if f.output != "" {
		file, err := os.Create(f.output)
		if err != nil {
			return fmt.Errorf("--output: %w", err)
		}
		defer file.Close()
		out = file
	}
	stderr := cmd.ErrOrStderr()
	retries := f.retries
	if retries == 0 {
		retries = -1 // MapOptions: none
	}
	opts := herd.MapOptions{
		Options: herd.Options{
			Command:     args,
			Workers:     f.workers,
			StopTimeout: f.stopTimeout,
			Stderr:      stderr,
		},
		Inflight:    f.inflight,
		Retries:     retries,
		TaskTimeout: f.taskTimeout,
		Unordered:   f.unordered,
		JSON:        f.json,
	}
	terminal := isTerminal(stderr)
	if !f.quiet && terminal {
		opts.Progress = func(st herd.MapStats) { fmt.Fprintf(stderr, "\r\033[K%s", progressLine(st)) }
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	st, err := herd.Map(ctx, opts, in, out)
	if !f.quiet {
		if terminal {
			fmt.Fprint(stderr, "\r\033[K")
		}
		fmt.Fprintln(stderr, summary(st, ctx.Err() != nil))
	}
	switch {
	case errors.Is(err, herd.ErrBadOptions):
		return usageError{err}
	case ctx.Err() != nil:
		return fmt.Errorf("interrupted after %d of the %d tasks read", st.Done, st.Tasks)
	}
	return err
}

func progressLine(st herd.MapStats) string {
	rate := float64(st.Done) / max(st.Elapsed.Seconds(), 1e-9)
	line := fmt.Sprintf("%d/%d tasks, %.0f/s", st.Done, st.Tasks, rate)
	if st.Failed > 0 {
		line += fmt.Sprintf(", %d failed", st.Failed)
	}
	if st.InputSize > 0 && st.InputRead > 0 && st.InputRead < st.InputSize {
		left := time.Duration(float64(st.Elapsed) * float64(st.InputSize-st.InputRead) / float64(st.InputRead))
		line += ", ETA " + left.Round(time.Second).String()
	}
	return line
}

func summary(st herd.MapStats, interrupted bool) string {
	rate := float64(st.Done) / max(st.Elapsed.Seconds(), 1e-9)
	s := fmt.Sprintf("herd map: %d tasks, %d failed, %d retries, %v, %.0f tasks/s",
		st.Done, st.Failed, st.Retries, st.Elapsed.Round(time.Millisecond), rate)
	if interrupted {
		s += fmt.Sprintf(" (interrupted: %d of %d tasks read were answered)", st.Done, st.Tasks)
	}
	return s
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), ioctlGetTermios)
	return err == nil
}
