#!/usr/bin/env python3
"""A herd map line worker (Python 3 stdlib only): each task is a line on
stdin holding a number n; the answer is a line with 2n, in order.

    seq 1000000 | herd map -w 2 -- python3 examples/python/double.py

Workers are persistent: this process answers many tasks. It reads
whatever input is there, answers all of it, and writes the answers at
once: a trickle of tasks is answered as it comes, a flood in batches.
"""

import os
import sys


def answer(line):
    try:
        return b"%d\n" % (2 * int(line))
    except ValueError:
        return b'{"error":"not a number"}\n'


def main():
    out = sys.stdout.buffer
    rest = b""
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        out.write(b"".join(answer(line) for line in lines))
        out.flush()
    if rest:
        out.write(answer(rest))
    out.flush()


if __name__ == "__main__":
    main()
