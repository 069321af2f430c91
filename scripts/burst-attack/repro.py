# Run: FANOUT_BIN=/path/to/fanout nice -n 19 /usr/bin/python3 scripts/burst-attack/repro.py rollback|corrupt
#   Minimal reproductions of two findings of burst_attack.py, one node and one redis-server on free
#   127.0.0.1 ports, stopped (by pid) with their temp dir at the end. ~15 s each.
"""rollback: a node's own ACKed places are forgotten once no client subscribes, so a Redis restored from
   an older snapshot re-issues (E, k) with other messages, ACKed again by the same node, resumed as `ok`.
corrupt:  one malformed run entry in one channel's stream drops the node's whole Redis link in a loop."""
import os, sys, time, shutil, struct
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *


def acked_burst(port, ch, payloads):
    p = Conn(port, True)
    p.send(b"".join(p.enc_puba(ch, pl) for pl in payloads))
    p.wait(lambda ev: sum(1 for e in ev if e[0] in ("ACK", "ERR")) >= len(payloads), 10)
    return [e[2] for e in p.snapshot() if e[0] == "ACK"]


def rollback(keep_subscriber):
    R = Redis(f"r{int(keep_subscriber)}")
    a = Node(f"a{int(keep_subscriber)}", ["--redis", R.url])
    r = R.cli()
    sub = Conn(a.port, True)
    sub.send(sub.enc_sub("po", 0, None))
    sub.wait(lambda ev: any(e[0] == "OK" for e in ev), 5)
    A = acked_burst(a.port, "po", [b"A%d" % i for i in range(50)])
    r.save()                                                  # the snapshot: offsets 1..50
    shutil.copy(os.path.join(R.dir, "dump.rdb"), os.path.join(R.dir, "old.rdb"))
    B = acked_burst(a.port, "po", [b"B%d" % i for i in range(50)])
    E = int.from_bytes(r.hget("fanout:{po}:meta", "e"), "big")
    if not keep_subscriber:
        sub.close()
        time.sleep(4)                                         # the node lets the channel go
    print(f"  ACKed A at {A[0]}..{A[-1]}, B at {B[0]}..{B[-1]} in epoch {E:016x}")
    R.kill9()                                                 # Redis crashes; restored from the snapshot
    shutil.copy(os.path.join(R.dir, "old.rdb"), os.path.join(R.dir, "dump.rdb"))
    R.start()
    time.sleep(2)
    C = acked_burst(a.port, "po", [b"C%d" % i for i in range(60)])
    E2 = int.from_bytes(r.hget("fanout:{po}:meta", "e"), "big")
    print(f"  after restore: same node ACKed C at {C[0]}..{C[-1]}; epoch in Redis {E2:016x}")
    h, msgs, end, _ = resume(a.port, "po", A[-1], E, True)
    print(f"  SUB po {A[-1]} {E:016x} -> {h[0]} {h[2]:016x} {h[3]} {h[4]} {h[5]}; first messages {msgs[:2]}")
    ok = not (h[2] == E and h[5] == "ok" and msgs and msgs[0] != (B[0], b"B0"))
    check(ok, f"rollback ({'subscriber stays' if keep_subscriber else 'no subscriber left'}): "
              f"(E, {B[0]}) not ACKed and replayed as two different messages", (h, msgs[:1]))
    a.stop(); R.stop()


def corrupt():
    R = Redis("r")
    url = ["--redis", R.url]
    n1, n2 = Node("n1", url), Node("n2", url, history=3)
    acked_burst(n1.port, "bad", [b"ok%d" % i for i in range(5)])
    r = R.cli()
    r.xadd("fanout:{bad}:log", {"n": "2", "r": struct.pack(">I", 1000) + b"xy", "t": "1"}, id="0-12")
    r.hset("fanout:{bad}:meta", "o", 12)
    c = Conn(n2.port, True)
    c.send(c.enc_sub("bad", 0, None))
    time.sleep(1)
    c.close()
    time.sleep(3)
    p = Conn(n2.port, True)
    p.send(p.enc_puba("unrelated", b"x"))
    p.wait(lambda ev: ev, 5)
    print("  PUBA unrelated x on n2 ->", p.snapshot()[:1], "; 'lost redis' log lines:", n2.log().count("lost redis"))
    check(p.snapshot()[:1] and p.snapshot()[0][0] == "ACK", "corrupt: an unrelated channel still publishes on the node")
    n1.stop(); n2.stop(); R.stop()


if __name__ == "__main__":
    if not BIN:
        sys.exit("set FANOUT_BIN")
    try:
        what = sys.argv[1] if len(sys.argv) > 1 else "rollback"
        if what == "rollback":
            rollback(keep_subscriber=True)
            rollback(keep_subscriber=False)
        else:
            corrupt()
    finally:
        cleanup()
    sys.exit(1 if FAILS else 0)
