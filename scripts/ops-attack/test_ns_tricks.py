#!/usr/bin/env python3
"""Promise 3 (security), parser/encoding tricks: percent-encoding, duplicate parameters, JSON escapes,
multi-argument Redis commands, partial-wildcard tokens, tokens without claims."""
import sys, os, re, urllib.parse
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

SECRET = "ns-tricks-hmac-secret-0123456789"
APIKEY = "ns-tricks-api-key"
sec = wfile("nst_secret", SECRET)
key = wfile("nst_apikey", APIKEY)
text = f'''listen = "127.0.0.1:0"
workers = 2
no-pin = true
auth-secret-file = "{sec}"
api-key-file = "{key}"
anonymous-sub = [">"]
anonymous-pub = ["pubok.>", "secret.>", "prices.*"]
max-subscribes-per-sec = 0

[[namespace]]
pattern = "secret.>"
anonymous-sub = false
anonymous-pub = false

[[namespace]]
pattern = "prices.*"
client-publish = false
anonymous-pub = true
'''
CL = "secret.x"
srv = Server([], config=wfile("nst.toml", text), name="nst")
A = srv.addr
listeners = []
try:
    def sse(path):
        st = Stream(A, path); listeners.append((path, st)); return st

    print("== HTTP query tricks")
    for path in ["/sse?channel=secret%2Ex", "/sse?channel=secret%2ex&after=0", "/sse?channel=news&channel=secret.x",
                 "/sse?channel=news&after=0&channel=secret%2Ex&after=0", "/sse?channel=news&pattern=secret%2E%2A",
                 "/sse?channel=news&pattern=%3E", "/sse?channel=news&pattern=secre%2A.x", "/sse?channel=secret.x&channel=news",
                 "/sse?channel=secret.x&token=", "/sse?channel=secret.x&token=garbage", "/sse?channel=%73ecret.x"]:
        sse(path)
    for path in ["/poll?channel=secret%2Ex&from=0&timeout=0", "/poll?channel=news&channel=secret.x&from=0&timeout=0",
                 "/poll?channel=secret.x&channel=news&from=0&timeout=0", "/poll?channel=%73ecret.x&from=0&timeout=0",
                 "/poll?channel=secret.x&from=0&timeout=0&token=", "/presence?channel=secret%2Ex"]:
        pass
    api_publish(A, APIKEY, CL, "pre-secret")

    print("== WebSocket JSON tricks")
    w = WS(A)
    w.send('{"op":"sub","channel":"news","channel":"secret.x"}')
    w.send('{"op":"sub","channel":"secret.x","channel":"news"}')
    w.send('{"op":"sub","channel":"secret\\u002ex"}')
    w.send('{"op":"sub","channel":"secret\\u002ex","after":0}')
    w.send('{"op":"psub","pattern":"secret\\u002e*"}')
    w.send('{"op":"psub","pattern":"news","pattern":">"}')
    w.send('{"op":"sub","op":"psub","channel":"news","pattern":">"}')
    w.send('{"op":"sub","channel":"news","op":"psub","pattern":">"}')
    wr = w.drain(0.8)
    print("   ws replies:", [(m.get("op"), m.get("code"), m.get("arg") or m.get("reason", "")[:50]) for m in wr])
    wbin = WS(A, proto="fanout.binary")
    # binary subprotocol: one binary-format frame per message, no preface
    def binframe(op, body):
        return (len(body) + 1).to_bytes(4, "big") + bytes([op]) + body
    wbin.send(binframe(0x01, bytes([len(CL)]) + CL.encode()), opcode=2)
    wbin.send(binframe(0x09, b"\x01>"), opcode=2)
    wbin.send(binframe(0x01, bytes([len(CL)]) + CL.encode() + (0).to_bytes(8, "big")), opcode=2)
    print("   ws-binary replies:", wbin.drain(0.6))

    print("== Redis tricks")
    r1 = Resp(A); r1.send("SUBSCRIBE", "news", CL, "news.a"); o = r1.read(0.4)
    print("   multi SUBSCRIBE:", o.replace("\r\n", " "))
    r2 = Resp(A); r2.send("HELLO", "3"); r2.read(0.3); r2.send("SUBSCRIBE", CL); o2 = r2.read(0.3)
    check(o2.startswith("-"), "resp3: anonymous SUBSCRIBE secret.x refused", o2)
    r3 = Resp(A); r3.send("PING"); r3.read(0.2); r3.s.sendall(b"SUBSCRIBE secret.x\r\n"); o3 = r3.read(0.3)
    check(o3.startswith("-") or "secret.x" not in o3, "resp inline: anonymous SUBSCRIBE secret.x refused", o3)
    r4 = Resp(A); r4.send("SSUBSCRIBE", "news", CL); o4 = r4.read(0.3)
    print("   multi SSUBSCRIBE:", o4.replace("\r\n", " "))
    r5 = Resp(A); r5.send("SUBSCRIBE", "news"); r5.read(0.3); r5.send("PSUBSCRIBE", "secret.*"); o5 = r5.read(0.3)
    check(o5.startswith("-"), "resp: PSUBSCRIBE after SUBSCRIBE refused", o5)
    redis_conns = [r1, r2, r3, r4, r5]

    print("== text tricks")
    t = Text(A); tricks = []
    for cmd in ["SUB  secret.x", "SUB secret.x ", "SUB\tsecret.x", "sub secret.x", "SUB secret.x 0 * strict",
                "SUB secret.x 18446744073709551615", "PSUB secre*.x", "PSUB s*.x", "PSUB secret.x.>", "PSUB *.>", "PSUB secret.x*",
                "PSUB sec>", "PSUB >.x"]:
        tt = Text(A); r = tt.cmd(cmd); tricks.append(tt)
        print(f"   {cmd!r}: {r}")
    b = Bin(A)
    b.sub(CL)
    b.frame(0x01, bytes([len(CL)]) + CL.encode() + (0).to_bytes(8, "big") + (0).to_bytes(8, "big") + b"\x01")
    b.psub("secre*.x"); b.psub("s*.x")
    print("   binary:", b.frames(0.5))

    print("== tokens without claims")
    tk_noclaims = token(SECRET, sub="carol", subscribe=None, publish=None)
    tc = Text(A); r = tc.cmd("AUTH " + tk_noclaims); print("   AUTH token without subscribe/publish claims:", r)
    r = tc.cmd(f"SUB {CL}")
    check(r and r[0].startswith("ERR"), "token without subscribe claim: SUB secret.x refused", r)
    r = tc.cmd("PSUB >")
    check(r and r[0].startswith("ERR"), "token without subscribe claim: PSUB > refused", r)
    tk_empty = token(SECRET, sub="dave", subscribe=[], publish=[])
    td = Text(A); td.cmd("AUTH " + tk_empty)
    r = td.cmd(f"SUB {CL}")
    check(r and r[0].startswith("ERR"), "token with subscribe=[]: SUB secret.x refused", r)
    tk_expired = token(SECRET, sub="erin", subscribe=[">"], ttl=-3600)
    te = Text(A); r = te.cmd("AUTH " + tk_expired); r2 = te.cmd(f"SUB {CL}")
    check(r2 and r2[0].startswith("ERR"), "after a refused (expired) token: SUB secret.x refused", (r, r2))
    sse(f"/sse?channel=secret.x&token={tk_empty}")
    sse(f"/sse?channel=news&pattern=%3E&token={tk_noclaims}")

    print("== anonymous publish and client-publish")
    p = Text(A)
    r = p.cmd("PUB secret.y hello")
    check(r and r[0].startswith("ERR"), "anonymous PUB secret.y refused (namespace anonymous-pub=false beats global)", r)
    r = p.cmd("PUB pubok.a hello")
    check(r == [], "anonymous PUB pubok.a allowed (global anonymous-pub)", r)
    r = p.cmd("PUB prices.a hello")
    check(r and r[0].startswith("ERR 403"), "anonymous PUB prices.a refused: client-publish=false beats anonymous-pub=true", r)

    time.sleep(0.3)
    for ch in [CL, "secret.y"]:
        api_publish(A, APIKEY, ch, "live-secret")
    time.sleep(0.6)
    leaks = []
    for path, st in listeners:
        d = st.read(0.1)
        if "live-secret" in d or "pre-secret" in d or "hello" in d and "secret" in d:
            leaks.append(("sse", path, d[-200:]))
    for path in ["/poll?channel=secret%2Ex&from=0&timeout=0", "/poll?channel=news&channel=secret.x&from=0&timeout=0",
                 "/poll?channel=secret.x&channel=news&from=0&timeout=0", "/poll?channel=%73ecret.x&from=0&timeout=0",
                 "/poll?channel=secret.x&from=0&timeout=0&token=", f"/poll?channel=secret.x&from=0&timeout=0&token={tk_empty}"]:
        st, _, body = http(A, "GET", path)
        if "secret" in body and ("live-" in body or "pre-" in body):
            leaks.append(("poll", path, body[:200]))
    for name, data in [("ws", json.dumps(w.drain(0.3))), ("ws-bin", repr(wbin.drain(0.3))),
                       ("text", "\n".join(sum((x.drain(0.05) for x in tricks), []))), ("bin", repr(b.frames(0.3))),
                       ("tok-noclaims", "\n".join(tc.drain(0.2))), ("tok-empty", "\n".join(td.drain(0.2))),
                       ("tok-expired", "\n".join(te.drain(0.2)))] + [("resp", r.read(0.1)) for r in redis_conns]:
        if "live-secret" in data or "pre-secret" in data:
            leaks.append((name, data[:300]))
    check(not leaks, "SECURITY: no closed-channel message reached any anonymous/unprivileged connection (tricks)", leaks)
finally:
    srv.stop()
finish()
