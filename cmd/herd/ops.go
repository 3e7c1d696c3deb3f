package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/herd-sh/herd"
)

// clientCmd makes a command that talks to a running cluster.
func clientCmd(use, short, long, example string, nargs int, run func(cmd *cobra.Command, path string, args []string) error) (*cobra.Command, *controlFlags) {
	var cf controlFlags
	cmd := &cobra.Command{
		Use: use, Short: short, Long: long, Example: example,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != nargs {
				return usageError{fmt.Errorf("%s takes %d argument(s), got %d (usage: herd %s)", cmd.Name(), nargs, len(args), use)}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := cf.socket(nil)
			if err != nil {
				return err
			}
			return run(cmd, path, args)
		},
	}
	cf.register(cmd)
	return cmd, &cf
}

func newStatusCmd() *cobra.Command {
	var asJSON bool
	cmd, _ := clientCmd("status [flags]", "Show the workers of a running cluster",
		"Show each worker slot of a running cluster: pid, state, uptime, failed workers (restarts), last exit, memory, CPU, and why its last new worker failed to start.",
		"  herd status\n  herd status --name api --json", 0,
		func(cmd *cobra.Command, path string, _ []string) error {
			var st statusView
			err := callControl(cmd.Context(), path, "status", nil, func(raw json.RawMessage) error {
				return json.Unmarshal(raw, &st)
			})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(out, st)
			return nil
		})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (docs/operations.md describes it)")
	return cmd
}

func printStatus(out io.Writer, st statusView) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tPID\tSTATE\tUPTIME\tRESTARTS\tLAST EXIT\tRSS\tCPU\tLAST ERROR")
	for _, w := range st.Workers {
		state := w.State
		if w.NextPID != 0 {
			state += fmt.Sprintf(" (replacing: %d)", w.NextPID)
		}
		pid, uptime := "-", "-"
		if w.PID != 0 {
			pid = strconv.Itoa(w.PID)
			uptime = (time.Duration(w.UptimeSec * float64(time.Second))).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\t%.1f%%\t%s\n", w.ID, pid, state, uptime, w.Restarts, orDash(w.LastExit), humanBytes(w.RSSBytes), w.CPUPercent, orDash(w.LastError))
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func humanBytes(n uint64) string {
	switch {
	case n == 0:
		return "-"
	case n >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fM", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.0fK", float64(n)/(1<<10))
}

func newReloadCmd() *cobra.Command {
	cmd, _ := clientCmd("reload [flags]", "Replace every worker of a running cluster, with no failed request",
		`Replace the workers one after another (--reload-batch at a time): start a
new worker, wait until it is ready, then stop the old one. Returns once
every worker is replaced; if a new worker does not become ready, the reload
stops there, the old workers keep serving, and herd reload exits 1 saying why.`,
		"  herd reload --name api", 0,
		func(cmd *cobra.Command, path string, _ []string) error {
			return callControl(cmd.Context(), path, "reload", nil, nil)
		})
	return cmd
}

func newRestartCmd() *cobra.Command {
	cmd, _ := clientCmd("restart [flags] WORKER", "Replace one worker of a running cluster",
		"Replace worker WORKER (an id) as a reload does: the new one first, then the old one stops.",
		"  herd restart 2", 1,
		func(cmd *cobra.Command, path string, args []string) error {
			id, err := strconv.Atoi(args[0])
			if err != nil || id < 0 {
				return usageError{fmt.Errorf("WORKER must be a worker id, got %q", args[0])}
			}
			return callControl(cmd.Context(), path, "restart", map[string]int{"worker": id}, nil)
		})
	return cmd
}

func newScaleCmd() *cobra.Command {
	cmd, _ := clientCmd("scale [flags] N|+K|-K", "Change the number of workers of a running cluster",
		`Set the number of workers to N, or add or remove K. New workers start at
once; removed ones (the highest ids) drain and stop.`,
		"  herd scale 8\n  herd scale +1\n  herd scale -2", 1,
		func(cmd *cobra.Command, path string, args []string) error {
			if _, err := scaleTarget(args[0], 1<<20); err != nil {
				return usageError{err}
			}
			return callControl(cmd.Context(), path, "scale", map[string]string{"to": args[0]}, nil)
		})
	// "-2" would be taken for a flag (a shorthand "2") and refused: the
	// command parses its own flags, keeping -K as the argument it is.
	cmd.DisableFlagParsing = true
	validate, run := cmd.Args, cmd.RunE
	cmd.Args = nil
	cmd.RunE = func(cmd *cobra.Command, raw []string) error {
		args, err := parseKeepingNegatives(cmd, raw)
		if err != nil {
			return cmd.FlagErrorFunc()(cmd, err)
		}
		if help, _ := cmd.Flags().GetBool("help"); help {
			return cmd.Help()
		}
		if err := validate(cmd, args); err != nil {
			return err
		}
		return run(cmd, args)
	}
	return cmd
}

// parseKeepingNegatives parses raw with cmd's flags, except that an
// argument like "-2" (a negative number) is an argument, not a flag. It
// returns the arguments.
func parseKeepingNegatives(cmd *cobra.Command, raw []string) ([]string, error) {
	fs := cmd.Flags()
	var flags, negatives []string
	for i := 0; i < len(raw); i++ {
		a := raw[i]
		switch {
		case a == "--":
			flags = append(flags, raw[i:]...)
			i = len(raw)
		case isNegativeNumber(a):
			negatives = append(negatives, a)
		default:
			flags = append(flags, a)
			if takesNextValue(cmd, a) && i+1 < len(raw) {
				// The value of --name or --control is theirs, even "-2".
				i++
				flags = append(flags, raw[i])
			}
		}
	}
	if err := fs.Parse(flags); err != nil {
		return nil, err
	}
	return append(fs.Args(), negatives...), nil
}

func isNegativeNumber(s string) bool {
	if len(s) < 2 || s[0] != '-' {
		return false
	}
	for _, r := range s[1:] {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// takesNextValue reports whether a is one of cmd's flags, given without
// "=", that takes a value, which is then the next argument.
func takesNextValue(cmd *cobra.Command, a string) bool {
	fs := cmd.Flags()
	switch {
	case strings.HasPrefix(a, "--") && !strings.Contains(a, "="):
		if f := fs.Lookup(a[2:]); f != nil {
			return f.NoOptDefVal == ""
		}
	case len(a) == 2 && a[0] == '-':
		if f := fs.ShorthandLookup(a[1:]); f != nil {
			return f.NoOptDefVal == ""
		}
	}
	return false
}

func newStopCmd() *cobra.Command {
	cmd, _ := clientCmd("stop [flags]", "Stop a running cluster gracefully",
		"Stop every worker gracefully, as SIGTERM to the primary does; herd run then exits 0.",
		"  herd stop --name api", 0,
		func(cmd *cobra.Command, path string, _ []string) error {
			return callControl(cmd.Context(), path, "stop", nil, nil)
		})
	return cmd
}

func newLogsCmd() *cobra.Command {
	var (
		follow bool
		lines  int
	)
	cmd, _ := clientCmd("logs [flags]", "Show the recent output of a running cluster's workers",
		`Show the last lines the workers wrote, and herd's own log records among
them (the primary keeps the last 1000 lines or 1 MiB), tagged like herd
run's own output ("w1 4242 | ...", "herd 4200 | ..."); with -f, keep
following until interrupted.`,
		"  herd logs -n 50\n  herd logs -f", 0,
		func(cmd *cobra.Command, path string, _ []string) error {
			out := cmd.OutOrStdout()
			return callControl(cmd.Context(), path, "logs", map[string]any{"lines": lines, "follow": follow}, func(raw json.RawMessage) error {
				var l lineView
				if err := json.Unmarshal(raw, &l); err != nil {
					return err
				}
				switch l.Stream {
				case "herd":
					_, err := fmt.Fprintf(cmd.ErrOrStderr(), "herd: %s\n", l.Line)
					return err
				case herd.StreamLog:
					_, err := fmt.Fprintf(out, "herd %d | %s\n", l.PID, l.Line)
					return err
				}
				_, err := fmt.Fprintf(out, "w%d %d | %s\n", l.Worker, l.PID, strings.TrimSuffix(l.Line, "\n"))
				return err
			})
		})
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines")
	cmd.Flags().IntVarP(&lines, "lines", "n", 100, "how many recent lines to show first")
	return cmd
}
