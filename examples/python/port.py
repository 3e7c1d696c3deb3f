#!/usr/bin/env python3
"""An "unmodified" HTTP app that binds $PORT itself (Python 3 stdlib only).

    herd run -w 2 --balance proxy -l 127.0.0.1:8080 -- python3 examples/python/port.py
    PORT=9000 python3 examples/python/port.py        # alone, no herd

This is the kind of app `--balance proxy` is for: it knows nothing of herd
(no inherited sockets, no LISTEN_FDS, no message channel). It listens on
$HOST:$PORT (HOST defaults to 127.0.0.1, PORT to 8080); in proxy mode herd
gives each worker process its own private loopback PORT and proxies client
connections to it.

Routes (HTTP/1.1, keep-alive):
    GET /         200 "hello from port PORT pid PID\\n"
    POST /echo    the request body back, streamed in 64 KiB chunks (PUT too);
                  Content-Length in, Content-Length out; a chunked request
                  gets a chunked response. The response starts before the
                  request has been read, so a client must read while it sends.
    GET /bytes/N  N bytes of the pattern i % 251 (i = 0, 1, ...), streamed,
                  with Content-Length: N
HEAD works for / and /bytes/N.

SIGTERM/SIGINT drain it like examples/python/hello.py: it stops accepting
(closes its listening socket), answers every further request with
"Connection: close", lets requests in flight finish and idle keep-alive
connections time out (2 s), and exits 0 when the last one is gone.
"""

import os
import re
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = os.environ.get("HOST") or "127.0.0.1"
PORT = int(os.environ.get("PORT") or "8080")
HELLO = f"hello from port {PORT} pid {os.getpid()}\n".encode()

CHUNK = 64 * 1024
# 261 periods of the pattern (65511 bytes): every block starts at a
# multiple of 251, so sending it again and again continues the pattern.
PATTERN = bytes(i % 251 for i in range(251 * 261))
BYTES_PATH = re.compile(r"/bytes/(\d{1,18})")

# Idle keep-alive connections are closed after IDLE_TIMEOUT (this also bounds
# how long a drain waits for them); while a body is moving the socket gets
# the longer TRANSFER_TIMEOUT, so a slow reader or writer is not cut off.
IDLE_TIMEOUT = 2
TRANSFER_TIMEOUT = 60

draining = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes; without TCP_NODELAY the second
    # waits for the client's delayed ACK (40 ms a request on keep-alive).
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT

    # --- routes -----------------------------------------------------------

    def do_GET(self, head=False):
        path = self.path.split("?", 1)[0]
        if path == "/":
            self.start(200, len(HELLO), "text/plain")
            if not head:
                self.wfile.write(HELLO)
            return
        m = BYTES_PATH.fullmatch(path)
        if m:
            n = int(m.group(1))
            self.start(200, n, "application/octet-stream")
            if not head:
                self.send_pattern(n)
            return
        self.not_found(head)

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_POST(self):
        if self.path.split("?", 1)[0] != "/echo":
            self.not_found(close=True)  # rather than read a body we do not want
            return
        self.echo()

    do_PUT = do_POST

    # --- helpers ----------------------------------------------------------

    def start(self, status, length, ctype, close=False):
        """Send the status line and headers; length None means chunked."""
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        if close or draining.is_set():
            # While draining: the client reconnects elsewhere. send_header
            # also sets close_connection.
            self.send_header("Connection", "close")
        self.end_headers()

    def not_found(self, head=False, close=False):
        body = b"not found\n"
        self.start(404, len(body), "text/plain", close)
        if not head:
            self.wfile.write(body)

    def send_pattern(self, n):
        self.connection.settimeout(TRANSFER_TIMEOUT)
        block = memoryview(PATTERN)
        while n > 0:
            k = min(n, len(block))
            self.wfile.write(block[:k])
            n -= k
        self.connection.settimeout(IDLE_TIMEOUT)

    def echo(self):
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        length = self.headers.get("Content-Length")
        if not chunked:
            try:
                length = int(length or "0")
                if length < 0:
                    raise ValueError
            except ValueError:
                self.send_error(400, "bad Content-Length")
                return
        self.connection.settimeout(TRANSFER_TIMEOUT)
        if chunked:
            self.start(200, None, "application/octet-stream")
            for data in self.read_chunked():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.start(200, length, "application/octet-stream")
            while length > 0:
                # read1: at most one recv, so data goes back as it arrives.
                data = self.rfile.read1(min(length, CHUNK))
                if not data:
                    raise ConnectionError("client closed the connection mid-body")
                self.wfile.write(data)
                length -= len(data)
        self.connection.settimeout(IDLE_TIMEOUT)

    def read_chunked(self):
        """Yield the data of a chunked request body, at most CHUNK at a time."""
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ConnectionError(f"bad chunk size line {line!r}") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            while size > 0:
                data = self.rfile.read1(min(size, CHUNK))
                if not data:
                    raise ConnectionError("client closed the connection mid-chunk")
                yield data
                size -= len(data)
            self.rfile.readline(1024)  # the CRLF after the chunk

    def log_message(self, format, *args):
        pass  # keep output small


class Server(ThreadingHTTPServer):
    # Connection threads are waited for by server_close (ThreadingHTTPServer
    # makes them daemons, which would die mid-response at exit).
    daemon_threads = False

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the client went away or stalled: nothing to report
        super().handle_error(request, client_address)


def main():
    family = socket.getaddrinfo(HOST, PORT, type=socket.SOCK_STREAM)[0][0]
    try:
        sock = socket.create_server((HOST, PORT), family=family, backlog=socket.SOMAXCONN)
    except OSError as e:
        sys.exit(f"port.py: listen {HOST}:{PORT}: {e}")
    # Bound here rather than by HTTPServer, which would also look up our
    # fully qualified name (a DNS query at start-up).
    server = Server((HOST, PORT), Handler, bind_and_activate=False)
    server.socket.close()  # the unbound default socket
    server.socket = sock
    server.address_family = family
    server.server_address = sock.getsockname()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"port.py: listening on {HOST}:{PORT}", file=sys.stderr, flush=True)
    stop.wait()  # the signal handler runs in this (main) thread

    draining.set()
    server.shutdown()  # stops accepting; returns once serve_forever has stopped
    server.server_close()  # closes the listener, waits for the connection threads
    return 0


if __name__ == "__main__":
    sys.exit(main())
