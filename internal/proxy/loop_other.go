//go:build !linux

package proxy

import (
	"context"
	"fmt"
	"net"
	"os"
)

// engine is Linux's event loops; elsewhere there are none.
type engine struct{}

// ServeSocket relays the connections of the listening socket f, as Serve
// does for a net.Listener (on Linux it does so with event loops). f stays
// the caller's: the proxy accepts on a copy. ServeSocket returns when ctx
// ends, after the connections it accepted are reset and closed, or when
// accepting fails for good.
func (p *Proxy) ServeSocket(ctx context.Context, f *os.File) error {
	l, err := net.FileListener(f)
	if err != nil {
		return fmt.Errorf("proxy %s: %w", f.Name(), err)
	}
	return p.Serve(ctx, l)
}
