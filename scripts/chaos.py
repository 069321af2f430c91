#!/usr/bin/python3
"""Chaos driver for scripts/cluster-chaos.sh: fanout nodes joined through Redis (standalone with
RDB snapshots, then a 3+3 Redis Cluster), acknowledged publishers and resuming subscribers on the
text protocol, a seeded schedule of faults, then a check of the recorded history against:

  1. no (channel, epoch, offset) names two payloads; an acknowledged payload is only ever
     delivered at its acknowledged offset;
  2. every acknowledged publish reaches every subscriber of its channel exactly once, in offset
     order, or the subscriber is told (HIST epoch / expired) after a fault that can lose data;
  3. while Redis is unreachable nothing is acknowledged; publishing comes back by itself after
     each fault (Redis back, failover done);
  4. clients of a SIGKILLed node move to another node and resume there.

The partition fault (with --netns, set up by cluster-chaos.sh): node 0 runs inside the network
namespace NS (ip netns exec), listening on --ns-ip; Redis listens on 127.0.0.1 and --ns-host-ip
(the host end of the veth pair), and Redis Cluster announces --ns-host-ip, so that node 0 and the
host's nodes find the same addresses in CLUSTER SLOTS. The fault adds tc u32 filters on the clsact
qdisc of the namespace's end of the veth (--ns-dev) that redirect node 0's packets to the Redis
ports (egress) and Redis's packets from them (ingress) to --ns-drop-dev, whose peer is down: they
are dropped silently, as by a partition, while node 0's clients (on its own port) stay connected.
Healing deletes the filters. Midway (a seeded moment, before or after node 0 notices), one
subscriber of another node is moved onto node 0 and resumes there: a resume on a node that is
behind and cannot read the stream. A partition loses nothing in Redis, so it excuses no loss;
node 0 must acknowledge nothing that would have had to cross it, and answer /healthz 200 again
soon after it heals.

Loopback and that namespace only; every process it starts is killed on exit (and listed in
WORK/pids for the calling script's trap). Usage: chaos.py --work DIR --fanout BIN [--cycles N]
[--seed S] [--phases standalone,cluster] [--netns NS --ns-dev DEV --ns-drop-dev DEV
--ns-host-ip A --ns-ip B | --no-partition WHY]
"""
import argparse
import asyncio
import collections
import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import redis

T0 = time.monotonic()
# Nodes 0-2 have subscribers (and a publisher each); node 3 only a publisher, so it serves no
# channel (its publishes carry no fence).
NODES = 4
SUB_NODES = 3
# The node that runs in the namespace and that the partition fault cuts off from Redis (it has
# subscribers, and publisher 0 starts on it).
NS_NODE = 0


def now():
    return time.monotonic() - T0


def log(msg):
    print(f"[{now():7.2f}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# processes

class Procs:
    def __init__(self, work):
        self.work = work
        self.live = {}  # name -> Popen
        self.pidfile = os.path.join(work, "pids")

    def start(self, name, args, logfile):
        out = open(logfile, "ab")
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        self.live[name] = p
        with open(self.pidfile, "a") as f:
            f.write(f"{p.pid}\n")
        return p

    def signal(self, name, sig):
        p = self.live.get(name)
        if p and p.poll() is None:
            p.send_signal(sig)

    def kill(self, name):
        p = self.live.pop(name, None)
        if p is None:
            return
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGCONT)
                p.kill()
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self):
        for name in list(self.live):
            self.kill(name)


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pick_ports(rng, count, low=20000, high=30000):
    """`count` consecutive ports below 32768 whose port+10000 (cluster bus) is free too."""
    for _ in range(500):
        base = rng.randrange(low, high - count)
        if all(port_free(p) and port_free(p + 10000) for p in range(base, base + count)):
            return list(range(base, base + count))
    raise RuntimeError("no free ports")


def wait_until(pred, timeout, step=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return True
        except Exception:
            pass
        time.sleep(step)
    return False


class Net:
    """Where each process listens and connects, and the partition fault (see the docstring)."""

    def __init__(self, args):
        self.ns = args.netns
        self.dev, self.drop_dev = args.ns_dev, args.ns_drop_dev
        self.host_ip = args.ns_host_ip if self.ns else "127.0.0.1"
        self.ns_ip = args.ns_ip
        self.why = args.no_partition

    def inside(self, i):
        return bool(self.ns) and i == NS_NODE

    def node_host(self, i):
        """Where node i listens (and its clients connect)."""
        return self.ns_ip if self.inside(i) else "127.0.0.1"

    def redis_host(self, i):
        """The address node i is given for Redis."""
        return self.host_ip if self.inside(i) else "127.0.0.1"

    def redis_bind(self):
        return ["127.0.0.1"] + ([self.host_ip] if self.ns else [])

    def prefix(self, i):
        return ["ip", "netns", "exec", self.ns] if self.inside(i) else []

    def tc(self, lines, check=True):
        r = subprocess.run(["tc", "-n", self.ns, "-batch", "-"], input="".join(lines).encode(),
                           capture_output=True, timeout=20)
        if check and r.returncode != 0:
            raise RuntimeError(f"tc failed: {r.stderr.decode()[-300:]}")
        return r

    def cut(self, ports, direction):
        """Drop node NS_NODE's packets to these Redis ports ('to') and theirs to it ('from')."""
        lines = []
        for p in ports:
            if direction in ("both", "to"):
                lines.append(f"filter add dev {self.dev} egress protocol ip prio 1 u32 "
                             f"match ip dport {p} 0xffff action mirred egress redirect dev {self.drop_dev}\n")
            if direction in ("both", "from"):
                lines.append(f"filter add dev {self.dev} ingress protocol ip prio 1 u32 "
                             f"match ip sport {p} 0xffff action mirred egress redirect dev {self.drop_dev}\n")
        self.tc(lines)

    def dropped(self):
        """Packets the partition's filters dropped so far."""
        total = 0
        for hook in ("egress", "ingress"):
            r = subprocess.run(["tc", "-n", self.ns, "-s", "filter", "show", "dev", self.dev, hook],
                               capture_output=True, timeout=10)
            for line in r.stdout.decode().splitlines():
                line = line.strip()
                if line.startswith("Sent ") and "overlimits" in line:
                    total += int(line.split("overlimits")[1].split()[0])
        return total

    def heal(self):
        self.tc([f"filter del dev {self.dev} egress\n", f"filter del dev {self.dev} ingress\n"],
                check=False)


NET = None  # a Net, set by main()


def rcli(port, timeout=1.0):
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=timeout,
                       socket_connect_timeout=timeout)


def crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


# ---------------------------------------------------------------------------------------------
# Redis: standalone with snapshots

class Standalone:
    kind = "standalone"

    def __init__(self, procs, work, rng):
        self.procs, self.rng = procs, rng
        self.dir = os.path.join(work, "redis-sa")
        self.snapdir = os.path.join(self.dir, "snapshots")
        os.makedirs(self.snapdir, exist_ok=True)
        self.port = pick_ports(rng, 1)[0]
        self.snaps = []  # (t_before_SAVE, path)
        self.up = False
        self.stopped = False

    def urls(self, i):
        return ["--redis", f"redis://{NET.redis_host(i)}:{self.port}"]

    def client_ports(self):
        return [self.port]

    def start(self):
        self.procs.start("redis", ["redis-server", "--port", str(self.port), "--bind", *NET.redis_bind(),
                                   "--protected-mode", "no", "--dir", self.dir,
                                   "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no",
                                   "--loglevel", "warning"],
                         os.path.join(self.dir, "redis.log"))
        if not wait_until(lambda: rcli(self.port).ping(), 10):
            raise RuntimeError("redis did not start")
        self.up = True

    def kill(self):
        self.up = False
        self.procs.kill("redis")

    def save(self):
        if not self.up or self.stopped:
            return
        t = now()
        try:
            rcli(self.port, 3).save()
        except Exception:
            return
        path = os.path.join(self.snapdir, f"{len(self.snaps):04d}.rdb")
        try:
            shutil.copyfile(os.path.join(self.dir, "dump.rdb"), path)
        except OSError:
            return
        self.snaps.append((t, path))

    def restore(self, which):
        dump = os.path.join(self.dir, "dump.rdb")
        if which is None:
            if os.path.exists(dump):
                os.remove(dump)
        else:
            shutil.copyfile(which[1], dump)

    def converged(self):
        return rcli(self.port).ping()


# ---------------------------------------------------------------------------------------------
# Redis Cluster: 3 masters + 3 replicas

class RCluster:
    kind = "cluster"

    def __init__(self, procs, work, rng):
        self.procs, self.rng, self.work = procs, rng, work
        self.ports = pick_ports(rng, 6)
        self.dirs = {}
        for p in self.ports:
            d = os.path.join(work, f"rc-{p}")
            os.makedirs(d, exist_ok=True)
            self.dirs[p] = d
        self.alive = set()

    def urls(self, i):
        out = []
        for p in self.ports:
            out += ["--redis-cluster", f"redis://{NET.redis_host(i)}:{p}"]
        return out

    def client_ports(self):
        return list(self.ports)

    def start_one(self, p):
        # with a namespace, every Redis node announces the host end of the veth pair, which both
        # the host's nodes and the namespace's node reach (127.0.0.1 inside is the namespace's own)
        announce = ["--cluster-announce-ip", NET.host_ip] if NET.ns else []
        self.procs.start(f"rc{p}", ["redis-server", "--port", str(p), "--bind", *NET.redis_bind(),
                                    *announce,
                                    "--protected-mode", "no", "--dir", self.dirs[p],
                                    "--cluster-enabled", "yes",
                                    "--cluster-config-file", "nodes.conf",
                                    "--cluster-node-timeout", "2000",
                                    "--cluster-replica-validity-factor", "0",
                                    "--save", "", "--appendonly", "no", "--loglevel", "warning"],
                         os.path.join(self.dirs[p], "redis.log"))
        if not wait_until(lambda: rcli(p).ping(), 10):
            raise RuntimeError(f"redis {p} did not start")
        self.alive.add(p)

    def kill(self, p):
        self.alive.discard(p)
        self.procs.kill(f"rc{p}")

    def start(self):
        for p in self.ports:
            self.start_one(p)
        args = ["redis-cli", "--cluster", "create"] + [f"{NET.host_ip}:{p}" for p in self.ports] + \
               ["--cluster-replicas", "1", "--cluster-yes"]
        r = subprocess.run(args, capture_output=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError("cluster create failed: " + r.stdout.decode()[-500:] + r.stderr.decode()[-500:])
        if not wait_until(self.converged, 30, 0.2):
            raise RuntimeError("cluster did not converge")

    def nodes(self, via=None):
        """[(port, role, master_port or None, flags, slots)] as one live node sees them."""
        for p in ([via] if via else sorted(self.alive)):
            try:
                text = rcli(p).execute_command("CLUSTER", "NODES")
            except Exception:
                continue
            if isinstance(text, bytes):
                text = text.decode()
            byid, rows = {}, []
            for line in text.strip().splitlines():
                f = line.split()
                port = int(f[1].split("@")[0].split(":")[1])
                byid[f[0]] = port
                rows.append((f[0], port, f[2], f[3], f[8:]))
            out = []
            for _id, port, flags, master, slots in rows:
                role = "master" if "master" in flags else "replica"
                out.append((port, role, byid.get(master), flags, slots))
            return out
        return []

    def masters(self):
        return sorted(p for p, role, _, flags, slots in self.nodes()
                      if role == "master" and "fail" not in flags and slots and p in self.alive)

    def converged(self):
        """cluster_state ok everywhere, 3 masters with slots, each replica's link up."""
        for p in self.alive:
            info = rcli(p).execute_command("CLUSTER", "INFO")
            if isinstance(info, bytes):
                info = info.decode()
            if "cluster_state:ok" not in info:
                return False
        masters = self.masters()
        if len(masters) != 3:
            return False
        for p in self.alive:
            if p in masters:
                continue
            rep = rcli(p).info("replication")
            if rep.get("role") != "slave" or rep.get("master_link_status") != "up":
                return False
        return True

    def slot_owner(self, slot):
        for p, role, _, flags, slots in self.nodes():
            if role != "master" or "fail" in flags:
                continue
            for s in slots:
                if s.startswith("["):
                    continue
                a, _, b = s.partition("-")
                if int(a) <= slot <= int(b or a):
                    return p
        return None


# ---------------------------------------------------------------------------------------------
# fanout nodes

class Nodes:
    def __init__(self, procs, work, fanout, rng, redis_args, timeout_ms, phase):
        self.procs, self.work, self.fanout = procs, work, fanout
        self.redis_args, self.timeout_ms, self.phase = redis_args, timeout_ms, phase
        self.ports = []
        for _ in range(NODES):
            while True:
                p = rng.randrange(12000, 19000)
                if port_free(p) and p not in self.ports:
                    break
            self.ports.append(p)
        self.up = [False] * NODES
        self.unhealthy = []

    def start(self, i):
        p = self.ports[i]
        host = NET.node_host(i)
        # the namespace's node listens on its veth address: no loopback, so --allow-anonymous
        self.procs.start(f"node{i}", NET.prefix(i) + [
                             self.fanout, "serve", "--listen", f"{host}:{p}",
                             "--workers", "1", "--no-pin", "--stats-interval-secs", "0",
                             "--history-messages", "100000",
                             "--redis-timeout-ms", str(self.timeout_ms)]
                         + (["--allow-anonymous"] if NET.inside(i) else []) + self.redis_args(i),
                         os.path.join(self.work, f"{self.phase}-node{i}.log"))

        def listening():
            socket.create_connection((host, p), timeout=1).close()
            return True
        ok = wait_until(listening, 10, 0.05)
        self.up[i] = True
        # /healthz: 200 once the node can publish (recorded, see the notes of the report)
        if ok and not wait_until(lambda: self.healthy(i), 5 if self.phase == "cluster" else 20, 0.1):
            self.unhealthy.append((now(), i, self.health_body(i)))
        return ok

    def health_body(self, i):
        try:
            with urllib.request.urlopen(f"http://{NET.node_host(i)}:{self.ports[i]}/healthz", timeout=1) as r:
                return f"{r.status} {r.read().decode()}"
        except urllib.error.HTTPError as e:
            return f"{e.code} {e.read().decode()}"
        except Exception as e:
            return repr(e)

    def kill(self, i):
        self.up[i] = False
        self.procs.kill(f"node{i}")

    def healthy(self, i):
        try:
            with urllib.request.urlopen(f"http://{NET.node_host(i)}:{self.ports[i]}/healthz", timeout=1) as r:
                return r.status == 200
        except Exception:
            return False


# ---------------------------------------------------------------------------------------------
# clients

def unescape(s):
    return s  # payloads are plain ASCII without backslashes


class Publisher:
    def __init__(self, pid, nodes, channels, rate, rng, rec):
        self.id, self.nodes, self.channels, self.rate = pid, nodes, channels, rate
        self.rng, self.rec = rng, rec
        self.node = pid % NODES
        self.seq = 0
        self.stop = False
        self.pending = collections.deque()
        self.window = 32

    async def run(self):
        while not self.stop:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(NET.node_host(self.node), self.nodes.ports[self.node]), 2)
            except Exception:
                self.node = (self.node + 1) % NODES
                await asyncio.sleep(0.2)
                continue
            node = self.node
            rtask = asyncio.ensure_future(self.read(reader, node))
            try:
                nxt = time.monotonic()
                while not self.stop and not rtask.done():
                    nxt += 1.0 / self.rate
                    delay = nxt - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    else:
                        nxt = time.monotonic()
                    if len(self.pending) >= self.window:
                        continue
                    chan = self.rng.choice(self.channels)
                    payload = f"p{self.id}-{self.seq}"
                    self.seq += 1
                    m = {"chan": chan, "payload": payload, "t_send": now(), "node": node,
                         "status": "unknown", "off": None, "t_ack": None}
                    self.rec.published[payload] = m
                    self.pending.append(m)
                    writer.write(f"PUBA {chan} {payload}\r\n".encode())
                if self.stop:
                    # let outstanding answers arrive
                    end = time.monotonic() + 8
                    while self.pending and time.monotonic() < end and not rtask.done():
                        await asyncio.sleep(0.05)
            except Exception:
                pass
            rtask.cancel()
            try:
                writer.close()
            except Exception:
                pass
            for m in self.pending:
                m["status"] = "unknown"
            self.pending.clear()
            if not self.stop:
                self.rec.pub_disconnects.append((now(), self.id, node))
                self.node = (self.node + 1) % NODES
                await asyncio.sleep(0.1)

    async def read(self, reader, node):
        while True:
            line = await reader.readline()
            if not line:
                return
            line = line.decode().rstrip("\r\n")
            f = line.split(" ")
            if f[0] == "ACK":
                t = now()
                if not self.pending:
                    self.rec.violation(1, f"publisher {self.id}: ACK with nothing pending: {line}")
                    continue
                m = self.pending.popleft()
                if f[1] != m["chan"]:
                    self.rec.violation(1, f"publisher {self.id} node {node}: ACK {f[1]} {f[2]} answers "
                                          f"a publish to {m['chan']} ({m['payload']}): answers out of order")
                m.update(status="acked", off=int(f[2]), t_ack=t)
            elif f[0] == "ERR":
                if not self.pending:
                    self.rec.info.append(f"publisher {self.id}: {line}")
                    continue
                m = self.pending.popleft()
                m.update(status="refused", code=f[1], t_ack=now(), reason=line)
            elif f[0] == "PING":
                pass  # publishers are never silent
            else:
                self.rec.info.append(f"publisher {self.id}: unexpected {line}")


class Subscriber:
    def __init__(self, sid, nodes, channels, rec):
        self.id, self.nodes, self.channels, self.rec = sid, nodes, channels, rec
        self.node = sid % SUB_NODES
        self.epoch = {c: None for c in channels}
        self.last = {c: 0 for c in channels}
        self.events = {c: [] for c in channels}  # (t, kind, ...)
        self.live_at = {}  # channel -> first OK
        self.conns = []  # (t_connect, node, t_all_ok or None, t_disconnect or None)
        self.stop = False
        self.last_rx = now()
        self.writer = None
        self.move_to = None  # set by move(): the node to resume on next

    def move(self, node):
        """Leave the current node (close the connection) and resume on `node`."""
        self.move_to = node
        if self.writer is not None:
            self.writer.close()

    async def run(self):
        while not self.stop:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(NET.node_host(self.node), self.nodes.ports[self.node]), 2)
            except Exception:
                self.node = (self.node + 1) % SUB_NODES
                await asyncio.sleep(0.2)
                continue
            self.writer = writer
            conn = {"t": now(), "node": self.node, "ok": None, "end": None, "oks": set()}
            self.conns.append(conn)
            lines = []
            for c in self.channels:
                if self.epoch[c] is None:
                    lines.append(f"SUB {c} 0")
                    req = (0, None)
                else:
                    lines.append(f"SUB {c} {self.last[c]} {self.epoch[c]}")
                    req = (self.last[c], self.epoch[c])
                self.events[c].append((now(), "sub", self.node, req))
            writer.write(("\r\n".join(lines) + "\r\n").encode())
            try:
                reason = await self.read(reader, writer, conn)
            except Exception as e:
                reason = f"driver error {e!r}"
                self.rec.violation(2, f"(driver) subscriber {self.id}: {e!r}")
            conn["end"] = now()
            self.writer = None
            try:
                writer.close()
            except Exception:
                pass
            if self.move_to is not None:
                reason = f"moved to node {self.move_to}"
            for c in self.channels:
                self.events[c].append((now(), "disc", conn["node"], reason))
            if self.move_to is not None:
                self.node, self.move_to = self.move_to, None
                await asyncio.sleep(0.05)
            elif not self.stop:
                self.node = (self.node + 1) % SUB_NODES
                await asyncio.sleep(0.1 + (self.id % 3) * 0.05)

    async def read(self, reader, writer, conn):
        while not self.stop:
            try:
                line = await asyncio.wait_for(reader.readline(), 1.0)
            except asyncio.TimeoutError:
                continue
            except Exception as e:
                return f"error {e}"
            if not line:
                return "eof"
            self.last_rx = now()
            line = line.decode().rstrip("\r\n")
            t = now()
            f = line.split(" ", 3)
            if f[0] == "MSG":
                c, off, payload = f[1], int(f[2]), unescape(f[3] if len(f) > 3 else "")
                if c not in self.events:
                    continue
                self.events[c].append((t, "msg", self.epoch[c], off, payload, conn["node"]))
                self.last[c] = off
            elif f[0] == "HIST":
                g = line.split(" ")
                c, ep, first, last, status = g[1], g[2], int(g[3]), int(g[4]), g[5]
                if c not in self.events:
                    continue
                self.events[c].append((t, "hist", ep, first, last, status, conn["node"]))
                if ep != self.epoch[c]:
                    self.last[c] = 0
                self.epoch[c] = ep
            elif f[0] == "OK":
                g = line.split(" ")
                if g[1] == "SUB":
                    c = g[2]
                    self.live_at.setdefault(c, t)
                    self.events[c].append((t, "ok", conn["node"]))
                    conn["oks"].add(c)
                    if len(conn["oks"]) == len(self.channels) and conn["ok"] is None:
                        conn["ok"] = t
            elif f[0] == "PING":
                writer.write(b"PONG\r\n")
            elif f[0] == "ERR":
                self.rec.info.append(f"subscriber {self.id} node {conn['node']}: {line}")
                self.rec.sub_errs += 1
                return f"err {line}"
            elif not line.startswith("HIST * "):
                self.rec.info.append(f"subscriber {self.id}: unexpected {line}")
        return "stop"


# ---------------------------------------------------------------------------------------------
# the run of one phase

class Record:
    def __init__(self, phase):
        self.phase = phase
        self.published = {}
        self.violations = {1: [], 2: [], 3: [], 4: []}
        self.info = []
        self.faults = []  # dicts
        self.pub_disconnects = []
        self.sub_errs = 0
        self.timeout_s = 2.0

    def violation(self, promise, text):
        self.violations[promise].append(text)


FAULTS = {
    "standalone": ["stop", "restart_empty", "restart_old", "restart_older", "kill_node"],
    "cluster": ["stop_master", "kill_master", "kill_node"],
}


def make_schedule(rng, phase, cycles):
    """Every kind once per shuffled batch; the partition (when there is a namespace) is in every
    batch and, for runs shorter than a batch, in the schedule all the same."""
    kinds = FAULTS[phase] + (["partition"] if NET.ns else [])
    out = []
    while len(out) < cycles:
        batch = kinds[:]
        rng.shuffle(batch)
        out += batch
    out = out[:cycles]
    if NET.ns and cycles >= 2 and "partition" not in out:
        out[rng.randrange(cycles)] = "partition"
    return out


async def run_phase(phase, args, procs, rng):
    rec = Record(phase)
    rec.timeout_s = args.redis_timeout_ms / 1000
    log(f"=== phase {phase}: starting Redis")
    if phase == "standalone":
        rs = Standalone(procs, args.work, rng)
        await asyncio.to_thread(rs.start)
        channels = [f"ch{i}" for i in range(5)]
    else:
        rs = RCluster(procs, args.work, rng)
        await asyncio.to_thread(rs.start)
        # two channels per default slot range of `redis-cli --cluster create`
        channels, per = [], collections.Counter()
        i = 0
        while len(channels) < 6 and i < 10000:
            name = f"ch{i}"
            rng_idx = min(crc16(name.encode()) % 16384 // 5462, 2)
            if per[rng_idx] < 2:
                per[rng_idx] += 1
                channels.append(name)
            i += 1
    nodes = Nodes(procs, args.work, args.fanout, rng, rs.urls, args.redis_timeout_ms, phase)
    for i in range(NODES):
        ok = await asyncio.to_thread(nodes.start, i)
        if not ok:
            rec.violation(3, f"node {i} not listening 10 s after start")
    log(f"redis {getattr(rs, 'port', None) or rs.ports}, nodes {nodes.ports}, channels {channels}"
        + (f"; node {NS_NODE} in {NET.ns} at {NET.ns_ip}, Redis at {NET.host_ip} for it" if NET.ns else ""))

    subs = [Subscriber(i, nodes, channels, rec) for i in range(6)]
    sub_tasks = [asyncio.ensure_future(s.run()) for s in subs]
    # every subscription live before the first publish
    end = time.monotonic() + 15
    while time.monotonic() < end and not all(len(s.live_at) == len(channels) for s in subs):
        await asyncio.sleep(0.05)
    if not all(len(s.live_at) == len(channels) for s in subs):
        rec.violation(2, "subscribers not all live 15 s after start")
    pubs = [Publisher(i, nodes, channels, args.rate / NODES, random.Random(rng.random()), rec)
            for i in range(NODES)]
    pub_tasks = [asyncio.ensure_future(p.run()) for p in pubs]

    stop_snap = False

    async def snapshots():
        while not stop_snap:
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            await asyncio.to_thread(rs.save)

    snap_task = asyncio.ensure_future(snapshots()) if phase == "standalone" else None

    await asyncio.sleep(3)
    schedule = make_schedule(rng, phase, args.cycles)
    log(f"schedule: {' '.join(schedule)}")
    for cycle, kind in enumerate(schedule):
        f = {"cycle": cycle, "kind": kind, "loss": False, "snap_t": None}
        if kind == "stop":
            d = rng.uniform(1, 3)
            f.update(t=now(), dur=d)
            rs.stopped = True
            procs.signal("redis", signal.SIGSTOP)
            await asyncio.sleep(d)
            procs.signal("redis", signal.SIGCONT)
            rs.stopped = False
            f["t_end"] = now()
            log(f"cycle {cycle}: SIGSTOP redis {d:.1f} s")
        elif kind in ("restart_empty", "restart_old", "restart_older"):
            down = rng.uniform(0.5, 2)
            which = None
            restarts = [g["t"] for g in rec.faults if g["kind"].startswith("restart")]
            if kind == "restart_older":
                # a snapshot taken before the previous Redis restart (another life of Redis)
                older = [sn for sn in rs.snaps if restarts and sn[0] < restarts[-1]]
                if older:
                    which = rng.choice(older)
                else:
                    kind = f["kind"] = "restart_old"
            if kind == "restart_old":
                if rs.snaps:
                    # mostly recent snapshots, sometimes any snapshot of the phase
                    if rng.random() < 0.6:
                        which = rs.snaps[max(0, len(rs.snaps) - 1 - rng.randrange(3))]
                    else:
                        which = rng.choice(rs.snaps)
                else:
                    kind = f["kind"] = "restart_empty"
            f.update(t=now(), loss=True, snap_t=which[0] if which else None,
                     snap=os.path.basename(which[1]) if which else None)
            await asyncio.to_thread(rs.kill)
            await asyncio.sleep(down)
            rs.restore(which)
            f["t_restart"] = now()
            await asyncio.to_thread(rs.start)
            f["t_end"] = now()
            log(f"cycle {cycle}: SIGKILL redis, down {down:.1f} s, restart "
                + (f"from snapshot {f['snap']} taken at {which[0]:.2f}" if which else "empty"))
        elif kind == "kill_node":
            i = rng.randrange(NODES)
            down = rng.uniform(1, 3)
            f.update(t=now(), node=i)
            await asyncio.to_thread(nodes.kill, i)
            await asyncio.sleep(down)
            ok = await asyncio.to_thread(nodes.start, i)
            f["t_end"] = now()
            if not ok:
                rec.violation(3, f"cycle {cycle}: node {i} not listening 10 s after restart")
            log(f"cycle {cycle}: SIGKILL node {i} (port {nodes.ports[i]}), restart after {down:.1f} s")
        elif kind == "stop_master":
            masters = await asyncio.to_thread(rs.masters)
            p = rng.choice(masters)
            d = rng.uniform(1, 3)
            f.update(t=now(), dur=d, port=p)
            procs.signal(f"rc{p}", signal.SIGSTOP)
            await asyncio.sleep(d)
            procs.signal(f"rc{p}", signal.SIGCONT)
            f["t_end"] = now()
            await asyncio.to_thread(wait_until, rs.converged, 20, 0.2)
            after = await asyncio.to_thread(rs.masters)
            if p not in after:
                f["loss"] = True  # failed over while frozen
            log(f"cycle {cycle}: SIGSTOP master {p} {d:.1f} s"
                + (" (failed over)" if f["loss"] else ""))
        elif kind == "kill_master":
            masters = await asyncio.to_thread(rs.masters)
            p = rng.choice(masters)
            f.update(t=now(), port=p, loss=True)
            await asyncio.to_thread(rs.kill, p)

            def failed_over():
                ms = rs.masters()
                info = rcli(ms[0]).execute_command("CLUSTER", "INFO")
                info = info.decode() if isinstance(info, bytes) else info
                return len(ms) == 3 and "cluster_state:ok" in info
            ok = await asyncio.to_thread(wait_until, failed_over, 20, 0.1)
            f["t_failover"] = now()
            if not ok:
                rec.violation(3, f"cycle {cycle}: no failover 20 s after master {p} was killed")
            await asyncio.sleep(rng.uniform(1, 3))
            await asyncio.to_thread(rs.start_one, p)
            await asyncio.to_thread(wait_until, rs.converged, 20, 0.2)
            f["t_end"] = now()
            log(f"cycle {cycle}: SIGKILL master {p}, failover after {f['t_failover'] - f['t']:.1f} s, restarted")
        elif kind == "partition":
            i = NS_NODE
            d = rng.uniform(2, 8)
            direction = rng.choices(["both", "to", "from"], [3, 1, 1])[0]
            if phase == "cluster" and rng.random() < 0.4:
                masters = await asyncio.to_thread(rs.masters)
                ports = [rng.choice(masters)]
                scope = f"master {ports[0]}"
                owners = {c: await asyncio.to_thread(rs.slot_owner, crc16(c.encode()) % 16384)
                          for c in channels}
                cut_chans = [c for c in channels if owners[c] in ports]
            else:
                ports = rs.client_ports()
                scope = "all of Redis"
                cut_chans = list(channels)
            move_after = rng.uniform(0.3, max(0.4, d - 0.5))
            mover_rng = random.Random(rng.random())
            f.update(node=i, dur=d, ports=ports, scope=scope, direction=direction, chans=cut_chans,
                     t_503=None, t_healthy=None, moved=None)
            try:
                await asyncio.to_thread(NET.cut, ports, direction)
                f["t"] = now()  # from here on nothing crosses
                # node i's /healthz meanwhile (its port is not cut): when it notices; and once, at a
                # seeded moment (before or after the node notices), a subscriber of another node is
                # moved onto it: a resume on a node that is behind and cannot read the stream
                end = time.monotonic() + d
                move_at = time.monotonic() + move_after
                while time.monotonic() < end:
                    if move_at is not None and time.monotonic() >= move_at:
                        move_at = None
                        others = [x for x in subs if x.node != i and x.writer is not None]
                        if others:
                            x = mover_rng.choice(others)
                            f["moved"] = (x.id, x.node, now())
                            x.move(i)
                    if f["t_503"] is None and not await asyncio.to_thread(nodes.healthy, i):
                        f["t_503"] = now()
                    await asyncio.sleep(min(0.1, max(0.0, end - time.monotonic())))
                f["t_end"] = now()  # until here nothing crossed
                f["dropped"] = await asyncio.to_thread(NET.dropped)
            finally:
                await asyncio.to_thread(NET.heal)
            ok = await asyncio.to_thread(wait_until, lambda: nodes.healthy(i), 30, 0.1)
            if ok:
                f["t_healthy"] = now()
            log(f"cycle {cycle}: partition node {i} / {scope} ({direction}) {d:.1f} s, "
                + (f"subscriber {f['moved'][0]} moved onto it at +{f['moved'][2] - f['t']:.1f} s, "
                   if f["moved"] else "")
                + f"{f['dropped']} packets dropped, /healthz 503 "
                + (f"after {f['t_503'] - f['t']:.1f} s" if f["t_503"] else "never")
                + ", 200 " + (f"{f['t_healthy'] - f['t_end']:.1f} s after healing" if ok else "not within 30 s"))
        rec.faults.append(f)
        # steady time between faults
        await asyncio.sleep(rng.uniform(4, 7))
        if phase == "cluster":
            await asyncio.to_thread(wait_until, rs.converged, 20, 0.2)

    # quiesce: everything up, publishers stop, subscribers drain
    log("quiesce")
    for i in range(NODES):
        if not nodes.up[i]:
            await asyncio.to_thread(nodes.start, i)
    for p in pubs:
        p.stop = True
    await asyncio.wait(pub_tasks, timeout=15)
    stop_snap = True
    end = time.monotonic() + 20
    await asyncio.sleep(4)  # past the nodes' 2 s quiet check
    while time.monotonic() < end and any(now() - s.last_rx < 2 for s in subs):
        await asyncio.sleep(0.2)
    for s in subs:
        s.stop = True
    await asyncio.wait(sub_tasks, timeout=5)
    for t in sub_tasks + pub_tasks + ([snap_task] if snap_task else []):
        t.cancel()
    healthy = [nodes.health_body(i) for i in range(NODES)]
    rec.health = healthy
    rec.unhealthy_starts = nodes.unhealthy
    for i in range(NODES):
        await asyncio.to_thread(nodes.kill, i)
    if phase == "standalone":
        await asyncio.to_thread(rs.kill)
    else:
        for p in list(rs.alive):
            await asyncio.to_thread(rs.kill, p)
    check(rec, subs, channels, phase)
    dump(args.work, rec, subs, channels)
    if args.selftest:
        selftest(rec, subs, channels, phase)
    return rec


def selftest(rec, subs, channels, phase):
    """The checker must see a dropped, a doubled and a swapped delivery in this run's history."""
    import types

    def copy_subs():
        return [types.SimpleNamespace(id=x.id, events={c: list(x.events[c]) for c in channels},
                                      live_at=x.live_at, conns=x.conns) for x in subs]

    def middle_msg(evs):
        idx = [k for k, ev in enumerate(evs) if ev[1] == "msg"]
        return idx[len(idx) // 2] if idx else None

    def drop(ss):
        evs = ss[0].events[channels[0]]
        del evs[middle_msg(evs)]

    def double(ss):
        evs = ss[0].events[channels[0]]
        k = middle_msg(evs)
        evs.insert(k + 1, evs[k])

    def swap(ss):
        evs = ss[1].events[channels[0]]
        k = middle_msg(evs)
        ev = evs[k]
        evs[k] = ev[:4] + (evs[k - 1][4],) + ev[5:]

    def run(mutate):
        ss = copy_subs()
        mutate(ss)
        r = Record(phase)
        r.published, r.faults, r.pub_disconnects = rec.published, rec.faults, rec.pub_disconnects
        r.timeout_s = rec.timeout_s
        check(r, ss, channels, phase)
        return r

    base = run(lambda ss: None)  # the same history unchanged (without the driver's live checks)
    for name, mutate, promise in (("drop", drop, 2), ("double", double, 2), ("swap", swap, 1)):
        r = run(mutate)
        extra = len(r.violations[promise]) - len(base.violations[promise])
        print(f"  selftest {phase}: a {name} delivery -> promise {promise} violations +{extra} "
              f"({'seen' if extra > 0 else 'MISSED'})", flush=True)


def dump(work, rec, subs, channels):
    """Everything recorded, for a closer look (kept with KEEP=1)."""
    with open(os.path.join(work, f"events-{rec.phase}.txt"), "w") as out:
        for f in rec.faults:
            out.write(f"fault {f}\n")
        for m in rec.published.values():
            out.write(f"pub {m['t_send']:.3f} {m['chan']} {m['payload']} node{m['node']} {m['status']} "
                      f"{m['off']} {m.get('t_ack') or 0:.3f} {m.get('reason', '')}\n")
        for s in subs:
            for c in channels:
                for ev in s.events[c]:
                    out.write(f"sub{s.id} {c} {ev[0]:.3f} {' '.join(str(x) for x in ev[1:])}\n")


# ---------------------------------------------------------------------------------------------
# checks

def check(rec, subs, channels, phase):
    V = rec.violation
    pubd = rec.published
    acked = [m for m in pubd.values() if m["status"] == "acked"]
    refused = [m for m in pubd.values() if m["status"] == "refused"]
    losses = [f for f in rec.faults if f["loss"]]
    stats = collections.Counter()

    # ---- promise 1: one payload per (channel, epoch, offset); acked payloads at their offset
    names = {}
    where = collections.defaultdict(set)  # payload -> {(epoch, off)}
    for s in subs:
        for c in channels:
            for ev in s.events[c]:
                if ev[1] != "msg":
                    continue
                t, _, ep, off, payload, node = ev
                key = (c, ep, off)
                prev = names.get(key)
                if prev is None:
                    names[key] = (payload, s.id, node, t)
                elif prev[0] != payload:
                    V(1, f"({c}, epoch {ep}, offset {off}) is {prev[0]!r} for subscriber {prev[1]} "
                         f"on node {prev[2]} at {prev[3]:.2f} but {payload!r} for subscriber {s.id} on node {node} at {t:.2f}")
                m = pubd.get(payload)
                if m is None:
                    V(1, f"subscriber {s.id} got {payload!r} at ({c}, {ep}, {off}): never published")
                    continue
                if m["chan"] != c:
                    V(1, f"subscriber {s.id} got {payload!r} on {c}, published on {m['chan']}")
                where[payload].add((ep, off))
                if m["status"] == "acked" and m["off"] != off:
                    V(1, f"{payload!r} acknowledged as {c} offset {m['off']} (t {m['t_ack']:.2f}, node {m['node']}) "
                         f"but delivered as ({c}, {ep}, {off}) to subscriber {s.id} on node {node} at {t:.2f}")
                if m["status"] == "refused":
                    stats["refused_but_delivered"] += 1
    # ---- promise 2: per subscriber, per channel, per epoch
    for s in subs:
        for c in channels:
            cur = None
            last = {}          # epoch -> last offset delivered in it
            gap_ok = False
            expect = None      # offset the next message must have (after a HIST)
            req = None
            got = set()
            notices = []       # (t, status)
            for ev in s.events[c]:
                kind = ev[1]
                if kind == "sub":
                    req = ev[3]
                elif kind == "hist":
                    t, _, ep, first, lst, status, node = ev
                    if status in ("epoch", "expired"):
                        notices.append((t, status))
                        stats[f"{status}_notices"] += 1
                    if req is not None:
                        # the answer to a resume
                        r_off, r_ep = req
                        if status == "ok" and r_ep is not None and r_ep != ep:
                            V(2, f"subscriber {s.id} on node {node}: resume {c} {r_off} {r_ep} answered "
                                 f"HIST {ep} {first} {lst} ok (another epoch, not told) at {t:.2f}")
                        if status == "ok" and r_ep == ep:
                            expect = r_off + 1
                        if status == "epoch" and r_ep == ep and r_off <= lst:
                            V(2, f"subscriber {s.id} on node {node}: resume {c} {r_off} {r_ep} answered "
                                 f"HIST {ep} {first} {lst} epoch (its own epoch, told it changed) at {t:.2f}")
                        elif status == "epoch" and r_ep == ep:
                            V(2, f"subscriber {s.id} on node {node}: resume {c} {r_off} {r_ep} answered "
                                 f"HIST {ep} {first} {lst} epoch at {t:.2f}: the node, {r_off - lst} behind the "
                                 f"subscriber in the same epoch, says the epoch changed and replays it from {first}")
                        req = None
                    if status == "epoch" or ep not in last:
                        expect = first if first <= lst else lst + 1
                    if status == "expired":
                        gap_ok = True
                        expect = None
                    cur = ep
                elif kind == "msg":
                    t, _, ep, off, payload, node = ev
                    L = last.get(ep)
                    if L is not None and off <= L:
                        V(2, f"subscriber {s.id} on node {node}: ({c}, {ep}) offset {off} after {L} "
                             f"(twice or out of order) at {t:.2f}: {payload!r}")
                    elif expect is not None and off != expect and not gap_ok:
                        V(2, f"subscriber {s.id} on node {node}: ({c}, {ep}) offset {off} where {expect} was due "
                             f"(silent hole) at {t:.2f}: {payload!r}")
                    elif expect is None and L is not None and off != L + 1 and not gap_ok:
                        V(2, f"subscriber {s.id} on node {node}: ({c}, {ep}) offset {off} after {L} "
                             f"(silent hole) at {t:.2f}: {payload!r}")
                    gap_ok = False
                    last[ep] = max(off, L or 0)
                    expect = off + 1
                    got.add(payload)
                    stats["delivered"] += 1
            live = s.live_at.get(c)
            for m in acked:
                if m["chan"] != c or m["payload"] in got:
                    continue
                if live is None or m["t_send"] < live:
                    continue
                # excused: a fault that can lose acknowledged data came after the ack (and after
                # the snapshot restored), and the subscriber was told afterwards
                excuse = None
                for f in losses:
                    if f["t"] + 0.05 < m["t_ack"]:
                        continue
                    if f["snap_t"] is not None and m["t_ack"] < f["snap_t"]:
                        continue
                    for tn, st in notices:
                        if tn >= f["t"]:
                            excuse = (f, st)
                            break
                    if excuse:
                        break
                if excuse:
                    stats["lost_told"] += 1
                else:
                    stats["lost_silently"] += 1
                    V(2, f"subscriber {s.id}: {m['payload']!r} acknowledged as {c} offset {m['off']} "
                         f"(sent {m['t_send']:.2f} on node {m['node']}, acked {m['t_ack']:.2f}) never delivered, "
                         f"no notice after a data-losing fault (notices: {[(round(a, 2), b) for a, b in notices][:6]})")
    # ---- promise 3: nothing acknowledged while Redis is gone; publishing comes back
    recov = []
    for f in rec.faults:
        if f["kind"] in ("restart_empty", "restart_old", "restart_older"):
            for m in acked:
                if f["t"] + 0.05 < m["t_send"] and m["t_ack"] < f["t_restart"]:
                    V(3, f"{m['payload']!r} ({m['chan']} {m['off']}) sent {m['t_send']:.2f} acked {m['t_ack']:.2f} "
                         f"while Redis was dead ({f['t']:.2f}-{f['t_restart']:.2f})")
        if f["kind"] == "stop":
            for m in acked:
                if f["t"] + 0.05 < m["t_send"] and m["t_ack"] < f["t_end"] - 0.05:
                    V(3, f"{m['payload']!r} sent {m['t_send']:.2f} acked {m['t_ack']:.2f} while Redis was "
                         f"stopped ({f['t']:.2f}-{f['t_end']:.2f})")
        if f["kind"] == "partition":
            # node f["node"] acknowledges nothing whose script or answer would have had to cross
            for m in acked:
                if (m["node"] == f["node"] and m["chan"] in f["chans"] and f["t"] + 0.05 < m["t_send"]
                        and m["t_ack"] < f["t_end"] - 0.05):
                    V(3, f"{m['payload']!r} ({m['chan']} {m['off']}) sent {m['t_send']:.2f} to node {m['node']}, "
                         f"acked {m['t_ack']:.2f} while it was cut off from {f['scope']} "
                         f"({f['direction']}, {f['t']:.2f}-{f['t_end']:.2f})")
            # it reconnects by itself: 5 s of backoff at most (+50% jitter), a command timeout, a second
            heal_limit = 7.5 + rec.timeout_s + 1.0
            if f["t_healthy"] is None or f["t_healthy"] - f["t_end"] > heal_limit:
                took = "not within 30 s" if f["t_healthy"] is None else f"{f['t_healthy'] - f['t_end']:.1f} s"
                V(3, f"cycle {f['cycle']} partition: node {f['node']} /healthz not 200 again within "
                     f"{heal_limit:.1f} s of healing ({took}; healed at {f['t_end']:.2f})")
            # its subscribers stay connected (README: subscribers stay connected while Redis is gone)
            for s in subs:
                for cn in s.conns:
                    if (cn["node"] == f["node"] and cn["t"] < f["t"] and cn["end"] is not None
                            and f["t"] <= cn["end"] <= f["t_healthy" if f["t_healthy"] else "t_end"]):
                        stats["partition_sub_disconnects"] += 1
                        rec.info.append(f"subscriber {s.id}: disconnected from partitioned node {f['node']} "
                                        f"at {cn['end']:.2f}")
        start = f["t"] if f["kind"] == "kill_master" else f["t_end"]
        worst = 0.0
        for c in channels:
            firsts = [m["t_ack"] for m in acked if m["chan"] == c and m["t_send"] > start]
            if not firsts:
                worst = float("inf")
                break
            worst = max(worst, min(firsts) - start)
        f["recovery"] = worst
        recov.append(worst)
        limit = 10.0
        if worst > limit:
            V(3, f"cycle {f['cycle']} {f['kind']}: some channel had no acknowledged publish for "
                 f"{worst:.1f} s after the fault ({'kill' if f['kind'] == 'kill_master' else 'end'} at {start:.2f})")
    # ---- promise 4: a SIGKILLed node's clients move and resume
    for f in rec.faults:
        if f["kind"] != "kill_node":
            continue
        i = f["node"]
        for s in subs:
            victims = [k for k, cn in enumerate(s.conns) if cn["node"] == i and cn["t"] <= f["t"]
                       and (cn["end"] is None or cn["end"] >= f["t"] - 0.01)]
            for k in victims:
                nxt = [cn for cn in s.conns[k + 1:] if cn["ok"] is not None]
                if not nxt or nxt[0]["ok"] - f["t"] > 10:
                    V(4, f"subscriber {s.id}: node {i} killed at {f['t']:.2f}, not resumed elsewhere within 10 s")
                else:
                    stats["moved_subscribers"] += 1
                    stats["resume_time_max_ms"] = max(stats["resume_time_max_ms"],
                                                      int((nxt[0]["ok"] - f["t"]) * 1000))
    moved_pubs = sum(1 for f in rec.faults if f["kind"] == "kill_node"
                     for (t, pid, node) in rec.pub_disconnects if node == f["node"] and 0 <= t - f["t"] < 2)
    stats["moved_publishers"] = moved_pubs

    rec.stats = stats
    rec.summary = {
        "published": len(pubd), "acknowledged": len(acked), "refused": len(refused),
        "unknown": sum(1 for m in pubd.values() if m["status"] == "unknown"),
        "delivered": stats["delivered"], "epoch notices": stats["epoch_notices"],
        "expired notices": stats["expired_notices"], "lost but told": stats["lost_told"],
        "refused yet delivered": stats["refused_but_delivered"],
        "subscriber moves after node kills": stats["moved_subscribers"],
        "max resume after node kill (ms)": stats["resume_time_max_ms"],
        "publisher moves after node kills": moved_pubs,
        "max recovery after a fault (s)": round(max([r for r in recov if r != float('inf')] or [0]), 2),
        "subscriber ERRs": rec.sub_errs,
    }
    if any(f["kind"] == "partition" for f in rec.faults):
        rec.summary["subscriber disconnects from a partitioned node"] = stats["partition_sub_disconnects"]


def report(rec):
    print(f"\n--- phase {rec.phase} ---")
    for f in rec.faults:
        extra = ""
        if f["kind"] in ("restart_old", "restart_older"):
            extra = f" snapshot {f.get('snap')} of t={f['snap_t']:.2f}"
        if "port" in f:
            extra += f" redis {f['port']}"
        if "node" in f:
            extra += f" node {f['node']}"
        if f["kind"] == "partition":
            extra += (f" / {f['scope']} ({f['direction']}) {f['dur']:.1f} s,"
                      + (f" sub {f['moved'][0]} moved on at +{f['moved'][2] - f['t']:.1f} s,"
                         if f.get("moved") else "")
                      + f" {f['dropped']} packets dropped,"
                      f" 503 " + (f"after {f['t_503'] - f['t']:.1f} s" if f["t_503"] else "never")
                      + ", 200 " + (f"{f['t_healthy'] - f['t_end']:.1f} s after healing;" if f["t_healthy"]
                                    else "never;"))
        if f["kind"] == "kill_master":
            extra += f" failover {f['t_failover'] - f['t']:.1f} s"
        print(f"  cycle {f['cycle']:2d} t={f['t']:7.2f} {f['kind']:<14}{extra}  publishing back after "
              f"{f['recovery']:.2f} s")
    print("  " + ", ".join(f"{k}: {v}" for k, v in rec.summary.items()))
    names = {1: "one payload per (channel, epoch, offset)",
             2: "acknowledged => delivered once, in order, or told",
             3: "refused while Redis is gone; recovers by itself",
             4: "clients of a killed node move and resume"}
    results = []
    for p in (1, 2, 3, 4):
        v = rec.violations[p]
        ok = not v
        results.append(ok)
        print(f"  promise {p} ({names[p]}): {'PASS' if ok else 'FAIL'} ({len(v)} violations)")
        for line in v[:5]:
            print(f"      {line}")
    bad = [h for h in rec.health if not h.startswith("200")]
    if bad or rec.unhealthy_starts:
        print(f"  also observed: /healthz after quiescing: {rec.health}; "
              f"{len(rec.unhealthy_starts)} node start(s) not healthy within 5-20 s "
              f"(first: {rec.unhealthy_starts[:1]})")
    if rec.info:
        counts = collections.Counter(i.split(":", 1)[1].strip()[:60] for i in rec.info)
        print("  notes: " + "; ".join(f"{k} x{n}" for k, n in counts.most_common(6)))
    return results


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--fanout", required=True)
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--redis-timeout-ms", type=int, default=2000)
    ap.add_argument("--phases", default="standalone,cluster")
    ap.add_argument("--selftest", action="store_true")
    ap.add_argument("--netns", default=None, help="node 0's network namespace (partition fault)")
    ap.add_argument("--ns-dev", default=None, help="the namespace's end of the veth pair")
    ap.add_argument("--ns-drop-dev", default=None, help="where the partition's packets are sent to die")
    ap.add_argument("--ns-host-ip", default=None, help="the host's end of the veth pair")
    ap.add_argument("--ns-ip", default=None, help="the namespace's end of the veth pair")
    ap.add_argument("--no-partition", default=None, metavar="WHY", help="why there is no partition fault")
    args = ap.parse_args()
    global NET
    if args.netns and not (args.ns_dev and args.ns_drop_dev and args.ns_host_ip and args.ns_ip):
        ap.error("--netns needs --ns-dev, --ns-drop-dev, --ns-host-ip and --ns-ip")
    NET = Net(args)
    if args.seed is None:
        args.seed = random.randrange(1, 1 << 31)
    print(f"seed {args.seed}, cycles per phase {args.cycles}, rate {args.rate:.0f}/s, "
          f"--redis-timeout-ms {args.redis_timeout_ms}", flush=True)
    if NET.ns:
        print(f"partition fault: node {NS_NODE} in {NET.ns} at {NET.ns_ip}, Redis reached at "
              f"{NET.host_ip} ({NET.dev}, dropped through {NET.drop_dev})", flush=True)
    else:
        print(f"partition fault skipped: {NET.why or 'no --netns'}", flush=True)
    procs = Procs(args.work)
    results, recs = [], []
    try:
        for phase in args.phases.split(","):
            rng = random.Random(f"{args.seed}-{phase}")
            rec = await run_phase(phase, args, procs, rng)
            recs.append(rec)
    finally:
        procs.stop_all()
    for rec in recs:
        results += report(rec)
    passed = sum(results)
    failed = len(results) - passed
    print(f"\nreproduce: scripts/cluster-chaos.sh {args.cycles} {args.seed}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    def _term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _term)
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(130)
