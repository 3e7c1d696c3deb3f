package sockets

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	cases := []struct {
		in      string
		want    Spec
		wantErr string
	}{
		{in: "127.0.0.1:8080", want: Spec{"listen3", "tcp", "127.0.0.1:8080"}},
		{in: ":8080", want: Spec{"listen3", "tcp", ":8080"}},
		{in: "http=:80", want: Spec{"http", "tcp", ":80"}},
		{in: "[::1]:0", want: Spec{"listen3", "tcp", "[::1]:0"}},
		{in: "v6=[fe80::1%eth0]:9", want: Spec{"v6", "tcp", "[fe80::1%eth0]:9"}},
		{in: "localhost:8080", want: Spec{"listen3", "tcp", "localhost:8080"}},
		{in: "admin=unix:/run/app.sock", want: Spec{"admin", "unix", "/run/app.sock"}},
		{in: "unix:/tmp/a=b.sock", want: Spec{"listen3", "unix", "/tmp/a=b.sock"}},
		{in: "unix:@abstract", want: Spec{"listen3", "unix", "@abstract"}},
		{in: "127.0.0.1:007", want: Spec{"listen3", "tcp", "127.0.0.1:7"}},
		{in: "", wantErr: "empty address"},
		{in: "web=", wantErr: "empty address"},
		{in: "=:80", wantErr: "empty name"},
		{in: "localhost", wantErr: "missing port in address"},
		{in: "1.2.3.4:http", wantErr: `port "http" is not a number`},
		{in: "1.2.3.4:65536", wantErr: `port "65536" is not a number`},
		{in: "1.2.3.4:", wantErr: `port "" is not a number`},
		{in: "::1:80", wantErr: "too many colons"},
		{in: "[zz::1]:80", wantErr: "invalid IPv6 address"},
		{in: "exa mple:80", wantErr: "invalid host"},
		{in: "unix:", wantErr: "empty unix socket path"},
		{in: "unix:/" + strings.Repeat("a", 200), wantErr: "longer than 107 bytes"},
		{in: "a:b=unix:/x", wantErr: "too many colons"},
		{in: "bad name=:80", wantErr: "may only use letters"},
	}
	for _, tc := range cases {
		got, err := ParseSpec(tc.in, 3)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrBadSpec) {
				t.Errorf("ParseSpec(%q) = %+v, %v; want error containing %q", tc.in, got, err, tc.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), `"`+tc.in+`"`) {
				t.Errorf("ParseSpec(%q) error %q does not name the input", tc.in, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseSpec(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseSpecsRejectsDuplicateNames(t *testing.T) {
	if _, err := ParseSpecs([]string{"a=:1", "b=:2", "a=:3"}); err == nil || !strings.Contains(err.Error(), `name "a" is used twice`) {
		t.Fatalf("err = %v", err)
	}
	specs, err := ParseSpecs([]string{":1", "x=:2", ":3"})
	if err != nil {
		t.Fatal(err)
	}
	if specs[0].Name != "listen0" || specs[1].Name != "x" || specs[2].Name != "listen2" {
		t.Fatalf("names %+v", specs)
	}
}

// FuzzParseSpec checks that any input either parses into a spec that
// round-trips through String, or fails with ErrBadSpec; never a panic.
func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{"127.0.0.1:8080", "http=:80", "[::1]:0", "unix:/run/a.sock", "a=unix:@x", "=", ":", "[", "a=b=c:1", "unix:\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseSpec(in, 0)
		if err != nil {
			if !errors.Is(err, ErrBadSpec) {
				t.Fatalf("ParseSpec(%q): error %v does not wrap ErrBadSpec", in, err)
			}
			return
		}
		if s.Network != "tcp" && s.Network != "unix" {
			t.Fatalf("ParseSpec(%q): network %q", in, s.Network)
		}
		if strings.ContainsAny(s.Name, ":=") || s.Name == "" {
			t.Fatalf("ParseSpec(%q): name %q cannot go in LISTEN_FDNAMES", in, s.Name)
		}
		again, err := ParseSpec(s.String(), 0)
		if err != nil || again != s {
			t.Fatalf("ParseSpec(%q) = %+v, but its String %q parses to %+v, %v", in, s, s.String(), again, err)
		}
	})
}
