#!/usr/bin/env python3
"""Promise 3 (security): anonymous clients never receive messages from channels whose namespace
says anonymous-sub = false, whatever the protocol or wildcard."""
import sys, os, re, urllib.parse
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

SECRET = "ns-security-hmac-secret-0123456789"
APIKEY = "ns-security-api-key"
sec = wfile("nss_secret", SECRET)
key = wfile("nss_apikey", APIKEY)

NS = [
    ("secret.>", False), ("topsecret", False), ("news.hidden", False), ("*.private", False),
    ("vault.*.x", False), ("open.>", True), ("open.*.closed", False), ("secret.open", True),
    ("tie.*", False), ("*.tie", True),        # tie on tie.tie -> first in file (closed)
    ("*.eit", True), ("eit.*", False),        # tie on eit.eit -> first in file (open)
]
CLOSED = ["secret.x", "secret.a.b", "topsecret", "news.hidden", "foo.private", "news.private",
          "vault.a.x", "open.a.closed", "tie.tie", "tie.z", "eit.z"]
OPEN = ["news.a.b", "news", "news.a", "secret.open", "open.a", "open.a.b", "eit.eit", "vault.a.y", "foo.bar", "x.tie"]
PATTERNS_BAD = [">", "*", "*.*", "*.*.*", "secret.*", "secret.>", "news.*", "*.private", "foo.*",
                "vault.>", "vault.a.*", "vault.*.*", "*.*.x", "open.>", "open.*.*", "open.a.*", "tie.*",
                "*.tie", "eit.*", "news.>", "*.hidden", "*.z", "topsecret", "*.a.x", "*.x", "*.*.closed"]
PATTERNS_OK = ["news.a.*", "foo.bar", "news.a.>", "open.*.y", "open.a.b"]

text = 'listen = "127.0.0.1:0"\nworkers = 2\nno-pin = true\n'
text += f'auth-secret-file = "{sec}"\napi-key-file = "{key}"\nanonymous-sub = [">"]\n'
text += 'presence = [">"]\nmax-subscribes-per-sec = 0\n'
for pat, anon in NS:
    text += f'\n[[namespace]]\npattern = "{pat}"\nanonymous-sub = {"true" if anon else "false"}\n'
cfg = wfile("nss.toml", text)

srv = Server([], config=cfg, name="nss")
A = srv.addr
assert A, srv.log()
q = urllib.parse.quote

try:
    print("== single-channel subscriptions, every protocol")
    anon_text = Text(A)
    anon_bin = Bin(A)
    anon_ws = WS(A)
    check(anon_ws.status == 101, "ws: anonymous upgrade accepted", anon_ws.head[:100])
    for ch in CLOSED:
        r = anon_text.cmd(f"SUB {ch}")
        check(len(r) == 1 and r[0].startswith("ERR "), f"text: anonymous SUB {ch} refused", r)
        r = anon_text.cmd(f"SUB {ch} 0")
        check(len(r) == 1 and r[0].startswith("ERR "), f"text: anonymous resume SUB {ch} 0 refused (no history)", r)
        anon_bin.sub(ch)
        anon_ws.send({"op": "sub", "channel": ch})
        anon_ws.send({"op": "sub", "channel": ch, "after": 0})
    for ch in OPEN:
        r = anon_text.cmd(f"SUB {ch}")
        check(r == [f"OK SUB {ch}"], f"text: anonymous SUB {ch} allowed (namespace/global resolution)", r,
              soft=False)
    fr = anon_bin.frames(0.8)
    check(all(f[0] == "ERR" for f in fr) and len(fr) == len(CLOSED), "binary: every anonymous SUB of a closed channel refused", fr)
    wr = anon_ws.drain(0.8)
    check(all(m.get("op") == "err" for m in wr) and len(wr) == 2 * len(CLOSED), "ws: every anonymous sub of a closed channel refused", wr)
    for ch in OPEN:
        anon_bin.sub(ch)
        anon_ws.send({"op": "sub", "channel": ch})

    print("== wildcard subscriptions")
    ptext = Text(A)
    pbin = Bin(A)
    pws = WS(A)
    for p in PATTERNS_BAD:
        r = ptext.cmd(f"PSUB {p}")
        check(len(r) == 1 and r[0].startswith("ERR "), f"text: anonymous PSUB {p} refused (could reach a closed channel)", r)
        pbin.psub(p)
        pws.send({"op": "psub", "pattern": p})
    fr = pbin.frames(0.8)
    check(all(f[0] == "ERR" for f in fr) and len(fr) == len(PATTERNS_BAD), "binary: every dangerous anonymous PSUB refused", fr)
    wr = pws.drain(0.8)
    check(all(m.get("op") == "err" for m in wr) and len(wr) == len(PATTERNS_BAD), "ws: every dangerous anonymous psub refused", wr)
    for p in PATTERNS_OK:
        r = ptext.cmd(f"PSUB {p}")
        check(r == [f"OK PSUB {p}"], f"text: anonymous PSUB {p} allowed (reaches only open channels)", r, soft=True)
        pbin.psub(p)
        pws.send({"op": "psub", "pattern": p})
    pbin.frames(0.3); pws.drain(0.3)

    print("== Redis clients")
    rs = []
    for ch in CLOSED[:6]:
        for cmd in ("SUBSCRIBE", "SSUBSCRIBE"):
            r = Resp(A); r.send(cmd, ch); out = r.read(0.3)
            check(out.startswith("-"), f"resp: anonymous {cmd} {ch} refused", out)
            rs.append(r)
    rp = Resp(A)
    for g in ["*", "secret*", "s?cret.x", "[st]*", "*private", "news*", "topsecre[t]", "\\t*"]:
        rp.send("PSUBSCRIBE", g); out = rp.read(0.3)
        check(out.startswith("-"), f"resp: anonymous PSUBSCRIBE {g} refused", out)
    # Redis client with generous anonymous grants: see test_ns_security2 below (separate server)
    rsub_open = Resp(A); rsub_open.send("SUBSCRIBE", "news"); rsub_open.read(0.3)

    print("== event streams and long-poll")
    sse_closed = []
    for ch in CLOSED:
        st = Stream(A, f"/sse?channel={q(ch)}&after=0")
        sse_closed.append((ch, st))
    sse_pat = []
    for p in PATTERNS_BAD:
        st = Stream(A, f"/sse?channel=news&pattern={q(p)}")
        sse_pat.append((p, st))
    sse_ok = Stream(A, "/sse?channel=news&pattern=news.a.%2A")
    # seed history on closed channels with the API key first, then poll from 0
    for ch in CLOSED:
        st, _, body = api_publish(A, APIKEY, ch, f"pre-{ch}")
        check(st == 200, f"api: key publishes to {ch}", (st, body))
    for ch in CLOSED:
        st, _, body = http(A, "GET", f"/poll?channel={q(ch)}&from=0&timeout=0")
        check(st in (401, 403) and "pre-" not in body, f"poll: anonymous long-poll {ch} from=0 refused", (st, body[:200]))
        st, _, body = http(A, "GET", f"/presence?channel={q(ch)}")
        check(st in (401, 403), f"presence(http): anonymous refused on {ch}", (st, body[:200]))
    r = anon_text.cmd(f"PRESENCE secret.x")
    check(r and r[0].startswith("ERR"), "text: anonymous PRESENCE secret.x refused", r)
    # a held long-poll started before publishes
    held = []
    for ch in CLOSED[:3]:
        held.append((ch, Stream(A, f"/poll?channel={q(ch)}&timeout=2")))

    print("== token holders (positive control, and no inheritance of anonymous grants)")
    tok_all = token(SECRET, sub="admin1", subscribe=[">"], publish=[])
    tok_news = token(SECRET, sub="bob", subscribe=["news"], publish=[])
    ta = Text(A); r = ta.cmd("AUTH " + tok_all); check(r == ["OK AUTH admin1"], "token: AUTH ok", r)
    for ch in CLOSED:
        ta.send(f"SUB {ch}")
    ta.cmd("PING"); ta.drain(0.3)
    tb = Text(A); tb.cmd("AUTH " + tok_news)
    r = tb.cmd("SUB secret.x")
    check(r and r[0].startswith("ERR 403"), "token with subscribe=[news]: SUB secret.x refused (no anonymous fallback)", r)
    r = tb.cmd("SUB foo.bar")
    check(r and r[0].startswith("ERR 403"), "token with subscribe=[news]: SUB foo.bar refused (token, not anonymous grant, decides)", r, soft=True)

    # PUBSUB leaks of closed channel names
    rinfo = Resp(A); rinfo.send("PUBSUB", "CHANNELS"); out = rinfo.read(0.4)
    check(not any(c in out for c in ["secret.x", "topsecret", "news.hidden"]), "resp: anonymous PUBSUB CHANNELS does not list closed channels", out[:300])
    rinfo.send("PUBSUB", "NUMSUB", "secret.x"); out = rinfo.read(0.4)
    check(out.endswith(":0\r\n"), "resp: anonymous PUBSUB NUMSUB secret.x answers 0", out)

    print("== the real test: publish to every channel, see who got what")
    time.sleep(0.3)
    for ch in CLOSED + OPEN:
        st, _, body = api_publish(A, APIKEY, ch, f"live-{ch}")
    time.sleep(0.8)
    got = {}
    got["text"] = "\n".join(anon_text.drain(0.5))
    got["text-psub"] = "\n".join(ptext.drain(0.3))
    got["bin"] = repr(anon_bin.frames(0.3))
    got["bin-psub"] = repr(pbin.frames(0.3))
    got["ws"] = json.dumps(anon_ws.drain(0.3))
    got["ws-psub"] = json.dumps(pws.drain(0.3))
    got["resp"] = "".join(r.read(0.05) for r in rs) + rsub_open.read(0.2) + rp.read(0.1)
    for ch, st in sse_closed:
        got[f"sse:{ch}"] = st.read(0.1)
    for p, st in sse_pat:
        got[f"sse-pat:{p}"] = st.read(0.1)
    got["sse-ok"] = sse_ok.read(0.2)
    for ch, st in held:
        got[f"poll-held:{ch}"] = st.read(0.2)
    leaks = []
    for where, data in got.items():
        for ch in CLOSED:
            if f"live-{ch}" in data or f"pre-{ch}" in data:
                leaks.append(f"{where} got {ch}")
    check(not leaks, "SECURITY: no anonymous connection received any closed-channel message", leaks)
    # positive controls
    check("live-news.a" in got["text"] and "live-open.a.b" in got["text"], "control: anonymous text subscriber got open channels", got["text"][:300])
    check("live-open.a.b" in got["text-psub"], "control: anonymous PSUB open.a.b got open.a.b", got["text-psub"][:300])
    check("live-news.a.b" in got["sse-ok"], "control: anonymous SSE with pattern news.a.* got news.a.b", got["sse-ok"][-300:])
    tag = "\n".join(ta.drain(0.4))
    check(all(f"live-{c}" in tag for c in CLOSED), "control: token subscriber with > got every closed channel", tag[:300])
    for ch, st in sse_closed[:1]:
        print("   (sse refusal looks like:", got[f"sse:{ch}"][:160].replace("\r\n", " | "), ")")
finally:
    srv.stop()

print("== generous anonymous grants: '>' '*' '@*' with a closed namespace")
text2 = f'listen = "127.0.0.1:0"\nworkers = 1\nno-pin = true\nauth-secret-file = "{sec}"\napi-key-file = "{key}"\n'
text2 += 'anonymous-sub = [">", "*", "@*"]\n\n[[namespace]]\npattern = "secret.>"\nanonymous-sub = false\n'
with Server([], config=wfile("nss2.toml", text2), name="nss2") as s2:
    A2 = s2.addr
    rp = Resp(A2)
    conns = []
    for g in ["*", "secret.*", "s*"]:
        rp.send("PSUBSCRIBE", g); out = rp.read(0.3)
        check(out.startswith("-"), f"resp (anon grants > * @*): PSUBSCRIBE {g} refused", out)
    t = Text(A2)
    for p in [">", "*.*", "secret.*"]:
        r = t.cmd(f"PSUB {p}")
        check(r and r[0].startswith("ERR"), f"text (anon grants > * @*): PSUB {p} refused", r)
    time.sleep(0.2)
    api_publish(A2, APIKEY, "secret.x", "live-secret.x")
    time.sleep(0.5)
    data = rp.read(0.3) + "\n".join(t.drain(0.3))
    check("live-secret.x" not in data, "SECURITY (anon grants > * @*): no closed message delivered", data[:300])

finish()
