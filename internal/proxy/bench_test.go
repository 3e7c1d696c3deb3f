package proxy

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
)

// benchTargets runs bench against a backend served by handler, once
// directly and once through a Proxy, so that the difference is the
// proxy's cost.
func benchTargets(b *testing.B, handler func(*net.TCPConn, <-chan struct{}), bench func(b *testing.B, addr string)) {
	s := serve(b, 0, handler)
	b.Run("direct", func(b *testing.B) { bench(b, s.Addr) })
	b.Run("proxy", func(b *testing.B) {
		r := start(b, newPool(s), RoundRobin)
		bench(b, r.addr)
	})
}

// BenchmarkProxyConnect measures whole connections: connect, one byte
// from the backend, close. Allocations count both ends too.
func BenchmarkProxyConnect(b *testing.B) {
	benchTargets(b, func(c *net.TCPConn, _ <-chan struct{}) {
		c.Write([]byte{1})
		io.Copy(io.Discard, c)
	}, func(b *testing.B, addr string) {
		b.ReportAllocs()
		buf := make([]byte, 1)
		for b.Loop() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
}

// BenchmarkProxyCopy measures the throughput of one connection uploading
// 1 MiB per op to a backend that discards it.
func BenchmarkProxyCopy(b *testing.B) {
	const chunk = 1 << 20
	benchTargets(b, func(c *net.TCPConn, _ <-chan struct{}) {
		n, _ := io.Copy(io.Discard, c)
		binary.Write(c, binary.LittleEndian, n)
	}, func(b *testing.B, addr string) {
		b.ReportAllocs()
		b.SetBytes(chunk)
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		buf := make([]byte, chunk)
		var sent int64
		for b.Loop() {
			n, err := c.Write(buf)
			sent += int64(n)
			if err != nil {
				b.Fatal(err)
			}
		}
		c.(*net.TCPConn).CloseWrite()
		var got int64
		if err := binary.Read(c, binary.LittleEndian, &got); err != nil || got != sent {
			b.Fatalf("backend got %d bytes (%v), sent %d", got, err, sent)
		}
	})
}
