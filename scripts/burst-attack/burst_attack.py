# Run: FANOUT_BIN=/path/to/fanout nice -n 19 /usr/bin/python3 scripts/burst-attack/burst_attack.py [sections...]
#   sections: burst corrupt rollback cluster ttl (default: all). Starts its own redis-servers and fanout
#   nodes on free 127.0.0.1 ports, stops them (by pid) and removes its temp dir at the end (KEEP_WORK=1
#   keeps it). Prints PASS/FAIL per check; exit status 1 if any FAIL. About 2-3 minutes.
"""Outside tester's attack on cluster-mode bursts ("runs" in Redis streams), resume from Redis,
late-joining nodes, Redis rollback from a mid-burst snapshot, meta-key deletion, corrupt runs, and a
Redis Cluster slot migrated while publishing."""
import os, sys, time, random, struct, threading, subprocess, shutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

if not BIN or not os.path.exists(BIN):
    print("set FANOUT_BIN to the fanout binary")
    sys.exit(2)

T0 = time.time()
RNG = random.Random(int(os.environ.get("SEED", "7")))
MAXOFF = (1 << 64) - 1
LIMIT = int(os.environ.get("TIME_LIMIT", "235"))   # the whole run stays under 4 minutes


def payload(tag, i, size=None):
    """Distinct payloads, with bytes that look like run framing (lengths, zeros) and text escapes."""
    base = f"{tag}:{i}:".encode()
    if size is None:
        k = i % 11
        size = [0, 1, 4, 5, 17, 100, 3, 8, 64, 1000, 250][k]
    extra = bytes(RNG.choice(b"\x00\x01\xff\\nr \x00\x00\x00\x05abc") for _ in range(size))
    return base + extra


def text_payload(tag, i):
    # the text protocol cannot carry NUL-free guarantees issues; keep it printable with escapes
    return f"{tag}:{i}:" .encode() + RNG.choice([b"", b"a b", b"back\\slash", b"new\nline", b"cr\rx", b"\\n"])


class Pub:
    """One publishing connection: its publishes in order and the events that answered them."""

    def __init__(self, port, binary=True):
        self.c = Conn(port, binary)
        self.sent = []      # (ch, payload, acked)

    def burst(self, items, chunk=None):
        data = bytearray()
        for ch, p, acked in items:
            data += self.c.enc_puba(ch, p, acked)
            self.sent.append((ch, p, acked))
        self.c.send(bytes(data))

    def nacked(self):
        return sum(1 for s in self.sent if s[2])

    def wait_acks(self, timeout=60):
        n = self.nacked()
        return self.c.wait(lambda ev: sum(1 for e in ev if e[0] in ("ACK", "ERR")) >= n or
                           any(e[0] == "CLOSED" for e in ev), timeout)

    def results(self):
        """[(ch, payload, offset or ERR event)] for the acked publishes, in order; ordering problems."""
        acks = [e for e in self.c.snapshot() if e[0] in ("ACK", "ERR")]
        pubs = [s for s in self.sent if s[2]]
        out, probs = [], []
        for i, (ch, p, _) in enumerate(pubs):
            if i >= len(acks):
                probs.append(f"publish #{i} to {ch} got no answer")
                break
            a = acks[i]
            if a[0] == "ERR":
                out.append((ch, p, a))
            elif a[1] != ch:
                probs.append(f"answer #{i} is ACK {a[1]} {a[2]} but publish #{i} went to {ch}")
                out.append((ch, p, None))
            else:
                out.append((ch, p, a[2]))
        last = {}
        for ch, p, o in out:
            if isinstance(o, int):
                if ch in last and o <= last[ch]:
                    probs.append(f"ACK offsets of {ch} not increasing on one connection: {last[ch]} then {o}")
                last[ch] = o
        return out, probs


def live_seqs(conn):
    """{channel: [(offset, payload)]} of a live subscriber (MSG events), plus HIST events."""
    seq = {}
    for e in conn.snapshot():
        if e[0] == "MSG":
            seq.setdefault(e[1], []).append((e[2], e[3]))
    return seq


def subscribe_all(port, chans, binary=True):
    c = Conn(port, binary)
    c.send(b"".join(c.enc_sub(ch) for ch in chans))
    ok = c.wait(lambda ev: sum(1 for e in ev if e[0] == "OK" and e[1] == "SUB") >= len(chans), 30)
    return c, bool(ok)


def settle(conns, want_total, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if all(c.count("MSG") >= want_total for c in conns):
            time.sleep(0.3)
            return True
        time.sleep(0.1)
    return False


def epoch_of(port, ch, binary=True):
    h, msgs, end, ev = resume(port, ch, MAXOFF, None, binary)
    return (h[2], h[4]) if h else (None, None)


def stream_runs(r, ch, prefix="fanout"):
    """[(first, last)] of the entries of a channel's stream."""
    out = []
    for eid, f in r.xrange(f"{prefix}:{{{ch}}}:log"):
        last = int(eid.split(b"-")[1])
        n = int(f.get(b"n", b"1"))
        out.append((last - n + 1, last))
    return out


# ==============================================================================================
def sec_burst():
    print("\n=== 1. bursts of pipelined acked publishes on 1, 10 and 500 channels; resumes; late nodes", flush=True)
    R = Redis("r1")
    url = ["--redis", R.url]
    n1 = Node("n1", url)                  # publishes, live subscriber
    n2 = Node("n2", url, history=3)       # must read Redis for every resume
    n4 = Node("n4", url)                  # publishes too
    ONE = ["one"]
    TEN = [f"ten.{i}" for i in range(10)]
    MANY = [f"many.{i}" for i in range(500)]
    ALL = ONE + TEN + MANY
    s1, ok1 = subscribe_all(n1.port, ALL, True)
    s2, ok2 = subscribe_all(n2.port, ALL, False)
    s3, ok3 = subscribe_all(n4.port, ONE + TEN, True)
    check(ok1 and ok2 and ok3, "live subscribers on 3 nodes got OK SUB for 511 channels")

    pubs = []
    # a. one channel, 6000 pipelined acked publishes in one write, with some 40-70 KB payloads
    pa = Pub(n1.port, True)
    items = []
    for i in range(6000):
        size = [30000, 65530, 70000, 65536][i % 4] if i % 997 == 5 else None
        items.append(("one", payload("a", i, size), True))
    # b. the same channel from a second connection of another node, at the same time, mixed with plain PUBs
    pb = Pub(n4.port, True)
    items_b = [("one", payload("b", i), i % 7 != 3) for i in range(3000)]
    # c. 10 channels, text, interleaved, with plain PUBs
    pc = Pub(n1.port, False)
    items_c = [(TEN[RNG.randrange(10)], text_payload("c", i), i % 5 != 0) for i in range(3000)]
    # d. 500 channels, binary, from n4
    pd = Pub(n4.port, True)
    items_d = [(MANY[RNG.randrange(500)], payload("d", i), True) for i in range(6000)]
    # e. 500 channels again from n1 in 10 smaller pipelined writes
    pe = Pub(n1.port, True)
    items_e = [(MANY[RNG.randrange(500)], payload("e", i), True) for i in range(3000)]
    pubs = [pa, pb, pc, pd, pe]
    # f. single publishes (one at a time, each waiting for its ACK) to "one" and ten.3 meanwhile
    pf = Pub(n4.port, False)       # (not n2: a hist-3 node's publishes trim the stream to ~3)

    def singles():
        for i in range(150):
            ch = "one" if i % 2 else "ten.3"
            pf.burst([(ch, text_payload("f", i), True)])
            pf.c.wait(lambda ev, n=i + 1: sum(1 for e in ev if e[0] in ("ACK", "ERR")) >= n, 10)

    th = [threading.Thread(target=pa.burst, args=(items,)), threading.Thread(target=pb.burst, args=(items_b,)),
          threading.Thread(target=pc.burst, args=(items_c,)), threading.Thread(target=pd.burst, args=(items_d,)),
          threading.Thread(target=lambda: [pe.burst(items_e[k:k + 300]) or time.sleep(0.01) for k in range(0, 3000, 300)]),
          threading.Thread(target=singles)]
    t = time.time()
    for x in th:
        x.start()
    for x in th:
        x.join(90)
    for p in pubs:
        p.wait_acks()
    print(f"   bursts answered in {time.time() - t:.1f}s", flush=True)
    pubs.append(pf)
    acked = {}          # (ch, off) -> payload
    published = {}      # payload -> ch (all, acked or not)
    problems, errs = [], []
    for p in pubs:
        res, probs = p.results()
        problems += probs
        for ch, pl, o in res:
            if isinstance(o, int):
                if (ch, o) in acked:
                    problems.append(f"({ch},{o}) acknowledged twice: {acked[(ch, o)][:30]!r} and {pl[:30]!r}")
                acked[(ch, o)] = pl
            else:
                errs.append((ch, o))
        for ch, pl, _ in p.sent:
            published[pl] = ch
    check(not errs, "every acked publish got an ACK (no ERR)", errs[:5])
    check(not problems, "ACKs come in each connection's publish order, offsets unique per channel", problems[:5])
    total = len(published)
    per_ch = {}
    for pl, ch in published.items():
        per_ch[ch] = per_ch.get(ch, 0) + 1
    want_total = sum(per_ch[c] for c in ALL if c in per_ch)
    st = settle([s1, s2], want_total, 60)
    want3 = sum(per_ch.get(c, 0) for c in ONE + TEN)
    st3 = settle([s3], want3, 30)
    check(st and st3, "live subscribers received as many messages as were published",
          (s1.count("MSG"), s2.count("MSG"), s3.count("MSG"), want_total, want3))
    ref = live_seqs(s1)
    bad = []
    for ch in ALL:
        seq = ref.get(ch, [])
        offs = [o for o, _ in seq]
        if offs != list(range(1, per_ch.get(ch, 0) + 1)):
            bad.append(f"{ch}: offsets {offs[:5]}..{offs[-3:]} ({len(offs)}, want {per_ch.get(ch, 0)})")
            continue
        pls = [p for _, p in seq]
        if len(set(pls)) != len(pls) or any(published.get(p) != ch for p in pls):
            bad.append(f"{ch}: duplicate or foreign payloads")
        for o, p in seq:
            if (ch, o) in acked and acked[(ch, o)] != p:
                bad.append(f"{ch} offset {o}: live {p[:30]!r} but ACKed {acked[(ch, o)][:30]!r}")
                break
    check(not bad, "node n1 live: every message once, in order, offsets 1..n, payload = what was ACKed", bad[:5])
    for name, s, chans in (("n2(hist 3) text", s2, ALL), ("n4", s3, ONE + TEN)):
        got = live_seqs(s)
        diff = [ch for ch in chans if got.get(ch, []) != ref.get(ch, [])]
        check(not diff, f"node {name} live: same (offset, payload) sequence as n1 on every channel",
              [(ch, len(got.get(ch, [])), len(ref.get(ch, []))) for ch in diff[:5]])
    r = R.cli()
    runs = stream_runs(r, "one")
    multi = [x for x in runs if x[1] > x[0]]
    note(f"stream of 'one': {len(runs)} entries for {per_ch['one']} messages, {len(multi)} runs of >1 "
         f"(largest {max((b - a + 1 for a, b in runs), default=0)})")
    check(len(multi) > 0, "the burst was stored as runs (some stream entry holds several messages)")

    # ---- resumes
    refmap = {ch: dict(ref.get(ch, [])) for ch in ALL}
    epochs = {}
    for ch in ONE + TEN + MANY[:40]:
        epochs[ch] = epoch_of(n1.port, ch)[0]
    n5 = Node("n5", url, history=3)       # started after the burst
    n6 = Node("n6", url)                  # started after the burst, default history

    def offsets_for(ch):
        last = len(refmap[ch])
        rs = stream_runs(r, ch)
        cand = {0, 1, 2, last, last - 1, last - 2}
        for a, b in rs[:: max(1, len(rs) // 6)] + rs[-2:]:
            cand |= {a - 1, a, (a + b) // 2, b - 1, b}
        return sorted(o for o in cand if 0 <= o <= last)

    fails = {}
    nres = 0
    for node, binary in ((n2, True), (n5, False), (n6, True), (n1, True)):
        for ch in ONE + TEN[:4] + MANY[:12]:
            for k in (offsets_for(ch) if ch in ONE or node in (n2, n5) else [0, len(refmap[ch]) // 2]):
                got = resume(node.port, ch, k, epochs[ch], binary)
                nres += 1
                err = judge_resume(refmap[ch], epochs[ch], k, got, expect_ok=True)
                if err:
                    fails.setdefault(node.name, []).append(f"SUB {ch} {k} {epochs[ch]:x}: {err}")
    print(f"   {nres} resumes done", flush=True)
    for node in (n2, n5, n6, n1):
        check(node.name not in fails, f"resume on {node.name} from 0, 1, run edges, inside runs, last: exact",
              fails.get(node.name, [])[:4])
    # resume with a wrong epoch and with 'any' epoch on the late hist-3 node
    sfirst = stream_runs(r, "one")[0][0]
    for node in (n5, n2, n6, n1):
        got = resume(node.port, "one", 100, 0x1234, True)
        h = got[0]
        check(h is not None and h[5] == "epoch" and h[3] == sfirst and got[1] == sorted(refmap["one"].items())[sfirst - 1:],
              f"resume with a foreign epoch on {node.name}: HIST epoch, replay from the earliest retained ({sfirst})",
              (h, got[1][:1], len(got[1])))
    got = resume(n5.port, "ten.7", 3, None, False)
    check(not judge_resume(refmap["ten.7"], epochs["ten.7"], 3, got) and got[0] and got[0][2] == epochs["ten.7"],
          "text resume without epoch on the late node: exact", judge_resume(refmap["ten.7"], epochs["ten.7"], 3, got))
    # strict resume beyond the end, offset past last in epoch
    last = len(refmap["ten.2"])
    got = resume(n5.port, "ten.2", last + 50, epochs["ten.2"], True, timeout=20)
    note(f"resume of ten.2 from last+50 in its epoch on late node: HIST={got[0]} end={got[2]} msgs={len(got[1])}")
    check(got[0] is not None and (got[0][5] == "epoch" or got[0][2] != epochs["ten.2"]) or got[2][0] == "ERR",
          "resume from beyond the channel's end is told (epoch), not silently accepted", got[0])

    # ---- a live subscriber on the late hist-3 node follows a second burst, then everyone agrees
    s5, _ = subscribe_all(n5.port, ONE + MANY[:20], True)
    pg = Pub(n6.port, True)
    items_g = [(RNG.choice(ONE + MANY[:20]), payload("g", i), True) for i in range(4000)]
    pg.burst(items_g)
    ph = Pub(n1.port, True)
    ph.burst([("one", payload("h", i), True) for i in range(2000)])
    pg.wait_acks(); ph.wait_acks()
    for p in (pg, ph):
        res, probs = p.results()
        check(not probs and all(isinstance(o, int) for _, _, o in res), f"second burst ACKs in order ({len(res)})", probs[:3])
        for ch, pl, o in res:
            refmap[ch][o] = pl   # acked places
    want5 = sum(1 for ch, _, _ in items_g) + 2000
    settle([s5], want5, 30)
    got5 = live_seqs(s5)
    g1 = live_seqs(s1)
    bad = []
    for ch in ONE + MANY[:20]:
        seq1 = g1.get(ch, [])
        start = len(ref.get(ch, []))
        if seq1[start:] != got5.get(ch, []):
            bad.append((ch, len(seq1) - start, len(got5.get(ch, []))))
        if [o for o, _ in seq1] != list(range(1, len(seq1) + 1)):
            bad.append((ch, "n1 offsets not contiguous"))
        for o, p in seq1:
            if refmap[ch].get(o, p) != p:
                bad.append((ch, o, "payload differs from ACK"))
                break
    check(not bad, "late hist-3 node's live subscriber = n1's subscriber over a second burst", bad[:5])
    # resume after the second burst, on a freshly started hist-3 node, from the old last offsets
    n7 = Node("n7", url, history=3)
    fails = []
    for ch in ONE + MANY[:6]:
        full = dict(g1.get(ch, []))
        sfirst = stream_runs(r, ch)[0][0]
        for k in (0, sfirst - 2, sfirst - 1, sfirst, len(ref.get(ch, [])), len(full) - 1):
            if k < 0:
                continue
            got = resume(n7.port, ch, k, epochs[ch], True)
            err = judge_resume(full, epochs[ch], k, got, expect_ok=k + 1 >= sfirst)
            if not err and k + 1 < sfirst and got[0][3] != sfirst:
                err = f"expired with first={got[0][3]} but Redis holds from {sfirst}"
            if err:
                fails.append(f"{ch} from {k}: {err}")
    check(not fails, "fresh hist-3 node resumes across both bursts exactly", fails[:4])
    for n in (n1, n2, n4, n5, n6, n7):
        check(n.alive(), f"{n.name} alive, no panic")
    for c in (s1, s2, s3, s5):
        c.close()
    return R, (n1, n2, n4, n5, n6, n7), url


# ==============================================================================================
def sec_corrupt(R, nodes, url):
    print("\n=== 2. DEL of a channel's meta key; corrupt runs and wrong types in Redis", flush=True)
    n1, n2 = nodes[0], nodes[1]
    r = R.cli()
    # a channel with a known history, a live subscriber on n1 and n2
    ch = "delmeta"
    sa, _ = subscribe_all(n1.port, [ch], True)
    sb, _ = subscribe_all(n2.port, [ch], False)
    p = Pub(n1.port, True)
    p.burst([(ch, payload("dm", i), True) for i in range(300)])
    p.wait_acks()
    res, probs = p.results()
    check(not probs and len(res) == 300 and res[-1][2] == 300, "delmeta: 300 acked, offsets 1..300", probs[:3])
    e0, last0 = epoch_of(n1.port, ch)
    before = {o: pl for _, pl, o in res}
    r.delete(f"fanout:{{{ch}}}:meta")
    # publish through n2 (which mirrors the channel) and through a fresh node that mirrors nothing
    n8 = Node("n8", url)
    q = Pub(n8.port, True)
    q.burst([(ch, payload("dm2", i), True) for i in range(50)])
    q.wait_acks(20)
    p2 = Pub(n2.port, True)
    p2.burst([(ch, payload("dm3", i), True) for i in range(50)])
    p2.wait_acks(20)
    r8, _ = q.results()
    r2, _ = p2.results()
    answers = [o for _, _, o in r8 + r2]
    note(f"after DEL meta: n8 answers {answers[:3]}..{answers[-2:]}, n2 answers {[o for _, _, o in r2][:3]}; "
         f"meta now {r.hgetall(f'fanout:{{{ch}}}:meta')}")
    time.sleep(3)
    e1, last1 = epoch_of(n1.port, ch)
    note(f"delmeta epoch {e0:x} last {last0} -> {e1 and hex(e1)} last {last1}")
    # every (epoch, offset) one message: the subscribers' sequences, partitioned by HIST, must not conflict
    places = {}
    conflicts = []
    for name, s in (("n1", sa), ("n2", sb)):
        ep = e0
        for e in s.snapshot():
            if e[0] == "HIST" and e[1] == ch:
                ep = e[2]
            if e[0] == "MSG" and e[1] == ch:
                k = (ep, e[2])
                if k in places and places[k] != e[3]:
                    conflicts.append((name, hex(ep), e[2], places[k][:20], e[3][:20]))
                places[k] = e[3]
    for (_, pl, o) in r8 + r2:
        if isinstance(o, int) and e1 is not None and (e1, o) in places and places[(e1, o)] != pl:
            conflicts.append(("ack", o))
    for o, pl in before.items():
        if places.get((e0, o), pl) != pl:
            conflicts.append(("old", o))
    check(not conflicts, "after DEL meta: no (epoch, offset) names two messages on live subscribers", conflicts[:5])
    acked_new = [o for _, _, o in r8 + r2 if isinstance(o, int)]
    # after DEL meta: nothing acknowledged is silently reused in the old epoch
    got = resume(n2.port, ch, 100, e0, True)
    h = got[0]
    okr = h is not None and (h[2] != e0 and h[5] == "epoch" or h[2] == e0 and not judge_resume(before, e0, 100, got))
    check(okr, "after DEL meta: resume (old epoch, 100) on hist-3 node is exact or told epoch",
          (h, got[1][:2], got[2]))
    got = resume(n8.port, ch, 300, e0, True)
    h = got[0]
    check(h is not None and (h[5] == "epoch" or (h[2] == e0 and not got[1])) and got[2][0] == "OK",
          "after DEL meta: resume (old epoch, 300) on the node that published after the DEL", (h, got[1][:2], got[2]))
    tolds = [e for s in (sa, sb) for e in s.snapshot() if e[0] == "HIST" and e[1] == ch and e[5] == "epoch"]
    msgs_after = [e for s in (sa, sb) for e in s.snapshot() if e[0] == "MSG" and e[1] == ch]
    check(len(msgs_after) >= 2 * 300 + (len(acked_new) if acked_new else 0) or tolds,
          "after DEL meta: live subscribers get the new messages (or were told)",
          (len(msgs_after), len(acked_new), len(tolds)))
    check(all(n.alive() for n in (n1, n2, n8)), "nodes alive after DEL meta")

    # ---- corrupt runs in a stream, read when a hist-3 node syncs the channel for a subscriber
    print("   corrupt stream entries (one fresh hist-3 node per case)", flush=True)
    def corrupt_entry(fields):
        def f(c):
            r.xadd(f"fanout:{{{c}}}:log", fields, id="0-12")
            r.hset(f"fanout:{{{c}}}:meta", "o", 12)

        def heal(c):
            r.xdel(f"fanout:{{{c}}}:log", "0-12")
        return f, heal

    def wrong_meta(c):
        r.delete(f"fanout:{{{c}}}:meta")
        r.set(f"fanout:{{{c}}}:meta", "a string")

    def bad_epoch(c):
        r.hset(f"fanout:{{{c}}}:meta", "e", "xyz")

    def drop(c):
        r.delete(f"fanout:{{{c}}}:meta", f"fanout:{{{c}}}:log")

    cases = {
        "bad.n0": corrupt_entry({"n": "0", "r": b"", "t": "1"}),
        "bad.lenover": corrupt_entry({"n": "2", "r": struct.pack(">I", 1000) + b"xy", "t": "1"}),
        "bad.short": corrupt_entry({"n": "3", "r": struct.pack(">I", 1) + b"a" + b"\x00\x00", "t": "1"}),
        "bad.trail": corrupt_entry({"n": "1", "r": struct.pack(">I", 1) + b"a" + b"garbage", "t": "1"}),
        "bad.metatype": (wrong_meta, drop),
        "bad.epoch3bytes": (bad_epoch, drop),
    }
    for c, (spoil, heal) in cases.items():
        pp = Pub(n1.port, True)
        pp.burst([(c, payload("ok", i), True) for i in range(5)])
        pp.wait_acks(10)
        spoil(c)
        nx = Node("nx" + c, url, history=3)
        other = "other." + c
        so, _ = subscribe_all(nx.port, [other], True)
        rc = Conn(nx.port, True)
        rc.send(rc.enc_sub(c, 0, None))          # the node must read the stream to serve this
        time.sleep(0.8)
        answered = [e[:4] for e in rc.snapshot()][:2]
        rc.close()                               # the client leaves; the channel should be let go
        time.sleep(2.0)
        lost0 = nx.log().count("lost redis")
        px = Pub(nx.port, True)
        px.burst([(other, payload("ot", i), True) for i in range(10)])
        py = Pub(n1.port, True)
        py.burst([(other, payload("oy", i), True) for i in range(10)])
        px.wait_acks(6); py.wait_acks(6)
        time.sleep(1.5)
        ans = [e[:3] for e in px.c.snapshot() if e[0] in ("ACK", "ERR")]
        lost1 = nx.log().count("lost redis")
        reason = [l[l.find("cluster:"):][:110] for l in nx.log().splitlines() if "lost redis" in l][:1]
        check(all(a[0] == "ACK" for a in ans) and lost1 == lost0 and so.count("MSG") == 20,
              f"{c}: bad state of one channel does not take the node's Redis link down for other channels",
              f"resume of {c} answered {answered or 'nothing'} in 0.8 s; "
              f"{lost1} Redis reconnects so far ({lost1 - lost0} in the last ~2 s, after the client left); "
              f"publishes to another channel via this node: {sorted(set(map(str, ans)))[:2]}; "
              f"other channel's subscriber got {so.count('MSG')}/20; log: {reason}")
        check(nx.alive(), f"{c}: node alive")
        heal(c)                                  # so that the next cases are independent
        nx.stop()
        so.close()
    # the rest keeps working on every node: a fresh channel published on n1 reaches a subscriber on n9
    n9 = Node("n9", url, history=3)
    sx, _ = subscribe_all(n9.port, ["healthy"], True)
    sy, _ = subscribe_all(n2.port, ["healthy"], True)
    px = Pub(n1.port, True)
    px.burst([("healthy", payload("hh", i), True) for i in range(200)])
    px.wait_acks(10)
    okh = settle([sx, sy], 200, 15)
    check(okh, "after corrupt entries and wrong types: another channel still flows n1 -> n2, n9",
          (sx.count("MSG"), sy.count("MSG")))
    for n in (n1, n2, n8, n9):
        check(n.alive(), f"{n.name} alive after corrupt Redis state", n.log()[-600:] if not n.alive() else "")
    for n in list(nodes) + [n8, n9]:
        n.stop()
    R.stop()


# ==============================================================================================
def sec_rollback():
    print("\n=== 3. Redis restored from a snapshot taken in the middle of a burst", flush=True)
    R = Redis("r2")
    url = ["--redis", R.url]
    a = Node("ra", url)
    b = Node("rb", url, history=3)
    CH = ["rb.one"] + [f"rb.m{i}" for i in range(20)]
    sa, _ = subscribe_all(a.port, CH, True)
    sb, _ = subscribe_all(b.port, CH, False)
    acked = {}            # (ch, off) -> payload, all in the first epoch
    PO = [f"po.{i}" for i in range(4)]      # channels nobody subscribes to: only published through `a`
    p1 = Pub(a.port, True)
    p1.burst([(RNG.choice(CH + PO), payload("p1", i), True) for i in range(3000)])
    p1.wait_acks()
    for ch, pl, o in p1.results()[0]:
        acked[(ch, o)] = pl
    # burst 2: the snapshot is taken while it is being answered
    p2 = Pub(a.port, True)
    p3 = Pub(b.port, True)
    items2 = [(RNG.choice(CH + PO), payload("p2", i), True) for i in range(20000)]
    # 40 pipelined writes of 500, 15 ms apart, so that SAVE lands between two of them
    th = threading.Thread(target=lambda: [p2.burst(items2[k:k + 500]) or time.sleep(0.015) for k in range(0, 20000, 500)])
    th.start()
    p2.c.wait(lambda ev: sum(1 for e in ev if e[0] == "ACK") >= 6000, 30)
    n_at_save = p2.c.count("ACK")
    R.cli().save()
    n_after_save = p2.c.count("ACK")
    shutil.copy(os.path.join(R.dir, "dump.rdb"), os.path.join(R.dir, "old.rdb"))
    th.join(60)
    p2.wait_acks()
    note(f"SAVE taken while burst 2 was answered: {n_at_save}..{n_after_save} of {len(items2)} ACKed around it")
    p3.burst([(RNG.choice(CH + PO), payload("p3", i), True) for i in range(2000)])
    p3.wait_acks()
    # a third node that saw the channels only through publishes (no subscribers)
    for p in (p2, p3):
        res, probs = p.results()
        check(not probs and all(isinstance(o, int) for _, _, o in res), f"burst ACKs in order before the crash ({len(res)})", probs[:3])
        for ch, pl, o in res:
            acked[(ch, o)] = pl
    tot = len([1 for (ch, o) in acked if ch in CH])
    settle([sa, sb], tot, 30)
    epochs = {ch: epoch_of(a.port, ch)[0] for ch in CH}
    lastoff = {ch: max(o for (c, o) in acked if c == ch) for ch in CH + PO}
    rr = R.cli()   # read from Redis, so that no node is made to serve the PO channels
    epochs.update({ch: int.from_bytes(rr.hget(f"fanout:{{{ch}}}:meta", "e"), "big") for ch in PO})
    # what the snapshot holds
    R.kill9()
    shutil.copy(os.path.join(R.dir, "old.rdb"), os.path.join(R.dir, "dump.rdb"))
    R.start()
    snap = {}
    r = R.cli()
    for ch in CH + PO:
        v = r.hget(f"fanout:{{{ch}}}:meta", "o")
        snap[ch] = int(v) if v else 0
    note(f"restored snapshot: rb.one at {snap['rb.one']} (acked up to {lastoff['rb.one']}); "
         f"lost {sum(lastoff[c] - snap[c] for c in CH)} acked messages over {len(CH)} channels")
    # wait for the nodes to be back (a publish on another channel succeeds)
    end = time.time() + 20
    while time.time() < end:
        pz = Pub(a.port, True)
        pz.burst([("rb.probe", b"z", True)])
        pz.c.wait(lambda ev: any(e[0] in ("ACK", "ERR") for e in ev), 5)
        if any(e[0] == "ACK" for e in pz.c.snapshot()):
            break
        time.sleep(0.3)
    time.sleep(2.5)
    # a node started after the restore, which mirrors nothing
    c = Node("rc", url, history=3)
    # resumes from offsets acknowledged after the snapshot, and before it, on every node
    fails = []
    for node in (a, b, c):
        for ch in CH[:6]:
            ref = {o: pl for (cc, o), pl in acked.items() if cc == ch}
            for k in sorted({1, snap[ch] - 1, snap[ch], snap[ch] + 1, (snap[ch] + lastoff[ch]) // 2, lastoff[ch] - 1}):
                if k < 0 or k > lastoff[ch]:
                    continue
                got = resume(node.port, ch, k, epochs[ch], node is b)
                h = got[0]
                if h is None or got[2][0] != "OK":
                    fails.append(f"{node.name} {ch} from {k}: {h} {got[2]}")
                elif h[2] == epochs[ch]:
                    err = judge_resume(ref, epochs[ch], k, got)
                    if err or k >= snap[ch]:
                        fails.append(f"{node.name} {ch} from {k} (snapshot at {snap[ch]}): same epoch kept, {err or 'status ' + h[5]}")
                elif h[5] != "epoch":
                    fails.append(f"{node.name} {ch} from {k}: other epoch with status {h[5]}")
    check(not fails, "after restore: resumes from (E, k) are told `epoch` (E ended), never served as E", fails[:5])
    # more publishes through every node, past the old offsets, then: one message per (epoch, offset)
    pubs = []
    for node in (c, a, b):
        p = Pub(node.port, True)
        p.burst([(RNG.choice(CH[:6]), payload("post" + node.name, i), True) for i in range(1500)])
        pubs.append(p)
    for p in pubs:
        p.wait_acks()
    time.sleep(3)
    places = {}
    conflicts = []
    for (ch, o), pl in acked.items():
        places[(ch, epochs[ch], o)] = pl
    for p in pubs:
        res, probs = p.results()
        check(not probs, f"post-restore ACKs in publish order ({len(res)})", probs[:3])
        for ch, pl, o in res:
            if isinstance(o, int):
                ne = epoch_of(a.port, ch)[0]
                k = (ch, ne, o)
                if k in places and places[k] != pl:
                    conflicts.append(("ack", ch, hex(ne), o))
    for name, s in (("ra", sa), ("rb", sb)):
        ep = dict(epochs)
        told = {}
        for e in s.snapshot():
            if e[0] == "HIST":
                ep[e[1]] = e[2]
                told[e[1]] = e[5]
            elif e[0] == "MSG":
                k = (e[1], ep[e[1]], e[2])
                if k in places and places[k] != e[3]:
                    conflicts.append((name, e[1], hex(ep[e[1]]), e[2], places[k][:24], e[3][:24]))
                places.setdefault(k, e[3])
    for node in (a, b, c):
        for ch in CH[:6]:
            ne = epoch_of(node.port, ch)[0]
            got = resume(node.port, ch, 0, ne, True)
            for o, pl in got[1]:
                k = (ch, ne, o)
                if k in places and places[k] != pl:
                    conflicts.append(("resume@" + node.name, ch, hex(ne), o, places[k][:24], pl[:24]))
    check(not conflicts, "after restore and new publishes: no (epoch, offset) names two messages anywhere", conflicts[:5])
    # live subscribers told
    for name, s in (("ra", sa), ("rb", sb)):
        evs = s.snapshot()
        told = {e[1] for e in evs if e[0] == "HIST" and e[5] == "epoch"}
        changed = [ch for ch in CH[:6] if snap[ch] < lastoff[ch]]
        check(all(ch in told for ch in changed), f"live subscribers on {name} told HIST epoch on rolled-back channels",
              [ch for ch in changed if ch not in told])
    eps = {node.name: [epoch_of(node.port, ch)[0] for ch in CH[:6]] for node in (a, b, c)}
    check(eps["ra"] == eps["rb"] == eps["rc"], "all three nodes agree on each channel's epoch after the restore", eps)
    # channels only ever published through `a` (it was asked their epoch once, then nobody kept them):
    # a node that knows nothing publishes past the lost offsets; is (E, k) then told, on every node?
    via = os.environ.get("PO_VIA", "rd")   # rd: a fresh default node; rc: the fresh hist-3 one; ra: the acked one
    d = {"rc": c, "ra": a}.get(via) or Node("rd", url)
    pc = Pub(d.port, True)
    pc.burst([(RNG.choice(PO), payload("poc", i), True) for i in range(4000)])
    pc.wait_acks()
    res, probs = pc.results()
    reuse = [(ch, o) for ch, pl, o in res if isinstance(o, int) and (ch, o) in acked and acked[(ch, o)] != pl]
    note(f"publisher-only channels: after the restore node {d.name}'s ACKs reuse {len(reuse)} (offset) places "
         f"acknowledged before the crash, e.g. {reuse[:2]}")
    fails = []
    for node in (d, c, b, a) if d.name == "rd" else (c, b, a):   # ra (its publishers were ACKed) last
        for ch in PO:
            k = (snap[ch] + lastoff[ch]) // 2
            got = resume(node.port, ch, k, epochs[ch], True)
            h = got[0]
            if h is None:
                fails.append(f"{node.name} {ch}: no HIST {got[2]}")
                continue
            print(f"    {node.name} SUB {ch} {k} {epochs[ch]:x} (snapshot at {snap[ch]}, acked to {lastoff[ch]}) -> "
                  f"HIST {h[2]:x} {h[3]}..{h[4]} {h[5]}, {len(got[1])} msgs")
            if h[2] == epochs[ch]:
                wrong = [(o, pl[:20], acked.get((ch, o), b"?")[:20]) for o, pl in got[1] if (ch, o) in acked and acked[(ch, o)] != pl]
                fails.append(f"{node.name}: SUB {ch} {k} {epochs[ch]:x} -> HIST {h[2]:x} {h[3]}..{h[4]} {h[5]}: "
                             f"the ended epoch served on; {len(wrong)} offsets ACKed with one payload replayed with "
                             f"another, first {wrong[:1]}")
    check(not fails, "publisher-only channels after the restore: (E, k) acked after the snapshot is told `epoch` on every node",
          fails[:4])
    # Redis restarted empty
    R.kill9()
    os.remove(os.path.join(R.dir, "dump.rdb"))
    R.start()
    time.sleep(2.5)
    fails = []
    for node in (a, b, c):
        for ch in CH[:3]:
            ne = eps[node.name][CH.index(ch)]
            got = resume(node.port, ch, 5, ne, True)
            h = got[0]
            if not (h and h[5] == "epoch" and h[2] != ne) and not (h and h[2] == ne and h[5] == "ok" and got[1] == []):
                fails.append((node.name, ch, h, got[2][:2], len(got[1])))
    check(not fails, "Redis restarted empty: resumes on every node are told epoch", fails[:4])
    for n in (a, b, c):
        check(n.alive(), f"{n.name} alive after rollbacks")
        n.stop()
    sa.close(); sb.close()
    R.stop()


# ==============================================================================================
def crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def slot_of(ch):
    return crc16(ch.encode()) % 16384


def sec_cluster():
    print("\n=== 4. Redis Cluster of 3 masters, bursts over many channels, a slot migrated while publishing", flush=True)
    rs = [Redis(f"c{i}", cluster=True) for i in range(3)]
    out = subprocess.run(NICE + ["redis-cli", "--cluster", "create"] + [f"127.0.0.1:{x.port}" for x in rs] +
                         ["--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60)
    end = time.time() + 20
    while time.time() < end:
        info = rs[0].cli().execute_command("CLUSTER", "INFO").decode() if isinstance(
            rs[0].cli().execute_command("CLUSTER", "INFO"), bytes) else rs[0].cli().execute_command("CLUSTER", "INFO")
        if "cluster_state:ok" in str(info):
            break
        time.sleep(0.2)
    check("cluster_state:ok" in str(info), "redis cluster of 3 masters up", out.stdout[-300:] + out.stderr[-300:])
    ids = {x.port: x.cli().execute_command("CLUSTER", "MYID") for x in rs}
    ids = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in ids.items()}
    url = ["--redis-cluster", f"redis://127.0.0.1:{rs[0].port}"]
    q1 = Node("q1", url)
    q2 = Node("q2", url, history=3)
    # channels: 3 in one slot (the one migrated), plus 200 spread
    hot = []
    target = slot_of("hot.0")
    i = 0
    while len(hot) < 3:
        cand = f"hot.{i}"
        if slot_of(cand) == target:
            hot.append(cand)
        i += 1
    SPREAD = [f"cl.{j}" for j in range(200)]
    CH = hot + SPREAD
    # which master owns the target slot?
    slots = rs[0].cli().execute_command("CLUSTER", "SLOTS")
    owner = None
    for s in slots:
        if s[0] <= target <= s[1]:
            owner = s[2][1]
    src = next(x for x in rs if x.port == owner)
    dst = next(x for x in rs if x.port != owner)
    s2, ok2 = subscribe_all(q2.port, CH, True)
    s1, ok1 = subscribe_all(q1.port, hot, False)
    check(ok1 and ok2, "subscribers on both cluster nodes ready")
    pubs = []
    stop = threading.Event()

    def publisher(node, tag, chans, rounds):
        p = Pub(node.port, True)
        pubs.append(p)
        for k in range(rounds):
            if stop.is_set():
                break
            p.burst([(RNG.choice(chans), payload(f"{tag}{k}", i), True) for i in range(400)])
            time.sleep(0.05)
        p.wait_acks(30)

    th = [threading.Thread(target=publisher, args=(q1, "x", hot, 40)),
          threading.Thread(target=publisher, args=(q1, "y", CH, 30)),
          threading.Thread(target=publisher, args=(q1, "z", hot + SPREAD[:10], 30))]   # (not q2: it would trim)
    for t in th:
        t.start()
    time.sleep(0.6)
    # migrate the slot by hand: IMPORTING / MIGRATING / MIGRATE keys / SETSLOT NODE
    t_mig = time.time()
    d, sc = dst.cli(), src.cli()
    mig_err = ""
    try:
        d.execute_command("CLUSTER", "SETSLOT", target, "IMPORTING", ids[src.port])
        sc.execute_command("CLUSTER", "SETSLOT", target, "MIGRATING", ids[dst.port])
        # one key at a time, 0.25 s apart, so a channel's meta and log sit on two masters for a while
        # (meta first for some channels, log first for others)
        keys = sorted(sc.execute_command("CLUSTER", "GETKEYSINSLOT", target, 100))
        keys = [k for k in keys if b"hot.0" in k][::-1] + [k for k in keys if b"hot.0" not in k]
        for k in keys:
            try:
                sc.execute_command("MIGRATE", "127.0.0.1", dst.port, k, 0, 5000)
            except Exception as e:
                mig_err += f"{k}: {e}; "
            time.sleep(0.25)
        for _ in range(20):
            left = sc.execute_command("CLUSTER", "GETKEYSINSLOT", target, 100)
            if not left:
                break
            for k in left:
                try:
                    sc.execute_command("MIGRATE", "127.0.0.1", dst.port, k, 0, 5000)
                except Exception as e:
                    mig_err += f"{k}: {e}; "
            time.sleep(0.05)
        for x in rs:
            x.cli().execute_command("CLUSTER", "SETSLOT", target, "NODE", ids[dst.port])
    except Exception as e:
        mig_err += str(e)
    note(f"slot {target} ({hot}; keys {[k.decode() for k in keys]}) migrated {src.port}->{dst.port} in {time.time() - t_mig:.2f}s while publishing; errors: {mig_err[:200] or 'none'}")
    for t in th:
        t.join(90)
    acked, errs, probs = {}, [], []
    per_ch = {}
    for p in pubs:
        res, pr = p.results()
        probs += pr
        for ch, pl, o in res:
            if isinstance(o, int):
                if (ch, o) in acked:
                    probs.append(f"({ch},{o}) ACKed twice")
                acked[(ch, o)] = pl
            else:
                errs.append((ch, o[1], o[2][:80]))
    check(not probs, "cluster: ACKs in publish order, no offset ACKed twice", probs[:5])
    note(f"cluster: {len(acked)} ACKed, {len(errs)} refused: {sorted(set((e[1], e[2]) for e in errs))[:3]}")
    okpub = {}
    for (ch, o) in acked:
        okpub[ch] = max(okpub.get(ch, 0), o)
    time.sleep(3)
    g2 = live_seqs(s2)
    g1 = live_seqs(s1)
    bad = []
    for name, g, chans in (("q2", g2, CH), ("q1", g1, hot)):
        for ch in chans:
            seq = g.get(ch, [])
            offs = [o for o, _ in seq]
            if offs != list(range(1, len(offs) + 1)) or len(offs) < okpub.get(ch, 0):
                bad.append(f"{name} {ch}: offsets {len(offs)} contiguous={offs == list(range(1, len(offs) + 1))} acked up to {okpub.get(ch, 0)}")
                continue
            for o, pl in seq:
                if acked.get((ch, o), pl) != pl:
                    bad.append(f"{name} {ch} {o}: payload differs from ACK")
                    break
    refused, refused_err = {}, {}
    for p in pubs:
        for ch, pl, o in p.results()[0]:
            if not isinstance(o, int):
                refused[pl] = ch
                refused_err[pl] = (o[2] if o else "no answer")[:60]
    for name, g in (("q2", g2), ("q1", g1)):
        for ch, seq in g.items():
            n_acked = sum(1 for (c, o) in acked if c == ch)
            dl = [pl for _, pl in seq if pl in refused]
            if dl:
                bad.append(f"{name} {ch}: {len(dl)} publishes refused with ERR were delivered anyway")
            if len(seq) != n_acked:
                bad.append(f"{name} {ch}: {len(seq)} delivered, {n_acked} acked")
    for ch in hot:
        seq = g2.get(ch, [])
        dset = {o for o, _ in seq}
        aset = {o for (c, o) in acked if c == ch}
        top = max(dset | aset | {0})
        missing = sorted(set(range(1, top + 1)) - dset)
        am = sorted(aset & set(missing))
        holes = [e[3:] for e in s2.snapshot() if e[0] == "HIST" and e[1] == ch]
        rdl = sum(1 for _, pl in seq if pl in refused)
        rdl_err = sorted({refused_err[pl] for _, pl in seq if pl in refused})
        nref = sum(1 for pl, c in refused.items() if c == ch)
        wrong = sum(1 for o, pl in seq if acked.get((ch, o), pl) != pl)
        print(f"    {ch}: delivered {len(seq)} (offsets up to {max(dset | {0})}), acked {len(aset)}, refused {nref}; "
              f"offsets never delivered {len(missing)} {missing[:3]}..{missing[-2:]}, of them ACKed {len(am)} {am[:4]}; "
              f"refused-but-delivered {rdl} {rdl_err}; delivered with another payload than ACKed {wrong}; HIST to live subscriber {holes[:3]}")
        if am:
            bad.append(f"{ch}: {len(am)} ACKed offsets never delivered (e.g. {am[:3]}), Redis lost nothing")
    others = [ch for ch in SPREAD if any(c == ch for c in refused.values())]
    odl = {ch: sum(1 for _, pl in g2.get(ch, []) if pl in refused) for ch in others}
    print(f"    channels outside slot {target} with refused publishes: {len(others)} "
          f"(slots {sorted({slot_of(c) for c in others})[:5]}...); refused-but-delivered there: "
          f"{sum(odl.values())} in {sum(1 for v in odl.values() if v)} channels, e.g. "
          f"{[(c, v) for c, v in odl.items() if v][:3]}")
    tolds = [e for s in (s1, s2) for e in s.snapshot() if e[0] == "HIST"]
    check(not bad, "cluster: live subscribers (hist-3 node included) got every message once, in order, = ACKs",
          bad[:5] + [f"HIST seen: {tolds[:3]}"])
    fails = []
    for node in (q2, q1):
        for ch in hot + SPREAD[:5]:
            ep, last = epoch_of(node.port, ch)
            ref = dict(g2.get(ch, []))
            for k in (0, 1, len(ref) // 2, len(ref) - 1):
                if k < 0:
                    continue
                err = judge_resume(ref, ep, k, resume(node.port, ch, k, ep, True))
                if err:
                    fails.append(f"{node.name} {ch} from {k}: {err}")
    q3 = Node("q3", url, history=3)
    for ch in hot + SPREAD[:5]:
        ep, _ = epoch_of(q1.port, ch)
        ref = dict(g2.get(ch, []))
        for k in (0, len(ref) // 3):
            err = judge_resume(ref, ep, k, resume(q3.port, ch, k, ep, True))
            if err:
                fails.append(f"q3(late) {ch} from {k}: {err}")
    check(not fails, "cluster: resumes after the migration (both nodes and a late hist-3 node) exact", fails[:5])
    for n in (q1, q2, q3):
        check(n.alive(), f"{n.name} alive")
        n.stop()
    s1.close(); s2.close()
    for x in rs:
        x.stop()


# ==============================================================================================
def sec_ttl():
    print("\n=== 5. key expiry refreshed less often: --redis-key-ttl-secs 4, bursts and singles for 10 s", flush=True)
    R = Redis("r5")
    url = ["--redis", R.url, "--redis-key-ttl-secs", "4"]
    a, b = Node("ta", url), Node("tb", url)
    c = Node("tc", url, history=3)
    r = R.cli()
    sent = {}
    e0 = None
    end = time.time() + 10
    k = 0
    ttls = []
    while time.time() < end:
        node = (a, b)[k % 2]
        items = [("ttl.ch", payload(f"t{k}", i), True) for i in range(1 if k % 3 else 200)]
        p = Pub(node.port, True)
        p.burst(items)
        p.wait_acks(5)
        for ch, pl, o in p.results()[0]:
            if isinstance(o, int):
                sent[o] = pl
        ttls.append((r.pttl("fanout:{ttl.ch}:meta"), r.pttl("fanout:{ttl.ch}:log")))
        if e0 is None:
            e0 = int.from_bytes(r.hget("fanout:{ttl.ch}:meta", "e"), "big")
        k += 1
        time.sleep(0.7)
    e1 = r.hget("fanout:{ttl.ch}:meta", "e")
    check(e1 is not None and int.from_bytes(e1, "big") == e0 and min(min(t) for t in ttls) > 0,
          "keys published to every 0.7 s never expire (TTL 4 s), epoch kept", (ttls[:3], ttls[-3:]))
    got = resume(c.port, "ttl.ch", 0, e0, True)
    check(not judge_resume(sent, e0, 0, got, expect_ok=True), "after 10 s of publishes: whole stream resumable from 0",
          judge_resume(sent, e0, 0, got, expect_ok=True))
    time.sleep(5.5)   # quiet past the TTL plus an eighth: the keys go, the channel starts over
    gone = r.exists("fanout:{ttl.ch}:meta", "fanout:{ttl.ch}:log")
    p = Pub(a.port, True)
    p.burst([("ttl.ch", b"after expiry", True)])
    p.wait_acks(5)
    time.sleep(0.5)
    got = resume(c.port, "ttl.ch", max(sent), e0, True)
    check(gone == 0 and got[0] is not None and got[0][5] == "epoch" and got[1][:1] == [(1, b"after expiry")],
          "after the TTL the keys are gone and a resume is told `epoch`", (gone, got[0], got[1][:2]))
    for n in (a, b, c):
        n.stop()
    R.stop()


def main():
    want = sys.argv[1:] or ["burst", "corrupt", "rollback", "cluster", "ttl"]
    import signal

    def bail(sig, frm):
        raise TimeoutError(f"signal {sig}: stopping (time limit {LIMIT}s or SIGTERM)")
    signal.signal(signal.SIGTERM, bail)
    signal.signal(signal.SIGALRM, bail)
    signal.alarm(LIMIT)
    try:
        if "burst" in want or "corrupt" in want:
            R, nodes, url = sec_burst()
            if "corrupt" in want:
                sec_corrupt(R, nodes, url)
            else:
                for n in nodes:
                    n.stop()
                R.stop()
        if "rollback" in want:
            sec_rollback()
        if "cluster" in want:
            sec_cluster()
        if "ttl" in want:
            sec_ttl()
    except Exception as e:
        import traceback
        traceback.print_exc()
        check(False, "script ran to the end", repr(e))
    finally:
        cleanup()
    print(f"\n{len(PASSES)} PASS, {len(FAILS)} FAIL in {time.time() - T0:.0f}s")
    for n, d in FAILS:
        print(f"  FAILED: {n} :: {str(d)[:600]}")
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
