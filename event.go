package herd

import (
	"encoding/json"
	"time"
)

// FromPrimary is Message.From for a message the primary itself sent.
const FromPrimary = -1

// TypeRelayed is the Type of a message one worker sent to others through
// the primary (herd.broadcast or herd.to); its From is the sender.
const TypeRelayed = "herd.message"

// Message is a message on the channel between the primary and a worker
// (docs/protocol.md).
type Message struct {
	// Type says what the message is. Types beginning with "herd." are the
	// protocol's; TypeRelayed marks a message from another worker.
	Type string
	// Data is the payload as JSON; nil when the message has none.
	Data json.RawMessage
	// From is the id of the worker that sent it, or FromPrimary.
	From int
}

// EventKind says what happened to a worker.
type EventKind int

const (
	// EventStarted: a worker process is running the worker command.
	EventStarted EventKind = iota + 1
	// EventReady: the worker said it is serving (herd.ready).
	EventReady
	// EventMessage: the worker sent the primary a message.
	EventMessage
	// EventExited: the worker process exited and has been reaped.
	EventExited
	// EventRestart: the slot will start a new worker after Delay, because
	// its worker exited without being asked to.
	EventRestart
)

var eventNames = [...]string{"", "started", "ready", "message", "exited", "restart"}

// String returns the kind's name as logs and tests show it: "started",
// "ready", "message", "exited" or "restart"; "unknown" for any other value.
func (k EventKind) String() string {
	if int(k) > 0 && int(k) < len(eventNames) {
		return eventNames[k]
	}
	return "unknown"
}

// Event is something that happened to one worker. Options.OnEvent
// receives them.
type Event struct {
	Kind EventKind
	// Worker is the worker's slot, 0..Workers-1.
	Worker int
	// PID is the worker process's pid.
	PID int
	// Message is the message, for EventMessage. Its Data belongs to the
	// handler.
	Message Message
	// Status describes how the worker ended ("exit status 1", "signal:
	// killed"), for EventExited; Code is its exit code, -1 when a signal
	// ended it; Expected says the primary had asked it to stop.
	Status   string
	Code     int
	Expected bool
	// Uptime is how long the worker ran, for EventExited.
	Uptime time.Duration
	// Delay is the wait before the next start, for EventRestart.
	Delay time.Duration
}
