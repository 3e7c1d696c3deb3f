package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/herd-sh/herd"
	"github.com/herd-sh/herd/internal/control"
)

// controlFlags pick the control socket, for herd run and every client
// command alike.
type controlFlags struct {
	name string
	path string
}

func (c *controlFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&c.name, "name", "", "name of the cluster, for its control socket (default: the worker command's base name); beats $HERD_CONTROL")
	fl.StringVar(&c.path, "control", "", "control socket path (default: from --name, else $HERD_CONTROL, else $XDG_RUNTIME_DIR/herd/NAME.sock or /tmp/herd-UID/NAME.sock)")
}

// socket resolves the control socket path; command is the worker command
// of herd run (nil for client commands). What is said on the command line
// beats the environment, which beats what herd would guess:
//
//  1. --control PATH;
//  2. --name NAME: the default path for NAME;
//  3. $HERD_CONTROL;
//  4. herd run: the default path for the command's base name; a client
//     command: the one cluster running, if exactly one is.
//
// So a HERD_CONTROL exported for one cluster (in a shell profile, or a
// systemd unit's Environment=) does not stop --name from reaching another.
func (c *controlFlags) socket(command []string) (string, error) {
	if c.path != "" {
		return c.path, nil
	}
	name := c.name
	if name == "" {
		if env := os.Getenv("HERD_CONTROL"); env != "" {
			return env, nil
		}
		if len(command) > 0 {
			name = control.SanitizeName(filepath.Base(command[0]))
		}
	}
	if name == "" {
		return onlyCluster()
	}
	p, err := control.DefaultPath(name)
	if err != nil {
		return "", usageError{fmt.Errorf("--name: %w", err)}
	}
	return p, nil
}

// onlyCluster finds the control socket when the user named no cluster:
// the one live socket in the default directory, as a convenience.
func onlyCluster() (string, error) {
	probe, err := control.DefaultPath("x")
	if err != nil {
		return "", err
	}
	dir := filepath.Dir(probe)
	all, _ := filepath.Glob(filepath.Join(dir, "*.sock"))
	// Sockets left by a herd that was killed name no cluster: the next
	// herd run of that name replaces them.
	matches := slices.DeleteFunc(all, control.Stale)
	switch len(matches) {
	case 1:
		return matches[0], nil
	case 0:
		return "", fmt.Errorf("%w: no control socket in %s (start one with herd run, or use --name or --control)", control.ErrNotRunning, dir)
	}
	var names []string
	for _, m := range matches {
		names = append(names, strings.TrimSuffix(filepath.Base(m), ".sock"))
	}
	return "", usageError{fmt.Errorf("several clusters run (%s): say which with --name", strings.Join(names, ", "))}
}

// sendArgs is the "send" request.
type sendArgs struct {
	To      string          `json:"to"` // a worker id or "all"
	Message json.RawMessage `json:"message"`
}

// serveControl answers client commands for sup; stop ends the cluster.
func serveControl(sup *herd.Supervisor, stop func()) control.Handler {
	return func(ctx context.Context, req control.Request, reply func(any) error) error {
		switch req.Cmd {
		case "send":
			var a sendArgs
			if err := json.Unmarshal(req.Args, &a); err != nil {
				return fmt.Errorf("send: bad arguments: %w", err)
			}
			typ, data, err := parseUserMessage(a.Message)
			if err != nil {
				return err
			}
			if a.To == "all" {
				return sup.Broadcast(ctx, typ, data)
			}
			id, err := strconv.Atoi(a.To)
			if err != nil {
				return fmt.Errorf("send: worker %q is not an id or \"all\"", a.To)
			}
			return sup.Send(ctx, id, typ, data)
		case "status":
			return reply(statusOf(sup))
		case "reload":
			return sup.Reload(ctx)
		case "restart":
			var a struct{ Worker int }
			if err := json.Unmarshal(req.Args, &a); err != nil {
				return fmt.Errorf("restart: bad arguments: %w", err)
			}
			return sup.Restart(ctx, a.Worker)
		case "scale":
			var a struct{ To string }
			if err := json.Unmarshal(req.Args, &a); err != nil {
				return fmt.Errorf("scale: bad arguments: %w", err)
			}
			n, err := scaleTarget(a.To, len(sup.Workers()))
			if err != nil {
				return err
			}
			return sup.Scale(ctx, n)
		case "stop":
			stop()
			return nil
		case "logs":
			var a struct {
				Lines  int
				Follow bool
			}
			if err := json.Unmarshal(req.Args, &a); err != nil {
				return fmt.Errorf("logs: bad arguments: %w", err)
			}
			return sup.Output(ctx, a.Lines, a.Follow, func(l herd.OutputLine) error { return reply(outputView(l)) })
		}
		return fmt.Errorf("unknown command %q (this herd is too old or too new for the client?)", req.Cmd)
	}
}

// scaleTarget turns "N", "+K" or "-K" into a number of workers.
func scaleTarget(arg string, now int) (int, error) {
	n, err := strconv.Atoi(arg)
	if err != nil {
		return 0, fmt.Errorf("scale: %q is not N, +K or -K", arg)
	}
	if strings.HasPrefix(arg, "+") || strings.HasPrefix(arg, "-") {
		n += now
	}
	if n < 1 {
		return 0, fmt.Errorf("scale: %s would leave %d workers; at least 1 must run (stop the cluster with herd stop)", arg, n)
	}
	return n, nil
}

// workerView is one worker in herd status --json: a stable, documented
// shape (docs/operations.md), not the library's struct.
type workerView struct {
	ID         int     `json:"id"`
	PID        int     `json:"pid"`
	State      string  `json:"state"`
	Ready      bool    `json:"ready"`
	Started    string  `json:"started,omitempty"`
	UptimeSec  float64 `json:"uptime_seconds"`
	Restarts   int     `json:"restarts"`
	LastExit   string  `json:"last_exit,omitempty"`
	LastError  string  `json:"last_error,omitempty"`
	RSSBytes   uint64  `json:"rss_bytes"`
	CPUPercent float64 `json:"cpu_percent"`
	NextPID    int     `json:"next_pid,omitempty"`
	Conns      int     `json:"conns"`
	Dropped    int64   `json:"dropped_messages"`
}

type listenerView struct {
	Name    string `json:"name"`
	Addr    string `json:"addr"`
	Sockets int    `json:"sockets"`
}

type statusView struct {
	PID       int            `json:"pid"`
	Workers   []workerView   `json:"workers"`
	Listeners []listenerView `json:"listeners"`
}

func statusOf(sup *herd.Supervisor) statusView {
	v := statusView{PID: os.Getpid(), Workers: []workerView{}, Listeners: []listenerView{}}
	for _, w := range sup.Workers() {
		wv := workerView{
			ID: w.ID, PID: w.PID, State: w.State.String(), Ready: w.Ready,
			UptimeSec: w.Uptime().Round(time.Millisecond).Seconds(), Restarts: w.Restarts, LastExit: w.LastExit, LastError: w.LastError,
			RSSBytes: w.RSS, CPUPercent: float64(int(w.CPU*10)) / 10, NextPID: w.NextPID, Conns: w.Conns,
			Dropped: w.DroppedMessages,
		}
		if w.PID != 0 {
			wv.Started = w.Started.UTC().Format(time.RFC3339)
		}
		v.Workers = append(v.Workers, wv)
	}
	for _, l := range sup.Listeners() {
		v.Listeners = append(v.Listeners, listenerView{Name: l.Name, Addr: l.Addr.String(), Sockets: l.Sockets})
	}
	return v
}

// lineView is one line of herd logs, on the wire.
type lineView struct {
	Time   time.Time `json:"time"`
	Worker int       `json:"worker"`
	PID    int       `json:"pid"`
	Stream string    `json:"stream"`
	Line   string    `json:"line"`
}

func outputView(l herd.OutputLine) lineView {
	return lineView{Time: l.Time, Worker: l.Worker, PID: l.PID, Stream: l.Stream, Line: l.Text}
}

// parseUserMessage checks a message given on the command line: a JSON
// object with a string "type" that is not reserved, and optional "data".
func parseUserMessage(raw json.RawMessage) (string, json.RawMessage, error) {
	var m struct {
		Type *string         `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(raw, &m); err != nil || m.Type == nil {
		return "", nil, fmt.Errorf(`the message must be a JSON object with a string "type", like {"type":"reload-config","data":{"x":1}}`)
	}
	return *m.Type, m.Data, nil
}

func newSendCmd() *cobra.Command {
	var cf controlFlags
	cmd := &cobra.Command{
		Use:   "send [flags] WORKER|all MESSAGE",
		Short: "Send a message to one worker or to all of a running cluster",
		Long: `Send a message to worker WORKER (an id) or to every worker of a running
herd. MESSAGE is a JSON object with a string "type" (not starting with
"herd.") and optional "data"; the worker receives it as is (docs/protocol.md).`,
		Example: `  herd send all '{"type":"reload-config"}'
  herd send --name api 1 '{"type":"log-level","data":"debug"}'`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usageError{fmt.Errorf("send takes WORKER|all and MESSAGE, got %d arguments", len(args))}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			to, msg := args[0], json.RawMessage(args[1])
			if to != "all" {
				if id, err := strconv.Atoi(to); err != nil || id < 0 {
					return usageError{fmt.Errorf("WORKER must be a worker id or \"all\", got %q", to)}
				}
			}
			typ, _, err := parseUserMessage(msg)
			if err != nil {
				return usageError{err}
			}
			if typ == "" || strings.HasPrefix(typ, "herd.") {
				return usageError{fmt.Errorf("message type %q is empty or reserved (herd.*)", typ)}
			}
			path, err := cf.socket(nil)
			if err != nil {
				return err
			}
			return callControl(cmd.Context(), path, "send", sendArgs{To: to, Message: msg}, nil)
		},
	}
	cf.register(cmd)
	return cmd
}

// callControl runs one control request, turning the server's error into
// the command's.
func callControl(ctx context.Context, path, name string, args any, onData func(json.RawMessage) error) error {
	if ctx == nil {
		ctx = context.Background()
	}
	err := control.Call(ctx, path, name, args, onData)
	var re *control.RemoteError
	if errors.As(err, &re) {
		return errors.New(re.Msg)
	}
	return err
}
