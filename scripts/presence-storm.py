#!/usr/bin/env python3
"""A reconnect storm on one --join-leave channel, as a watcher sees it.

N members (text protocol, each NAME'd, so each has a user) subscribe to CHANNEL; then every one
of them drops and reconnects with a new connection, as after a network blip. A watcher
subscribed throughout counts the joins and leaves it hears, the bytes, and the reads it took,
until it has heard every reconnect. Prints one JSON line.

    presence-storm.py PORT N SERVER_PID [CHANNEL]

Besides the watcher's view, the server's side of the storm (from the storm to the last event the
watcher heard): bytes written, write batches of joins and leaves, CPU seconds (from /proc).
"""
import json
import os
import socket
import sys
import time
import urllib.request

port, n, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
channel = sys.argv[4] if len(sys.argv) > 4 else "room.storm"


def server_figures():
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    figures = {}
    for line in text.splitlines():
        for name in ("fanout_bytes_out_total", "fanout_presence_batches_total",
                     "fanout_presence_events_total", "fanout_presence_events_coalesced_total"):
            if line.startswith(name + " "):
                figures[name] = int(float(line.split()[1]))
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    figures["cpu_seconds"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return figures


def member(i):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"NAME u{i}\r\nSUB {channel}\r\n".encode())
    return s


watcher = socket.create_connection(("127.0.0.1", port))
watcher.sendall(f"SUB {channel}\r\n".encode())
members = [member(i) for i in range(n)]
# The watcher hears every member's join before the storm.
watcher.settimeout(10)
pending = b""
while pending.count(b"JOIN ") < n:
    chunk = watcher.recv(1 << 20)
    if not chunk:
        sys.exit("the watcher was disconnected")
    pending += chunk

before = server_figures()
start = time.monotonic()
for i, s in enumerate(members):
    s.close()
    members[i] = None
# The names are free again once the old connections are gone; reconnect with them.
time.sleep(0.05)
members = [member(i) for i in range(n)]
joins = leaves = reads = received = 0
buffer = b""
watcher.settimeout(10)
deadline = time.monotonic() + 60
while (joins < n or leaves < n) and time.monotonic() < deadline:
    try:
        chunk = watcher.recv(1 << 20)
    except socket.timeout:
        break
    if not chunk:
        break
    reads += 1
    received += len(chunk)
    buffer += chunk
    lines = buffer.split(b"\r\n")
    buffer = lines.pop()
    for line in lines:
        if line.startswith(b"JOIN "):
            joins += 1
        elif line.startswith(b"LEAVE "):
            leaves += 1
elapsed = time.monotonic() - start
after = server_figures()
delta = {k: round(after[k] - before[k], 3) for k in after}
print(json.dumps({"members": n, "joins": joins, "leaves": leaves, "watcher_reads": reads,
                  "watcher_bytes": received, "seconds": round(elapsed, 3),
                  "server_bytes_out": delta["fanout_bytes_out_total"],
                  "server_batches": delta["fanout_presence_batches_total"],
                  "server_events": delta["fanout_presence_events_total"],
                  "server_cancelled": delta["fanout_presence_events_coalesced_total"],
                  "server_cpu_seconds": delta["cpu_seconds"]}, separators=(",", ":")))
for s in members:
    s.close()
