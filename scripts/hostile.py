#!/usr/bin/env python3
"""Hostile clients for fanout's flood, isolation and soak scripts (loopback only, bounded).

    hostile.py never-read  ADDR CHANNEL N SECONDS   N subscribers that never read, held SECONDS
    hostile.py channels    ADDR N                   publish once to each of N distinct channels
    hostile.py names       ADDR N                   N NAME claims, each on a connection then closed
    hostile.py slowloris   ADDR N SECONDS           N HTTP heads sent one byte a second
    hostile.py connections ADDR N SECONDS           N idle connections (or as many as the OS allows)
    hostile.py ws-fragments ADDR N                  N WebSockets each sending endless fragments
    hostile.py sse-wide    ADDR N                   N SSE streams naming as many channels as a head holds

With access control (scripts/strangers.sh; PID is the server's, for its RSS and CPU; tokens are
minted with PyJWT, an independent JWT library, so these need python3-jwt):
    hostile.py bystander   ADDR SECRET KEY CHANNEL RATE SECONDS OUT
                             a subscriber with a token hearing RATE msgs/s the backend (API key)
                             publishes; writes "arrival seq latency_ms" lines to OUT
    hostile.py stranger    ADDR KIND N SECONDS PID  N connections without a token streaming an
                             endless request (KIND: text binary ws ws-fragments http resp-bulk
                             resp-args resp-query resp-inline resp-count)
    hostile.py ping-flood  ADDR KIND N SECONDS PID  N strangers sending PINGs, never reading
                             (KIND: text binary resp ws http)
    hostile.py query-limit ADDR SECRET N SECONDS PID  N RESP clients, after AUTH, streaming an
                             endless command (--max-query-bytes)
    hostile.py many-args   ADDR SECRET COUNT PID LIMIT  after AUTH, *COUNT then COUNT one-byte
                             arguments in 70-byte writes (LIMIT: the server's --max-query-bytes)
    hostile.py broadcast   ADDR SECRET KEY WHO      who hears a `*` broadcast, per protocol (WHO:
                             strangers, anonymous-comments, anonymous-star, authenticated)
    hostile.py tokens      ADDR SECRET              AUTH with hostile tokens, one connection each
    hostile.py expiry      ADDR SECRET TTL GRACE    a token expiring TTL s from now, per protocol
    hostile.py pubsub      ADDR SECRET KEY          what PUBSUB CHANNELS/NUMSUB/NUMPAT reveal
SECRET and KEY are files (the HMAC secret, the API key); with FANOUT_AUDIENCE/FANOUT_ISSUER set,
tokens carry that aud/iss.

Each prints one line (per attack): what it did and how the server answered (closes, errors); the
access-control modes end each line with "=> ok" or "=> BROKEN: why".
"""
import json
import os
import random
import selectors
import socket
import struct
import sys
import threading
import time


def addr_of(text):
    host, port = text.rsplit(":", 1)
    host = host.strip("[]")
    if not (host.startswith("127.") or host in ("::1", "localhost")):
        sys.exit(f"{host}: only loopback addresses may be flooded")
    return host, int(port)


def connect(addr, timeout=10.0):
    sock = socket.create_connection(addr, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_line(sock):
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def never_read(addr, channel, n, seconds):
    socks = []
    for _ in range(n):
        sock = connect(addr)
        # A small receive buffer: the server's queue, not the kernel's, has to hold what it sends.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"SUB %s\n" % channel.encode())
        socks.append(sock)
    time.sleep(seconds)
    closed = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            if sock.recv(1 << 20, socket.MSG_PEEK) == b"":
                closed += 1
        except (BlockingIOError, ConnectionError):
            pass
        sock.close()
    print(f"never-read: {n} subscribers of {channel} held {seconds}s")


def channels(addr, n):
    sock = connect(addr, timeout=120)
    batch = []
    for i in range(n):
        batch.append(b"PUB flood.%d x\n" % i)
        if len(batch) == 1000:
            sock.sendall(b"".join(batch))
            batch = []
    batch.append(b"PING\n")
    sock.sendall(b"".join(batch))
    answer = b""
    while b"PONG" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    errors = answer.count(b"ERR ")
    print(f"channels: published to {n} distinct channels, {errors} refused")


def names(addr, n):
    ok = refused = 0
    for i in range(n):
        sock = connect(addr)
        sock.sendall(b"NAME churn%d\n" % i)
        line = read_line(sock)
        if line.startswith(b"OK"):
            ok += 1
        else:
            refused += 1
        sock.close()
    print(f"names: {n} claims on fresh connections, {ok} granted, {refused} refused")


def slowloris(addr, n, seconds):
    socks = [connect(addr) for _ in range(n)]
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10000
    start = time.time()
    cut = {}
    i = 0
    while time.time() - start < seconds and len(cut) < n:
        for j, sock in enumerate(socks):
            if j in cut:
                continue
            try:
                sock.sendall(head[i : i + 1])
                sock.setblocking(False)
                try:
                    data = sock.recv(4096)
                    if data == b"" or data.startswith(b"HTTP/1.1 408"):
                        cut[j] = time.time() - start
                except BlockingIOError:
                    pass
                sock.setblocking(True)
            except OSError:
                cut[j] = time.time() - start
        i += 1
        time.sleep(1.0)
    for sock in socks:
        sock.close()
    when = f", after {min(cut.values()):.0f}-{max(cut.values()):.0f}s" if cut else ""
    print(f"slowloris: {n} heads at one byte a second, {len(cut)} cut off by the server{when}")


def connections(addr, n, seconds):
    socks = []
    refused = 0
    for _ in range(n):
        try:
            socks.append(connect(addr, timeout=2))
        except OSError:
            refused += 1
            if refused > 100:
                break
    time.sleep(seconds)
    for sock in socks:
        sock.close()
    print(f"connections: {len(socks)} opened and held {seconds}s, {refused} failed")


def ws_handshake(addr, path):
    sock = connect(addr)
    sock.sendall(
        b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    return sock


def ws_frame(fin, op, payload):
    mask = os.urandom(4)
    first = (0x80 if fin else 0) | op
    n = len(payload)
    header = bytes([first, 0x80 | 126]) + struct.pack(">H", n) if n >= 126 else bytes([first, 0x80 | n])
    # XOR with the mask repeated, as one big integer (a byte loop in Python is far too slow).
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return header + mask + masked


def ws_fragments(addr, n):
    socks = [ws_handshake(addr, b"/ws") for _ in range(n)]
    first = ws_frame(False, 1, b"x" * 60000)
    more = ws_frame(False, 0, b"x" * 60000)
    closed = 0
    for sock in socks:
        try:
            sock.sendall(first)
            for _ in range(40):  # 2.4 MB per connection unless the server stops it
                sock.sendall(more)
        except OSError:
            closed += 1
            continue
        sock.settimeout(5)
        try:
            data = sock.recv(4096)
            if data == b"" or data[:1] == b"\x88":
                closed += 1
        except OSError:
            closed += 1
    for sock in socks:
        sock.close()
    print(f"ws-fragments: {n} WebSockets sending endless fragments, {closed} closed by the server")


def sse_wide(addr, n):
    query = ""
    i = 0
    while len(query) < 7900:
        query += f"&channel=wide.{i}"
        i += 1
    socks = []
    for _ in range(n):
        sock = connect(addr)
        sock.sendall(b"GET /sse?" + query[1:].encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(sock)
    time.sleep(2)
    ok = 0
    for sock in socks:
        sock.settimeout(5)
        if sock.recv(4096).startswith(b"HTTP/1.1 "):
            ok += 1
        sock.close()
    print(f"sse-wide: {n} streams of {i} channels each (an 8 KiB head), {ok} answered")


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        sys.exit(2)
    kind, addr, args = sys.argv[1], addr_of(sys.argv[2]), sys.argv[3:]
    if kind == "never-read":
        never_read(addr, args[0], int(args[1]), float(args[2]))
    elif kind == "channels":
        channels(addr, int(args[0]))
    elif kind == "names":
        names(addr, int(args[0]))
    elif kind == "slowloris":
        slowloris(addr, int(args[0]), float(args[1]))
    elif kind == "connections":
        connections(addr, int(args[0]), float(args[1]))
    elif kind == "ws-fragments":
        ws_fragments(addr, int(args[0]))
    elif kind == "sse-wide":
        sse_wide(addr, int(args[0]))
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
