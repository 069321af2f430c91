"""Helpers for edge_attack.py: start/stop fanout processes (niced, loopback, free ports),
and a small blocking client for fanout's binary protocol."""

import atexit
import json
import os
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.request

BIN = os.environ.get("FANOUT_BIN", "/tmp/fanout-edge")
WORK = tempfile.mkdtemp(prefix="edge-attack-")
PROCS = []  # every Popen we started

PREFACE = b"\x00FANOUT\x01"
OP = dict(SUB=1, UNSUB=2, PUB=3, PING=4, PONG=5, NAME=6, PUBA=7, AUTH=8, PSUB=9, PUNSUB=10)
MSG, OK, ERR, HIST, ACK, UNSUBSCRIBED = 0x81, 0x82, 0x83, 0x84, 0x85, 0x8A
STATUS = {0: "ok", 1: "expired", 2: "epoch"}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cleanup():
    for p in PROCS:
        if p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
    for p in PROCS:
        try:
            p.wait(timeout=5)
        except Exception:
            pass


atexit.register(cleanup)


def _term(*_):
    cleanup()
    os._exit(3)


signal.signal(signal.SIGTERM, _term)
signal.signal(signal.SIGINT, _term)


class Server:
    """One `fanout serve` process (niced, one worker, loopback)."""

    def __init__(self, *args, port=None, name="node", env=None):
        self.port = port or free_port()
        self.args = list(args)
        self.name = name
        self.log = os.path.join(WORK, f"{name}-{self.port}.log")
        self.env = env
        self.proc = None
        self.start()

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def start(self, wait=True):
        env = dict(os.environ, RUST_LOG="info")
        if self.env:
            env.update(self.env)
        cmd = ["nice", "-n", "19", BIN, "serve", "--listen", self.addr, "--workers", "1",
               "--no-pin", "--stats-interval-secs", "0"] + self.args
        self.cmdline = " ".join(cmd)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        PROCS.append(self.proc)
        if wait:
            self.wait_listening()
        return self

    def wait_listening(self, timeout=20):
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.proc.returncode}; log {self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} not listening on {self.port}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL):
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self):
        self.kill()
        return self.start()

    def logtext(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def http(self, path, data=None, headers=None, timeout=5):
        req = urllib.request.Request(f"http://{self.addr}{path}", data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def channels(self, headers=None):
        st, body = self.http("/api/channels", headers=headers)
        if st != 200:
            return None
        return {c["channel"]: c["subscribers"] for c in json.loads(body)["channels"]}

    def healthy(self, timeout=10):
        end = time.time() + timeout
        while time.time() < end:
            try:
                if self.http("/healthz", timeout=1)[0] == 200:
                    return True
            except Exception:
                pass
            time.sleep(0.05)
        return False


def short(b):
    if isinstance(b, str):
        b = b.encode()
    return bytes([len(b)]) + b


def frame(op, body=b""):
    return struct.pack(">IB", len(body) + 1, op) + body


class Closed(Exception):
    pass


class Client:
    """A blocking binary-protocol client. Frames are parsed into tuples:
    ('MSG', ch, off, payload) ('OK', op, arg) ('ERR', code, reason)
    ('HIST', ch, epoch, first, last, status) ('ACK', ch, off) ('PING',) ('PONG',) ..."""

    def __init__(self, addr, token=None, timeout=10):
        host, port = addr.rsplit(":", 1) if isinstance(addr, str) else addr
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.sock.sendall(PREFACE)
        self.closed = False
        if token:
            self.send(frame(OP["AUTH"], token.encode() if isinstance(token, str) else token))

    def send(self, data):
        self.sock.sendall(data)

    def sub(self, ch, after=None, epoch=None, strict=False):
        body = short(ch)
        if after is not None:
            body += struct.pack(">Q", after)
            if epoch is not None or strict:
                body += struct.pack(">Q", epoch or 0)
                if strict:
                    body += b"\x01"
        self.send(frame(OP["SUB"], body))

    def unsub(self, ch):
        self.send(frame(OP["UNSUB"], short(ch)))

    def psub(self, p):
        self.send(frame(OP["PSUB"], short(p)))

    def pub(self, ch, payload, acked=False):
        if isinstance(payload, str):
            payload = payload.encode()
        self.send(frame(OP["PUBA" if acked else "PUB"], short(ch) + payload))

    def name(self, n):
        self.send(frame(OP["NAME"], short(n)))

    def ping(self):
        self.send(frame(OP["PING"]))

    def _parse(self, op, b):
        def sf(i):
            n = b[i]
            return b[i + 1:i + 1 + n], i + 1 + n
        if op == MSG:
            ch, i = sf(0)
            return ("MSG", ch.decode("utf-8", "replace"), struct.unpack(">Q", b[i:i + 8])[0], b[i + 8:])
        if op == OK:
            arg, _ = sf(1)
            return ("OK", b[0], arg.decode("utf-8", "replace"))
        if op == ERR:
            return ("ERR", struct.unpack(">H", b[:2])[0], b[2:].decode("utf-8", "replace"))
        if op == HIST:
            ch, i = sf(0)
            e, f, l = struct.unpack(">QQQ", b[i:i + 24])
            return ("HIST", ch.decode("utf-8", "replace"), e, f, l, STATUS.get(b[i + 24], b[i + 24]))
        if op == ACK:
            ch, i = sf(0)
            return ("ACK", ch.decode("utf-8", "replace"), struct.unpack(">Q", b[i:i + 8])[0])
        if op == 4:
            self.send(frame(OP["PONG"]))
            return ("PING",)
        if op == 5:
            return ("PONG",)
        if op == UNSUBSCRIBED:
            ch, i = sf(0)
            return ("UNSUBSCRIBED", ch.decode(), b[i:].decode("utf-8", "replace"))
        return ("OP%02x" % op, b)

    def recv(self, timeout=5.0):
        """The next frame, or None at timeout; raises Closed at EOF."""
        end = time.time() + timeout
        while True:
            if len(self.buf) >= 5:
                n = struct.unpack(">I", self.buf[:4])[0]
                if len(self.buf) >= 4 + n:
                    op = self.buf[4]
                    body = self.buf[5:4 + n]
                    self.buf = self.buf[4 + n:]
                    return self._parse(op, body)
            if self.buf.startswith(b"ERR ") and b"\n" in self.buf:
                line, _, self.buf = self.buf.partition(b"\n")
                return ("ERR", 0, line.decode("utf-8", "replace"))
            left = end - time.time()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                return None
            except OSError as e:
                self.closed = True
                raise Closed(str(e))
            if not data:
                self.closed = True
                raise Closed("eof")
            self.buf += data

    def until(self, pred, timeout=5.0, keep=None):
        """Frames until one satisfies pred (returned); others appended to keep."""
        end = time.time() + timeout
        while True:
            f = self.recv(max(0.0, end - time.time()))
            if f is None:
                return None
            if pred(f):
                return f
            if keep is not None:
                keep.append(f)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def wait_ok(c, op, arg=None, timeout=5.0, keep=None):
    return c.until(lambda f: (f[0] == "OK" and f[1] == OP[op] and (arg is None or f[2] == arg))
                   or f[0] == "ERR", timeout, keep)


def resume(c, ch, after, epoch, timeout=10.0):
    """Resume `ch`: returns (hist, replay [(off,payload)], final frame OK/ERR/None)."""
    c.sub(ch, after, epoch)
    hist, replay = None, []
    end = time.time() + timeout
    while time.time() < end:
        f = c.recv(max(0.0, end - time.time()))
        if f is None:
            break
        if f[0] == "HIST" and f[1] == ch and hist is None:
            hist = f
        elif f[0] == "MSG" and f[1] == ch:
            replay.append((f[2], f[3]))
        elif f[0] == "OK" and f[1] == OP["SUB"] and f[2] == ch:
            return hist, replay, f
        elif f[0] == "ERR":
            return hist, replay, f
    return hist, replay, None


class RawReader(threading.Thread):
    """Reads a client's socket as fast as it can (parsing after), so that a Python subscriber
    is not itself the slow consumer. `frames()` parses what came."""

    def __init__(self, client, seconds=25, idle=3.0):
        super().__init__(daemon=True)
        self.client, self.seconds, self.idle = client, seconds, idle
        self.chunks = []
        self.closed = False

    def run(self):
        s = self.client.sock
        end = time.time() + self.seconds
        s.settimeout(self.idle)
        while time.time() < end:
            try:
                d = s.recv(1 << 20)
            except socket.timeout:
                break
            except OSError:
                self.closed = True
                break
            if not d:
                self.closed = True
                break
            self.chunks.append(d)

    def frames(self):
        c = self.client
        c.buf += b"".join(self.chunks)
        self.chunks = []
        out = []
        while True:
            try:
                f = c.recv(0)
            except Closed:
                break
            if f is None:
                break
            out.append(f)
        if self.closed:
            out.append(("CLOSED",))
        return out
