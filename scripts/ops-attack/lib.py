"""Black-box helpers for testing fanout. Everything on 127.0.0.1."""
import os, re, socket, subprocess, sys, time, json, base64, signal, threading, hashlib

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("FANOUT_BIN", os.path.join(HERE, "fanout"))
WORK = os.path.join(HERE, "work")
os.makedirs(WORK, exist_ok=True)

FAILS = []
PASSES = []


WARNS = []


def check(cond, name, detail="", soft=False):
    """soft=True: a usability note, reported but not a broken promise."""
    if cond:
        PASSES.append(name)
        print(f"  PASS {name}")
    elif soft:
        WARNS.append((name, detail))
        print(f"  WARN {name} :: {detail}")
    else:
        FAILS.append((name, detail))
        print(f"  FAIL {name} :: {detail}")
    return cond


def finish():
    print(f"\n{len(PASSES)} passed, {len(FAILS)} failed, {len(WARNS)} warnings")
    for n, d in WARNS:
        print(f"  WARNING: {n} :: {d}")
    for n, d in FAILS:
        print(f"  FAILED: {n} :: {d}")
    sys.exit(1 if FAILS else 0)


def wfile(name, text):
    p = os.path.join(WORK, name)
    with open(p, "w") as f:
        f.write(text)
    return p


class Server:
    def __init__(self, args, config=None, name="srv", env=None):
        self.log_path = os.path.join(WORK, name + ".log")
        self.logf = open(self.log_path, "w")
        cmd = [BIN, "serve"]
        if config:
            cmd += ["--config", config]
        cmd += args
        if "--workers" not in args and not config:
            cmd += ["--workers", "1"]
        if "--no-pin" not in args and not config:
            cmd += ["--no-pin"]
        e = dict(os.environ)
        e.pop("RUST_LOG", None)
        if env:
            e.update(env)
        self.cmd = cmd
        self.p = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, env=e)
        self.addr = None
        deadline = time.time() + 10
        while time.time() < deadline:
            m = re.search(r"listening on (127\.0\.0\.1:\d+)", self.log())
            if m:
                h, pt = m.group(1).split(":")
                self.addr = (h, int(pt))
                break
            if self.p.poll() is not None:
                break
            time.sleep(0.05)

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def alive(self):
        return self.p.poll() is None

    def hup(self, wait_for=None, timeout=3.0):
        """Send SIGHUP; wait until a new log line about reloading appears."""
        before = len(self.log())
        self.p.send_signal(signal.SIGHUP)
        deadline = time.time() + timeout
        while time.time() < deadline:
            new = self.log()[before:]
            if wait_for is None and re.search(r"reload", new, re.I) and new.endswith("\n"):
                time.sleep(0.2)
                return self.log()[before:]
            if wait_for is not None and re.search(wait_for, new):
                time.sleep(0.1)
                return self.log()[before:]
            time.sleep(0.05)
        return self.log()[before:]

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(8)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.logf.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()


def run_cli(args, timeout=10):
    r = subprocess.run([BIN] + args, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def token(secret, sub="alice", subscribe=(), publish=(), ttl=3600, **extra):
    import jwt
    claims = {"sub": sub, "exp": int(time.time()) + ttl}
    if subscribe is not None:
        claims["subscribe"] = list(subscribe)
    if publish is not None:
        claims["publish"] = list(publish)
    claims.update(extra)
    t = jwt.encode(claims, secret, algorithm="HS256")
    return t if isinstance(t, str) else t.decode()


class Text:
    """Text-protocol client."""

    def __init__(self, addr, timeout=2.0):
        self.s = socket.create_connection(addr, timeout=timeout)
        self.buf = b""
        self.closed = False

    def send(self, line):
        if isinstance(line, str):
            line = line.encode()
        self.s.sendall(line + b"\n")

    def _fill(self, deadline):
        self.s.settimeout(max(0.01, deadline - time.time()))
        try:
            d = self.s.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, OSError):
            self.closed = True
            return False
        if not d:
            self.closed = True
            return False
        self.buf += d
        return True

    def line(self, timeout=1.5):
        deadline = time.time() + timeout
        while b"\n" not in self.buf:
            if time.time() >= deadline or self.closed:
                return None
            if not self._fill(deadline) and (self.closed or time.time() >= deadline):
                if b"\n" not in self.buf:
                    return None
        l, self.buf = self.buf.split(b"\n", 1)
        return l.rstrip(b"\r").decode(errors="replace")

    def cmd(self, line, timeout=1.5):
        """send a command then PING, collect lines until PONG"""
        self.send(line)
        if line != "PING":
            self.send("PING")
        out = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            l = self.line(deadline - time.time())
            if l is None:
                break
            if l == "PONG":
                return out
            out.append(l)
        out.append("<no PONG>")
        return out

    def drain(self, timeout=0.5):
        out = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            l = self.line(deadline - time.time())
            if l is None:
                break
            out.append(l)
        return out

    def close(self):
        try:
            self.s.close()
        except Exception:
            pass


def http(addr, method, path, body=None, headers=None, timeout=3.0):
    """Simple one-shot HTTP/1.1 request; returns (status, headers_text, body)."""
    s = socket.create_connection(addr, timeout=timeout)
    h = {"Host": "127.0.0.1", "Connection": "close"}
    if headers:
        h.update(headers)
    if body is not None:
        if isinstance(body, str):
            body = body.encode()
        h["Content-Length"] = str(len(body))
    req = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    s.sendall(req.encode() + (body or b""))
    data = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        except OSError:
            break
        if not d:
            break
        data += d
    s.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ")[1])
    except Exception:
        status = None
    return status, head.decode(errors="replace"), rest.decode(errors="replace")


class Stream:
    """Open a streaming HTTP request (SSE) and read raw bytes."""

    def __init__(self, addr, path, headers=None, timeout=2.0):
        self.s = socket.create_connection(addr, timeout=timeout)
        h = {"Host": "127.0.0.1"}
        if headers:
            h.update(headers)
        req = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        self.s.sendall(req.encode())
        self.data = b""

    def read(self, timeout=1.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.s.settimeout(max(0.01, deadline - time.time()))
            try:
                d = self.s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                break
            if not d:
                break
            self.data += d
        return self.data.decode(errors="replace")

    def close(self):
        self.s.close()


class WS:
    """Minimal WebSocket client (text frames, JSON)."""

    def __init__(self, addr, path="/ws", headers=None, timeout=2.0, proto=None):
        self.s = socket.create_connection(addr, timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        h = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
             "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}
        if proto:
            h["Sec-WebSocket-Protocol"] = proto
        if headers:
            h.update(headers)
        req = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        self.s.sendall(req.encode())
        self.buf = b""
        deadline = time.time() + timeout
        while b"\r\n\r\n" not in self.buf and time.time() < deadline:
            d = self.s.recv(4096)
            if not d:
                break
            self.buf += d
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.head = head.decode(errors="replace")
        try:
            self.status = int(self.head.split(" ")[1])
        except Exception:
            self.status = None

    def send(self, obj, opcode=1):
        data = json.dumps(obj).encode() if not isinstance(obj, (bytes, str)) else (obj.encode() if isinstance(obj, str) else obj)
        mask = os.urandom(4)
        n = len(data)
        hdr = bytes([0x80 | opcode])
        if n < 126:
            hdr += bytes([0x80 | n])
        elif n < 65536:
            hdr += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            hdr += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.s.sendall(hdr + mask + masked)

    def recv(self, timeout=1.0):
        deadline = time.time() + timeout
        while True:
            if len(self.buf) >= 2:
                b1 = self.buf[1] & 0x7F
                off = 2
                if b1 == 126:
                    if len(self.buf) >= 4:
                        b1 = int.from_bytes(self.buf[2:4], "big"); off = 4
                    else:
                        b1 = None
                elif b1 == 127:
                    if len(self.buf) >= 10:
                        b1 = int.from_bytes(self.buf[2:10], "big"); off = 10
                    else:
                        b1 = None
                if b1 is not None and len(self.buf) >= off + b1:
                    op = self.buf[0] & 0x0F
                    payload = self.buf[off:off + b1]
                    self.buf = self.buf[off + b1:]
                    if op == 1:
                        return json.loads(payload)
                    if op == 8:
                        return {"op": "_close", "code": int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None, "reason": payload[2:].decode(errors="replace")}
                    if op == 9:
                        # answer ping
                        continue
                    if op == 2:
                        return {"op": "_binary", "data": payload}
                    continue
            if time.time() >= deadline:
                return None
            self.s.settimeout(max(0.01, deadline - time.time()))
            try:
                d = self.s.recv(65536)
            except socket.timeout:
                return None
            except OSError:
                return None
            if not d:
                return None
            self.buf += d

    def drain(self, timeout=0.6):
        out = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = self.recv(deadline - time.time())
            if m is None:
                break
            out.append(m)
        return out

    def close(self):
        self.s.close()


def resp_cmd(*args):
    out = f"*{len(args)}\r\n".encode()
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out += f"${len(a)}\r\n".encode() + a + b"\r\n"
    return out


class Resp:
    def __init__(self, addr, timeout=2.0):
        self.s = socket.create_connection(addr, timeout=timeout)
        self.data = b""

    def send(self, *args):
        self.s.sendall(resp_cmd(*args))

    def read(self, timeout=0.6):
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.s.settimeout(max(0.01, deadline - time.time()))
            try:
                d = self.s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                break
            if not d:
                break
            self.data += d
        out, self.data = self.data, b""
        return out.decode(errors="replace")

    def close(self):
        self.s.close()


def api_publish(addr, key, channel, data):
    return http(addr, "POST", "/api/publish", json.dumps({"channel": channel, "data": data}),
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})


class Bin:
    """Binary-protocol client."""
    PREFACE = bytes.fromhex("0046414E4F555401")

    def __init__(self, addr, timeout=2.0):
        self.s = socket.create_connection(addr, timeout=timeout)
        self.s.sendall(self.PREFACE)
        self.buf = b""

    @staticmethod
    def short(x):
        x = x.encode() if isinstance(x, str) else x
        return bytes([len(x)]) + x

    def frame(self, op, body=b""):
        self.s.sendall((len(body) + 1).to_bytes(4, "big") + bytes([op]) + body)

    def sub(self, ch):
        self.frame(0x01, self.short(ch))

    def psub(self, pat):
        self.frame(0x09, self.short(pat))

    def pub(self, ch, payload):
        self.frame(0x03, self.short(ch) + (payload.encode() if isinstance(payload, str) else payload))

    def auth(self, tok):
        self.frame(0x08, tok.encode())

    def ping(self):
        self.frame(0x04)

    def frames(self, timeout=0.6):
        out = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            while len(self.buf) >= 4:
                n = int.from_bytes(self.buf[:4], "big")
                if len(self.buf) < 4 + n:
                    break
                op = self.buf[4]
                body = self.buf[5:4 + n]
                self.buf = self.buf[4 + n:]
                out.append(self.decode(op, body))
            self.s.settimeout(max(0.01, deadline - time.time()))
            try:
                d = self.s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                break
            if not d:
                break
            self.buf += d
        return out

    @staticmethod
    def decode(op, body):
        try:
            if op == 0x81:
                l = body[0]; ch = body[1:1 + l].decode(); off = int.from_bytes(body[1 + l:9 + l], "big")
                return ("MSG", ch, off, body[9 + l:])
            if op == 0x82:
                l = body[1]; return ("OK", body[0], body[2:2 + l].decode())
            if op == 0x83:
                return ("ERR", int.from_bytes(body[:2], "big"), body[2:].decode(errors="replace"))
            if op == 0x05:
                return ("PONG",)
            if op == 0x04:
                return ("PING",)
        except Exception:
            pass
        return (hex(op), body)

    def close(self):
        self.s.close()
