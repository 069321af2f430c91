"""Resuming subscribers and acknowledged publishers as threads, and the check of what every
subscriber saw against the acknowledgements (edge_attack.py's consistency sections)."""

import random
import threading
import time

from fo import Client, Closed, OP


class Sub(threading.Thread):
    """Subscribes `channels` from the start (resume after 0) on addrs[0]; on a lost connection
    (or every `hop` seconds) reconnects to the next address of `addrs` and resumes every channel
    with its (epoch, last offset). Records, per channel, the frames it saw."""

    def __init__(self, label, addrs, channels, stop, hop=None, seed=0):
        super().__init__(daemon=True)
        self.label, self.addrs, self.channels, self.stop, self.hop = label, addrs, channels, stop, hop
        self.rng = random.Random(seed)
        self.ev = {ch: [] for ch in channels}   # ('H', epoch, first, last, status) | ('M', epoch, off, payload)
        self.epoch = {}
        self.last = {}
        self.reconnects = 0
        self.errors = []
        self.at = 0
        self.live = False
        self.connect_failures = 0

    def connect(self):
        addr = self.addrs[self.at % len(self.addrs)]
        c = Client(addr, timeout=2)
        for ch in self.channels:
            if ch in self.epoch:
                c.sub(ch, self.last.get(ch, 0), self.epoch[ch])
            else:
                c.sub(ch, 0)
        return c

    def run(self):
        c = None
        next_hop = time.time() + (self.hop or 1e9)
        deadline = time.time() + 300
        while not self.stop.is_set() and time.time() < deadline:
            if c is None:
                try:
                    c = self.connect()
                    self.live = True
                except OSError:
                    self.connect_failures += 1
                    self.live = False
                    self.at += 1
                    time.sleep(0.1)
                    continue
            try:
                f = c.recv(0.2)
            except Closed:
                c.close()
                c = None
                self.live = False
                self.reconnects += 1
                self.at += 1
                time.sleep(0.05)
                continue
            if f is not None:
                self.frame(f)
            if self.hop and time.time() >= next_hop:
                next_hop = time.time() + self.hop
                c.close()
                c = None
                self.reconnects += 1
                self.at = self.rng.randrange(len(self.addrs))
        if c:
            c.close()

    def frame(self, f):
        if f[0] == "HIST" and f[1] in self.ev:
            _, ch, epoch, first, last, status = f
            self.ev[ch].append(("H", epoch, first, last, status, self.addrs[self.at % len(self.addrs)]))
            self.epoch[ch] = epoch
            if status == "epoch":
                # another log: what we had counts no more
                self.last[ch] = 0
        elif f[0] == "MSG" and f[1] in self.ev:
            ch = f[1]
            self.ev[ch].append(("M", self.epoch.get(ch), f[2], f[3]))
            self.last[ch] = f[2]
        elif f[0] == "ERR":
            self.errors.append(f)


class Pub(threading.Thread):
    """Acknowledged publishes round-robin over `channels`, at most `window` in flight, about
    `rate` per second; reconnects to the next address when the connection is lost."""

    def __init__(self, label, addrs, channels, stop, rate=150, window=8):
        super().__init__(daemon=True)
        self.label, self.addrs, self.channels, self.stop = label, addrs, channels, stop
        self.rate, self.window = rate, window
        self.acked = {}      # payload -> (channel, offset)
        self.refused = {}    # payload -> (code, reason)
        self.unknown = set()  # in flight when the connection dropped
        self.sent = 0
        self.at = 0

    def run(self):
        seq = 0
        c = None
        flight = []  # [(channel, payload)]
        deadline = time.time() + 300
        t0 = time.time()
        while not self.stop.is_set() and time.time() < deadline:
            if c is None:
                try:
                    c = Client(self.addrs[self.at % len(self.addrs)], timeout=2)
                except OSError:
                    self.at += 1
                    time.sleep(0.1)
                    continue
            try:
                while len(flight) < self.window and self.sent < (time.time() - t0) * self.rate:
                    seq += 1
                    ch = self.channels[seq % len(self.channels)]
                    payload = f"{self.label}:{seq}"
                    c.pub(ch, payload, acked=True)
                    flight.append((ch, payload))
                    self.sent += 1
                f = c.recv(0.02)
                while f is not None:
                    self.answer(f, flight)
                    f = c.recv(0)
            except (Closed, OSError):
                self.unknown.update(p for _, p in flight)
                flight = []
                c.close()
                c = None
                self.at += 1
                time.sleep(0.05)
        # drain what is in flight
        end = time.time() + 8
        while c is not None and flight and time.time() < end:
            try:
                f = c.recv(0.2)
            except Closed:
                break
            if f is not None:
                self.answer(f, flight)
        self.unknown.update(p for _, p in flight)
        if c:
            c.close()

    def answer(self, f, flight):
        if f[0] == "ACK":
            for i, (ch, p) in enumerate(flight):
                if ch == f[1]:
                    self.acked[p] = (ch, f[2])
                    del flight[i]
                    return
        elif f[0] == "ERR" and flight:
            ch, p = flight.pop(0)
            self.refused[p] = (f[1], f[2])


def check(subs, pubs, allow_loss_with_notice=True):
    """Returns (problems, stats). Problems are strings naming the subscriber and channel."""
    problems = []
    acked = {}
    for p in pubs:
        acked.update(p.acked)
    refused_nothing = {}
    for p in pubs:
        for payload, (code, why) in p.refused.items():
            if "nothing was published" in why:
                refused_nothing[payload] = why
    by_epoch_off = {}     # (ch, epoch, off) -> payload
    stats = dict(acked=len(acked), refused=sum(len(p.refused) for p in pubs),
                 unknown=sum(len(p.unknown) for p in pubs), deliveries=0, notices=0)
    for s in subs:
        for ch, evs in s.ev.items():
            cur_epoch, prev, allowed, noticed = None, 0, True, False
            seen_payloads = {}
            last_hist = None
            for e in evs:
                if e[0] == "H":
                    last_hist = e[2:]
                    _, epoch, first, last, status, where = e
                    if status != "ok":
                        stats["notices"] += 1
                        noticed = True
                        allowed = True
                    if epoch != cur_epoch:
                        if cur_epoch is not None and status == "ok":
                            problems.append(f"{s.label} {ch}: epoch changed {cur_epoch:x}->{epoch:x} with status ok")
                        cur_epoch, prev, allowed = epoch, 0, True
                    continue
                _, epoch, off, payload = e
                stats["deliveries"] += 1
                payload = payload.decode("utf-8", "replace")
                if off <= prev:
                    problems.append(f"{s.label} {ch}: offset {off} after {prev} (duplicate/out of order) payload {payload}")
                elif off != prev + 1 and not allowed:
                    lost = sorted(o for (c, o) in acked.values() if c == ch and prev < o < off)
                    if lost:
                        problems.append(f"{s.label} {ch}: SILENT LOSS {prev + 1}..{off - 1} without a HIST notice, "
                                        f"{len(lost)} of them acknowledged (last HIST {last_hist})")
                    else:
                        problems.append(f"{s.label} {ch}: silent jump {prev + 1}..{off - 1} without a HIST notice "
                                        f"(none of them acknowledged; last HIST {last_hist})")
                allowed = False
                prev = max(prev, off)
                key = (ch, epoch, off)
                if by_epoch_off.setdefault(key, payload) != payload:
                    problems.append(f"{s.label} {ch}: epoch {epoch:x} offset {off} is '{payload}' here, '{by_epoch_off[key]}' elsewhere")
                if payload in acked and acked[payload] != (ch, off):
                    problems.append(f"{s.label} {ch}: '{payload}' delivered at {off}, acknowledged at {acked[payload]}")
                if payload in refused_nothing:
                    problems.append(f"{s.label} {ch}: '{payload}' delivered but its publish was refused: {refused_nothing[payload]}")
                if payload in seen_payloads and seen_payloads[payload] != (epoch, off):
                    problems.append(f"{s.label} {ch}: '{payload}' delivered twice (offsets {seen_payloads[payload][1]} and {off})")
                seen_payloads[payload] = (epoch, off)
            missing = [p for p, (c, _) in acked.items() if c == ch and p not in seen_payloads]
            if missing:
                if noticed and allow_loss_with_notice:
                    stats.setdefault("lost_with_notice", 0)
                    stats["lost_with_notice"] += len(missing)
                else:
                    problems.append(f"{s.label} {ch}: {len(missing)} acknowledged messages never delivered, no notice "
                                    f"(e.g. {sorted(missing)[:3]} at {[acked[m][1] for m in sorted(missing)[:3]]}; "
                                    f"subscriber connected at the end: {s.live}, reconnects {s.reconnects}, "
                                    f"failed connects {s.connect_failures}, last position {s.epoch.get(ch, 0):x}/{s.last.get(ch)})")
    return problems, stats
