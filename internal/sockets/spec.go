// Package sockets owns the listening sockets of a herd primary: it parses
// listener specifications, opens every socket before any worker starts, and
// keeps them open across worker restarts so that connections which queue
// while a worker is being replaced are served by its replacement.
package sockets

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Spec is one parsed -l/--listen value: an optional name and an address.
type Spec struct {
	// Name is what the worker sees in LISTEN_FDNAMES. It defaults to
	// "listen<index>".
	Name string
	// Network is "tcp" or "unix".
	Network string
	// Address is "host:port" for tcp and a path (or "@abstract") for unix.
	Address string
}

// String returns the spec in the form ParseSpec accepts.
func (s Spec) String() string {
	addr := s.Address
	if s.Network == "unix" {
		addr = "unix:" + addr
	}
	return s.Name + "=" + addr
}

// ErrBadSpec is wrapped by every error ParseSpec returns.
var ErrBadSpec = errors.New("bad listen address")

// maxNameLen is systemd's limit for a file descriptor name.
const maxNameLen = 255

// ParseSpec parses "[NAME=]ADDR" where ADDR is "host:port" (IPv4, IPv6 in
// brackets, a host name, or empty host for all interfaces) or "unix:PATH".
// index gives the default name, "listen<index>".
func ParseSpec(s string, index int) (Spec, error) {
	bad := func(format string, args ...any) (Spec, error) {
		return Spec{}, fmt.Errorf("%w %q: %s", ErrBadSpec, s, fmt.Sprintf(format, args...))
	}
	spec := Spec{Name: "listen" + strconv.Itoa(index)}
	addr := s
	// A name is everything before the first '=' when that part cannot be the
	// start of an address (addresses contain ':' or '/' before any '=').
	if i := strings.IndexByte(s, '='); i >= 0 && !strings.ContainsAny(s[:i], ":/[") {
		spec.Name, addr = s[:i], s[i+1:]
		if err := checkName(spec.Name); err != nil {
			return bad("%v", err)
		}
	}
	if addr == "" {
		return bad("empty address")
	}
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if path == "" || path == "@" {
			return bad("empty unix socket path")
		}
		if strings.IndexByte(path, 0) >= 0 {
			return bad("unix socket path contains a NUL byte")
		}
		// sun_path holds 108 bytes including the terminating NUL.
		if len(path) > 107 {
			return bad("unix socket path is longer than 107 bytes")
		}
		spec.Network, spec.Address = "unix", path
		return spec, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return bad("%s (want host:port, [ipv6]:port or unix:/path)", ae.Err)
		}
		return bad("%v", err)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || port == "" {
		return bad("port %q is not a number from 0 to 65535", port)
	}
	if err := checkHost(host); err != nil {
		return bad("%v", err)
	}
	spec.Network, spec.Address = "tcp", net.JoinHostPort(host, strconv.FormatUint(n, 10))
	return spec, nil
}

// checkHost accepts an empty host (all interfaces), an IP address (IPv6
// with an optional %zone) or a host name made of DNS characters.
func checkHost(host string) error {
	if host == "" {
		return nil
	}
	if strings.Contains(host, ":") {
		ip, _, _ := strings.Cut(host, "%")
		if net.ParseIP(ip) == nil {
			return fmt.Errorf("invalid IPv6 address %q", host)
		}
		return nil
	}
	for _, r := range host {
		ok := r == '-' || r == '.' || r == '_' ||
			('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9')
		if !ok {
			return fmt.Errorf("invalid host %q", host)
		}
	}
	return nil
}

func checkName(name string) error {
	if name == "" {
		return errors.New("empty name before '='")
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("name longer than %d bytes", maxNameLen)
	}
	for _, r := range name {
		ok := r == '_' || r == '-' || r == '.' ||
			('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9')
		if !ok {
			return fmt.Errorf("name %q may only use letters, digits, '_', '-' and '.'", name)
		}
	}
	return nil
}

// ParseSpecs parses every value and checks that names are unique.
func ParseSpecs(values []string) ([]Spec, error) {
	specs := make([]Spec, 0, len(values))
	seen := make(map[string]bool, len(values))
	for i, v := range values {
		s, err := ParseSpec(v, i)
		if err != nil {
			return nil, err
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("%w %q: name %q is used twice", ErrBadSpec, v, s.Name)
		}
		seen[s.Name] = true
		specs = append(specs, s)
	}
	return specs, nil
}
