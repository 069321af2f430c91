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
import multiprocessing
import threading
import time
import urllib.request


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def drain(sock, stop, acked=None):
    """Reads and discards what the server sends (PINGs, acknowledgements), blocking: the socket
    is shared with a sender, so it gets no timeout (a daemon thread, gone with the process).
    Sets `acked` once an ACK arrives."""
    tail = b""
    while not stop.is_set():
        try:
            chunk = sock.recv(1 << 16)
        except OSError:
            return
        if not chunk:
            return
        if acked is not None and b"ACK " in tail + chunk:
            acked.set()
        tail = chunk[-8:]


def publisher(port, channels, stop, done, rate):
    sock = connect(port)
    stop_drain = threading.Event()
    threading.Thread(target=drain, args=(sock, stop_drain), daemon=True).start()
    batch = max(1, rate // 100)
    rng = random.Random()
    while not stop.is_set():
        began = time.monotonic()
        lines = b"".join(b"PUB c%d x\n" % rng.randrange(channels) for _ in range(batch))
        sock.sendall(lines)
        with done.get_lock():
            done.value += batch
        time.sleep(max(0.0, 0.01 - (time.monotonic() - began)))
    stop_drain.set()
    sock.close()


def probe(port, stop, out):
    rtts = []
    sock = connect(port)
    sock.settimeout(5)
    buf = b""
    while not stop.is_set():
        began = time.monotonic()
        sock.sendall(b"PING\n")
        while b"PONG" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                out.put(rtts)
                return
            buf += chunk
        rtts.append((time.monotonic() - began) * 1000)
        buf = buf[buf.index(b"PONG") + 4:]
        time.sleep(0.002)
    sock.close()
    out.put(rtts)


def turn_figures(metrics):
    """The server's longest turn so far (ms) and its turn histogram's cumulative buckets."""
    longest, buckets = None, {}
    for line in metrics.splitlines():
        if line.startswith("fanout_longest_turn_micros "):
            longest = float(line.split()[1]) / 1000
        elif line.startswith("fanout_reactor_turn_seconds_bucket"):
            buckets[line.split('le="')[1].split('"')[0]] = int(float(line.split()[1]))
    return {"longest_ms": longest, "buckets": buckets}


def steady_turns(before, after):
    """Turns during the steady phase: how many, and how many took longer than 1, 2.5, 5 and
    10 ms (from the histogram's buckets), and the longest turn's bucket."""
    if not after["buckets"]:
        return None
    delta = {le: n - before["buckets"].get(le, 0) for le, n in after["buckets"].items()}
    total = delta["+Inf"]
    over = {f"over_{le}s": total - delta[le] for le in ("0.001", "0.0025", "0.005", "0.01")}
    bound = next((le for le, n in sorted(((k, v) for k, v in delta.items() if k != "+Inf"),
                                         key=lambda kv: float(kv[0])) if n == total), "+Inf")
    return {"turns": total, **over, "longest_turn_at_most_s": bound,
            "longest_turn_ms_overall": after["longest_ms"]}


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
    ap.add_argument("--publishers", type=int, default=2)
    ap.add_argument("--rate", type=int, default=10000, help="publishes/s per publisher")
    ap.add_argument("--probes", type=int, default=2)
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
    stop_loader, acked = threading.Event(), threading.Event()
    threading.Thread(target=drain, args=(loader, stop_loader, acked), daemon=True).start()
    step = 50_000
    for first in range(0, a.channels, step):
        last = min(a.channels, first + step)
        loader.sendall(b"".join(b"PUB c%d x\n" % c for c in range(first, last)))
    # The last publish is acknowledged: everything before it was taken.
    loader.sendall(b"PUBA c0 done\n")
    acked.wait(timeout=120)
    loaded_s = time.monotonic() - began
    time.sleep(1)

    loaded = turn_figures(metric_lines(a.port))
    # Publishers and probes in processes of their own: a probe's round trip must not include
    # waits for this interpreter's lock.
    stop = multiprocessing.Event()
    done = multiprocessing.Value("q", 0)
    rtt_queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=publisher, args=(a.port, a.channels, stop, done, a.rate))
             for _ in range(a.publishers)]
    procs += [multiprocessing.Process(target=probe, args=(a.port, stop, rtt_queue))
              for _ in range(a.probes)]
    for p in procs:
        p.start()
    time.sleep(a.seconds)
    stop.set()
    rtts = []
    for _ in range(a.probes):
        rtts += rtt_queue.get(timeout=30)
    for p in procs:
        p.join(timeout=10)
    stop_loader.set()

    metrics = metric_lines(a.port)
    steady = turn_figures(metrics)
    channels_line = [l for l in metrics.splitlines() if l.startswith("fanout_channels ")]
    rtts.sort()

    def q(p):
        return round(rtts[min(len(rtts) - 1, int(p * len(rtts)))], 3) if rtts else None

    print(json.dumps({
        "connections": a.connections, "channels_published": a.channels,
        "server_channels": float(channels_line[0].split()[1]) if channels_line else None,
        "connect_s": round(connected_s, 1), "load_s": round(loaded_s, 1),
        "publishes": done.value, "probes": len(rtts),
        "probe_rtt_ms": {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999),
                         "max": round(rtts[-1], 3) if rtts else None},
        "longest_turn_ms_while_loading": loaded["longest_ms"],
        "steady": steady_turns(loaded, steady),
    }))
    for s in idle:
        s.close()
    loader.close()


if __name__ == "__main__":
    main()
