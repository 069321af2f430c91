#!/usr/bin/env python3
"""How long can a worker's turn get with a million channels and ~20k connections?

Drives a running fanout server (text protocol, loopback only):
  1. opens --connections idle subscribers (each subscribes to one of 1,000 channels and never
     reads: the server pings them, and their timers fire);
  2. publishes one message to each of --channels channels, so that each holds history (the
     registry, the retention order and the workers' channel caches all hold a million entries);
  3. for --seconds, publishers on several connections (so on both workers) republish to random
     channels (each republish leaves a stale retention entry behind: compaction work) while
     probes on several connections send PING and time the PONG.
A probe's round trip includes any turn its worker spends elsewhere, so the longest round trip
bounds the longest turn from outside (and works on builds that have no turn metric). Prints one
JSON line: probe round-trip quantiles in ms, publishes done, and the server's own
fanout_longest_turn_micros and fanout_reactor_turn_seconds buckets when /metrics has them.

  scripts/turn-probe.py --port PORT [--connections 19000] [--channels 1000000] [--seconds 25]
"""
import argparse
import json
import random
import socket
import threading
import time
import urllib.request


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def drain(sock, stop):
    """Reads and discards what the server sends (acknowledgements of nothing, PINGs)."""
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            if not sock.recv(1 << 16):
                return
        except socket.timeout:
            pass
        except OSError:
            return


def publisher(port, channels, stop, done, rate):
    sock = connect(port)
    threading.Thread(target=drain, args=(sock, stop), daemon=True).start()
    batch = max(1, rate // 100)
    rng = random.Random()
    while not stop.is_set():
        began = time.monotonic()
        lines = b"".join(b"PUB c%d x\n" % rng.randrange(channels) for _ in range(batch))
        sock.sendall(lines)
        done[0] += batch
        time.sleep(max(0.0, 0.01 - (time.monotonic() - began)))
    sock.close()


def probe(port, stop, rtts):
    sock = connect(port)
    sock.settimeout(5)
    buf = b""
    while not stop.is_set():
        began = time.monotonic()
        sock.sendall(b"PING\n")
        while b"PONG" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                return
            buf += chunk
        rtts.append((time.monotonic() - began) * 1000)
        buf = buf[buf.index(b"PONG") + 4:]
        time.sleep(0.002)
    sock.close()


def metric_lines(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--connections", type=int, default=19000)
    ap.add_argument("--channels", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=25)
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--rate", type=int, default=10000, help="publishes/s per publisher")
    ap.add_argument("--probes", type=int, default=6)
    a = ap.parse_args()

    began = time.monotonic()
    idle = []
    for i in range(a.connections):
        s = connect(a.port)
        s.sendall(b"SUB h%d\n" % (i % 1000))
        idle.append(s)
    connected_s = time.monotonic() - began

    began = time.monotonic()
    loader = connect(a.port)
    stop_loader = threading.Event()
    threading.Thread(target=drain, args=(loader, stop_loader), daemon=True).start()
    step = 50_000
    for first in range(0, a.channels, step):
        last = min(a.channels, first + step)
        loader.sendall(b"".join(b"PUB c%d x\n" % c for c in range(first, last)))
    # The last publish is acknowledged: everything before it was taken.
    loader.sendall(b"PUBA c0 done\n")
    time.sleep(0.5)
    loaded_s = time.monotonic() - began

    stop = threading.Event()
    done = [0]
    rtts = []
    threads = [threading.Thread(target=publisher, args=(a.port, a.channels, stop, done, a.rate))
               for _ in range(a.publishers)]
    threads += [threading.Thread(target=probe, args=(a.port, stop, rtts)) for _ in range(a.probes)]
    for t in threads:
        t.start()
    time.sleep(a.seconds)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    stop_loader.set()

    metrics = metric_lines(a.port)
    longest = None
    turn_buckets = {}
    for line in metrics.splitlines():
        if line.startswith("fanout_longest_turn_micros "):
            longest = float(line.split()[1])
        elif line.startswith("fanout_reactor_turn_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            turn_buckets[le] = int(float(line.split()[1]))
    channels_line = [l for l in metrics.splitlines() if l.startswith("fanout_channels ")]
    rtts.sort()

    def q(p):
        return round(rtts[min(len(rtts) - 1, int(p * len(rtts)))], 3) if rtts else None

    print(json.dumps({
        "connections": a.connections, "channels_published": a.channels,
        "server_channels": float(channels_line[0].split()[1]) if channels_line else None,
        "connect_s": round(connected_s, 1), "load_s": round(loaded_s, 1),
        "publishes": done[0], "probes": len(rtts),
        "probe_rtt_ms": {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999),
                         "max": round(rtts[-1], 3) if rtts else None},
        "longest_turn_ms": longest / 1000 if longest is not None else None,
        "turn_buckets": turn_buckets,
    }))
    for s in idle:
        s.close()
    loader.close()


if __name__ == "__main__":
    main()
