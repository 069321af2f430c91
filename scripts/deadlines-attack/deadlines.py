#!/usr/bin/python3
"""Black-box tests of fanout's deadlines (keepalive, SSE heartbeat, long-poll, HTTP idle/head,
auth timeout/expiry, lingering close) and channel churn / history retention, written by an
outside tester (issue 23, when deadlines moved onto a timer wheel). PASS/FAIL per promise with
the measured timing; about 35 s. Servers on free loopback ports, started and stopped here.
Run: FANOUT_BIN=target/release/fanout nice -n 19 /usr/bin/python3 scripts/deadlines-attack/deadlines.py"""
import base64, json, os, re, select, socket, struct, subprocess, sys, threading, time, traceback
import urllib.request
import asyncio
import jwt
import websockets

BIN = os.environ.get("FANOUT_BIN", "target/release/fanout")
T = time.monotonic
LATE = 0.5      # allowed lateness (s)
EARLY = 0.05    # allowed earliness (clock/measurement slack)
RESULTS = []
LOCK = threading.Lock()
WORKDIR = os.environ.get("WORKDIR", "/tmp/fanout-deadlines-attack")


def report(kind, name, detail):
    with LOCK:
        RESULTS.append((kind, name, detail))
        print(f"{kind:4} {name}: {detail}", flush=True)


def check(name, ok, detail):
    report("PASS" if ok else "FAIL", name, detail)


def info(name, detail):
    report("INFO", name, detail)


def within(x, exp, early=EARLY, late=LATE):
    return x is not None and exp - early <= x <= exp + late


def f2(x):
    return "None" if x is None else f"{x:.2f}s"


# ---------------------------------------------------------------- server management
def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Server:
    def __init__(self, tag, args):
        self.port = free_port()
        self.tag = tag
        self.logf = open(f"{WORKDIR}/server-{tag}.log", "wb")
        self.args = ["nice", "-n", "19", BIN, "serve", "--listen", f"127.0.0.1:{self.port}",
                     "--workers", "2", "--no-pin", "--stats-interval-secs", "0"] + args
        self.proc = subprocess.Popen(self.args, stdout=self.logf, stderr=subprocess.STDOUT)
        end = T() + 10
        while T() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"server {tag} did not start")
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
        self.logf.close()

    def metrics(self):
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        m = {}
        for line in body.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            k, _, v = line.rpartition(" ")
            try:
                m[k] = float(v)
            except ValueError:
                pass
        return m

    def holds(self, cport):
        """Does the server process still own the socket connected to our client port cport?"""
        out = subprocess.run(["ss", "-tnpH", "state", "all", f"( sport = :{self.port} and dport = :{cport} )"],
                             capture_output=True, text=True).stdout
        return f"pid={self.pid}," in out

    def wait_release(self, cport, deadline):
        while T() < deadline:
            if not self.holds(cport):
                return T()
            time.sleep(0.05)
        return None


def conn(port, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Rd:
    """Buffered reader with deadlines; records EOF time."""

    def __init__(self, sock):
        self.sock, self.buf, self.eof, self.reset = sock, b"", None, False

    def fill(self, deadline):
        if self.eof is not None:
            return False
        rem = deadline - T()
        if rem <= 0:
            return False
        r, _, _ = select.select([self.sock], [], [], rem)
        if not r:
            return False
        try:
            d = self.sock.recv(262144)
        except (ConnectionResetError, OSError):
            d, self.reset = b"", True
        if not d:
            self.eof = T()
            return False
        self.buf += d
        return True

    def line(self, deadline):
        while b"\n" not in self.buf:
            if not self.fill(deadline):
                return None
        l, self.buf = self.buf.split(b"\n", 1)
        return l.rstrip(b"\r").decode(errors="replace")

    def frame(self, deadline):  # fanout binary frame: returns body (opcode + fields)
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack(">I", self.buf[:4])[0]
                if len(self.buf) >= 4 + n:
                    f, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    return f
            if not self.fill(deadline):
                return None

    def wsframe(self, deadline):
        while True:
            b = self.buf
            if len(b) >= 2:
                op, ln, i = b[0] & 0x0F, b[1] & 0x7F, 2
                ok = True
                if ln == 126:
                    ok = len(b) >= 4
                    ln = struct.unpack(">H", b[2:4])[0] if ok else 0
                    i = 4
                elif ln == 127:
                    ok = len(b) >= 10
                    ln = struct.unpack(">Q", b[2:10])[0] if ok else 0
                    i = 10
                if ok and b[1] & 0x80:
                    i += 4
                if ok and len(b) >= i + ln:
                    self.buf = b[i + ln:]
                    return op, b[i:i + ln]
            if not self.fill(deadline):
                return None

    def http_head(self, deadline):
        while b"\r\n\r\n" not in self.buf:
            if not self.fill(deadline):
                return None
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode(errors="replace").split("\r\n")
        hdrs = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        return lines[0], hdrs

    def http_response(self, deadline):
        h = self.http_head(deadline)
        if h is None:
            return None
        status, hdrs = h
        n = int(hdrs.get("content-length", "0"))
        while len(self.buf) < n:
            if not self.fill(deadline):
                break
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, hdrs, body

    def wait_eof(self, deadline):
        while self.eof is None and T() < deadline:
            self.buf = b""
            self.fill(deadline)
        return self.eof


def http_req(port, method, path, body=b"", headers=None, timeout=15):
    s = conn(port)
    h = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    for k, v in (headers or {}).items():
        h += f"{k}: {v}\r\n"
    s.sendall(h.encode() + b"\r\n" + body)
    r = Rd(s)
    resp = r.http_response(T() + timeout)
    s.close()
    return resp


def publish_http(port, ch, payload, headers=None):
    return http_req(port, "POST", f"/publish?channel={ch}", payload.encode(), headers)


PREFACE = b"\x00FANOUT\x01"


def bframe(op, body=b""):
    return struct.pack(">I", 1 + len(body)) + bytes([op]) + body


def short(s):
    b = s.encode()
    return bytes([len(b)]) + b


def ws_open(port, path, rcvbuf=None):
    s = conn(port, rcvbuf)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    r = Rd(s)
    h = r.http_head(T() + 5)
    return s, r, (h[0] if h else None)


def ws_send(s, op, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    mask = os.urandom(4)
    n = len(payload)
    hdr = bytes([0x80 | op])
    if n < 126:
        hdr += bytes([0x80 | n])
    elif n < 65536:
        hdr += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        hdr += bytes([0x80 | 127]) + struct.pack(">Q", n)
    s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def run_parallel(tests):
    ths = []
    for fn, args in tests:
        def wrap(fn=fn, args=args):
            try:
                fn(*args)
            except Exception as e:
                report("FAIL", fn.__name__, f"exception {e!r}\n{traceback.format_exc()}")
        t = threading.Thread(target=wrap, daemon=True)
        t.start()
        ths.append(t)
    for t in ths:
        t.join(90)
        if t.is_alive():
            report("FAIL", "harness", "a test thread did not finish within 90 s")


class Bystander(threading.Thread):
    """Sends PING every 0.25 s, expects PONG; records worst round trip and failures."""

    def __init__(self, srv, auth=None):
        super().__init__(daemon=True)
        self.srv, self.auth, self.stop_ev = srv, auth, threading.Event()
        self.max_rtt, self.fail, self.n = 0.0, [], 0

    def run(self):
        try:
            s = conn(self.srv.port)
            r = Rd(s)
            if self.auth:
                s.sendall(f"AUTH {self.auth}\n".encode())
                l = r.line(T() + 3)
                if not l or not l.startswith("OK AUTH"):
                    self.fail.append(f"auth: {l}")
            end = T() + 600
            while not self.stop_ev.is_set() and T() < end:
                t0 = T()
                s.sendall(b"PING\n")
                got = False
                while T() < t0 + 3:
                    l = r.line(t0 + 3)
                    if l is None:
                        break
                    if l == "PONG":
                        got = True
                        break
                rtt = T() - t0
                self.n += 1
                if not got:
                    self.fail.append(f"no PONG at {time.strftime('%X')} eof={r.eof is not None}")
                    if r.eof is not None:
                        return
                self.max_rtt = max(self.max_rtt, rtt)
                self.stop_ev.wait(0.25)
        except Exception as e:
            self.fail.append(repr(e))

    def finish(self, name):
        self.stop_ev.set()
        self.join(5)
        check(f"8.bystander[{name}]", not self.fail and self.n > 0 and self.max_rtt < 1.0,
              f"{self.n} PINGs, worst PONG round trip {self.max_rtt*1000:.0f} ms, failures {self.fail[:3]}")


# ================================================================ phase A: keepalive, SSE, poll, HTTP, errors
PI, PT, HT = 3, 2, 2   # ping interval, ping timeout, http head timeout


def a_text_silent(srv):
    s = conn(srv.port)
    r = Rd(s)
    s.sendall(b"SUB k1\n")
    t0 = T()
    l = r.line(t0 + 2)
    t_ping = t_err = None
    err = None
    while True:
        l = r.line(t0 + PI + PT + 3)
        if l is None:
            break
        if l == "PING" and t_ping is None:
            t_ping = T() - t0
        elif l.startswith("ERR"):
            t_err, err = T() - t0, l
    t_eof = r.wait_eof(t0 + PI + PT + 4)
    t_eof = t_eof - t0 if t_eof else None
    ok = within(t_ping, PI) and t_err is not None and within(t_err - (t_ping or 0), PT) and err.startswith("ERR 408") \
        and t_eof is not None and t_eof - t_err < 0.5
    check("1.keepalive text silent", ok, f"PING at {f2(t_ping)} (expect {PI}), '{err}' at {f2(t_err)} "
          f"({f2(t_err - t_ping if t_err and t_ping else None)} after PING, expect {PT}), EOF at {f2(t_eof)}")
    s.close()


def a_bin_silent(srv):
    s = conn(srv.port)
    r = Rd(s)
    s.sendall(PREFACE + bframe(0x01, short("k2")))
    t0 = T()
    f = r.frame(t0 + 2)
    t_ping = t_err = None
    err = None
    while True:
        f = r.frame(t0 + PI + PT + 3)
        if f is None:
            break
        if f[:1] == b"\x04" and t_ping is None:
            t_ping = T() - t0
        elif f[:1] == b"\x83":
            t_err = T() - t0
            err = f"ERR {struct.unpack('>H', f[1:3])[0]} {f[3:].decode(errors='replace')}"
    t_eof = r.wait_eof(t0 + PI + PT + 4)
    t_eof = t_eof - t0 if t_eof else None
    ok = within(t_ping, PI) and t_err is not None and within(t_err - (t_ping or 0), PT) and err.startswith("ERR 408") \
        and t_eof is not None and t_eof - t_err < 0.5
    check("1.keepalive binary silent", ok, f"PING frame at {f2(t_ping)}, '{err}' at {f2(t_err)} "
          f"({f2(t_err - t_ping if t_err and t_ping else None)} after PING), EOF at {f2(t_eof)}")
    s.close()


def a_text_pong(srv, dur=13):
    s = conn(srv.port)
    r = Rd(s)
    s.sendall(b"SUB k3\n")
    t0 = last = T()
    pings, gaps, bad = [], [], []
    while T() < t0 + dur:
        l = r.line(t0 + dur)
        if l is None:
            break
        if l == "PING":
            now = T()
            pings.append(now - t0)
            gaps.append(now - last)
            s.sendall(b"PONG\n")
            last = T()
        elif l.startswith("ERR"):
            bad.append(l)
    s.sendall(b"PING\n")
    pong = None
    while True:
        l = r.line(T() + 2)
        if l is None or l == "PONG":
            pong = l
            break
    ok = pong == "PONG" and not bad and r.eof is None and len(pings) >= 3 and all(within(g, PI) for g in gaps)
    check("1.keepalive text answers PONG stays", ok,
          f"{len(pings)} PINGs in {dur}s, gaps since last send {[round(g, 2) for g in gaps]}, errors {bad}, "
          f"still answers PING: {pong == 'PONG'}")
    s.close()


def a_bin_pong(srv, dur=13):
    s = conn(srv.port)
    r = Rd(s)
    s.sendall(PREFACE + bframe(0x01, short("k4")))
    t0 = T()
    pings, bad = 0, []
    while T() < t0 + dur:
        f = r.frame(t0 + dur)
        if f is None:
            break
        if f[:1] == b"\x04":
            pings += 1
            s.sendall(bframe(0x05))
        elif f[:1] == b"\x83":
            bad.append(f)
    s.sendall(bframe(0x04))
    pong = False
    while True:
        f = r.frame(T() + 2)
        if f is None:
            break
        if f[:1] == b"\x05":
            pong = True
            break
    check("1.keepalive binary answers PONG stays", pong and not bad and pings >= 3,
          f"{pings} PINGs in {dur}s, errors {bad}, still answers: {pong}")
    s.close()


def a_text_talker(srv, dur=11):
    """Sends a PUB every 1 s (to k7), never PONG: must never be pinged nor closed."""
    s = conn(srv.port)
    r = Rd(s)
    t0 = T()
    got = []
    i = 0
    while T() < t0 + dur:
        s.sendall(f"PUB k7 tick{i}\n".encode())
        i += 1
        end = T() + 1
        while True:
            l = r.line(end)
            if l is None:
                break
            got.append(l)
    check("1.keepalive busy sender not pinged", r.eof is None and not any(g.startswith(("PING", "ERR")) for g in got),
          f"{i} PUBs over {dur}s, server sent {got[:4]}, eof={r.eof is not None}")
    s.close()


def a_text_receiver(srv, dur=11):
    """Subscribes to k7 (receives a MSG each second) but never sends again: INFO on what counts as silence."""
    s = conn(srv.port)
    r = Rd(s)
    s.sendall(b"SUB k7\n")
    t0 = T()
    t_ping = t_err = None
    msgs = 0
    while T() < t0 + dur:
        l = r.line(t0 + dur)
        if l is None:
            break
        if l.startswith("MSG"):
            msgs += 1
        elif l == "PING" and t_ping is None:
            t_ping = T() - t0
        elif l.startswith("ERR"):
            t_err = (T() - t0, l)
    ok = within(t_ping, PI) and t_err is not None and within(t_err[0], PI + PT)
    check("1.keepalive silent subscriber receiving msgs still timed out", ok,
          f"got {msgs} MSGs; PING at {f2(t_ping)}, ERR {t_err} (client silence is what counts)")
    s.close()


def a_resp_silent(srv, dur=PI + PT + 4):
    s = conn(srv.port)
    r = Rd(s)
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
    first = r.line(T() + 2)
    t0 = T()
    extra = b""
    while T() < t0 + dur:
        if not r.fill(t0 + dur):
            if r.eof:
                break
        extra += r.buf
        r.buf = b""
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
    again = r.line(T() + 2)
    check("1.keepalive RESP never pinged", first == "+PONG" and again == "+PONG" and not extra and r.eof is None,
          f"silent {dur}s: received {extra!r}, eof={r.eof is not None}, PING afterwards -> {again!r}")
    s.close()


def a_never_speaks(srv):
    s = conn(srv.port)
    r = Rd(s)
    t0 = T()
    evs = []
    while T() < t0 + PI + PT + 3:
        if not r.fill(t0 + PI + PT + 3):
            break
        evs.append((round(T() - t0, 2), r.buf))
        r.buf = b""
    info("1.keepalive connection that never sends a byte",
         f"received {evs}, EOF at {f2(r.eof - t0 if r.eof else None)}")
    s.close()


def a_ws_nonresponder(srv):
    s, r, st = ws_open(srv.port, "/ws")
    t0 = T()
    t_ping = None
    close = None
    texts = []
    while T() < t0 + PI + PT + 3:
        fr = r.wsframe(t0 + PI + PT + 3)
        if fr is None:
            break
        op, p = fr
        if op == 0x9 and t_ping is None:
            t_ping = T() - t0
        elif op == 0x8:
            close = (round(T() - t0, 2), struct.unpack(">H", p[:2])[0] if len(p) >= 2 else None, p[2:].decode(errors="replace"))
        elif op == 0x1:
            texts.append(p.decode(errors="replace"))
    ok = st and "101" in st and within(t_ping, PI) and close is not None and within(close[0], PI + PT)
    check("1.keepalive WebSocket not answering pings closed", ok,
          f"ws ping at {f2(t_ping)}, close {close}, texts {texts[:2]}")
    s.close()


def a_ws_lib(srv, dur=12):
    async def go():
        async with websockets.connect(f"ws://127.0.0.1:{srv.port}/ws", ping_interval=None) as ws:
            await ws.send(json.dumps({"op": "sub", "channel": "k10"}))
            t0 = T()
            got = []
            try:
                while T() < t0 + dur:
                    m = await asyncio.wait_for(ws.recv(), timeout=max(0.01, t0 + dur - T()))
                    got.append(m)
            except asyncio.TimeoutError:
                pass
            await ws.send(json.dumps({"op": "ping"}))
            pong = await asyncio.wait_for(ws.recv(), timeout=3)
            return got, pong
    try:
        got, pong = asyncio.run(go())
        check("1.keepalive WebSocket (library auto-pong) stays", '"pong"' in pong,
              f"open {dur}s, received {got[:2]}, then ping -> {pong}")
    except Exception as e:
        check("1.keepalive WebSocket (library auto-pong) stays", False, f"{e!r}")


def a_sse(srv, dur=15):
    s = conn(srv.port)
    s.sendall(b"GET /sse?channel=s1 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    r = Rd(s)
    t0 = T()
    h = r.http_head(t0 + 3)
    last = T()
    beats, msgs, gaps, opening = [], [], [], []
    pub_at = t0 + 7.3
    published = False
    while T() < t0 + dur:
        dl = min(t0 + dur, pub_at) if not published else t0 + dur
        l = r.line(dl)
        if l is None:
            if r.eof:
                break
            if not published and T() >= pub_at:
                publish_http(srv.port, "s1", "hello-sse")
                published = True
            continue
        now = T()
        if l.startswith(":") and now - t0 < 0.5:
            opening.append(l[:40])
        elif l.startswith(":"):
            beats.append(round(now - t0, 2))
            gaps.append(round(now - last, 2))
        elif l.startswith("data:"):
            msgs.append((round(now - t0, 2), l))
        if l != "":
            last = now
    hb = min(PI, 15)
    ok = h and "200" in h[0] and r.eof is None and len(beats) >= 3 and all(within(g, hb) for g in gaps) \
        and any("hello-sse" in m[1] for m in msgs)
    check("2.SSE heartbeat every min(ping,15)s, keeps messages, not stale-closed", ok,
          f"opening comment {opening}, heartbeats at {beats}, gaps since previous write {gaps} (expect {hb}), messages {msgs}, "
          f"open after {dur}s: {r.eof is None}")
    s.close()


def a_poll_timeout(srv, tmo, name, nextreq=None):
    s = conn(srv.port)
    t0 = T()
    s.sendall(f"GET /poll?channel={name}&timeout={tmo} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    r = Rd(s)
    resp = r.http_response(t0 + tmo + 5)
    t = T() - t0
    body = resp[2].decode(errors="replace") if resp else None
    empty = body is not None and '"messages":[]' in body.replace(" ", "")
    check(f"3.long-poll timeout={tmo}s answered empty at timeout", resp is not None and within(t, tmo) and empty,
          f"answered at {t:.2f}s status={resp[0] if resp else None} body={body[:120] if body else None}")
    # keep-alive connection idle after the answer: should be closed only after the ping interval
    ta = T()
    if nextreq:
        time.sleep(nextreq)
        try:
            s.sendall(f"GET /poll?channel={name}&timeout=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            resp2 = r.http_response(T() + 4)
        except OSError as e:
            resp2 = e
        check(f"4.keep-alive: next long-poll sent {nextreq*1000:.0f} ms after a {tmo}s long-poll's answer is served",
              isinstance(resp2, tuple) and "200" in resp2[0],
              f"got {resp2[0] if isinstance(resp2, tuple) else resp2!r}; EOF {f2(r.eof - ta if r.eof else None)} after the first answer")
    else:
        eof = r.wait_eof(ta + PI + 3)
        d = eof - ta if eof else None
        check(f"4.keep-alive idle after long-poll({tmo}s) answer closed after ping interval ({PI}s) of idleness",
              within(d, PI), f"closed {f2(d)} after the answer")
    s.close()


def a_poll_wakeup(srv):
    s = conn(srv.port)
    t0 = T()
    s.sendall(b"GET /poll?channel=lp2&timeout=20 HTTP/1.1\r\nHost: x\r\n\r\n")
    r = Rd(s)
    got = r.fill(t0 + 1.5)
    tp = T()
    pr = publish_http(srv.port, "lp2", "wake")
    tpub = T()
    resp = r.http_response(tp + 5)
    ta = T()
    body = resp[2].decode(errors="replace") if resp else ""
    check("3.long-poll answered at once on publish", not got and resp is not None and "wake" in body and ta - tpub < 0.3,
          f"held {tp - t0:.2f}s, answered {(ta - tpub)*1000:.0f} ms after publish returned; body {body[:140]}")
    s.close()


def a_half_method(srv):
    s = conn(srv.port)
    r = Rd(s)
    s.sendall(b"GE")
    t0 = T()
    evs = []
    while T() < t0 + PI + PT + 3:
        if not r.fill(t0 + PI + PT + 3):
            break
        evs.append((round(T() - t0, 2), r.buf[:80]))
        r.buf = b""
    eof = r.eof - t0 if r.eof else None
    check("4.half an HTTP method ('GE') then silence is closed", eof is not None and eof <= max(HT, PI + PT) + LATE,
          f"received {evs}, EOF at {f2(eof)}")
    s.close()


def a_http_idle(srv):
    s = conn(srv.port)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    r = Rd(s)
    resp = r.http_response(T() + 3)
    t0 = T()
    eof = r.wait_eof(t0 + PI + 4)
    d = eof - t0 if eof else None
    check("4.HTTP keep-alive idle closed after ping interval", resp is not None and within(d, PI),
          f"{resp[0] if resp else None}; closed {f2(d)} after response (expect {PI})")
    s.close()


def slowloris(srv, first, rest, name, prior=False):
    s = conn(srv.port)
    r = Rd(s)
    if prior:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        r.http_response(T() + 3)
    t0 = T()
    s.sendall(first)
    resp = None
    sent = 0
    err = None
    while T() < t0 + HT + 4:
        if sent < len(rest):
            try:
                s.sendall(rest[sent:sent + 1])
                sent += 1
            except OSError as e:
                err = e
                break
        if r.fill(T() + 0.25) or r.eof:
            break
    tr = T() - t0
    resp = r.http_response(T() + 1) if r.buf else None
    eof = r.wait_eof(T() + 6)
    body = resp[2].decode(errors="replace") if resp else None
    ok = resp is not None and "408" in resp[0] and within(tr, HT) and eof is not None
    check(f"4.slowloris {name}", ok, f"answer at {tr:.2f}s after first byte (expect {HT}): "
          f"{resp[0] if resp else None} {body}; {sent} trickled bytes; closed {f2(eof - t0 if eof else None)}; err={err}")
    s.close()


def linger_test(srv, name, setup, expect_code, keep_sending=False, ws=False):
    """setup(s) sends the offending bytes; we never close; measure ERR, FIN, server release."""
    if ws:
        s, r, st = ws_open(srv.port, "/ws")
    else:
        s = conn(srv.port)
        r = Rd(s)
    cport = s.getsockname()[1]
    t0 = T()
    setup(s)
    got = b""
    t_err = None
    while T() < t0 + 3:
        if not r.fill(t0 + 3):
            break
        got += r.buf
        r.buf = b""
        if t_err is None and expect_code.encode("latin-1") in got or (ws and b"\x88" in got):
            t_err = T() - t0
            break
    # drain until FIN without closing; optionally keep sending junk
    fin = None
    send_err = None
    end = t0 + 9
    while T() < end:
        if r.eof is None:
            if r.fill(T() + 0.2):
                got += r.buf
                r.buf = b""
        else:
            fin = fin or r.eof - t0
            if not keep_sending:
                break
        if keep_sending and send_err is None:
            try:
                s.send(b"junk junk junk\n")
            except OSError as e:
                send_err = (round(T() - t0, 2), e.errno)
        if keep_sending and send_err is not None:
            break
        time.sleep(0.05)
    if r.eof is not None:
        fin = r.eof - t0
    rel = srv.wait_release(cport, t0 + 9)
    rel = rel - t0 if rel else None
    shown = got[:160]
    ok = t_err is not None and rel is not None and rel - t_err <= 5.5
    check(f"6.error then close within ~5s: {name}", ok,
          f"error at {f2(t_err)}: {shown!r}; FIN at {f2(fin)}; server released socket at {f2(rel)}"
          + (f"; send error {send_err}" if keep_sending else ""))
    s.close()


def phase_a():
    srv = Server("A", ["--ping-interval-secs", str(PI), "--ping-timeout-secs", str(PT),
                       "--http-head-timeout-secs", str(HT), "--max-frame-bytes", "1024"])
    by = Bystander(srv)
    by.start()
    m0 = srv.metrics()
    tests = [
        (a_text_silent, (srv,)), (a_bin_silent, (srv,)), (a_text_pong, (srv,)), (a_bin_pong, (srv,)),
        (a_text_talker, (srv,)), (a_text_receiver, (srv,)), (a_resp_silent, (srv,)), (a_never_speaks, (srv,)),
        (a_ws_nonresponder, (srv,)), (a_ws_lib, (srv,)), (a_sse, (srv,)),
        (a_poll_timeout, (srv, 2, "lp1")), (a_poll_timeout, (srv, 5, "lp3")), (a_poll_timeout, (srv, 5, "lp4", 0.05)), (a_poll_timeout, (srv, 4, "lp5", 0.3)), (a_half_method, (srv,)), (a_poll_wakeup, (srv,)),
        (a_http_idle, (srv,)),
        (slowloris, (srv, b"GET /healthz HTTP/1.1\r\n", b"X-Slow: " + b"a" * 40 + b"\r\n\r\n", "first request")),
        (slowloris, (srv, b"GET ", b"/healthz HTTP/1.1\r\nX-Slow: " + b"a" * 40 + b"\r\n\r\n", "byte by byte after 'GET '")),
        (slowloris, (srv, b"GET /healthz HTTP/1.1\r\n", b"X-Slow: " + b"a" * 40 + b"\r\n\r\n", "2nd request on keep-alive", True)),
        (linger_test, (srv, "text line > max-frame", lambda s: s.sendall(b"PUB e1 " + b"a" * 3000), "ERR 413")),
        (linger_test, (srv, "binary frame header > max-frame",
                       lambda s: s.sendall(PREFACE + struct.pack(">I", 100000) + b"\x03" + b"a" * 100), "\x01\x9d")),
        (linger_test, (srv, "binary length-0 frame (400)", lambda s: s.sendall(PREFACE + struct.pack(">I", 0)), "\x01\x90")),
        (linger_test, (srv, "text line > max-frame, client keeps sending",
                       lambda s: s.sendall(b"PUB e3 " + b"a" * 3000), "ERR 413", True)),
        (linger_test, (srv, "websocket message > max-frame",
                       lambda s: ws_send(s, 0x1, json.dumps({"op": "pub", "channel": "e4", "data": "a" * 3000})),
                       "\x03\xf1", False, True)),
    ]
    run_parallel(tests)
    time.sleep(0.5)
    m1 = srv.metrics()
    d = lambda k: m1.get(k, 0) - m0.get(k, 0)
    K_TL = 'fanout_protocol_errors_by_kind_total{kind="too_large"}'
    K_MF = 'fanout_protocol_errors_by_kind_total{kind="malformed"}'
    K_WS = 'fanout_protocol_errors_by_kind_total{kind="websocket"}'
    check("1/4/6.counters (server A)", d("fanout_stale_closes_total") >= 3 and d("fanout_http_head_timeouts_total") >= 3
          and d(K_TL) >= 3,
          f"stale_closes +{d('fanout_stale_closes_total'):.0f}, http_head_timeouts +{d('fanout_http_head_timeouts_total'):.0f}, "
          f"too_large +{d(K_TL):.0f}, malformed +{d(K_MF):.0f}, websocket errs +{d(K_WS):.0f}, "
          f"open now {m1.get('fanout_connections_current')}")
    by.finish("A")
    check("8.server A alive", srv.alive(), f"pid {srv.pid}")
    srv.stop()


# ================================================================ phase B: access control
AT, GRACE = 2, 2
SECRET = base64.b64encode(os.urandom(24)).decode()
APIKEY = base64.b64encode(os.urandom(24)).decode()


def token(sub, ttl, subs=("b.>",), pubs=("b.>",)):
    expw = time.time() + ttl
    expm = T() + ttl
    tok = jwt.encode({"sub": sub, "exp": expw, "subscribe": list(subs), "publish": list(pubs)}, SECRET, algorithm="HS256")
    return tok, expm


def b_unauth_text(srv, pinging):
    s = conn(srv.port)
    r = Rd(s)
    t0 = T()
    lines = []
    nxt = t0
    while T() < t0 + AT + 3:
        if pinging and T() >= nxt:
            try:
                s.sendall(b"PING\n")
            except OSError:
                pass
            nxt += 0.5
        l = r.line(min(nxt, t0 + AT + 3) if pinging else t0 + AT + 3)
        if l is None:
            if r.eof:
                break
            continue
        lines.append((round(T() - t0, 2), l))
    errs = [x for x in lines if x[1].startswith("ERR")]
    te = errs[0][0] if errs else None
    ok = errs and errs[0][1].startswith("ERR 401") and within(te, AT) and r.eof is not None
    check(f"5.unauthenticated text{' (sending PINGs)' if pinging else ''} closed with 401 at auth timeout", ok,
          f"{errs[:1]} (expect {AT}s), PONGs {sum(1 for x in lines if x[1] == 'PONG')}, "
          f"EOF at {f2(r.eof - t0 if r.eof else None)}")
    s.close()


def b_unauth_bin(srv):
    s = conn(srv.port)
    r = Rd(s)
    s.sendall(PREFACE)
    t0 = T()
    f = r.frame(t0 + AT + 3)
    te = T() - t0
    code = struct.unpack(">H", f[1:3])[0] if f and f[0] == 0x83 else None
    eof = r.wait_eof(T() + 2)
    check("5.unauthenticated binary closed with 401", code == 401 and within(te, AT) and eof is not None,
          f"frame {f!r} at {te:.2f}s, EOF {eof is not None}")
    s.close()


def b_unauth_ws(srv):
    s, r, st = ws_open(srv.port, "/ws")
    t0 = T()
    evs = []
    while T() < t0 + AT + 3:
        fr = r.wsframe(t0 + AT + 3)
        if fr is None:
            break
        evs.append((round(T() - t0, 2), fr[0], fr[1][:80]))
        if fr[0] == 8:
            break
    close = [e for e in evs if e[1] == 8]
    ok = close and within(close[0][0], AT) and any(b"401" in e[2] for e in evs)
    check("5.unauthenticated WebSocket closed with 401", bool(ok), f"{st}; frames {evs}")
    s.close()


def text_expiry(srv, name, binary=False, refresh=False):
    tok, expm = token(name, 3)
    s = conn(srv.port)
    r = Rd(s)
    if binary:
        s.sendall(PREFACE + bframe(0x08, tok.encode()) + bframe(0x01, short("b." + name)))
    else:
        s.sendall(f"AUTH {tok}\nSUB b.{name}\n".encode())
    t0 = T()
    evs = []
    nxt = T() + 1
    refreshed = False
    end = expm + GRACE + 4
    while T() < end:
        if T() >= nxt:
            try:
                s.sendall(bframe(0x04) if binary else b"PING\n")
            except OSError:
                pass
            nxt += 1
        if refresh and not refreshed and T() >= expm - 1:
            tok2, _ = token(name, 60)
            s.sendall(f"AUTH {tok2}\n".encode())
            refreshed = True
        if binary:
            f = r.frame(min(nxt, end))
            if f is None:
                if r.eof:
                    break
                continue
            if f[0] == 0x83:
                evs.append((round(T() - expm, 2), f"ERR {struct.unpack('>H', f[1:3])[0]} {f[3:].decode()}"))
            elif f[0] != 0x05:
                evs.append((round(T() - expm, 2), f[:1].hex()))
        else:
            l = r.line(min(nxt, end))
            if l is None:
                if r.eof:
                    break
                continue
            if l != "PONG":
                evs.append((round(T() - expm, 2), l[:60]))
    eof = r.eof - expm if r.eof else None
    errs = [e for e in evs if e[1].startswith("ERR")]
    if refresh:
        check("5.token refreshed by AUTH before exp keeps connection", not errs and r.eof is None,
              f"events (s rel. exp) {evs}; open at exp+{GRACE + 4}s: {r.eof is None}")
    else:
        ok = errs and "401" in errs[0][1] and "expired" in errs[0][1] and within(errs[0][0], GRACE) and \
            eof is not None and within(eof, GRACE)
        check(f"5.token expiry closes {'binary' if binary else 'text'} connection", bool(ok),
              f"events (s rel. exp) {evs}; EOF at exp{'+' if eof is not None and eof >= 0 else ''}{f2(eof)} "
              f"(grace {GRACE}s)")
    s.close()


def ws_expiry(srv, via_query):
    tok, expm = token("w" + str(int(via_query)), 3)
    s, r, st = ws_open(srv.port, f"/ws?token={tok}" if via_query else "/ws")
    if not via_query:
        ws_send(s, 1, json.dumps({"op": "auth", "token": tok}))
    ws_send(s, 1, json.dumps({"op": "sub", "channel": "b.ws"}))
    evs = []
    nxt = T() + 1
    end = expm + GRACE + 4
    close = None
    while T() < end:
        if T() >= nxt:
            try:
                ws_send(s, 1, '{"op":"ping"}')
            except OSError:
                pass
            nxt += 1
        fr = r.wsframe(min(nxt, end))
        if fr is None:
            if r.eof:
                break
            continue
        op, p = fr
        if op == 9:
            ws_send(s, 0xA, p)
        elif op == 8:
            close = (round(T() - expm, 2), struct.unpack(">H", p[:2])[0] if len(p) >= 2 else None, p[2:].decode(errors="replace"))
            break
        elif op == 1 and b'"pong"' not in p:
            evs.append((round(T() - expm, 2), p.decode(errors="replace")[:90]))
    errs = [e for e in evs if '"err"' in e[1]]
    ok = errs and "401" in errs[0][1] and "expired" in errs[0][1] and within(errs[0][0], GRACE) and close and within(close[0], GRACE)
    check(f"5.token expiry closes WebSocket ({'?token=' if via_query else 'auth op'})", bool(ok),
          f"{st}; events (s rel. exp) {evs}; close {close}")
    s.close()


def sse_expiry_reading(srv):
    tok, expm = token("sse1", 3)
    s = conn(srv.port)
    s.sendall(f"GET /sse?channel=b.sse1&token={tok} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    r = Rd(s)
    h = r.http_head(T() + 3)
    evs = []
    while T() < expm + GRACE + 4:
        l = r.line(expm + GRACE + 4)
        if l is None:
            break
        if l:
            evs.append((round(T() - expm, 2), l[:90]))
    eof = r.eof - expm if r.eof else None
    errs = [e for e in evs if "expired" in e[1]]
    ok = errs and within(errs[0][0], GRACE) and eof is not None and within(eof, GRACE)
    check("5.token expiry closes reading SSE stream", bool(ok),
          f"{h[0] if h else None}; events (s rel. exp) {evs[-4:]}; EOF at exp+{f2(eof)}")
    s.close()


def sse_expiry_stalled(srv):
    tok, expm = token("sse2", 4)
    s = conn(srv.port, rcvbuf=4096)
    cport = s.getsockname()[1]
    s.sendall(f"GET /sse?channel=b.sse2&token={tok} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    r = Rd(s)
    h = r.http_head(T() + 3)
    r.fill(T() + 0.3)
    # stop reading; a publisher (API key) fills the pipe: 200 x 8 KB = 1.6 MB (< 8 MiB queue cap)
    p = conn(srv.port)
    pr = Rd(p)
    p.sendall(f"AUTH {APIKEY}\n".encode())
    pr.line(T() + 2)
    payload = "x" * 8192
    for i in range(200):
        p.sendall(f"PUB b.sse2 {i}:{payload}\n".encode())
        if i % 50 == 49:
            time.sleep(0.05)
    p.sendall(b"PING\n")
    pong = None
    while True:
        l = pr.line(T() + 3)
        if l is None or l == "PONG":
            pong = l
            break
    p.close()
    t_pub = T() - expm
    m = srv.metrics()
    rel = srv.wait_release(cport, expm + GRACE + 12)
    rel = rel - expm if rel else None
    # now read everything that is left
    data = b""
    end = T() + 5
    while T() < end and r.eof is None:
        if r.fill(end):
            data += r.buf
            r.buf = b""
    data = r.buf + data
    n_msgs = data.count(b"event: b.sse2")
    tail = data[-200:]
    ok = rel is not None and rel <= GRACE + 5.5
    check("5.token expiry closes SSE stream whose client stopped reading", ok,
          f"published 1.6 MB by exp{t_pub:+.2f}s (queued {m.get('fanout_queued_bytes')} B); server released socket at "
          f"exp+{f2(rel)} (grace {GRACE}s); afterwards read {len(data)} B, {n_msgs} events, "
          f"'expired' in stream: {b'expired' in data}, EOF: {r.eof is not None}, tail {tail[-120:]!r}")
    s.close()


def sse_heartbeat_default(srv):
    tok, expm = token("sse3", 120)
    s = conn(srv.port)
    s.sendall(f"GET /sse?channel=b.sse3&token={tok} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    r = Rd(s)
    h = r.http_head(T() + 3)
    last = t0 = T()
    gap = None
    while T() < last + 18:
        l = r.line(last + 18)
        if l is None:
            break
        if l.startswith(":") and T() - t0 > 0.5:
            gap = T() - last
            break
        if l:
            last = T()
    check("2.SSE heartbeat with default ping interval (120s) is 15s", within(gap, 15), f"first heartbeat {f2(gap)} after last write")
    s.close()


def phase_b():
    sf = f"{WORKDIR}/secret"
    kf = f"{WORKDIR}/apikey"
    open(sf, "w").write(SECRET)
    open(kf, "w").write(APIKEY)
    srv = Server("B", ["--auth-secret-file", sf, "--api-key-file", kf, "--auth-timeout-secs", str(AT),
                       "--auth-expiry-grace-secs", str(GRACE)])
    by = Bystander(srv, auth=APIKEY)
    by.start()
    m0 = srv.metrics()
    tests = [(b_unauth_text, (srv, False)), (b_unauth_text, (srv, True)), (b_unauth_bin, (srv,)), (b_unauth_ws, (srv,)),
             (text_expiry, (srv, "t1")), (text_expiry, (srv, "t2", True)), (text_expiry, (srv, "t3", False, True)),
             (ws_expiry, (srv, False)), (ws_expiry, (srv, True)),
             (sse_expiry_reading, (srv,)), (sse_expiry_stalled, (srv,)), (sse_heartbeat_default, (srv,))]
    run_parallel(tests)
    m1 = srv.metrics()
    d = lambda k: m1.get(k, 0) - m0.get(k, 0)
    check("5.auth counters", d("fanout_auth_timeout_closes_total") >= 4 and d("fanout_auth_expiry_closes_total") >= 6,
          f"auth_timeout_closes +{d('fanout_auth_timeout_closes_total'):.0f} (expect >=4), "
          f"auth_expiry_closes +{d('fanout_auth_expiry_closes_total'):.0f} (expect 6)")
    by.finish("B")
    check("8.server B alive", srv.alive(), f"pid {srv.pid}")
    srv.stop()


# ================================================================ phase C: channel churn
def text_session(srv):
    s = conn(srv.port)
    return s, Rd(s)


def collect_until_pong(s, r, timeout=5):
    s.sendall(b"PING\n")
    out = []
    end = T() + timeout
    while True:
        l = r.line(end)
        if l is None:
            return out, False
        if l == "PONG":
            return out, True
        out.append(l)


def churn(srv, tag, n=300):
    res = {}
    # (a) one connection: SUB, PUBA, expect MSG+ACK, UNSUB, for n distinct names
    s, r = text_session(srv)
    errs, okc = [], 0
    t0 = T()
    for i in range(n):
        ch = f"{tag}a{i}"
        s.sendall(f"SUB {ch}\n".encode())
        out, pong = collect_until_pong(s, r)
        s.sendall(f"PUBA {ch} m{i}\n".encode())
        end = T() + 3
        while not (any(l.startswith(f"MSG {ch} ") for l in out) and any(l.startswith(f"ACK {ch} ") for l in out)):
            l = r.line(end)
            if l is None:
                break
            out.append(l)
        s.sendall(f"UNSUB {ch}\n".encode())
        o2, pong = collect_until_pong(s, r)
        out += o2
        e = [l for l in out if l.startswith("ERR")]
        if e or not pong:
            errs.append((i, e[:1], pong))
        elif any(l.startswith(f"MSG {ch} ") for l in out) and any(l.startswith(f"ACK {ch} ") for l in out):
            okc += 1
        else:
            errs.append((i, out[:3], pong))
    res["a"] = (okc, errs, T() - t0)
    # (a2) the same pipelined per name: SUB, PUBA, UNSUB, then PING barrier; count refusals
    r429 = []
    for i in range(n):
        ch = f"{tag}p{i}"
        s.sendall(f"SUB {ch}\nPUBA {ch} m{i}\nUNSUB {ch}\n".encode())
        out, pong = collect_until_pong(s, r)
        e = [l for l in out if l.startswith("ERR")]
        if e or not pong:
            r429.append((i, e[:1], pong))
    res["a2"] = r429
    # (a3) a burst: 300 PUBA to fresh names in one write (INFO), then retry the same names one by one
    s.sendall(b"".join(f"PUBA {tag}q{i} m\n".encode() for i in range(n)))
    out, pong = collect_until_pong(s, r, 10)
    burst = (sum(1 for l in out if l.startswith("ACK")), sum(1 for l in out if l.startswith("ERR 429")))
    retry_ok = 0
    for i in range(n):
        s.sendall(f"PUBA {tag}q{i} again\n".encode())
        o, _ = collect_until_pong(s, r)
        retry_ok += any(l.startswith("ACK") for l in o)
    res["a3"] = (burst, retry_ok)
    s.close()
    # (b) publish-only to fresh names; retry a refused one for up to 3 s
    s, r = text_session(srv)
    errs, okc, retried = [], 0, 0
    for i in range(n):
        ch = f"{tag}b{i}"
        end = T() + 3
        while True:
            s.sendall(f"PUBA {ch} m{i}\n".encode())
            out, pong = collect_until_pong(s, r)
            if any(l.startswith(f"ACK {ch}") for l in out):
                okc += 1
                break
            errs.append((i, out[:1]))
            if T() > end:
                break
            retried += 1
            time.sleep(0.1)
    res["b"] = (okc, errs, retried)
    s.close()
    # (c) 100 short-lived connections, each subscribes to a fresh name then disconnects
    errs, okc = [], 0
    for i in range(100):
        s, r = text_session(srv)
        s.sendall(f"SUB {tag}c{i}\n".encode())
        out, pong = collect_until_pong(s, r)
        if any(l.startswith("OK SUB") for l in out):
            okc += 1
        else:
            errs.append((i, out[:1]))
        s.close()
    res["c"] = (okc, errs)
    # (d) finally a fresh subscriber/publisher pair still works
    s, r = text_session(srv)
    s.sendall(f"SUB {tag}final\nPUBA {tag}final hello\n".encode())
    out, pong = collect_until_pong(s, r)
    while not any(l.startswith("MSG") for l in out):
        l = r.line(T() + 2)
        if l is None:
            break
        out.append(l)
    res["d"] = out
    # resume of the first churned name (history evicted / channel freed): HIST must not say ok with a gap
    s.sendall(f"SUB {tag}b0 1\n".encode())
    out2, _ = collect_until_pong(s, r)
    res["resume"] = out2
    s.close()
    return res


def phase_c():
    for hist in (0, 5):
        srv = Server(f"C{hist}", ["--max-channels", "50", "--history-messages", str(hist)])
        by = Bystander(srv)
        by.start()
        m0 = srv.metrics()
        res = churn(srv, f"h{hist}")
        m1 = srv.metrics()
        okc, errs, dt = res["a"]
        check(f"7.churn SUB/PUBA/UNSUB 300 names, max-channels 50, history {hist}", okc == 300,
              f"{okc}/300 ok in {dt:.1f}s, failures {len(errs)} at {[e[0] for e in errs][:12]} first {errs[:2]}")
        check(f"7.churn pipelined SUB/PUBA/UNSUB per name (PING between names), history {hist}", not res["a2"],
              f"{len(res['a2'])} refusals of 300 at {[e[0] for e in res['a2']][:12]} first {res['a2'][:1]}")
        (acks, refused), retry_ok = res["a3"]
        info(f"7.burst of 300 PUBA to fresh names in one write, history {hist}",
             f"{acks} ACK, {refused} ERR 429; retried one by one afterwards: {retry_ok}/300 ACK")
        okc, errs, retried = res["b"]
        check(f"7.churn PUBA-only 300 fresh names, history {hist}", okc == 300 and not errs,
              f"{okc}/300 acknowledged, refusals {len(errs)} (retries {retried}), first {errs[:2]}")
        okc, errs = res["c"]
        check(f"7.churn 100 connect/SUB/disconnect, history {hist}", okc == 100, f"{okc}/100, first failures {errs[:2]}")
        d = res["d"]
        check(f"7.churn afterwards new channel works, history {hist}",
              any(l.startswith("MSG") for l in d) and any(l.startswith("ACK") for l in d), f"{d}")
        hist_lines = [l for l in res["resume"] if l.startswith("HIST")]
        check(f"7.resume SUB h{hist}b0 1 of a freed channel is not silently ok", bool(hist_lines) and hist_lines[0].split()[-1] in ("epoch", "expired"), f"{res['resume'][:3]}")
        check(f"7.churn metrics, history {hist}", m1.get("fanout_channels", 999) <= 51,
              f"fanout_channels {m1.get('fanout_channels')}, channels_freed +{m1.get('fanout_channels_freed_total', 0) - m0.get('fanout_channels_freed_total', 0):.0f}, "
              f"retained_messages {m1.get('fanout_retained_messages')}, history_dropped {m1.get('fanout_history_dropped_total')}, "
              f"request_errors {m1.get('fanout_request_errors_total')}, limit hits {[(k, v) for k, v in m1.items() if 'limit_hits' in k and v]}")
        by.finish(f"C{hist}")
        check(f"8.server C{hist} alive", srv.alive(), f"pid {srv.pid}")
        srv.stop()


# ================================================================ phase D: history-total-bytes
CAP = 20000


def phase_d():
    srv = Server("D", ["--history-total-bytes", str(CAP), "--history-messages", "100"])
    by = Bystander(srv)
    by.start()
    s, r = text_session(srv)
    # keeper: a subscribed channel whose old history must be evicted, but the channel survives
    s.sendall(b"SUB keep\n")
    collect_until_pong(s, r)
    for i in range(10):
        s.sendall(f"PUBA keep k{i}:{'k' * 96}\n".encode())
    out, _ = collect_until_pong(s, r)
    s2, r2 = text_session(srv)
    s2.sendall(b"SUB keep 18446744073709551615\n")
    out2, _ = collect_until_pong(s2, r2)
    hl = [l for l in out2 if l.startswith("HIST")]
    epoch = hl[0].split()[2] if hl else "*"
    s2.close()
    mx, samples = 0, []
    payload = "p" * 100
    t0 = T()
    for rnd in range(3):
        for i in range(300):
            s.sendall(f"PUBA f{i} {payload}\n".encode())
            if i % 50 == 49:
                collect_until_pong(s, r)
                v = srv.metrics().get("fanout_retained_bytes", -1)
                mx = max(mx, v)
                samples.append(int(v))
                time.sleep(0.02)
    collect_until_pong(s, r)
    time.sleep(0.3)
    m = srv.metrics()
    final = m.get("fanout_retained_bytes", -1)
    check("7.history-total-bytes cap held while 300 channels x3 published (180 B each)",
          0.5 * CAP <= final <= 1.1 * CAP and mx <= 2 * CAP,
          f"cap {CAP}; retained_bytes samples {samples[:6]}...{samples[-4:]}, max {mx:.0f}, final {final:.0f}, "
          f"retained_messages {m.get('fanout_retained_messages')}, history_dropped {m.get('fanout_history_dropped_total')}, "
          f"in {T() - t0:.1f}s")
    # resume keep after offset 1 with its epoch: offsets 2.. were evicted -> HIST expired
    s3, r3 = text_session(srv)
    s3.sendall(f"SUB keep 1 {epoch}\n".encode())
    out3, _ = collect_until_pong(s3, r3)
    h3 = [l for l in out3 if l.startswith("HIST")]
    msgs = [l for l in out3 if l.startswith("MSG")]
    check("7.resume of evicted history says expired (text SUB)", bool(h3) and h3[0].split()[-1] == "expired",
          f"SUB keep 1 {epoch} -> {h3}, then {len(msgs)} MSGs {msgs[:1]}")
    # a flooded channel resumed from its start
    s3.sendall(b"SUB f0 1\n")
    out4, _ = collect_until_pong(s3, r3)
    h4 = [l for l in out4 if l.startswith("HIST") or l.startswith("ERR")]
    check("7.resume of flooded channel f0 after 1 is not silently 'ok'", bool(h4) and h4[0].split()[-1] in ("expired", "epoch"),
          f"SUB f0 1 -> {h4}, MSGs {sum(1 for l in out4 if l.startswith('MSG'))}")
    # the same through long-poll
    resp = http_req(srv.port, "GET", f"/poll?channel=keep&from=1&epoch={epoch}&timeout=0")
    body = resp[2].decode(errors="replace") if resp else ""
    check("7.long-poll resume of evicted history says expired", '"status":"expired"' in body.replace(" ", ""),
          f"{resp[0] if resp else None} {body[:160]}")
    # the keeper still receives live messages
    s.sendall(b"PUB keep live\n")
    out5, _ = collect_until_pong(s, r)
    while not any("live" in l for l in out5):
        l = r.line(T() + 2)
        if l is None:
            break
        out5.append(l)
    check("7.subscriber of evicted channel still receives live", any("live" in l for l in out5 if l.startswith("MSG")), f"{out5[-2:]}")
    s.close()
    s3.close()
    by.finish("D")
    check("8.server D alive", srv.alive(), f"pid {srv.pid}")
    srv.stop()


def main():
    os.makedirs(WORKDIR, exist_ok=True)
    start = T()
    only = sys.argv[1:] or ["A", "B", "C", "D"]
    for ph, fn in (("A", phase_a), ("B", phase_b), ("C", phase_c), ("D", phase_d)):
        if ph in only:
            print(f"---- phase {ph} ----", flush=True)
            try:
                fn()
            except Exception as e:
                report("FAIL", f"phase {ph}", f"{e!r}\n{traceback.format_exc()}")
    n_f = sum(1 for k, _, _ in RESULTS if k == "FAIL")
    n_p = sum(1 for k, _, _ in RESULTS if k == "PASS")
    print(f"==== {n_p} PASS, {n_f} FAIL, {T() - start:.0f}s ====")


if __name__ == "__main__":
    main()
