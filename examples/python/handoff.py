#!/usr/bin/env python3
"""HTTP hello server fed with connections handed over by herd (Python 3 stdlib only).

    herd run -w 2 --balance round-robin -l 127.0.0.1:8080 -- python3 examples/python/handoff.py

In --balance round-robin, least-conn and sticky the primary accepts every
connection itself and passes it on the channel (HERD_IPC_FD, see
docs/protocol.md): a line {"type":"herd.conn","listener":NAME} with the
connection's fd attached (SCM_RIGHTS; fds arrive no later than their lines,
several may come at once). For each one the worker answers herd.took (until
then the primary keeps its copy and gives the connection to another worker
if this one dies), and herd.closed once it is done with it (least-conn counts
these). HERD_HANDOFF names the listeners handed over this way.

herd.shutdown (or SIGTERM/SIGINT) drains it as hello.py does: connections
still handed over are left to the primary (herd.declined instead of
herd.took: the primary gives them to another worker at once), further requests
get "Connection: close", idle ones time out, and it exits 0. It exits when
the channel closes (the primary is gone).
"""

import collections
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = f"hello from worker {os.environ.get('HERD_WORKER_ID', '')} pid {os.getpid()}\n".encode()
stopping = threading.Event()  # herd.shutdown, SIGTERM/SIGINT or the end of the channel
send_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 2  # idle keep-alive connections close after this (and so bound a drain)

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        if stopping.is_set():
            self.send_header("Connection", "close")  # the client reconnects elsewhere
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close (and exit) wait for the connection threads

    def shutdown_request(self, request):  # in the connection's thread, once it is done
        super().shutdown_request(request)
        send({"type": "herd.closed"})


def send(msg):
    with send_lock:
        try:
            channel.sendall(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        except OSError:
            pass  # the primary is gone: the reader sees the end of the channel


def read_channel(server):
    fds, buf = collections.deque(), b""
    while True:
        try:  # fds close-on-exec; 253 is the kernel's limit per message
            data, new, _, _ = socket.recv_fds(channel, 65536, 253, socket.MSG_CMSG_CLOEXEC)
        except OSError:
            data, new = b"", []
        fds.extend(new)  # they come no later than their herd.conn lines
        if not data:
            break  # end of the channel: the primary is gone
        *lines, buf = (buf + data).split(b"\n")
        conns, declined = [], 0
        for line in lines:
            kind = json.loads(line).get("type")
            if kind == "herd.shutdown":
                stopping.set()
            elif kind == "herd.conn" and stopping.is_set():
                os.close(fds.popleft())  # not taken: herd gives it to another worker
                declined += 1
            elif kind == "herd.conn":
                conn = socket.socket(fileno=fds.popleft())  # family and type detected
                if conn.family != socket.AF_UNIX:  # headers and body are two writes
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conns.append(conn)
        if conns:  # now herd closes its copies
            send({"type": "herd.took", "data": len(conns)})
        if declined:  # taken ones first: both count the oldest handed over
            send({"type": "herd.declined", "data": declined})
        for conn in conns:
            try:
                addr = conn.getpeername()
            except OSError:  # the client has gone already
                addr = ("", 0)
            server.process_request(conn, addr)  # a thread serves it, then herd.closed
    stopping.set()


def main():
    global channel
    fd = int(os.environ.pop("HERD_IPC_FD"))  # our children must not take the channel
    os.set_inheritable(fd, False)
    channel = socket.socket(fileno=fd)
    channel.setblocking(True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    send({"type": "herd.hello", "v": 1})
    server = Server(("", 0), Handler, bind_and_activate=False)  # never binds nor accepts
    threading.Thread(target=read_channel, args=(server,), daemon=True).start()
    send({"type": "herd.ready"})
    # Poll rather than stopping.wait(): a signal the kernel delivers to another
    # thread runs its handler only once the main thread runs Python code.
    while not stopping.is_set():
        time.sleep(0.2)
    server.server_close()  # waits for the connection threads to finish
    return 0


if __name__ == "__main__":
    sys.exit(main())
