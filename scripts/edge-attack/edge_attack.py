#!/usr/bin/python3
"""Outside attack on fanout's edge mode (`fanout serve --upstream`). See README.md here.

    nice -n 19 /usr/bin/python3 scripts/edge-attack/edge_attack.py            # every section
    nice -n 19 /usr/bin/python3 scripts/edge-attack/edge_attack.py backfill   # one or more
    FANOUT_BIN=/path/to/fanout ... (default /tmp/fanout-edge)

Every section starts its own servers (one worker, niced, free loopback ports) and kills them.
Exit status: 0 when every section held, 1 when any FAIL.
"""

import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fo  # noqa: E402
from fo import (BIN, OP, PREFACE, WORK, Client, Closed, Server, frame, resume, short,  # noqa: E402
                wait_ok)
from load import Pub, Sub, check  # noqa: E402

RESULTS = []   # (section, PASS|FAIL, text)
KEY = "edge-attack-api-key-0123456789"


def report(section, ok, text):
    RESULTS.append((section, "PASS" if ok else "FAIL", text))
    print(f"  [{'PASS' if ok else 'FAIL'}] {text}", flush=True)


def stop_all():
    fo.cleanup()
    fo.PROCS.clear()


def drain(c, seconds):
    out = []
    end = time.time() + seconds
    while time.time() < end:
        try:
            f = c.recv(max(0.0, end - time.time()))
        except Closed:
            out.append(("CLOSED",))
            break
        if f is None:
            break
        out.append(f)
    return out


def collect(clients, want, seconds):
    """Frames from every client until `want(frames)` holds or `seconds` pass."""
    got = [[] for _ in clients]
    end = time.time() + seconds
    while time.time() < end and not want(got):
        for i, c in enumerate(clients):
            try:
                f = c.recv(0.02)
                while f is not None:
                    got[i].append(f)
                    f = c.recv(0)
            except Closed:
                pass
    return got


def answered(frames):
    return sum(1 for f in frames if f[0] in ("OK", "ERR"))


# --------------------------------------------------------------------------------------------
def tree(hub_args=(), edge_args=()):
    """hub, e1 and e2 under it, e3 under e1 (failover to e2)."""
    hub = Server(*hub_args, name="hub")
    e1 = Server("--upstream", hub.addr, *edge_args, name="e1")
    e2 = Server("--upstream", hub.addr, *edge_args, name="e2")
    e3 = Server("--upstream", e1.addr, "--upstream", e2.addr, "--upstream-timeout-ms", "1000",
                *edge_args, name="e3")
    for n in (e1, e2, e3):
        n.healthy(5)
    time.sleep(0.3)
    return hub, e1, e2, e3


def run_load(section, nodes, seconds, chaos=None, channels=12, rate=120, hop_addrs=None):
    """Subscribers on every node (and a hopper), publishers on some; `chaos(t0)` runs in the
    middle. Returns (problems, stats, subs, pubs)."""
    chans = [f"{section}.{i}" for i in range(channels)]
    stop = threading.Event()
    subs = [Sub(f"sub@{n.name}", [n.addr] + [m.addr for m in nodes if m is not n], chans, stop, seed=i)
            for i, n in enumerate(nodes)]
    hop = hop_addrs or [n.addr for n in nodes]
    subs.append(Sub("hopper", hop, chans, stop, hop=0.7, seed=99))
    for s in subs:
        s.start()
    time.sleep(1.0)   # subscribed everywhere before the first publish
    pubs = [Pub(f"pub@{n.name}", [n.addr] + [m.addr for m in nodes if m is not n], chans, stop, rate=rate)
            for n in (nodes[:2] + nodes[3:4])]
    for p in pubs:
        p.start()
    t0 = time.time()
    if chaos:
        chaos(t0)
    while time.time() < t0 + seconds:
        time.sleep(0.1)
    stop_pubs = [p for p in pubs]
    for p in stop_pubs:
        p.stop = _Stopped()
    for p in pubs:
        p.join(15)
    time.sleep(3.0)   # let every subscriber get the last messages
    stop.set()
    for s in subs:
        s.join(5)
    problems, stats = check(subs, pubs)
    return problems, stats, subs, pubs


class _Stopped:
    def is_set(self):
        return True


def summarize(section, what, problems, stats, limit=6):
    kinds = {}
    for p in problems:
        k = p.split(": ", 1)[1].split(" ")[0:2]
        k = " ".join(x for x in k if not x[:1].isdigit())
        kinds[k] = kinds.get(k, 0) + 1
    report(section, not problems, f"{what}: {stats}; {len(problems)} problems {kinds or ''}")
    for p in problems[:limit]:
        print("      " + p)


def s_consistency():
    """Hub, two edges, an edge of an edge; publishers on hub/e1/e3; a subscriber on every node
    and one hopping between nodes (resume by epoch/offset): same offsets and payloads
    everywhere, no duplicate, no gap without a notice, every ACK delivered."""
    hub, e1, e2, e3 = tree()
    problems, stats, subs, pubs = run_load("cons", [hub, e1, e2, e3], 8)
    summarize("consistency", "no faults", problems, stats)
    leftovers = [l for n in (hub, e1, e2, e3) for l in n.logtext().splitlines() if "panick" in l]
    report("consistency", not leftovers, f"no panics in logs ({len(leftovers)})")
    stop_all()


def s_hub_kill_datadir():
    """The hub (--data-dir, --fsync always) SIGKILLed mid-load and restarted 1 s later;
    subscribers stay on the edges, the hub's own subscriber reconnects and resumes."""
    data = os.path.join(WORK, "hubdata")
    hub, e1, e2, e3 = tree(hub_args=("--data-dir", data, "--fsync", "always"))

    def chaos(t0):
        def go():
            time.sleep(3)
            hub.kill()
            time.sleep(1)
            hub.start()
        threading.Thread(target=go, daemon=True).start()
    problems, stats, subs, pubs = run_load("kdd", [hub, e1, e2, e3], 9, chaos=chaos)
    summarize("hub-kill-datadir", "hub SIGKILL+restart with --data-dir --fsync always", problems, stats)
    stop_all()


def s_hub_kill_empty():
    """The hub (memory only) SIGKILLed mid-load and restarted empty: subscribers must be told
    (HIST epoch) and never get two payloads for one (epoch, offset), nor a silent gap."""
    hub, e1, e2, e3 = tree()

    def chaos(t0):
        def go():
            time.sleep(3)
            hub.kill()
            time.sleep(1)
            hub.start()
        threading.Thread(target=go, daemon=True).start()
    problems, stats, subs, pubs = run_load("kem", [hub, e1, e2, e3], 9, chaos=chaos)
    summarize("hub-kill-empty", "hub SIGKILL+restart empty", problems, stats)
    stop_all()


def s_edge_kill():
    """e1 SIGKILLed mid-load and restarted empty: its subscriber moves to another node and
    resumes, the hopper resumes on the new e1 too; e3 (edge of e1) fails over to e2."""
    hub, e1, e2, e3 = tree()

    def chaos(t0):
        def go():
            time.sleep(3)
            e1.kill()
            time.sleep(1.5)
            e1.start()
        threading.Thread(target=go, daemon=True).start()
    problems, stats, subs, pubs = run_load("ek", [hub, e1, e2, e3], 9, chaos=chaos)
    summarize("edge-kill", "e1 SIGKILLed, restarted 1.5 s later; clients resume elsewhere and on it, e3 fails over",
              problems, stats)
    stop_all()


# --------------------------------------------------------------------------------------------
def s_backfill():
    """A resume on an edge whose memory holds less than the hub: the edge reads the rest from
    upstream. With more than 100,000 messages to read, the replay skips a range silently."""
    hub = Server("--history-messages", "200000", name="hub")
    edge = Server("--upstream", hub.addr, "--history-messages", "100", name="edge")
    edge.healthy(5)
    n = 120000
    p = Client(hub.addr)
    p.send(b"".join(frame(OP["PUB"], short("big") + b"m%d" % i) for i in range(1, n)))
    p.pub("big", "m%d" % n, acked=True)
    p.until(lambda f: f[0] in ("ACK", "ERR"), 30)
    h = Client(hub.addr)
    hist, _, _ = resume(h, "big", n - 1, None)
    epoch = hist[2]
    c = Client(edge.addr)
    c.sub("big")
    wait_ok(c, "SUB", timeout=30)
    time.sleep(1)
    rows = {}
    for node in (hub, edge):
        cl = Client(node.addr)
        hist, rep, fin = resume(cl, "big", 5, epoch, timeout=60)
        offs = [o for o, _ in rep]
        gaps = [(a + 1, b - 1) for a, b in zip([5] + offs, offs) if b != a + 1]
        rows[node.name] = (hist[5] if hist else None, len(offs), gaps[:3])
        cl.close()
    print(f"      resume after 5 of {n}: hub {rows['hub']}, edge {rows['edge']} (status, replayed, gaps)")
    st, cnt, gaps = rows["edge"]
    report("backfill", not (gaps and st == "ok"),
           f"edge resume needing >100k messages from upstream: HIST {st}, {cnt} replayed, silent gaps {gaps}")
    # Small backfill (within the cap) must be whole.
    h2 = Client(edge.addr)
    hist, rep, fin = resume(h2, "big", n - 5000, epoch, timeout=30)
    offs = [o for o, _ in rep]
    ok = hist and hist[5] == "ok" and offs == list(range(n - 4999, n + 1))
    report("backfill", ok, f"edge resume needing 4,900 messages from upstream: {hist[5] if hist else None}, {len(offs)} replayed")
    # Several clients resuming the same channel at once (a reconnect storm), each needing a read
    # from upstream.
    cs = [Client(edge.addr) for _ in range(6)]
    for c in cs:
        c.sub("big", n - 300, epoch)
    got = collect(cs, lambda g: all(any(f[0] in ("OK", "ERR") for f in x) for x in g), 20)
    outcomes = [next((f"{f[0]} {f[1]}" for f in x if f[0] in ("OK", "ERR")), "none") for x in got]
    why = next((f[2] for x in got for f in x if f[0] == "ERR"), "")
    report("backfill", all(o.startswith("OK") for o in outcomes),
           f"6 clients resume 'big' after {n - 300} at once on the edge: {outcomes} {why}")
    stop_all()


def s_datadir_jump():
    """Hub with --data-dir SIGKILLed and restarted: its offsets continue 65,536 further. An edge
    that reconnects before the next publish gives its live subscribers the jump with no notice
    (with the next publish arriving first, they get HIST expired)."""
    hub = Server("--data-dir", os.path.join(WORK, "jumpdata"), "--fsync", "always", name="hub")
    edge = Server("--upstream", hub.addr, name="edge")
    edge.healthy(5)
    s = Client(edge.addr)
    s.sub("j")
    wait_ok(s, "SUB")
    p = Client(hub.addr)
    for i in range(1, 11):
        p.pub("j", f"m{i}", acked=True)
        p.recv(3)
    seen = [f[2] for f in drain(s, 1) if f[0] == "MSG"]
    hub.kill()
    time.sleep(0.5)
    hub.start()
    time.sleep(3)      # the edge is back upstream
    p = Client(hub.addr)
    p.pub("j", "after", acked=True)
    ack = p.recv(3)
    live = [f[:5] for f in drain(s, 2)]
    h = Client(hub.addr)
    hist, rep, _ = resume(h, "j", 10, None)
    notice = any(f[0] == "HIST" for f in live)
    report("datadir-jump", notice,
           f"edge live subscriber had {seen[-1] if seen else None}; after the hub's restart {ack}: it got {live} "
           f"(a resume after 10 on the hub: HIST {hist[5]} first={hist[3]} last={hist[4]})")
    stop_all()


def s_pattern_blip():
    """A pattern subscriber on an edge stays connected while the hub cuts the edge's upstream
    link (the edge too slow for it); the hub retains every message. A channel known to the
    edge only through a pattern is not resumed: the rest is dropped, and told only when (if)
    the next message comes."""
    hub = Server("--history-messages", "100000", "--write-queue-cap-bytes", "600000",
                 "--max-frame-bytes", "65536", name="hub")
    edge = Server("--upstream", hub.addr, "--write-queue-cap-bytes", "4000000",
                  "--max-frame-bytes", "65536", "--ring-slots", "64", name="edge")
    edge.healthy(5)
    ps = Client(edge.addr)
    ps.psub("ps.*")
    wait_ok(ps, "PSUB")
    time.sleep(0.3)
    n = 40000
    burst = b"".join(frame(OP["PUB"], short("ps.a") + b"%d:" % i + b"y" * 200) for i in range(1, n))
    rd = fo.RawReader(ps)
    rd.start()
    p = Client(hub.addr)
    p.send(burst)
    p.pub("ps.a", "last", acked=True)
    p.until(lambda f: f[0] == "ACK", 20)
    rd.join(30)
    frames = rd.frames()
    offs = [f[2] for f in frames if f[0] == "MSG"]
    notes = [f[:6] for f in frames if f[0] != "MSG"]
    cut = sum("lost (connection lost" in l for l in edge.logtext().splitlines())
    got_by_then = len(offs)
    p.pub("ps.a", "one-more", acked=True)
    p.until(lambda f: f[0] == "ACK", 5)
    later = [f[:6] for f in drain(ps, 1.5) if f[0] != "MSG"]
    report("pattern-blip", got_by_then == n,
           f"PSUB ps.* on the edge, {n} messages, edge link cut {cut}x: got {got_by_then} (last {offs[-1] if offs else None}), "
           f"notices {notes[:2]}, silent for 3 s; the next message brings {later}")
    stop_all()


def s_limits():
    """An edge carries all its clients' channels and patterns on ONE upstream connection, so
    the hub's per-connection limits (--max-subscriptions 1024 without an API key,
    --max-patterns 64 even with it) cap the whole edge; the clients past them get no answer."""
    hub = Server(name="hub")
    edge = Server("--upstream", hub.addr, name="edge")
    edge.healthy(5)
    cs = [Client(edge.addr) for _ in range(3)]
    n = 1100
    for i in range(n):
        cs[i % 3].sub(f"lim.{i}")
    got = collect(cs, lambda g: sum(answered(x) for x in g) >= n, 5)
    oks = sum(1 for x in got for f in x if f[0] == "OK")
    errs = [f for x in got for f in x if f[0] == "ERR"]
    hubch = hub.channels() or {}
    report("limits", oks == n,
           f"{n} channels subscribed by 3 clients of one edge (hub open, no API key): {oks} OK, {len(errs)} ERR, "
           f"{n - oks - len(errs)} never answered; hub serves {len(hubch)} of them")
    p = Client(hub.addr)
    p.pub("lim.1099", "x", acked=True)
    p.recv(3)
    got = [f for f in drain(cs[1099 % 3], 1.5) if f[0] == "MSG"]
    report("limits", bool(got), f"a message on lim.1099 reaches its subscriber on the edge: {bool(got)}")
    stop_all()

    keyf = os.path.join(WORK, "key")
    with open(keyf, "w") as f:
        f.write(KEY)
    hub = Server("--api-key-file", keyf, name="hub")
    edge = Server("--upstream", hub.addr, "--upstream-token-file", keyf, name="edge")
    edge.healthy(5)
    cs = [Client(edge.addr) for _ in range(2)]
    n = 70
    for i in range(n):
        cs[i % 2].psub(f"room{i}.*")
    got = collect(cs, lambda g: sum(answered(x) for x in g) >= n, 4)
    oks = sum(1 for x in got for f in x if f[0] == "OK")
    errs = [f for x in got for f in x if f[0] == "ERR"]
    p = Client(hub.addr, token=KEY)
    p.recv(2)
    for i in range(n):
        p.pub(f"room{i}.a", f"m{i}", acked=True)
    drain(p, 1)
    got = set()
    for x in collect(cs, lambda g: False, 1.5):
        got |= {f[1] for f in x if f[0] == "MSG"}
    missing = [i for i in range(n) if f"room{i}.a" not in got]
    report("limits", not missing,
           f"{n} patterns (2 clients x 35) on one edge, hub with API key: {oks} OK, {len(errs)} ERR, "
           f"{n - oks - len(errs)} never answered; messages of {len(missing)} patterns never arrive {missing[:8]}")
    stop_all()


def mint(secret_file, ttl, sub="edge1"):
    return subprocess.check_output(
        [BIN, "token", "--secret-file", secret_file, "--sub", sub, "--allow-sub", ">",
         "--allow-sub", "*", "--allow-sub", "@*", "--allow-pub", ">", "--allow-pub", "*",
         "--allow-pub", "@*", "--ttl", ttl]).decode().strip()


def s_token():
    """--upstream-token-file with a token (not the API key), as the help allows: the hub's
    per-connection rate limits then apply to the whole edge; names cannot be claimed; and the
    token expires with no way to give the edge a fresh one."""
    secret = os.path.join(WORK, "secret")
    with open(secret, "w") as f:
        f.write("edge-attack-secret-0123456789abcdef")
    tokf = os.path.join(WORK, "tok")
    with open(tokf, "w") as f:
        f.write(mint(secret, "1h"))
    hub = Server("--auth-secret-file", secret, name="hub")
    edge = Server("--upstream", hub.addr, "--upstream-token-file", tokf, name="edge")
    edge.healthy(5)
    ps = [Client(edge.addr) for _ in range(5)]
    for p in ps:
        for i in range(60):
            p.pub("tk", f"x{i}", acked=True)
    acks, errs = 0, {}
    for p in ps:
        for f in drain(p, 3):
            if f[0] == "ACK":
                acks += 1
            elif f[0] == "ERR":
                errs[f"{f[1]} {f[2]}"] = errs.get(f"{f[1]} {f[2]}", 0) + 1
    report("token", not errs, f"5 edge clients x 60 acked publishes (each far under the hub's 100/s per connection): {acks} ACK, refused {errs}")
    n = Client(edge.addr)
    n.name("alice")
    r = n.recv(5)
    report("token", r and r[0] == "OK", f"NAME alice on an edge with a token upstream: {r}")
    stop_all()

    with open(tokf, "w") as f:
        f.write(mint(secret, "3s"))
    hub = Server("--auth-secret-file", secret, "--auth-expiry-grace-secs", "1", name="hub")
    edge = Server("--upstream", hub.addr, "--upstream-token-file", tokf, name="edge")
    edge.healthy(5)
    p = Client(edge.addr)
    p.pub("tk", "before", acked=True)
    r1 = p.recv(3)
    with open(tokf, "w") as f:          # the operator puts a fresh token in the file ...
        f.write(mint(secret, "1h"))
    edge.proc.send_signal(signal.SIGHUP)  # ... and asks for a reload
    time.sleep(7)
    p.pub("tk", "after", acked=True)
    r2 = p.recv(3)
    expired = sum("token expired" in l for l in edge.logtext().splitlines())
    report("token", r2 and r2[0] == "ACK",
           f"token with 3 s ttl, file refreshed + SIGHUP: before {r1}, 7 s later {r2}; edge log has {expired} 'token expired' refusals")
    stop_all()


def s_names():
    """Two clients claiming one name on different edges at once; @name from every node to a
    holder on the edge of an edge; a broadcast heard once with names held."""
    hub, e1, e2, e3 = tree()
    both = none = 0
    for i in range(20):
        a = Client(e1.addr)
        b = Client((e3 if i % 2 else e2).addr)
        a.name(f"user{i}")
        b.name(f"user{i}")
        ra, rb = a.recv(5), b.recv(5)
        oka, okb = ra and ra[0] == "OK", rb and rb[0] == "OK"
        both += oka and okb
        none += not oka and not okb
        a.close()
        b.close()
    report("names", both == 0 and none == 0, f"20 simultaneous claims on two edges: both granted {both}, none granted {none}")
    h = Client(e3.addr)
    h.name("bob")
    h.recv(5)
    got = []
    for src in (hub, e1, e2, e3):
        p = Client(src.addr)
        p.pub("@bob", f"from-{src.name}", acked=True)
        p.recv(5)
        got += [f[3].decode() for f in drain(h, 1) if f[0] == "MSG"]
    report("names", len(got) == 4, f"@bob held on e3 reached from hub/e1/e2/e3: {got}")
    named = [Client(e3.addr) for _ in range(3)]
    for i, c in enumerate(named):
        c.name(f"n{i}")
        c.recv(3)
    w = Client(e3.addr)
    p = Client(hub.addr)
    for i in range(5):
        p.pub("*", f"bc{i}", acked=True)
        p.recv(3)
    got = [f[2] for f in drain(w, 1.5) if f[0] == "MSG"]
    report("names", got == sorted(set(got)) and len(got) == 5, f"broadcasts on e3 with 3 names held there: offsets {got}")
    h.close()
    t = time.time()
    tries, r = 0, None
    while time.time() < t + 5 and tries < 200:
        tries += 1
        h2 = Client(e2.addr)
        h2.name("bob")
        r = h2.recv(5)
        if r and r[0] == "OK":
            break
        h2.close()
        time.sleep(0.01)
    took = time.time() - t
    report("names", r and r[0] == "OK" and took < 1.0,
           f"bob leaves e3, claims again on e2 in a loop: {r} after {tries} tries, {took * 1000:.0f} ms")
    stop_all()


def s_names_scale():
    """Every client name on an edge is one more upstream connection: with access control on
    the hub (default --max-connections-per-ip 1000) one edge holds fewer than 1,000 names."""
    keyf = os.path.join(WORK, "key")
    with open(keyf, "w") as f:
        f.write(KEY)
    hub = Server("--api-key-file", keyf, name="hub")
    edge = Server("--upstream", hub.addr, "--upstream-token-file", keyf, name="edge")
    edge.healthy(5)
    n = 1100
    cs = []
    for i in range(n):
        c = Client(edge.addr)
        c.name(f"u{i}")
        cs.append(c)
    res = {}
    for c in cs:
        f = c.recv(5)
        k = f"ERR {f[1]} {f[2][:50]}" if f and f[0] == "ERR" else (f[0] if f else None)
        res[k] = res.get(k, 0) + 1
    report("names-scale", res.get("OK") == n, f"{n} clients of one edge claim distinct names: {res}")
    for c in cs:
        c.close()
    stop_all()


def s_access():
    """The same tokens and API key on hub, edge and edge of edge: the same answers."""
    keyf, secret = os.path.join(WORK, "key"), os.path.join(WORK, "secret")
    with open(keyf, "w") as f:
        f.write(KEY)
    with open(secret, "w") as f:
        f.write("edge-attack-secret-0123456789abcdef")

    def tok(sub, subs=(), pubs=(), ttl="1h"):
        a = [BIN, "token", "--secret-file", secret, "--sub", sub, "--ttl", ttl]
        for x in subs:
            a += ["--allow-sub", x]
        for x in pubs:
            a += ["--allow-pub", x]
        return subprocess.check_output(a).decode().strip()
    common = ["--api-key-file", keyf, "--auth-secret-file", secret]
    hub = Server(*common, name="hub")
    e1 = Server("--upstream", hub.addr, "--upstream-token-file", keyf, *common, name="e1")
    e3 = Server("--upstream", e1.addr, "--upstream-token-file", keyf, *common, name="e3")
    e3.healthy(5)
    rows = {}
    for node in (hub, e1, e3):
        out = []
        c = Client(node.addr)
        c.sub("room.1")
        out.append(c.recv(2)[:2])
        c = Client(node.addr, token=tok("alice", ["room.*"], ["room.1"]))
        out.append(c.recv(2)[:2])
        for op in (lambda: c.sub("room.1"), lambda: c.sub("secret"), lambda: c.pub("room.2", "x", acked=True),
                   lambda: c.pub("room.1", "x", acked=True), lambda: c.name("bob"), lambda: c.psub("room.>"),
                   lambda: c.psub("room.*"), lambda: c.pub("@alice", "x", acked=True)):
            op()
            f = c.until(lambda f: f[0] in ("OK", "ERR", "ACK"), 3)
            out.append(f[:2] if f else None)
        c.close()
        bad = Client(node.addr, token="eyJhbGciOiJIUzI1NiJ9.e30.xx")
        out.append(bad.recv(2)[:2])
        k = Client(node.addr, token=KEY)
        k.recv(2)
        k.sub("secret")
        out.append(k.recv(2)[:2])
        rows[node.name] = out
    same = rows["hub"] == rows["e1"] == rows["e3"]
    report("access", same, f"hub {rows['hub']}" + ("" if same else f" / e1 {rows['e1']} / e3 {rows['e3']}"))
    stop_all()


def s_resume_matrix():
    """The same resumes on the hub, an edge (smaller history) and an edge of an edge."""
    hub = Server("--history-messages", "40", name="hub")
    e1 = Server("--upstream", hub.addr, "--history-messages", "10", name="e1")
    e3 = Server("--upstream", e1.addr, name="e3")
    e3.healthy(5)
    for n in (e1, e3):
        s = Client(n.addr)
        s.sub("r")
        wait_ok(s, "SUB")
    p = Client(hub.addr)
    for i in range(1, 61):
        p.pub("r", f"m{i}", acked=True)
        p.recv(3)
    time.sleep(0.5)
    h = Client(hub.addr)
    hist, _, _ = resume(h, "r", 59, None)
    E = hist[2]
    cases = [("after 10 (expired on hub)", 10, E, False), ("after 25", 25, E, False),
             ("after 70 (ahead)", 70, E, False), ("after 30, other epoch", 30, E ^ 1, False),
             ("after 30, epoch 0", 30, 0, False), ("after 5 strict", 5, E, True)]
    replays = {}
    for name, after, ep, strict in cases:
        row = []
        for n in (hub, e1, e3):
            c = Client(n.addr)
            t = time.time()
            c.sub("r", after, ep, strict)
            hist, rep, fin = None, [], None
            while True:
                f = c.recv(12)
                if f is None:
                    break
                if f[0] == "HIST":
                    hist = f
                elif f[0] == "MSG":
                    rep.append(f[2])
                else:
                    fin = f
                    break
            replays[(name, n.name)] = (hist[5] if hist else None, rep)
            row.append(f"{n.name}: {hist[5] if hist else None} first={hist[3] if hist else None} "
                       f"replay {rep[0] if rep else '-'}..{rep[-1] if rep else '-'} {fin[0] if fin else None} {time.time() - t:.1f}s")
            c.close()
        print(f"      {name:28s} | " + " | ".join(row))
    for name in ("after 30, other epoch", "after 70 (ahead)"):
        hub_r, e1_r = replays[(name, "hub")], replays[(name, "e1")]
        report("resume-matrix", e1_r == hub_r,
               f"'{name}' (status epoch: replay from the earliest retained): hub replays {len(hub_r[1])} "
               f"({hub_r[1][:1]}..), edge e1 replays {len(e1_r[1])} ({e1_r[1][:1]}..) of what the hub retains")
    stop_all()


# --------------------------------------------------------------------------------------------
MAXU = 2 ** 64 - 1


class FakeUpstream:
    """A loopback server speaking the binary protocol's server side badly, in `mode`."""

    def __init__(self, mode):
        self.mode = mode
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        self.stop = False
        self.conns = 0
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        self.ls.settimeout(0.2)
        while not self.stop:
            try:
                c, _ = self.ls.accept()
            except socket.timeout:
                continue
            self.conns += 1
            threading.Thread(target=self.serve, args=(c, random.Random(self.conns)), daemon=True).start()
        self.ls.close()

    def serve(self, c, rnd):
        c.settimeout(0.3)
        buf = b""
        end = time.time() + 20
        try:
            while time.time() < end and not self.stop:
                try:
                    d = c.recv(65536)
                    if not d:
                        return
                except socket.timeout:
                    d = b""
                buf += d
                if buf.startswith(PREFACE):
                    buf = buf[8:]
                while len(buf) >= 5:
                    n = struct.unpack(">I", buf[:4])[0]
                    if len(buf) < 4 + n:
                        break
                    op, body, buf = buf[4], buf[5:4 + n], buf[4 + n:]
                    c.sendall(self.answer(op, body, rnd))
        except OSError:
            pass
        finally:
            c.close()

    def answer(self, op, body, rnd):
        def hist(ch, e, f, l, s):
            return frame(0x84, short(ch) + struct.pack(">QQQB", e, f, l, s))

        def msg(ch, o, p=b"x"):
            return frame(0x81, short(ch) + struct.pack(">Q", o) + p)

        def ok(o, arg):
            return frame(0x82, bytes([o]) + short(arg))
        m = self.mode
        if op == 8:
            return ok(8, b"-")
        if op == 4:
            return frame(5)
        if op == 1:
            ch = body[1:1 + body[0]]
            if m == "extreme":
                return (hist(ch, rnd.getrandbits(64), MAXU - 1, MAXU, rnd.randint(0, 3)) + msg(ch, MAXU)
                        + msg(ch, MAXU - 1) + msg(ch, 0) + ok(1, ch) + msg(ch, MAXU) + hist(ch, 0, MAXU, 0, 2)
                        + msg(ch, 1) + hist(ch, 5, 0, MAXU, 1) + msg(ch, 3))
            if m == "garbage":
                return bytes(rnd.getrandbits(8) for _ in range(300))
            if m == "bigframe":
                return struct.pack(">I", 0xFFFFFFF0) + b"\x81"
            if m == "wrongok":
                return ok(1, b"other") + msg(b"@x", 5) + ok(9, b"zz")
            if m == "truncated":
                return frame(0x84, short(ch) + b"\x00\x01") + frame(0x81, b"\xff")
        if op == 6 and m == "extreme":
            return ok(6, b"someone-else") + msg(b"@someone-else", MAXU)
        return b""   # stall: nothing


def s_hostile_upstream():
    """A fake first upstream sending extreme values, garbage, a huge length, answers out of
    order, truncated fields, or nothing at all; the real hub second. The edge must live, and
    work through the hub."""
    hub = Server(name="hub")
    for mode in ["extreme", "garbage", "bigframe", "wrongok", "truncated", "stall"]:
        f = FakeUpstream(mode)
        e = Server("--upstream", f"127.0.0.1:{f.port}", "--upstream", hub.addr,
                   "--upstream-timeout-ms", "1000", name="e-" + mode)
        time.sleep(0.3)
        cs = []
        for i in range(3):
            c = Client(e.addr)
            c.sub(f"h{i}")
            c.sub(f"h{i + 10}", 5, 77)
            c.name(f"nm{i}")
            c.pub(f"h{i}", "p", acked=True)
            cs.append(c)
        collect(cs, lambda g: False, 1.0)
        time.sleep(1.0)
        works = None
        if e.alive():
            s = Client(e.addr)
            s.sub("after")
            r = wait_ok(s, "SUB", timeout=8)
            p = Client(hub.addr)
            p.pub("after", "z", acked=True)
            p.recv(3)
            m = s.recv(5)
            works = bool(r and r[0] == "OK" and m and m[0] == "MSG")
        report("hostile-upstream", e.alive() and works,
               f"fake upstream '{mode}' ({f.conns} conns): edge alive {e.alive()}, then pub/sub through the hub works {works}")
        f.stop = True
        e.kill()
    stop_all()


def s_hostile_clients():
    """Hostile bytes from clients of an edge in every protocol; the edge must live and keep
    serving (its upstream links must not be disturbed)."""
    hub = Server(name="hub")
    edge = Server("--upstream", hub.addr, name="edge")
    edge.healthy(5)
    s = Client(edge.addr)
    s.sub("keep")
    wait_ok(s, "SUB")
    rnd = random.Random(7)
    starts = [PREFACE, b"SUB ", b"PUBA x ", b"*3\r\n$9\r\nSUBSCRIBE\r\n", b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
              b"GET /sse?channel=", b"POST /publish?channel=a HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"]
    specials = [
        PREFACE + frame(1, short("k") + struct.pack(">QQB", MAXU - 1, MAXU, 255)),
        PREFACE + frame(1, short("k") + struct.pack(">QQ", MAXU, 1)),
        PREFACE + frame(9, short(">")) + frame(9, short("*.>")) + frame(10, short(">")),
        PREFACE + frame(6, short("x" * 254)) + frame(3, short("@" + "x" * 254) + b"hi"),
        PREFACE + frame(7, short("*") + b"b") + frame(7, short("@nobody") + b"b"),
        b"SUB k 18446744073709551615 ffffffffffffffff strict\r\nPSUB >\r\nPSUB a.*.>\r\n",
        b"*2\r\n$10\r\nPSUBSCRIBE\r\n$1\r\n*\r\n*2\r\n$12\r\nPUNSUBSCRIBE\r\n$1\r\n*\r\n",
        PREFACE + struct.pack(">I", 0xFFFFFFFF) + b"\x01",
    ]
    sent = 0
    end = time.time() + 6
    while time.time() < end and sent < 400:
        try:
            c = socket.create_connection(("127.0.0.1", edge.port), timeout=1)
            if sent < len(specials):
                data = specials[sent]
            else:
                data = rnd.choice(starts) + bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 600)))
            c.sendall(data)
            if rnd.random() < 0.3:
                c.settimeout(0.05)
                try:
                    c.recv(4096)
                except OSError:
                    pass
            c.close()
        except OSError:
            pass
        sent += 1
    time.sleep(1)
    p = Client(hub.addr)
    p.pub("keep", "still", acked=True)
    p.recv(3)
    m = drain(s, 2)
    alive = edge.alive()
    report("hostile-clients", alive and any(f[0] == "MSG" for f in m),
           f"{sent} hostile connections to the edge: edge alive {alive}, a subscriber there still served {any(f[0] == 'MSG' for f in m)}")
    stop_all()


def s_churn():
    """Rapid subscribe/unsubscribe (plain, resuming, pattern) of many channels on an edge, and
    clients that vanish: the hub must serve, for the edge, only what a client still uses."""
    hub = Server(name="hub")
    edge = Server("--upstream", hub.addr, name="edge")
    edge.healthy(5)
    keeper = Client(edge.addr)
    for i in range(5):
        keeper.sub(f"churn.keep{i}")
    rnd = random.Random(3)
    cs = [Client(edge.addr) for _ in range(4)]
    end = time.time() + 4
    ops, peak = 0, 0
    while time.time() < end and ops < 12000:
        c = rnd.choice(cs)
        ch = f"churn.{rnd.randrange(300)}"
        r = rnd.random()
        if r < 0.4:
            c.sub(ch)
        elif r < 0.5:
            c.sub(ch, rnd.randrange(3), 0)
        else:
            c.unsub(ch)
        if rnd.random() < 0.05:
            c.psub(f"churnp.{rnd.randrange(20)}.*")
        if rnd.random() < 0.002:
            c.close()
            cs[cs.index(c)] = Client(edge.addr)
        ops += 1
        if ops % 200 == 0:
            for x in cs + [keeper]:
                try:
                    x.sock.setblocking(False)
                    while x.sock.recv(65536):
                        pass
                except OSError:
                    pass
                x.sock.setblocking(True)
            time.sleep(0.01)
        if ops % 2000 == 0:
            peak = max(peak, len([k for k in (hub.channels() or {}) if k.startswith("churn")]))
    for c in cs:
        c.close()
    left = None
    for _ in range(20):
        time.sleep(0.5)
        left = sorted(k for k in (hub.channels() or {}) if k.startswith("churn"))
        if len(left) <= 5:
            break
    want = [f"churn.keep{i}" for i in range(5)]
    report("churn", left == want,
           f"{ops} sub/resume/unsub/psub ops; hub channels of the edge during: up to {peak}; "
           f"after the clients left: {len(left)} ({left[:7]}), expected the keeper's 5")
    stop_all()


def s_slow():
    """A subscriber on an edge that never reads: the others on the edge get every message.
    Then the edge itself slow for the hub (tiny ring, hub's small write queue): the hub drops
    the edge's link as a slow consumer; the edge must resume, nothing lost or repeated."""
    hub = Server("--history-messages", "100000", "--write-queue-cap-bytes", "600000",
                 "--max-frame-bytes", "65536", name="hub")
    edge = Server("--upstream", hub.addr, "--write-queue-cap-bytes", "6000000", "--max-frame-bytes", "65536",
                  "--ring-slots", "64", name="edge")
    edge.healthy(5)
    slow = socket.create_connection(("127.0.0.1", edge.port))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(PREFACE + frame(1, short("slow")))
    fast = Client(edge.addr)
    fast.sub("slow")
    wait_ok(fast, "SUB")
    time.sleep(0.3)
    n = 40000
    burst = b"".join(frame(OP["PUB"], short("slow") + b"%d:" % i + b"y" * 200) for i in range(1, n))
    rd = fo.RawReader(fast)
    rd.start()
    p = Client(hub.addr)
    p.send(burst)
    p.pub("slow", "last", acked=True)
    p.until(lambda f: f[0] == "ACK", 20)
    rd.join(30)
    frames = rd.frames()
    offs = [f[2] for f in frames if f[0] == "MSG"]
    notes = [f[:6] for f in frames if f[0] != "MSG"]
    dups = len(offs) - len(set(offs))
    gaps = [(a + 1, b - 1) for a, b in zip([0] + offs, offs) if b != a + 1]
    cut = sum("slow consumer" in l or "507" in l for l in hub.logtext().splitlines())
    report("slow", offs == list(range(1, n + 1)),
           f"burst of {n} through an edge with a 64-slot ring next to a stalled client: got {len(offs)}, "
           f"dups {dups}, gaps {gaps[:3]}, notices {notes[:2]}; hub log lines about slow consumers: {cut}")
    slow.close()
    stop_all()


def s_no_upstream():
    """No upstream reachable: acked publishes refused 503 (never ACKed); the hub appears on
    the given address: publishes go through, and what was refused was not published."""
    port = fo.free_port()
    edge = Server("--upstream", f"127.0.0.1:{port}", name="edge")
    time.sleep(0.5)
    p = Client(edge.addr)
    for i in range(20):
        p.pub("nu", f"r{i}", acked=True)
    fr = drain(p, 2)
    acks = [f for f in fr if f[0] == "ACK"]
    errs = [f for f in fr if f[0] == "ERR"]
    report("no-upstream", not acks and len(errs) == 20, f"20 acked publishes with no upstream: {len(acks)} ACK, {len(errs)} ERR {errs[0][1] if errs else ''}")
    s = Client(edge.addr)
    s.sub("nu")
    r0 = s.recv(1.5)
    hub = Server(port=port, name="hub")
    r = r0 or wait_ok(s, "SUB", timeout=10)
    p.pub("nu", "ok", acked=True)
    ack = p.until(lambda f: f[0] in ("ACK", "ERR"), 10)
    h = Client(hub.addr)
    hist, rep, fin = resume(h, "nu", 0, None)
    report("no-upstream", ack and ack[0] == "ACK" and [x for _, x in rep] == [b"ok"],
           f"hub comes up: SUB answered {r}, publish {ack}, hub holds {[x for _, x in rep]}")
    stop_all()


SECTIONS = {
    "consistency": s_consistency,
    "hub-kill-datadir": s_hub_kill_datadir,
    "hub-kill-empty": s_hub_kill_empty,
    "edge-kill": s_edge_kill,
    "backfill": s_backfill,
    "datadir-jump": s_datadir_jump,
    "pattern-blip": s_pattern_blip,
    "limits": s_limits,
    "token": s_token,
    "names": s_names,
    "names-scale": s_names_scale,
    "access": s_access,
    "resume-matrix": s_resume_matrix,
    "hostile-upstream": s_hostile_upstream,
    "hostile-clients": s_hostile_clients,
    "churn": s_churn,
    "slow": s_slow,
    "no-upstream": s_no_upstream,
}


def main():
    wanted = sys.argv[1:] or list(SECTIONS)
    for w in wanted:
        if w not in SECTIONS:
            sys.exit(f"unknown section {w}; sections: {' '.join(SECTIONS)}")
    t0 = time.time()
    print(f"binary {BIN}; logs under {WORK}", flush=True)
    for w in wanted:
        print(f"== {w}: {SECTIONS[w].__doc__.split(chr(10))[0].strip()}", flush=True)
        t = time.time()
        try:
            SECTIONS[w]()
        except Exception as e:  # a section that breaks is a finding too
            report(w, False, f"section raised {type(e).__name__}: {e}")
        finally:
            stop_all()
        print(f"   ({time.time() - t:.1f}s)", flush=True)
    fails = [r for r in RESULTS if r[1] == "FAIL"]
    print(f"== {len(RESULTS) - len(fails)} PASS, {len(fails)} FAIL in {time.time() - t0:.0f}s; logs in {WORK}")
    left = subprocess.run(["pgrep", "-f", BIN + " serve"], capture_output=True, text=True).stdout.split()
    mine = [pid for pid in left if any(str(p.pid) == pid for p in fo.PROCS)]
    if mine:
        print("stray processes:", mine)
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
