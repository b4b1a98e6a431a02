"""An echo server and a streaming client on Python's asyncio (epoll, non-blocking
sockets), standing in for the asyncio programs people run under tether-run.

  asyncio_echo.py server PORT
      Echoes every connection until its EOF, then closes it.
  asyncio_echo.py client PORT IN OUT RATE
      Sends the file IN at RATE bytes/s (0: as fast as it can), half-closes,
      and writes what comes back to OUT (flushed as it arrives, so that its
      size shows progress) until the server's EOF.  Exit 0 when the echo
      ended with EOF; any error is printed and exits 1.
"""
import asyncio
import sys
import time

CHUNK = 64 * 1024


async def echo(reader, writer):
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def serve(port):
    server = await asyncio.start_server(echo, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def send(writer, path, rate):
    start = time.monotonic()
    sent = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
            sent += len(data)
            if rate:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    writer.write_eof()


async def receive(reader, path):
    with open(path, "wb") as f:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                return
            f.write(data)
            f.flush()


async def client(port, src, dst, rate):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.gather(send(writer, src, rate), receive(reader, dst))
    writer.close()
    await writer.wait_closed()


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "server":
        asyncio.run(serve(int(sys.argv[2])))
    elif len(sys.argv) == 6 and sys.argv[1] == "client":
        asyncio.run(client(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a clear line for the test's log, and exit 1
        print(f"asyncio_echo: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
