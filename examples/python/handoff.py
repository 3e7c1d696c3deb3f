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
still handed over are left to the primary (no herd.took), further requests
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = f"hello from worker {os.environ.get('HERD_WORKER_ID', '')} pid {os.getpid()}\n".encode()
draining = threading.Event()  # set on herd.shutdown, SIGTERM or end of the channel
send_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 2  # idle keep-alive connections close after this (and so bound a drain)

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        if draining.is_set():
            self.send_header("Connection", "close")  # the client reconnects elsewhere
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close (and exit) wait for the connection threads

    def shutdown_request(self, request):  # in the connection's thread, when it is done
        super().shutdown_request(request)
        send({"type": "herd.closed"})


def send(msg):
    with send_lock:
        try:
            channel.sendall(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        except OSError:
            pass  # the primary is gone: the reader sees the end of the channel


def read_channel(server, stop):
    fds, buf = collections.deque(), b""
    while True:
        try:  # up to 253 fds (the kernel's limit per message), close-on-exec
            data, new, flags, _ = socket.recv_fds(channel, 65536, 253, socket.MSG_CMSG_CLOEXEC)
        except OSError:
            data, new, flags = b"", [], 0
        if flags & socket.MSG_CTRUNC:
            print("handoff.py: descriptors were lost (MSG_CTRUNC)", file=sys.stderr)
        fds.extend(new)
        if not data:
            break  # end of the channel: the primary is gone
        *lines, buf = (buf + data).split(b"\n")
        took = 0
        for line in lines:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            if msg.get("type") == "herd.shutdown":
                stop.set()
            elif msg.get("type") == "herd.conn" and fds:
                fd = fds.popleft()
                if draining.is_set() or stop.is_set():
                    os.close(fd)  # not taken: the primary gives it to another worker
                    continue
                conn = socket.socket(fileno=fd)
                if conn.family != socket.AF_UNIX:  # headers and body are two writes
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                took += 1
                try:
                    addr = conn.getpeername()
                except OSError:
                    addr = ("", 0)
                server.process_request(conn, addr)  # a thread serves it
        if took:
            send({"type": "herd.took", "data": took})
    stop.set()


def main():
    global channel
    fd = int(os.environ.pop("HERD_IPC_FD"))  # our children must not take the channel
    os.set_inheritable(fd, False)
    channel = socket.socket(fileno=fd)
    channel.setblocking(True)
    server = Server(("", 0), Handler, bind_and_activate=False)  # never binds, never accepts
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    send({"type": "herd.hello", "v": 1})
    threading.Thread(target=read_channel, args=(server, stop), daemon=True).start()
    send({"type": "herd.ready"})
    stop.wait()  # in the main thread, so that the signal handlers run
    draining.set()
    server.server_close()  # waits for the connection threads to finish
    return 0


if __name__ == "__main__":
    sys.exit(main())
