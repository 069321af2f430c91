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
                             endless request (KIND: text binary ws ws-fragments http http-whole
                             resp-bulk resp-args resp-query resp-inline resp-count)
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


# ---- Access control: strangers, tokens, broadcasts (scripts/strangers.sh) ----

PREFACE = b"\0FANOUT\x01"
# What the server lets a connection without permissions send in one request by default:
# --max-token-bytes (8 KiB) plus 1 KiB.
STRANGER_BUDGET = 8 * 1024 + 1024
# A stranger counts as refused within its budget if the refusal came before it sent this much.
PROBE_BYTES = 16 * 1024
# Server memory one hostile connection may cost before it authenticated.
RSS_PER_STRANGER = 2 * 1024 * 1024
RESP_PING = b"*1\r\n$4\r\nPING\r\n"
DROP = object()  # a claim left out of a token


def secret_of(path):
    """A secret or key file's contents without trailing whitespace (as the server reads it)."""
    with open(path, "rb") as f:
        return f.read().rstrip()


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mb(b):
    return f"{b / 1e6:.1f}"


def mint(secret, sub, ttl=3600.0, subscribe=(), publish=(), algorithm="HS256", **claims):
    """An HS256 token made by PyJWT with a decimal exp (time.time() + ttl), the aud/iss of
    FANOUT_AUDIENCE/FANOUT_ISSUER, and `claims` over that (DROP leaves one out)."""
    import jwt

    body = {"sub": sub, "exp": time.time() + ttl, "subscribe": list(subscribe), "publish": list(publish)}
    for claim, env in (("aud", "FANOUT_AUDIENCE"), ("iss", "FANOUT_ISSUER")):
        if os.environ.get(env):
            body[claim] = os.environ[env]
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not DROP}
    token = jwt.encode(body, secret, algorithm=algorithm)
    return token.encode() if isinstance(token, str) else token


def resp_command(*args):
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        arg = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def binary_frame(opcode, body=b""):
    return struct.pack(">IB", len(body) + 1, opcode) + body


def ws_open(addr, path):
    """A WebSocket handshake; returns the socket and the response's status line."""
    sock = connect(addr)
    sock.sendall(
        b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head.split(b"\r\n", 1)[0].decode(errors="replace")


def ws_header(fin, op, n):
    """A masked client frame's header (payload length n, any size) with an all-zero mask, so
    that the payload goes as it is."""
    first = bytes([(0x80 if fin else 0) | op])
    if n < 126:
        return first + bytes([0x80 | n]) + b"\0\0\0\0"
    if n < 65536:
        return first + bytes([0x80 | 126]) + struct.pack(">H", n) + b"\0\0\0\0"
    return first + bytes([0x80 | 127]) + struct.pack(">Q", n) + b"\0\0\0\0"


def ws_server_frames(data):
    """The server's (unmasked) frames in data: (opcode, payload) pairs."""
    frames, at = [], 0
    while at + 2 <= len(data):
        op, n, at = data[at] & 0x0F, data[at + 1] & 0x7F, at + 2
        if n >= 126:
            size = 2 if n == 126 else 8
            if at + size > len(data):
                break
            n, at = int.from_bytes(data[at : at + size], "big"), at + size
        if at + n > len(data):
            break
        frames.append((op, bytes(data[at : at + n])))
        at += n
    return frames


def answer_lines(kind, data):
    """What the server said, one readable string per frame or line (repeats collapsed)."""
    data = bytes(data)
    lines = []
    if kind.startswith("binary"):
        at = 0
        while at + 5 <= len(data):
            n = int.from_bytes(data[at : at + 4], "big")
            op, body = data[at + 4], data[at + 5 : at + 4 + n]
            if op == 0x83 and len(body) >= 2:
                lines.append(f"ERR {int.from_bytes(body[:2], 'big')} {body[2:].decode(errors='replace')}")
            elif op == 0x05:
                lines.append("PONG")
            elif op == 0x82 and len(body) >= 2:
                acked = {0x01: "SUB", 0x02: "UNSUB", 0x06: "NAME", 0x08: "AUTH", 0x09: "PSUB"}.get(body[0], body[0])
                lines.append(f"OK {acked} {body[2 : 2 + body[1]].decode(errors='replace')}")
            else:
                lines.append(f"frame 0x{op:02x}")
            at += 4 + n
    elif kind.startswith("ws"):
        for op, payload in ws_server_frames(data):
            if op == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                lines.append(f"close {code} {payload[2:].decode(errors='replace')}".strip())
            elif op == 10:
                lines.append("pong frame")
            else:
                lines.append(payload.decode(errors="replace"))
    elif kind.startswith("http"):
        for response in data.split(b"HTTP/1.1 ")[1:]:
            status = response.split(b"\r\n", 1)[0].decode(errors="replace")
            body = response.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in response else b""
            lines.append(f"HTTP {status} {body[:200].decode(errors='replace')}".strip())
    else:
        lines = [line.decode(errors="replace").strip() for line in data.split(b"\n") if line.strip()]
    collapsed = []
    for line in lines:
        if collapsed and collapsed[-1][0] == line:
            collapsed[-1][1] += 1
        else:
            collapsed.append([line, 1])
    return [line if count == 1 else f"{line} (x{count})" for line, count in collapsed]


def read_until(sock, marker):
    """What the socket says up to and including `marker` (or its end)."""
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


class Stream:
    """One hostile connection: sends `opening`, then `filler` over and over (never a partial
    unit out of order), reading what the server answers; all without blocking."""

    def __init__(self, sock, opening, filler):
        sock.setblocking(False)
        self.sock = sock
        self.pending = memoryview(opening)
        self.filler = filler
        self.sent = 0
        self.got = bytearray()
        self.closed = False
        self.send_failed = False
        self.refused_by = None  # bytes sent when the expected refusal (or a close) was seen

    def pump(self, limit, expect=None):
        while not self.send_failed and self.sent < limit:
            if not self.pending:
                self.pending = memoryview(self.filler)
            try:
                n = self.sock.send(self.pending[: limit - self.sent])
            except BlockingIOError:
                break
            except OSError:
                self.send_failed = True
                break
            self.sent += n
            self.pending = self.pending[n:]
        while not self.closed:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:
                self.closed = True
                break
            if not chunk:
                self.closed = True
                break
            if len(self.got) < 65536:
                self.got += chunk[: 65536 - len(self.got)]
        if self.refused_by is None and (self.closed or (expect and expect in self.got)):
            self.refused_by = self.sent


def run_streams(streams, pid, seconds, max_bytes, expect=None, probe=True):
    """Phase 1 (probe): each stream sends PROBE_BYTES and gets a second to be refused. Phase 2:
    up to max_bytes each until closed or `seconds` pass. Returns the peak RSS seen."""
    peak = rss_bytes(pid)

    def turn(limit):
        nonlocal peak
        for stream in streams:
            if not stream.closed:
                stream.pump(limit, expect)
        peak = max(peak, rss_bytes(pid))

    if probe:
        deadline = time.time() + 2.0
        while time.time() < deadline and any(
            not s.closed and s.sent < PROBE_BYTES and not s.send_failed for s in streams
        ):
            turn(PROBE_BYTES)
            time.sleep(0.002)
        deadline = time.time() + 1.0
        while time.time() < deadline and any(s.refused_by is None for s in streams):
            turn(PROBE_BYTES)
            time.sleep(0.01)
    end = time.time() + seconds
    while time.time() < end and any(not s.closed for s in streams):
        turn(max_bytes)
        time.sleep(0.001)
    return max(peak, rss_bytes(pid))


def summary(kind, streams):
    """The most common answer (numbers of 4+ digits folded, so that per-connection byte counts
    group) and how many connections gave an answer of that shape."""
    shapes = {}
    for stream in streams:
        lines = answer_lines(kind, stream.got)
        text = " / ".join(lines[-2:]) if lines else "(nothing)"
        shape = "".join(c if not c.isdigit() else "9" for c in text)
        shapes.setdefault(shape, [text, 0])[1] += 1
    ordered = sorted(shapes.values(), key=lambda v: -v[1])
    shown = "; ".join(f"'{text[:160]}' x{count}" for text, count in ordered[:2])
    if len(ordered) > 2:
        shown += f"; {len(ordered) - 2} other answers"
    return shown


def verdict(problems, notes=()):
    note = f" (note: {'; '.join(notes)})" if notes else ""
    return ("=> ok" if not problems else "=> BROKEN: " + "; ".join(problems)) + note


def stranger_kind(addr, kind):
    """(socket, opening, filler, expected bytes in the answer, what is sent) for one stranger."""
    endless = b"A" * 4096
    if kind == "text":
        return connect(addr), b"AUTH ", endless, b"ERR 401", "'AUTH ' + an endless token, no newline"
    if kind == "binary":
        opening = PREFACE + struct.pack(">IB", 1_000_001, 0x08)
        return connect(addr), opening, endless, b"\x83\x01\x91", "preface + AUTH frame of 1,000,001 bytes (u32 length)"
    if kind == "ws":
        sock, _ = ws_open(addr, b"/ws")
        return sock, ws_header(True, 1, 1_000_000), endless, b"\x88", "GET /ws, then a 1,000,000-byte text message"
    if kind == "ws-fragments":
        sock, _ = ws_open(addr, b"/ws")
        first = ws_header(False, 1, 4000) + b"x" * 4000
        more = ws_header(False, 0, 4000) + b"x" * 4000
        return sock, first, more, b"\x88", "GET /ws, then endless 4,000-byte fragments of one message"
    if kind == "http":
        head = b"POST /publish?channel=news HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
        return connect(addr), head, endless, b"HTTP/1.1 4", "POST /publish, no token, a 1,000,000-byte body"
    if kind == "http-whole":
        # Each request in one write: head and body may arrive in the same read.
        request = b"POST /publish?channel=news HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n" + b"a" * 60000
        return connect(addr), b"", request, b"HTTP/1.1 4", "pipelined POST /publish, no token, 60,000-byte bodies each in one write"
    if kind == "resp-bulk":
        return connect(addr), b"*2\r\n$4\r\nAUTH\r\n$1000000\r\n", endless, b"-ERR", "'*2 $4 AUTH $1000000' + endless bytes"
    if kind == "resp-args":
        return connect(addr), b"*11\r\n", b"$1\r\na\r\n" * 500, b"-ERR", "'*11' + endless '$1 a' arguments"
    if kind == "resp-query":
        arg = b"$4000\r\n" + b"a" * 4000 + b"\r\n"
        return connect(addr), b"*10\r\n", arg, b"-ERR", "'*10' + endless 4,000-byte arguments"
    if kind == "resp-inline":
        return connect(addr), RESP_PING + b"PING ", endless, b"-ERR", "RESP PING, then an endless inline 'PING aaa...'"
    if kind == "resp-count":
        return connect(addr), b"*", b"1" * 4096, b"-ERR", "'*' + an endless count line of digits"
    sys.exit(f"unknown stranger kind {kind}")


def stranger(addr, kind, n, seconds, pid):
    before = rss_bytes(pid)
    streams, what, expect = [], "", b""
    for _ in range(n):
        sock, opening, filler, expect, what = stranger_kind(addr, kind)
        streams.append(Stream(sock, opening, filler))
    # 2 MiB each: past --max-frame-bytes (1 MiB), so that without a strangers' budget the
    # server's answer would be the frame limit's (413), not 401. Whole requests are not probed
    # (the probe would cut them in two reads).
    probe = kind != "http-whole"
    peak = run_streams(streams, pid, seconds, 2 * 1024 * 1024, expect, probe)
    for stream in streams:
        stream.sock.close()
    time.sleep(0.5)
    after = rss_bytes(pid)
    per = (peak - before) / n
    answered = sum(1 for s in streams if expect in s.got)
    closed = sum(1 for s in streams if s.closed)
    within = sum(1 for s in streams if s.refused_by is not None and s.refused_by <= PROBE_BYTES) if probe else n
    problems, notes = [], []
    if answered < n:
        problems.append(f"{n - answered}/{n} without an error answer")
    if closed < n and kind == "http-whole":
        # Read whole from the worker's shared read buffer, never held by the connection: the
        # plain 401 of a request without a token, keep-alive.
        notes.append(f"{n - closed}/{n} left open (not the budget's error and close)")
    elif closed < n:
        problems.append(f"{n - closed}/{n} left open")
    if within < n:
        problems.append(f"{n - within}/{n} still buffering after {PROBE_BYTES // 1024} KiB (budget {STRANGER_BUDGET} bytes)")
    if per >= RSS_PER_STRANGER:
        problems.append(f"+{per / 1048576:.1f} MiB RSS per connection")
    print(
        f"stranger {kind}: {n} x {what}: answered {summary(kind, streams)}; closed {closed}/{n}; "
        + (f"refused within {PROBE_BYTES // 1024} KiB {within}/{n}; " if probe else "")
        + f"sent up to {max(s.sent for s in streams) // 1024} KiB; "
        f"RSS {mb(before)} -> peak {mb(peak)} -> {mb(after)} MB ({per / 1024:+.0f} KiB/conn) {verdict(problems, notes)}"
    )


def ping_flood(addr, kind, n, seconds, pid):
    """Strangers that send PINGs as fast as they can and never read the PONGs."""
    units = {
        "text": (b"", b"PING\n", "text 'PING\\n'"),
        "binary": (PREFACE, binary_frame(0x04), "binary PING frames"),
        "resp": (b"", RESP_PING, "RESP PING"),
        "ws": (b"", ws_header(True, 9, 0), "WebSocket ping frames"),
        "http": (b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "pipelined GET /healthz"),
    }
    opening, unit, what = units[kind]
    before = rss_bytes(pid)
    streams = []
    for _ in range(n):
        sock = ws_open(addr, b"/ws")[0] if kind == "ws" else connect(addr)
        streams.append(Stream(sock, opening, unit * 2000))
    peak = before
    end = time.time() + seconds
    while time.time() < end:
        for stream in streams:
            if not stream.send_failed:
                # Sends only: the PONGs stay unread.
                limit = stream.sent + 4 * 1024 * 1024
                while not stream.send_failed and stream.sent < limit:
                    if not stream.pending:
                        stream.pending = memoryview(stream.filler)
                    try:
                        sent = stream.sock.send(stream.pending)
                    except BlockingIOError:
                        break
                    except OSError:
                        stream.send_failed = True
                        break
                    stream.sent += sent
                    stream.pending = stream.pending[sent:]
        peak = max(peak, rss_bytes(pid))
        time.sleep(0.005)
    held = rss_bytes(pid)
    # Now read: up to 4 MiB or 0.3 s each, to see how the server ended it.
    for stream in streams:
        stream.sock.setblocking(True)
        stream.sock.settimeout(0.3)
        tail = bytearray()
        got = 0
        try:
            while got < 4 * 1024 * 1024:
                chunk = stream.sock.recv(1 << 20)
                if not chunk:
                    stream.closed = True
                    break
                got += len(chunk)
                tail = (tail + chunk)[-600:]
        except OSError:
            pass
        stream.got = tail
        stream.sock.close()
    time.sleep(0.5)
    after = rss_bytes(pid)
    per = (peak - before) / n
    problems = []
    if per >= RSS_PER_STRANGER:
        problems.append(f"+{per / 1048576:.1f} MiB RSS per connection before AUTH")
    sent = sum(s.sent for s in streams) / n
    slow = [bytes(s.got) for s in streams if b"slow consumer" in s.got]
    said = ""
    if slow:
        at = slow[0].index(b"slow consumer")
        said = f" ('{slow[0][at:].split(bytes([34]))[0].rstrip(bytes(range(32))).decode(errors='replace')}')"
    print(
        f"ping-flood {kind}: {n} strangers x {what} for {seconds:g}s, never reading ({sent / 1e6:.0f} MB sent each): "
        f"closed as slow consumers {len(slow)}/{n}{said}; RSS {mb(before)} -> peak {mb(peak)} (held {mb(held)}) "
        f"-> {mb(after)} MB ({per / 1048576:+.1f} MiB/conn) {verdict(problems)}"
    )


def resp_authenticated(addr, token):
    """A RESP connection that sent AUTH with `token` and got +OK."""
    sock = connect(addr)
    sock.sendall(resp_command(b"AUTH", token))
    answer = read_line(sock)
    if not answer.startswith(b"+OK"):
        sys.exit(f"AUTH refused: {answer!r}")
    return sock


def query_limit(addr, secret_file, n, seconds, pid):
    token = mint(secret_of(secret_file), "querier", publish=["big.>"], subscribe=["big.>"])
    before = rss_bytes(pid)
    arg = b"$65536\r\n" + b"a" * 65536 + b"\r\n"
    streams = [Stream(resp_authenticated(addr, token), b"*100000\r\n", arg) for _ in range(n)]
    peak = run_streams(streams, pid, seconds, 8 * 1024 * 1024, b"-ERR", probe=False)
    for stream in streams:
        stream.sock.close()
    time.sleep(0.5)
    after = rss_bytes(pid)
    wanted = b"command larger than the query buffer limit"
    answered = sum(1 for s in streams if wanted in s.got)
    closed = sum(1 for s in streams if s.closed)
    problems = []
    if answered < n:
        problems.append(f"{n - answered}/{n} without the query-buffer error")
    if closed < n:
        problems.append(f"{n - closed}/{n} left open")
    print(
        f"query-limit: {n} RESP clients after AUTH x '*100000' + endless 64 KiB arguments: answered "
        f"{summary('resp', streams)}; closed {closed}/{n}; sent up to {max(s.sent for s in streams) // 1024} KiB; "
        f"RSS {mb(before)} -> peak {mb(peak)} -> {mb(after)} MB ({(peak - before) / n / 1024:+.0f} KiB/conn) {verdict(problems)}"
    )


def many_args(addr, secret_file, count, pid, limit):
    """After AUTH: *COUNT, then COUNT one-byte arguments, ten to a write."""
    token = mint(secret_of(secret_file), "arguer", publish=["big.>"])
    sock = resp_authenticated(addr, token)
    cpu_before = cpu_seconds(pid)
    start = time.time()
    sock.sendall(b"*%d\r\n" % count)
    piece = b"$1\r\na\r\n" * 10
    sent = 0
    cut = None
    try:
        while sent < count:
            k = min(10, count - sent)
            sock.sendall(piece if k == 10 else b"$1\r\na\r\n" * k)
            sent += k
    except OSError as e:
        cut = type(e).__name__
    last_byte = time.time()
    sock.settimeout(10)
    answer = b""
    try:
        while not answer.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    except OSError:
        pass
    answered = time.time()
    closed = False
    sock.settimeout(0.5)
    try:
        closed = sock.recv(4096) == b""
    except OSError:
        pass
    sock.close()
    cpu = cpu_seconds(pid) - cpu_before
    # The smallest encoding of an argument is 6 bytes ($0 and two CRLFs): a count whose
    # arguments cannot fit --max-query-bytes is refused from the count line.
    refused = 5 + count * 6 > limit
    text = answer.decode(errors="replace").strip()[:110]
    problems = []
    if not answer:
        problems.append("no answer")
    if answered - last_byte > 1.0:
        problems.append(f"answered {answered - last_byte:.1f}s after the last byte")
    if cpu > 2.0:
        problems.append(f"{cpu:.1f}s of server CPU")
    if refused and b"query buffer limit" not in answer:
        problems.append("not refused by the query limit")
    if refused and not closed:
        problems.append("left open")
    how = f"refused after {sent:,} arguments ({cut})" if cut else f"all {sent:,} sent in {last_byte - start:.1f}s"
    print(
        f"many-args: after AUTH '*{count}' + '$1 a' x {count:,} in 70-byte writes ({how}): answered '{text}' "
        f"{(answered - last_byte) * 1000:.0f} ms after the last byte, {'closed' if closed else 'open'}; "
        f"server CPU {cpu:.2f}s {verdict(problems)}"
    )


def bystander(addr, secret_file, key_file, channel, rate, seconds, out_path):
    """A subscriber with a token on `channel`, and the backend (API key) publishing RATE
    messages a second there; every arrival goes to OUT as "arrival_time seq latency_ms"."""
    channel = channel.encode()
    token = mint(secret_of(secret_file), "bystander", subscribe=[channel.decode()])
    sub = connect(addr)
    sub.sendall(b"AUTH %s\nSUB %s\nPING\n" % (token, channel))
    if b"OK SUB" not in read_until(sub, b"PONG"):
        sys.exit("bystander: subscribe refused")
    pub = connect(addr)
    pub.sendall(b"AUTH %s\nPING\n" % secret_of(key_file))
    if not read_until(pub, b"PONG").startswith(b"OK AUTH"):
        sys.exit("bystander: the API key was refused")
    stop = time.time() + seconds

    def publish():
        seq, next_at = 0, time.time()
        while time.time() < stop:
            seq += 1
            pub.sendall(b"PUB %s %d %.6f\n" % (channel, seq, time.time()))
            next_at += 1.0 / rate
            delay = next_at - time.time()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                next_at = time.time()

    threading.Thread(target=publish, daemon=True).start()
    sub.settimeout(0.2)
    pending = b""
    with open(out_path, "w") as out:
        flushed = time.time()
        while time.time() < stop + 0.5:
            try:
                chunk = sub.recv(65536)
            except socket.timeout:
                chunk = None
            now = time.time()
            if chunk == b"":
                out.write(f"{now:.6f} EOF\n")
                break
            if chunk:
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    parts = line.split()
                    if parts[:1] == [b"MSG"] and len(parts) >= 5:
                        out.write(f"{now:.6f} {int(parts[3])} {(now - float(parts[4])) * 1000:.1f}\n")
                    elif parts[:1] == [b"ERR"]:
                        out.write(f"{now:.6f} {line.decode(errors='replace').strip()}\n")
            if now - flushed > 0.2:
                out.flush()
                flushed = now


def http_publish(addr, key, channel, body):
    sock = connect(addr)
    sock.sendall(
        b"POST /publish?channel=%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (channel, key, len(body), body)
    )
    answer = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    sock.close()
    return answer.split(b"\r\n", 1)[0].decode(errors="replace")


def listener(addr, proto, token, sse_channel):
    """A connection of `proto` (with `token`, or a stranger without one) that has spoken, and
    the first answer it got (PONG, 101, the SSE response...)."""
    if proto in ("text", "text-bad-token"):
        sock = connect(addr)
        sock.sendall((b"AUTH %s\n" % token if token else b"") + b"PING\n")
        want = b"PONG"
    elif proto == "binary":
        sock = connect(addr)
        sock.sendall(PREFACE + (binary_frame(0x08, token) if token else b"") + binary_frame(0x04))
        want = binary_frame(0x05)
    elif proto == "ws":
        sock, status = ws_open(addr, b"/ws" + (b"?token=" + token if token else b""))
        sock.sendall(ws_header(True, 1, 13) + b'{"op":"ping"}')
        want = b'"pong"'
    elif proto == "sse":
        sock = connect(addr)
        query = b"channel=" + sse_channel + (b"&token=" + token if token else b"")
        sock.sendall(b"GET /sse?" + query + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        want = b"\r\n\r\n"
    elif proto == "resp":
        sock = connect(addr)
        sock.sendall((resp_command(b"AUTH", token) if token else b"") + RESP_PING)
        want = b"+PONG"
    sock.settimeout(2)
    got = b""
    try:
        while want not in got:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    except OSError:
        pass
    first = answer_lines("http" if proto == "sse" else proto, got)
    if proto == "ws":
        first = [status] + first
    return sock, (" ".join(first[0].split()) if first else "(nothing)")


def broadcast(addr, secret_file, key_file, who, n=5):
    """Who hears a `*` broadcast: n connections per protocol, the backend publishes once."""
    secret, key = secret_of(secret_file), secret_of(key_file)
    token = mint(secret, "listener", subscribe=["public.>"]) if who == "authenticated" else None
    sse_channel = b"public.news" if who == "authenticated" else b"comments"
    protos = ["text", "binary", "ws", "sse", "resp"]
    if who == "strangers":
        protos.append("text-bad-token")
    # Who should hear it: connections with a token, and anonymous ones only when the anonymous
    # grant names `*`. Redis clients never get `*` (README, "Redis clients").
    hears = who in ("authenticated", "anonymous-star")
    groups = {}
    for proto in protos:
        tok = mint(b"not the secret", "mallory") if proto == "text-bad-token" else token
        groups[proto] = [listener(addr, proto, tok, sse_channel) for _ in range(n)]
    marker = b"broadcast-%08x" % random.getrandbits(32)
    status = http_publish(addr, key, b"*", marker)
    time.sleep(1.0)
    for proto, group in groups.items():
        heard = 0
        for sock, _ in group:
            sock.settimeout(0.2)
            got = b""
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            except OSError:
                pass
            heard += marker in got
            sock.close()
        expected = n if hears and proto != "resp" else 0
        note = " (Redis clients never get *)" if proto == "resp" and hears else ""
        problems = [] if heard == expected else [f"{heard}/{n} heard it, expected {expected}"]
        print(
            f"broadcast to {who} over {proto}: {n} connections (first answer '{group[0][1][:70]}'), backend "
            f"published * ({status}); heard it {heard}/{n}, expected {expected}/{n}{note} {verdict(problems)}"
        )


def tokens(addr, secret_file):
    """AUTH with hostile tokens (each on its own connection, text format)."""
    secret = secret_of(secret_file)
    now = time.time()
    audience, issuer = os.environ.get("FANOUT_AUDIENCE"), os.environ.get("FANOUT_ISSUER")
    cases = [
        ("valid, decimal exp (control)", True, lambda: mint(secret, "carol", 60)),
        ("exp 2**64-1", False, lambda: mint(secret, "carol", exp=2**64 - 1)),
        ("exp 2**63", False, lambda: mint(secret, "carol", exp=2**63)),
        ("exp 1e300", False, lambda: mint(secret, "carol", exp=1e300)),
        ("exp -1", False, lambda: mint(secret, "carol", exp=-1)),
        ("exp a string", False, lambda: mint(secret, "carol", exp=str(int(now) + 3600))),
        ("exp true", False, lambda: mint(secret, "carol", exp=True)),
        ("exp NaN", False, lambda: mint(secret, "carol", exp=float("nan"))),
        ("no exp", False, lambda: mint(secret, "carol", exp=DROP)),
        ("exp 2 minutes ago", False, lambda: mint(secret, "carol", -120)),
        ("nbf in an hour", False, lambda: mint(secret, "carol", nbf=now + 3600)),
        ("sub '*'", False, lambda: mint(secret, "*")),
        ("sub '>'", False, lambda: mint(secret, ">")),
        ("sub 'room.*'", False, lambda: mint(secret, "room.*")),
        ("another secret", False, lambda: mint(b"another secret", "carol")),
        ("alg none", False, lambda: mint(None, "carol", algorithm="none")),
    ]
    if audience:
        cases += [
            ("no aud", False, lambda: mint(secret, "carol", aud=DROP)),
            ("another aud", False, lambda: mint(secret, "carol", aud=audience + "-not")),
        ]
    if issuer:
        cases += [
            ("no iss", False, lambda: mint(secret, "carol", iss=DROP)),
            ("another iss", False, lambda: mint(secret, "carol", iss=issuer + "-not")),
        ]
    for label, accept, make in cases:
        token = make()
        sock = connect(addr)
        sock.settimeout(3)
        sock.sendall(b"AUTH %s\n" % token)
        try:
            answer = read_line(sock).decode(errors="replace").strip()
        except OSError as e:
            answer = f"({type(e).__name__})"
        sock.close()
        ok = answer.startswith("OK AUTH") if accept else answer.startswith("ERR 401")
        problems = [] if ok else [f"{'refused' if accept else 'accepted'}, expected {'OK AUTH' if accept else 'ERR 401'}"]
        print(f"token {label}: AUTH answered '{answer[:120]}' {verdict(problems)}")


def expiry(addr, secret_file, ttl, grace):
    """One connection per protocol authenticates with a token whose decimal exp is TTL seconds
    away; each must be told and closed about GRACE seconds after exp."""
    secret = secret_of(secret_file)
    exp = time.time() + ttl
    token = mint(secret, "dave", exp=exp, subscribe=["public.>"])
    conns = {}
    for proto in ("text", "binary", "ws", "sse", "resp"):
        sock, first = listener(addr, proto, token, b"public.news")
        sock.setblocking(False)
        conns[proto] = [sock, first, bytearray(), None, None]  # sock, first, got, told, closed
    deadline = exp + grace + 4
    while time.time() < deadline and any(c[4] is None for c in conns.values()):
        for c in conns.values():
            if c[4] is not None:
                continue
            try:
                chunk = c[0].recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                c[4] = time.time()
            else:
                c[2] += chunk
                if c[3] is None and b"expired" in c[2]:
                    c[3] = time.time()
        time.sleep(0.01)
    for proto, (sock, first, got, told, closed) in conns.items():
        sock.close()
        kind = "http" if proto == "sse" else proto
        said = [line for line in answer_lines(kind, got) if "expired" in line or "close" in line]
        if proto == "sse":
            said = [line for line in got.decode(errors="replace").split("\n") if "expired" in line]
        problems = []
        if not (first.startswith("OK AUTH") or " 101 " in first or " 200 " in first or first == "+OK"):
            problems.append(f"not authenticated first ({first})")
        if closed is None:
            problems.append(f"still open {deadline - exp:.0f}s after exp")
        elif not grace - 1.0 <= closed - exp <= grace + 1.5:
            problems.append(f"closed {closed - exp:.1f}s after exp, expected about {grace}s")
        if told is None:
            problems.append("never told the token expired")
        when = f"closed {closed - exp:.1f}s after exp" if closed else "never closed"
        print(
            f"expiry over {proto}: token exp = now + {ttl:g}s (decimal), first answer '{first[:40]}': "
            f"{when}, saying '{(said[0] if said else '(nothing)')[:90].strip()}' {verdict(problems)}"
        )


def resp_reply(f):
    """One RESP2 reply from a file-like socket: str, int, None, list, or ('error', text)."""
    line = f.readline()
    kind, rest = line[:1], line[1:].rstrip(b"\r\n")
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return ("error", rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode()
    if kind in (b"*", b">"):
        n = int(rest)
        return None if n < 0 else [resp_reply(f) for _ in range(n)]
    raise ValueError(f"unexpected RESP reply {line!r}")


def pubsub(addr, secret_file, key_file):
    """What PUBSUB reveals to a client allowed public.> and secret.a only, while the backend
    (API key) subscribes to secret channels and patterns."""
    secret, key = secret_of(secret_file), secret_of(key_file)

    def resp_client(token):
        sock = connect(addr)
        sock.settimeout(3)
        f = sock.makefile("rb")
        if token is not None:
            sock.sendall(resp_command(b"AUTH", token))
            assert resp_reply(f) == "OK"
        return sock, f

    def ask(client, *args):
        client[0].sendall(resp_command(*args))
        return resp_reply(client[1])

    owner = resp_client(key)
    owner[0].sendall(resp_command(b"SUBSCRIBE", b"secret.a", b"secret.b", b"public.news"))
    owner[0].sendall(resp_command(b"PSUBSCRIBE", b"secret.*"))
    for _ in range(4):
        resp_reply(owner[1])
    sharded = resp_client(key)
    sharded[0].sendall(resp_command(b"SSUBSCRIBE", b"secret.shard"))
    resp_reply(sharded[1])
    text = connect(addr)
    text.sendall(b"AUTH %s\nSUB secret.c\nPSUB secret.>\nPING\n" % key)
    read_until(text, b"PONG")
    reader = resp_client(mint(secret, "reader", subscribe=["public.>", "secret.a"]))
    control = resp_client(key)
    stranger = resp_client(None)
    hidden = {"secret.b", "secret.c", "secret.shard", "secret.*", "secret.>"}

    def line(what, who, reply, problems):
        print(f"pubsub {what} as {who}: {json.dumps(reply)} {verdict(problems)}")

    channels = ask(reader, b"PUBSUB", b"CHANNELS")
    leaked = sorted(hidden & set(channels if isinstance(channels, list) else []))
    missing = sorted({"public.news", "secret.a"} - set(channels if isinstance(channels, list) else []))
    line("CHANNELS", "a token for public.>,secret.a", channels,
         ([f"reveals {leaked}"] if leaked else []) + ([f"misses {missing} it may see"] if missing else []))
    channels = ask(reader, b"PUBSUB", b"CHANNELS", b"secret*")
    leaked = sorted(hidden & set(channels if isinstance(channels, list) else []))
    line("CHANNELS secret*", "a token for public.>,secret.a", channels, [f"reveals {leaked}"] if leaked else [])
    numsub = ask(reader, b"PUBSUB", b"NUMSUB", b"secret.a", b"secret.b", b"secret.c", b"public.news")
    counts = dict(zip(numsub[::2], numsub[1::2])) if isinstance(numsub, list) else {}
    leaked = sorted(c for c in ("secret.b", "secret.c") if counts.get(c))
    line("NUMSUB secret.a secret.b secret.c public.news", "a token for public.>,secret.a", numsub,
         [f"counts subscribers of {leaked}"] if leaked else [])
    numpat = ask(reader, b"PUBSUB", b"NUMPAT")
    line("NUMPAT", "a token for public.>,secret.a", numpat,
         [f"counts {numpat} patterns it may not subscribe to (secret.*, secret.>)"] if numpat != 0 else [])
    shard = ask(reader, b"PUBSUB", b"SHARDCHANNELS")
    line("SHARDCHANNELS", "a token for public.>,secret.a", shard,
         ["reveals secret.shard"] if isinstance(shard, list) and "secret.shard" in shard else [])
    shard = ask(reader, b"PUBSUB", b"SHARDNUMSUB", b"secret.shard")
    line("SHARDNUMSUB secret.shard", "a token for public.>,secret.a", shard,
         ["counts secret.shard's subscribers"] if isinstance(shard, list) and shard[1:2] != [0] else [])
    numpat = ask(control, b"PUBSUB", b"NUMPAT")
    line("NUMPAT (control)", "the API key", numpat, [] if isinstance(numpat, int) and numpat >= 1 else ["the API key sees no pattern"])
    channels = ask(control, b"PUBSUB", b"CHANNELS", b"secret*")
    line("CHANNELS secret* (control)", "the API key", channels,
         [] if isinstance(channels, list) and {"secret.a", "secret.b", "secret.c"} <= set(channels) else ["the API key does not see every channel"])
    answer = ask(stranger, b"PUBSUB", b"CHANNELS")
    line("CHANNELS", "a stranger", answer,
         [] if isinstance(answer, tuple) and answer[1].startswith("NOAUTH") else ["answered without AUTH"])
    for sock in (owner[0], sharded[0], text, reader[0], control[0], stranger[0]):
        sock.close()


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
    elif kind == "bystander":
        bystander(addr, args[0], args[1], args[2], float(args[3]), float(args[4]), args[5])
    elif kind == "stranger":
        stranger(addr, args[0], int(args[1]), float(args[2]), int(args[3]))
    elif kind == "ping-flood":
        ping_flood(addr, args[0], int(args[1]), float(args[2]), int(args[3]))
    elif kind == "query-limit":
        query_limit(addr, args[0], int(args[1]), float(args[2]), int(args[3]))
    elif kind == "many-args":
        many_args(addr, args[0], int(args[1]), int(args[2]), int(args[3]))
    elif kind == "broadcast":
        broadcast(addr, args[0], args[1], args[2])
    elif kind == "tokens":
        tokens(addr, args[0])
    elif kind == "expiry":
        expiry(addr, args[0], float(args[1]), float(args[2]))
    elif kind == "pubsub":
        pubsub(addr, args[0], args[1])
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
