#!/usr/bin/env python3
"""flip_proxy.py LISTEN_PORT TARGET_PORT OFFSET: a TCP relay on 127.0.0.1
that corrupts one byte.

Relays every connection on LISTEN_PORT to TARGET_PORT, both directions
unchanged, except that in the first connection the byte at OFFSET of the
client's stream (counted from the first byte the client sends, tether's
handshake included) is XORed with 0x01 -- damage that only an end-to-end
check catches.  UDP is not relayed: the tether session runs without its
side channel (and may redial, hence every connection is relayed).  Runs
until killed.
"""
import socket
import sys
import threading


def pump(src, dst, flip_at):
    seen = 0
    try:
        while True:
            buf = src.recv(65536)
            if not buf:
                break
            if flip_at is not None and seen <= flip_at < seen + len(buf):
                buf = bytearray(buf)
                buf[flip_at - seen] ^= 0x01
            seen += len(buf)
            dst.sendall(buf)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def main():
    listen_port, target_port, offset = map(int, sys.argv[1:4])
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", listen_port))
    srv.listen(8)
    flip_at = offset
    while True:
        client, _ = srv.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", target_port))
        except OSError:
            client.close()
            continue
        for args in ((client, upstream, flip_at), (upstream, client, None)):
            threading.Thread(target=pump, args=args, daemon=True).start()
        flip_at = None


if __name__ == "__main__":
    sys.exit(main())
