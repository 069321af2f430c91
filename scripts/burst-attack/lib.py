# Helpers for burst_attack.py (run that one: see its first line). Everything on 127.0.0.1.
"""Black-box helpers: Redis and fanout processes, binary and text clients, PASS/FAIL checks."""
import os, re, socket, struct, subprocess, sys, threading, time, shutil, tempfile, signal

BIN = os.environ.get("FANOUT_BIN")
NICE = ["nice", "-n", "19"]
WORK = tempfile.mkdtemp(prefix="fanout-burst-")
PROCS = []          # every process we started, stopped by pid at the end
FAILS, PASSES, NOTES = [], [], []


def check(cond, name, detail=""):
    if cond:
        PASSES.append(name)
        print(f"PASS {name}", flush=True)
    else:
        FAILS.append((name, detail))
        d = str(detail)
        print(f"FAIL {name} :: {d[:1500]}", flush=True)
    return cond


def note(text):
    NOTES.append(text)
    print(f"NOTE {text}", flush=True)


def free_port(bus=False):
    for _ in range(200):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        if p + 10000 > 65535 and bus:
            continue
        if bus:
            t = socket.socket()
            try:
                t.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
            finally:
                t.close()
        return p
    raise RuntimeError("no free port")


def wait_port(port, proc=None, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            if proc is not None and proc.poll() is not None:
                return False
            time.sleep(0.05)
    return False


class Redis:
    def __init__(self, name, port=None, save=False, cluster=False, dbfile="dump.rdb"):
        self.name, self.port = name, port or free_port(bus=cluster)
        self.dir = os.path.join(WORK, name)
        os.makedirs(self.dir, exist_ok=True)
        self.cluster, self.save, self.dbfile = cluster, save, dbfile
        self.p = None
        self.start()

    def start(self):
        cmd = NICE + ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                      "--dbfilename", self.dbfile, "--appendonly", "no", "--save", "",
                      "--logfile", os.path.join(self.dir, "redis.log")]
        if self.cluster:
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", os.path.join(self.dir, "nodes.conf"),
                    "--cluster-node-timeout", "3000"]
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        PROCS.append(self.p)
        if not wait_port(self.port, self.p):
            raise RuntimeError(f"redis {self.name} did not start")
        import redis
        end = time.time() + 10
        while time.time() < end:   # wait until the RDB is loaded
            try:
                redis.Redis(port=self.port).ping()
                break
            except Exception:
                time.sleep(0.05)

    def cli(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)

    def kill9(self):
        if self.p and self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait()

    def stop(self):
        self.kill9()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"


class Node:
    def __init__(self, name, redis_args, history=None, extra=()):
        self.name = name
        self.log_path = os.path.join(WORK, name + ".log")
        args = [BIN, "serve", "--listen", "127.0.0.1:0", "--workers", "1", "--no-pin", "--stats-interval-secs", "0"]
        args += list(redis_args)
        if history is not None:
            args += ["--history-messages", str(history)]
        args += list(extra)
        self.logf = open(self.log_path, "w")
        self.p = subprocess.Popen(NICE + args, stdout=self.logf, stderr=subprocess.STDOUT)
        PROCS.append(self.p)
        self.port = None
        end = time.time() + 15
        while time.time() < end:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log())
            if m:
                self.port = int(m.group(1))
                break
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        if self.port is None:
            raise RuntimeError(f"node {name} did not start: {self.log()[-800:]}")

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def alive(self):
        return self.p.poll() is None and "panicked" not in self.log()

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(8)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()

    def metric(self, name):
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=3)
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
            s.close()
            tot = 0.0
            for line in data.decode(errors="replace").splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    tot += float(line.split()[-1])
            return tot
        except OSError:
            return None


def cleanup():
    for p in PROCS:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGKILL)
                p.wait(5)
            except Exception:
                pass
    if os.environ.get("KEEP_WORK"):
        print("work dir kept:", WORK)
    else:
        shutil.rmtree(WORK, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Clients. Events are tuples: ("MSG", ch, off, payload) ("HIST", ch, epoch, first, last, status)
# ("ACK", ch, off) ("OK", what, arg) ("ERR", code, reason) ("PONG",) ("CLOSED",)

ST = {0: "ok", 1: "expired", 2: "epoch"}


class Conn:
    """A reader thread parses everything into self.ev (under self.cv)."""

    def __init__(self, port, binary=True):
        self.binary = binary
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.s.settimeout(None)
        self.ev = []
        self.cv = threading.Condition()
        self.closed = False
        self.wlock = threading.Lock()
        if binary:
            self.s.sendall(b"\x00FANOUT\x01")
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    # -- writing
    def send(self, data):
        with self.wlock:
            self.s.sendall(data)

    @staticmethod
    def short(b):
        if isinstance(b, str):
            b = b.encode()
        return bytes([len(b)]) + b

    @staticmethod
    def frame(op, body):
        return struct.pack(">IB", len(body) + 1, op) + body

    @staticmethod
    def esc(p):
        return p.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")

    def enc_puba(self, ch, payload, acked=True):
        if self.binary:
            return self.frame(0x07 if acked else 0x03, self.short(ch) + payload)
        return (b"PUBA " if acked else b"PUB ") + ch.encode() + b" " + self.esc(payload) + b"\n"

    def enc_sub(self, ch, after=None, epoch=None, strict=False):
        if self.binary:
            body = self.short(ch)
            if after is not None:
                body += struct.pack(">Q", after)
                if epoch is not None or strict:
                    body += struct.pack(">Q", epoch or 0)
                    if strict:
                        body += b"\x01"
            return self.frame(0x01, body)
        line = "SUB " + ch
        if after is not None:
            line += f" {after}"
            if epoch is not None:
                line += " %016x" % epoch
            elif strict:
                line += " *"
            if strict:
                line += " strict"
        return (line + "\n").encode()

    def enc_unsub(self, ch):
        return self.frame(0x02, self.short(ch)) if self.binary else f"UNSUB {ch}\n".encode()

    def enc_ping(self):
        return self.frame(0x04, b"") if self.binary else b"PING\n"

    # -- reading
    def _push(self, e):
        with self.cv:
            self.ev.append(e)
            self.cv.notify_all()

    def _run(self):
        buf = b""
        try:
            while True:
                d = self.s.recv(1 << 20)
                if not d:
                    break
                buf += d
                buf = self._parse(buf)
        except OSError:
            pass
        self.closed = True
        self._push(("CLOSED",))

    def _parse(self, buf):
        if self.binary:
            pos, n = 0, len(buf)
            out = []
            while n - pos >= 4:
                ln = struct.unpack_from(">I", buf, pos)[0]
                if buf[pos:pos + 4] == b"ERR ":
                    i = buf.find(b"\n", pos)
                    if i < 0:
                        break
                    out.append(("ERR", 0, buf[pos:i].decode(errors="replace")))
                    pos = i + 1
                    continue
                if n - pos - 4 < ln:
                    break
                f = buf[pos + 4:pos + 4 + ln]
                pos += 4 + ln
                out.append(self._bframe(f))
            if out:
                with self.cv:
                    self.ev.extend(out)
                    self.cv.notify_all()
            return buf[pos:]
        lines = buf.split(b"\n")
        rest = lines.pop()
        out = []
        for l in lines:
            l = l.rstrip(b"\r")
            if l:
                out.append(self._tline(l))
        if out:
            with self.cv:
                self.ev.extend(out)
                self.cv.notify_all()
        return rest

    @staticmethod
    def _unesc(p):
        out, i = bytearray(), 0
        while i < len(p):
            c = p[i]
            if c == 0x5C and i + 1 < len(p) and p[i + 1] in b"\\nr":
                out += {0x5C: b"\\", ord("n"): b"\n", ord("r"): b"\r"}[p[i + 1]]
                i += 2
            else:
                out.append(c)
                i += 1
        return bytes(out)

    def _tline(self, l):
        w = l.split(b" ", 3)
        k = w[0]
        if k == b"MSG":
            return ("MSG", w[1].decode(), int(w[2]), self._unesc(w[3]) if len(w) > 3 else b"")
        if k == b"HIST":
            w = l.decode().split()
            return ("HIST", w[1], int(w[2], 16), int(w[3]), int(w[4]), w[5])
        if k == b"ACK":
            return ("ACK", w[1].decode(), int(w[2]))
        if k == b"OK":
            return ("OK", w[1].decode(), w[2].decode() if len(w) > 2 else "")
        if k == b"ERR":
            return ("ERR", int(w[1]) if w[1].isdigit() else 0, l.decode(errors="replace"))
        if k == b"PONG":
            return ("PONG",)
        if k == b"PING":
            self.send(b"PONG\n")
            return ("PING",)
        return ("?", l)

    def _bframe(self, f):
        op = f[0]
        b = f[1:]
        if op in (0x81, 0x84, 0x85, 0x8A):
            cl = b[0]
            ch = b[1:1 + cl].decode(errors="replace")
            r = b[1 + cl:]
            if op == 0x81:
                return ("MSG", ch, struct.unpack_from(">Q", r)[0], bytes(r[8:]))
            if op == 0x84:
                e, fi, la, st = struct.unpack_from(">QQQB", r)
                return ("HIST", ch, e, fi, la, ST.get(st, st))
            if op == 0x85:
                return ("ACK", ch, struct.unpack_from(">Q", r)[0])
            return ("UNSUBSCRIBED", ch, r.decode(errors="replace"))
        if op == 0x82:
            return ("OK", {1: "SUB", 2: "UNSUB", 6: "NAME"}.get(b[0], b[0]), b[2:2 + b[1]].decode(errors="replace"))
        if op == 0x83:
            return ("ERR", struct.unpack_from(">H", b)[0], b[2:].decode(errors="replace"))
        if op == 0x05:
            return ("PONG",)
        if op == 0x04:
            self.send(self.frame(0x05, b""))
            return ("PING",)
        return ("?", f)

    def wait(self, pred, timeout=20):
        """Wait until pred(events) is true; returns it (or False on timeout)."""
        end = time.time() + timeout
        with self.cv:
            while True:
                r = pred(self.ev)
                if r:
                    return r
                left = end - time.time()
                if left <= 0:
                    return False
                self.cv.wait(min(left, 0.5))

    def count(self, kind):
        with self.cv:
            return sum(1 for e in self.ev if e[0] == kind)

    def snapshot(self):
        with self.cv:
            return list(self.ev)

    def close(self):
        try:
            self.s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.s.close()


def resume(port, ch, after, epoch, binary=True, timeout=25):
    """SUB ch after epoch on a fresh connection; returns (hist, msgs, end_event, all events)."""
    c = Conn(port, binary)
    c.send(c.enc_sub(ch, after, epoch))

    def done(ev):
        for e in ev:
            if (e[0] == "OK" and e[1] == "SUB" and e[2] == ch) or e[0] in ("ERR", "CLOSED"):
                return True
        return False

    ok = c.wait(done, timeout)
    ev = c.snapshot()
    c.close()
    hist = [e for e in ev if e[0] == "HIST" and e[1] == ch]
    end = [e for e in ev if (e[0] == "OK" and e[1] == "SUB") or e[0] in ("ERR", "CLOSED")]
    msgs = []
    for e in ev:
        if e[0] == "MSG" and e[1] == ch:
            msgs.append((e[2], e[3]))
        if e is (end[0] if end else None):
            break
    return (hist[0] if hist else None), msgs, (end[0] if end else ("TIMEOUT",)), ev


def judge_resume(ref, epoch, after, got, expect_ok=False):
    """ref: {offset: payload} of the channel in `epoch` (all offsets 1..last). Returns an error string or ''."""
    hist, msgs, end, _ = got
    last = max(ref) if ref else 0
    if hist is None:
        return f"no HIST (end={end})"
    if end[0] != "OK":
        return f"resume ended with {end}"
    _, ch, he, first, hl, st = hist
    if he != epoch:
        if st != "epoch":
            return f"HIST names epoch {he:x} (asked {epoch:x}) with status {st}"
        return ""
    if st not in ("ok", "expired", "epoch"):
        return f"bad status {st}"
    if expect_ok and st != "ok":
        return f"status {st} (first={first} last={hl}) though Redis holds the whole stream"
    if st == "ok":
        want = [(o, ref.get(o, b"<never delivered live>")) for o in range(after + 1, last + 1)]
    else:
        # told: the replay must still be a correct, ordered, duplicate-free suffix
        if st == "epoch":
            return ""
        want = [(o, ref.get(o, b"<never delivered live>")) for o in range(first, last + 1)] if first else []
    live = [m for m in msgs if m[0] > last]
    msgs = [m for m in msgs if m[0] <= last]
    if msgs != want:
        # find first difference
        for i, (a, b) in enumerate(zip(msgs, want)):
            if a != b:
                return (f"status {st}, first={first} last={hl}: #{i} got ({a[0]}, {a[1][:40]!r}) want "
                        f"({b[0]}, {b[1][:40]!r}); got {len(msgs)} want {len(want)}")
        return f"status {st}, first={first} last={hl}: got {len(msgs)} msgs want {len(want)} " \
               f"(got offsets {msgs[0][0] if msgs else None}..{msgs[-1][0] if msgs else None})"
    return ""
