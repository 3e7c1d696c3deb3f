// Package control is the control socket of a running herd primary: the
// Unix socket that client commands (herd status, herd send, herd reload,
// herd scale, herd logs -f, ...) connect to, and its security.
//
// # Where the socket is
//
// DefaultPath puts it at $XDG_RUNTIME_DIR/herd/NAME.sock, or at
// /tmp/herd-UID/NAME.sock when there is no runtime directory. Listen
// creates the directory 0700 and the socket 0600, and refuses a directory
// that another user owns or that is group- or world-writable, because
// whoever controls the directory could swap the socket for their own.
//
// # Who may connect
//
// The file modes keep other users out; the server also checks every
// accepted connection's peer credentials (SO_PEERCRED on Linux,
// LOCAL_PEERCRED on macOS and FreeBSD) and serves only its own effective
// uid and root. Call, the other way round, talks only to a server run by
// its own uid or by root (root talks to anyone), so a socket planted by
// another user is never sent a request. On systems without peer
// credentials Listen refuses to start.
//
// # Wire protocol
//
// Internal to herd (the CLI and the primary ship together), so it may
// change; it is newline-delimited JSON, one request per connection (>
// is the client, < the server):
//
//	> {"cmd":"logs","args":{"follow":true}}
//	< {"data":{"worker":1,"line":"listening"}}
//	< {"data":{"worker":2,"line":"listening"}}
//	< {"ok":true}
//
// In detail (every line ends with '\n'):
//
//   - The client sends one line: {"cmd":NAME,"args":OBJECT}, args being
//     optional (absent or null) and otherwise a JSON object. The line may
//     be at most Server.MaxRequest bytes (2 MiB), newline excluded, and
//     must arrive within 10 seconds of connecting.
//   - The server answers with zero or more {"data":VALUE} lines, streamed
//     as the handler produces them, then exactly one final line:
//     {"ok":true} or {"error":TEXT}. Then it closes the connection.
//   - A request that is too long, malformed, or from a peer that may not
//     control this herd gets only the final {"error":TEXT} line.
//   - After its request the client sends nothing more and keeps its
//     side open: end-of-file from the client means it has gone (Ctrl-C on
//     herd logs -f), and the server cancels the handler. So do not
//     shut down the write side after the request (as socat does on EOF).
package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

var (
	// ErrAlreadyRunning is wrapped by Listen's error when a live server
	// already listens at the path.
	ErrAlreadyRunning = errors.New("another herd is already running")
	// ErrNotRunning is wrapped by Call's error when nothing listens at the
	// path.
	ErrNotRunning = errors.New("no herd is running")
	// ErrRemote is matched (errors.Is) by every *RemoteError: the server
	// answered the request with {"error":...}.
	ErrRemote = errors.New("herd answered with an error")
)

// RemoteError is the final {"error":TEXT} answer of the server. Its text is
// the handler's error message, meant to be shown to the user as is.
type RemoteError struct {
	Msg string
}

func (e *RemoteError) Error() string { return e.Msg }

// Is makes errors.Is(err, ErrRemote) true for every RemoteError.
func (e *RemoteError) Is(target error) bool { return target == ErrRemote }

// Request is what a client asks: a command name and its arguments, a JSON
// object or nil.
type Request struct {
	Cmd  string          `json:"cmd"`
	Args json.RawMessage `json:"args,omitempty"`
}

// maxNameLen keeps NAME.sock well inside the socket path limit.
const maxNameLen = 64

// DefaultPath returns the control socket path of the herd called name:
// $XDG_RUNTIME_DIR/herd/NAME.sock when XDG_RUNTIME_DIR is set to an
// absolute path, else /tmp/herd-EUID/NAME.sock. It only computes the path;
// Listen creates and checks the directory.
func DefaultPath(name string) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	// A relative XDG_RUNTIME_DIR would put the socket wherever herd was
	// started from; the XDG Base Directory spec says to ignore it.
	if dir := os.Getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(dir) {
		return filepath.Join(dir, "herd", name+".sock"), nil
	}
	// Not os.TempDir: client and server must agree on the path even when
	// their TMPDIR differs.
	return filepath.Join("/tmp", fmt.Sprintf("herd-%d", os.Geteuid()), name+".sock"), nil
}

func checkName(name string) error {
	bad := func(why string) error { return fmt.Errorf("invalid herd name %q: %s", name, why) }
	switch {
	case name == "":
		return bad("it is empty")
	case len(name) > maxNameLen:
		return bad(fmt.Sprintf("it is longer than %d bytes", maxNameLen))
	case name[0] == '.':
		return bad("it starts with '.'")
	}
	for i := 0; i < len(name); i++ {
		if !nameByte(name[i]) {
			return bad("only letters, digits, '.', '_' and '-' are allowed")
		}
	}
	return nil
}

func nameByte(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' ||
		b == '.' || b == '_' || b == '-'
}

// SanitizeName turns s, typically the base name of the worker command,
// into a valid herd name: bytes other than letters, digits, '.', '_' and
// '-' become '-', leading and trailing '.' and '-' go, it is cut to 64
// bytes, and "herd" is used when nothing is left.
func SanitizeName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !nameByte(c) {
			b[i] = '-'
		}
	}
	name := strings.Trim(string(b), ".-")
	if len(name) > maxNameLen {
		name = strings.TrimRight(name[:maxNameLen], ".-")
	}
	if name == "" {
		return "herd"
	}
	return name
}

// checkPathLen gives a clear error for paths the kernel cannot bind or
// connect to (it would say only "invalid argument"). sun_path holds the
// path and its terminating NUL: 108 bytes on Linux, 104 on macOS.
func checkPathLen(path string) error {
	if limit := len(unix.RawSockaddrUnix{}.Path) - 1; len(path) > limit {
		return fmt.Errorf("control socket path %s is %d bytes long, more than the %d a Unix socket allows: choose a shorter path", path, len(path), limit)
	}
	return nil
}

// trustedUID is the rule both ends apply to the other's uid: our own
// effective uid and root are trusted.
func trustedUID(uid, euid int) bool { return uid == euid || uid == 0 }
