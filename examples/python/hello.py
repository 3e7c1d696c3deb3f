#!/usr/bin/env python3
"""Minimal HTTP hello server that runs as a herd worker (Python 3 stdlib only).

    herd run -w 4 -l 127.0.0.1:8080 -- python3 examples/python/hello.py

Under herd (or systemd socket activation) the listening sockets arrive as
fds 3 .. 3+LISTEN_FDS-1; each one is served by a threading HTTP server that
does not bind. LISTEN_PID must be our own pid, otherwise the sockets were
meant for another process and we refuse to start. Without LISTEN_FDS it
listens on 127.0.0.1:$PORT (default 8080) itself.

SIGTERM/SIGINT drain it so that no request fails during a rolling reload:
it stops accepting (herd keeps the socket, so new connections go to other
workers or to the replacement), answers every further request with
"Connection: close" so keep-alive clients reconnect elsewhere, lets idle
connections time out, and exits 0 when the last one is gone.
"""

import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LISTEN_FDS_START = 3
BODY = f"hello from worker {os.environ.get('HERD_WORKER_ID', '')} pid {os.getpid()}\n".encode()


draining = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes; without TCP_NODELAY the second
    # waits for the client's delayed ACK (40 ms a request on keep-alive).
    disable_nagle_algorithm = True
    # Idle keep-alive connections are closed after this long; it also
    # bounds how long a drain waits for them.
    timeout = 2

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        if draining.is_set():
            self.send_header("Connection", "close")  # reconnect elsewhere
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format, *args):
        pass  # keep output small


def inherited_sockets():
    """Return the sockets passed by herd/systemd, or None if there are none."""
    nfds = os.environ.get("LISTEN_FDS")
    if nfds is None:
        return None
    pid = os.environ.get("LISTEN_PID")
    if pid != str(os.getpid()):
        sys.exit(f"hello.py: LISTEN_PID={pid} but our pid is {os.getpid()}: "
                 "the sockets are not meant for this process")
    for var in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)  # do not leak them to our children
    socks = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(nfds)):
        sock = socket.socket(fileno=fd)  # family and type are detected
        sock.set_inheritable(False)
        # Sockets arrive in blocking mode and may be shared with the other
        # workers: a blocking accept() after select() said "readable" would
        # hang if another worker took the connection first, and then
        # shutdown() would never return. Non-blocking, socketserver just
        # ignores the EAGAIN.
        sock.setblocking(False)
        socks.append(sock)
    return socks


class Server(ThreadingHTTPServer):
    # Connection threads are waited for by server_close (ThreadingHTTPServer
    # makes them daemons, which would die mid-response at exit).
    daemon_threads = False


def make_server(sock):
    server = Server(("", 0), Handler, bind_and_activate=False)
    server.socket.close()  # the unbound default socket
    server.socket = sock
    server.address_family = sock.family
    server.server_address = sock.getsockname()
    return server


def main():
    socks = inherited_sockets()
    if socks is None:
        sock = socket.create_server(("127.0.0.1", int(os.environ.get("PORT", "8080"))))
        socks = [sock]
    servers = [make_server(s) for s in socks]

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    stop.wait()  # the signal handler runs in this (main) thread

    draining.set()
    for s in servers:
        s.shutdown()  # stops accepting; returns once serve_forever has stopped
    for s in servers:
        s.server_close()  # waits for the connection threads to finish
    return 0


if __name__ == "__main__":
    sys.exit(main())
