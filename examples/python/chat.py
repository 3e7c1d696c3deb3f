#!/usr/bin/env python3
"""A herd worker that talks on the primary/worker channel (docs/protocol.md),
Python 3 stdlib only. examples/node/chat.js behaves identically.

    herd run -w 2 -- python3 examples/python/chat.py

It answers the primary's herd.hello, says herd.ready and broadcasts
{"hello":ID}; prints "got from=F data=JSON" for every message relayed from
another worker and reports it to the primary as {"type":"got"}; answers
{"type":"ping","data":X} with {"type":"pong","data":X}; on herd.shutdown
prints "shutdown" and exits 0; when the channel closes it exits 0.
"""

import json
import os
import socket
import sys


def compact(value, sort_keys=False):
    # Like JSON.stringify: raw UTF-8, keys in order (sorted for printing).
    return json.dumps(value, separators=(",", ":"), sort_keys=sort_keys, ensure_ascii=False)


def reject_constant(name):  # NaN and Infinity are not JSON (JSON.parse refuses them too)
    raise ValueError(name)


def js_number(text):  # JSON.parse makes every number a double: print 1.0 as 1, as Node does
    f = float(text)
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


def main():
    fd = os.environ.get("HERD_IPC_FD")
    if fd is None:
        print("chat: HERD_IPC_FD is not set: run me under herd", file=sys.stderr)
        return 2
    try:
        if not (fd.isascii() and fd.isdigit()):
            raise ValueError(fd)
        os.set_inheritable(int(fd), False)  # programs we start must not hold the channel
        sock = socket.socket(fileno=int(fd))  # family and type are detected
    except (ValueError, OSError):
        print(f"chat: HERD_IPC_FD={fd} is not a file descriptor", file=sys.stderr)
        return 2
    sock.setblocking(True)
    del os.environ["HERD_IPC_FD"]  # our children must not take the channel for theirs
    # Print what Node prints: UTF-8, a lone surrogate as \udXXX.
    sys.stdout.reconfigure(encoding="utf-8", errors="backslashreplace")

    def send(msg):  # blocks while the socket buffer is full: that is the backpressure
        # backslashreplace writes a lone surrogate as the JSON escape \udXXX, as Node does.
        sock.sendall(compact(msg).encode("utf-8", "backslashreplace") + b"\n")

    try:
        for line in sock.makefile("rb"):  # a line may arrive in pieces, or many in one read
            if not line.endswith(b"\n"):
                break  # a last line without '\n' is incomplete: dropped
            try:
                msg = json.loads(line.decode("utf-8"), parse_constant=reject_constant,
                                 parse_float=js_number)
            except ValueError:  # invalid UTF-8 or JSON
                msg = None
            if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                print("chat: ignored a line that is not a JSON object with a string type "
                      f"({len(line) - 1} bytes)", file=sys.stderr, flush=True)
                continue
            kind, data = msg["type"], msg.get("data")
            if kind == "herd.hello":
                wid = msg.get("id")
                if wid is None:
                    wid = int(os.environ.get("HERD_WORKER_ID") or 0)
                send({"type": "herd.hello", "v": 1})
                send({"type": "herd.ready"})
                send({"type": "herd.broadcast", "data": {"hello": wid}})
            elif kind == "herd.message":
                print(f"got from={compact(msg.get('from'))} data={compact(data, True)}", flush=True)
                send({"type": "got", "data": {"from": msg.get("from"), "data": data}})
            elif kind == "ping":
                send({"type": "pong", "data": data})
            elif kind == "herd.shutdown":
                print("shutdown", flush=True)  # sendall has already handed over every message
                return 0
            # other user types and unknown herd.* types are ignored
    except (ConnectionResetError, BrokenPipeError):
        pass
    print("primary gone", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
