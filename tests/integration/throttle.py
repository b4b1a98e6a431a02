#!/usr/bin/env python3
"""throttle.py BYTES_PER_S [CHUNK]: copy stdin to stdout at about that rate.

Used by the integration tests as a slow source (stdin of a client) or a slow
sink (after a client's stdout, so that backpressure keeps every buffer on the
path full).  Exits 0 at EOF, 1 quietly when the reader goes away.
"""
import os
import sys
import time


def main():
    rate = float(sys.argv[1])
    chunk = int(sys.argv[2]) if len(sys.argv) > 2 else 16384
    t0 = time.monotonic()
    total = 0
    while True:
        buf = os.read(0, chunk)
        if not buf:
            return 0
        view = memoryview(buf)
        while view:
            view = view[os.write(1, view):]
        total += len(buf)
        ahead = total / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BrokenPipeError, ConnectionResetError, KeyboardInterrupt):
        sys.exit(1)
