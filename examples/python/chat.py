#!/usr/bin/env python3
"""A herd worker that talks on its channel (docs/protocol.md), stdlib only;
examples/node/chat.js is the same worker in Node.

    herd run -w 2 -- python3 examples/python/chat.py

It greets the other workers with herd.broadcast, prints what they say and
reports it to the primary as {"type":"got"}, answers {"type":"ping"} with
{"type":"pong"} and the same data, and exits 0 on herd.shutdown or when
the primary is gone (the channel ends).
"""
import json
import os
import socket
import sys

if "HERD_IPC_FD" not in os.environ:
    sys.exit("chat.py: HERD_IPC_FD is not set: run me under herd")
fd = int(os.environ.pop("HERD_IPC_FD"))  # programs we start must not take the channel...
os.set_inheritable(fd, False)  # ...nor inherit it
chan = socket.socket(fileno=fd)
me = int(os.environ["HERD_WORKER_ID"])


def dumps(value):  # compact, as Node's JSON.stringify writes it
    return json.dumps(value, separators=(",", ":"))


def send(msg):  # one JSON object per line; blocks while the socket is full (backpressure)
    chan.sendall(dumps(msg).encode() + b"\n")


send({"type": "herd.hello", "v": 1})  # "I speak the protocol": stop me with herd.shutdown
send({"type": "herd.ready"})
send({"type": "herd.broadcast", "data": {"hello": me}})
try:
    for line in chan.makefile("rb"):  # a line at a time, until the primary closes the channel
        try:
            msg = json.loads(line)
        except ValueError:
            continue  # not JSON: the primary never sends that, but do not die of it
        kind, data = msg.get("type"), msg.get("data")
        if kind == "herd.message":  # relayed from worker msg["from"]
            print(f"worker {me} got {dumps(data)} from worker {msg['from']}", flush=True)
            send({"type": "got", "data": {"from": msg["from"], "data": data}})
        elif kind == "ping":
            send({"type": "pong", "data": data})
        elif kind == "herd.shutdown":
            break  # nothing in flight: sendall has handed every message to the kernel
except ConnectionError:
    pass  # a reset: the primary is gone
