#!/usr/bin/env python3
"""garbage.py HOST PORT: throws malformed input at a tether server.

TCP (one connection per case): random bytes, a truncated preface, a wrong
version, oversized / zero / truncated frames, undecodable protobuf, a
ClientHello with a bad key, a ResumeHello for an unknown session (whole and
byte by byte), a burst of connections.  UDP (to the same port number): random
datagrams of many sizes, "TTD1" datagrams with random ids, bodies and MACs.

Checks what the wire protocol promises (tether(7), design notes):
  - every malformed connection is closed by the server (within CLOSE_S);
  - an unsupported version gets Reject VERSION;
  - a ResumeHello for an unknown session gets Reject UNKNOWN_SESSION.
Prints one line per case; exits 1 listing the cases that broke a promise.
"""
import os
import socket
import struct
import sys
import time

PREFACE = b"TTHR\x01"
CLOSE_S = 3.0
REJECT_CODES = {0: "UNSPECIFIED", 1: "VERSION", 2: "MALFORMED",
                3: "UNKNOWN_SESSION", 4: "AUTH", 5: "BUSY"}

host, port = sys.argv[1], int(sys.argv[2])
problems = []


# ---- minimal protobuf encoding/decoding ----------------------------------

def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field_bytes(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def frame(body):
    return struct.pack(">I", len(body)) + body


def read_varint(buf, i):
    n = shift = 0
    while i < len(buf):
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i
    raise ValueError("truncated varint")


def fields(buf):
    """Yields (number, wire_type, value) of a protobuf message."""
    i = 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, i = read_varint(buf, i)
        elif wt == 2:
            n, i = read_varint(buf, i)
            val, i = buf[i:i + n], i + n
        elif wt == 1:
            val, i = buf[i:i + 8], i + 8
        elif wt == 5:
            val, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("wire type %d" % wt)
        yield num, wt, val


def rejects(data):
    """Reject codes found in a server's reply (preface + frames)."""
    codes = []
    if data.startswith(b"TTHR"):
        data = data[5:]
    while len(data) >= 4:
        n = struct.unpack(">I", data[:4])[0]
        body, data = data[4:4 + n], data[4 + n:]
        if len(body) < n:
            break
        try:
            for num, wt, val in fields(body):
                if num == 7 and wt == 2:  # Handshake.reject
                    code = 0
                    for rnum, rwt, rval in fields(val):
                        if rnum == 1 and rwt == 0:
                            code = rval
                    codes.append(REJECT_CODES.get(code, str(code)))
        except (ValueError, IndexError):
            codes.append("UNDECODABLE")
    return codes


def resume_hello(session_id, nonce=None):
    rh = field_bytes(1, session_id) + field_bytes(2, nonce or os.urandom(16))
    return frame(field_bytes(4, rh))


# ---- TCP cases -----------------------------------------------------------

def tcp_case(name, chunks, expect_close=True, expect_reject=None,
             shut_wr=False, hold_s=0.0, pause_s=0.0):
    t0 = time.monotonic()
    s = socket.create_connection((host, port), timeout=CLOSE_S)
    sent_err = None
    try:
        for c in chunks:
            s.sendall(c)
            if pause_s:
                time.sleep(pause_s)
        if shut_wr:
            s.shutdown(socket.SHUT_WR)
    except OSError as e:  # the server may close before we are done: fine
        sent_err = e.strerror
    data, closed = b"", False
    deadline = time.monotonic() + (hold_s or CLOSE_S)
    try:
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            b = s.recv(65536)
            if not b:
                closed = True
                break
            data += b
    except socket.timeout:
        pass
    except OSError:  # reset
        closed = True
    s.close()
    codes = rejects(data)
    print("tcp %-24s %s after %.2f s; reply %d bytes %s%s%s" % (
        name, "closed" if closed else "open", time.monotonic() - t0,
        len(data), data[:24].hex(), " reject=" + ",".join(codes) if codes else "",
        " (send: %s)" % sent_err if sent_err else ""))
    if expect_close and not closed:
        problems.append("%s: the server kept the connection open %.0f s" % (name, CLOSE_S))
    if expect_reject and expect_reject not in codes:
        problems.append("%s: expected Reject %s, got %s" % (
            name, expect_reject, codes or "no Reject"))


def tcp_cases():
    tcp_case("random-bytes", [os.urandom(4096)])
    tcp_case("random-short", [os.urandom(3)], shut_wr=True)
    tcp_case("truncated-preface", [b"TTHR"], expect_close=False, hold_s=0.5)
    tcp_case("truncated-preface-eof", [b"TTHR"], shut_wr=True)
    tcp_case("wrong-version", [b"TTHR\x09"], expect_reject="VERSION")
    tcp_case("version-0", [b"TTHR\x00" + frame(b"\x00")], expect_reject="VERSION")
    tcp_case("oversized-frame", [PREFACE + b"\xff\xff\xff\xff" + os.urandom(64)])
    tcp_case("frame-4097", [PREFACE + struct.pack(">I", 4097) + os.urandom(64)])
    tcp_case("zero-length-frame", [PREFACE + b"\x00\x00\x00\x00"])
    tcp_case("truncated-frame", [PREFACE + struct.pack(">I", 100) + os.urandom(10)],
             shut_wr=True)
    tcp_case("garbage-protobuf", [PREFACE + frame(b"\xff" * 64)])
    tcp_case("random-protobuf", [PREFACE + frame(os.urandom(200))])
    tcp_case("empty-handshake", [PREFACE + frame(b"\x08\x00")])
    # ClientHello with a 5-byte key and a short nonce.
    tcp_case("client-hello-bad-key",
             [PREFACE + frame(field_bytes(1, field_bytes(1, b"short") +
                                          field_bytes(2, b"n")))])
    # ClientFinish as the first message.
    tcp_case("finish-first",
             [PREFACE + frame(field_bytes(3, field_bytes(1, os.urandom(32))))])
    # A server's message sent to the server.
    tcp_case("server-hello-to-server",
             [PREFACE + frame(field_bytes(2, field_bytes(3, os.urandom(16))))])
    tcp_case("resume-unknown-session", [PREFACE + resume_hello(os.urandom(16))],
             expect_reject="UNKNOWN_SESSION")
    msg = PREFACE + resume_hello(os.urandom(16))
    tcp_case("resume-byte-by-byte", [msg[i:i + 1] for i in range(len(msg))],
             expect_reject="UNKNOWN_SESSION", pause_s=0.005)
    tcp_case("resume-short-id", [PREFACE + resume_hello(b"abc")])
    tcp_case("resume-finish-unasked",
             [PREFACE + frame(field_bytes(6, field_bytes(2, os.urandom(32))))])
    # A burst of connections that send a little and vanish (some reset).
    socks = []
    for i in range(64):
        try:
            s = socket.create_connection((host, port), timeout=2)
            s.sendall(os.urandom(i % 7))
            socks.append(s)
        except OSError as e:
            problems.append("burst: connect %d failed: %s" % (i, e))
            break
    for i, s in enumerate(socks):
        if i % 2:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    print("tcp %-24s %d connections opened and dropped" % ("burst", len(socks)))


# ---- UDP cases -----------------------------------------------------------

def udp_cases():
    u = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                      socket.SOCK_DGRAM)
    n = 0
    for size in (0, 1, 3, 4, 20, 52, 53, 100, 1199, 1200, 1201, 1500, 9000, 65000):
        u.sendto(os.urandom(size), (host, port))
        n += 1
    for i in range(150):
        body = os.urandom(i % 90)
        u.sendto(b"TTD1" + os.urandom(16) + body + os.urandom(32), (host, port))
        n += 1
    # Well-formed Control protobuf, random session id and MAC.
    ctl = varint(1 << 3) + varint(2 ** 63) + varint(2 << 3) + varint(2 ** 64 - 1)
    for i in range(50):
        u.sendto(b"TTD1" + os.urandom(16) + ctl + os.urandom(32), (host, port))
        n += 1
    u.sendto(b"TTD1", (host, port))
    u.sendto(b"TTD1" + b"\x00" * 16, (host, port))
    n += 2
    u.close()
    print("udp %d garbage datagrams sent" % n)


tcp_cases()
udp_cases()
if problems:
    for p in problems:
        print("PROBLEM: " + p)
    sys.exit(1)
