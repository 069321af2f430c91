#!/usr/bin/env python3
"""Promise 3 (functional): per-namespace history, presence, join-leave, client-publish,
max-message-bytes, most-specific selection and no stacking."""
import sys, os, re
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

SECRET = "ns-options-secret-0123456789abcdef"
APIKEY = "ns-options-api-key"
sec = wfile("nso_secret", SECRET)
key = wfile("nso_apikey", APIKEY)
cfg = wfile("nso.toml", f'''listen = "127.0.0.1:0"
workers = 2
no-pin = true
auth-secret-file = "{sec}"
api-key-file = "{key}"
history-messages = 4
max-publishes-per-sec = 0
max-subscribes-per-sec = 0
presence = ["g.>"]

[[namespace]]
pattern = "chat.>"
history-messages = 2
join-leave = true
max-message-bytes = 16

[[namespace]]
pattern = "chat.*.private"
history-messages = 1

[[namespace]]
pattern = "chat.lobby"
history-messages = 3
presence = false

[[namespace]]
pattern = "prices.*"
client-publish = false

[[namespace]]
pattern = "aged.*"
history-age-secs = 1

[[namespace]]
pattern = "big.*"
history-bytes-per-channel = 200

[[namespace]]
pattern = "g.quiet"
history-messages = 9
''')

with Server([], config=cfg, name="nso") as s:
    A = s.addr
    user = token(SECRET, sub="u1", subscribe=[">"], publish=[">"])
    admin = token(SECRET, sub="adm", subscribe=[">"], publish=[">"], admin=True)
    p = Text(A); check(p.cmd("AUTH " + user) == ["OK AUTH u1"], "auth user", "")

    def hist(ch, n):
        for i in range(n):
            api_publish(A, APIKEY, ch, f"{ch}-{i}")
        c = Text(A); c.cmd("AUTH " + user)
        r = c.cmd(f"SUB {ch} 0") + c.drain(0.3)
        c.close()
        return [l for l in r if l.startswith("MSG ")]

    print("== history per namespace (most specific wins, unset from flags)")
    for ch, want in [("chat.1", 2), ("chat.7.private", 1), ("chat.lobby", 3), ("other", 4), ("prices.x", 4), ("g.quiet", 9)]:
        m = hist(ch, 10)
        check(len(m) == want, f"history: {ch} keeps {want}", m)
    api_publish(A, APIKEY, "aged.a", "old")
    time.sleep(2.2)
    m = hist("aged.a", 1)
    check(len(m) == 1 and "aged.a-0" in m[0], "history-age-secs=1: old message aged out", m)
    m = hist("big.a", 10)   # each ~7 bytes + 80 overhead -> 2 fit in 200
    check(1 <= len(m) <= 3, "history-bytes-per-channel=200: only a couple kept", m)

    print("== presence / join-leave per namespace")
    a = Text(A); a.cmd("AUTH " + user)
    r = a.cmd("SUB chat.5") + a.drain(0.4)
    check(any(l.startswith("JOIN chat.5") for l in r), "join-leave: chat.5 subscriber hears its own JOIN", r)
    r = a.cmd("PRESENCE chat.5")
    check(any(l.startswith("PRESENCE chat.5 1") for l in r), "join-leave implies presence on chat.5", r)
    r = a.cmd("SUB chat.lobby") + a.drain(0.3)
    check(not any(l.startswith("JOIN chat.lobby") for l in r), "chat.lobby: no join-leave (namespaces do not stack)", r)
    r = a.cmd("PRESENCE chat.lobby")
    check(r and r[0].startswith("ERR 501"), "chat.lobby: presence=false -> 501", r)
    r = a.cmd("SUB chat.7.private") + a.drain(0.3)
    check(not any(l.startswith("JOIN") for l in r), "chat.7.private: no join-leave (most specific decides, no stacking)", r)
    a.cmd("SUB g.quiet"); r = a.cmd("PRESENCE g.quiet")
    check(any(l.startswith("PRESENCE g.quiet") for l in r), "g.quiet: presence unset -> from --presence g.>", r)

    print("== max-message-bytes")
    r = p.cmd("PUB chat.5 " + "x" * 16)
    check(r == [], "max-message-bytes=16: 16 bytes accepted", r)
    r = p.cmd("PUB chat.5 " + "x" * 17)
    check(len(r) == 1 and r[0].startswith("ERR 413"), "max-message-bytes=16: 17 bytes -> ERR 413", r)
    check(p.cmd("PING") == [], "max-message-bytes: connection stays", "")
    r = p.cmd("PUB chat.5 " + "\\n" * 16)
    check(r == [], "max-message-bytes counts unescaped bytes (16 escaped newlines = 16 bytes)", r)
    r = p.cmd("PUB chat.7.private " + "x" * 40)
    check(r == [], "max-message-bytes not inherited by more specific chat.*.private (no stacking)", r)
    b = Bin(A); b.auth(user); b.pub("chat.5", b"y" * 17); b.ping()
    fr = b.frames(0.5)
    check(any(f[0] == "ERR" and f[1] == 413 for f in fr), "binary: 17 bytes -> ERR 413", fr)
    st, _, body = http(A, "POST", "/publish?channel=chat.5", "z" * 17, headers={"Authorization": f"Bearer {user}"})
    check(st == 413, "HTTP /publish: 17 bytes -> 413", (st, body))
    w = WS(A, path=f"/ws?token={user}"); w.send({"op": "pub", "channel": "chat.5", "data": "w" * 17, "ack": True})
    wr = w.drain(0.5)
    check(any(m.get("code") == 413 for m in wr), "ws: 17 bytes -> 413", wr)
    w.send({"op": "ping"}); check(any(m.get("op") == "pong" for m in w.drain(0.4)), "ws: connection stays after 413", "")
    rr = Resp(A); rr.send("AUTH", user); rr.read(0.2); rr.send("PUBLISH", "chat.5", "r" * 17); o = rr.read(0.3)
    check(o.startswith("-"), "resp: 17 bytes refused", o)
    rr.send("PING"); check("PONG" in rr.read(0.3), "resp: connection stays after refusal", "")
    st, _, body = api_publish(A, APIKEY, "chat.5", "k" * 17)
    print("   /api/publish with API key, 17 bytes on chat.5:", st, body)

    print("== client-publish = false")
    r = p.cmd("PUB prices.x 1")
    check(r and r[0].startswith("ERR 403"), "client-publish=false: token client PUB -> 403", r)
    r = p.cmd("PUBA prices.x 1")
    check(r and r[0].startswith("ERR 403"), "client-publish=false: token client PUBA -> 403", r)
    st, _, body = http(A, "POST", "/publish?channel=prices.x", "1", headers={"Authorization": f"Bearer {user}"})
    check(st == 403, "client-publish=false: HTTP /publish with user token -> 403", (st, body))
    rr.send("PUBLISH", "prices.x", "1"); o = rr.read(0.3)
    check(o.startswith("-"), "client-publish=false: Redis PUBLISH -> error", o)
    w.send({"op": "pub", "channel": "prices.x", "data": "1"}); wr = w.drain(0.4)
    check(any(m.get("code") == 403 for m in wr), "client-publish=false: ws pub -> 403", wr)
    st, _, body = api_publish(A, APIKEY, "prices.x", "ok")
    check(st == 200, "client-publish=false: /api/publish with API key ok", (st, body))
    st, _, body = http(A, "POST", "/publish?channel=prices.x", "1", headers={"Authorization": f"Bearer {APIKEY}"})
    check(st == 200, "client-publish=false: /publish with API key ok", (st, body))
    k = Text(A); k.cmd("AUTH " + APIKEY); r = k.cmd("PUB prices.x viakey")
    check(r == [], "client-publish=false: AUTH <API key> then PUB ok", r)
    ad = Text(A); r = ad.cmd("AUTH " + admin); r = ad.cmd("PUB prices.x viaadmin")
    check(r == [], "client-publish=false: admin token PUB ok", r)
    st, _, body = api_publish(A, admin, "prices.x", "admin-api")
    check(st == 200, "client-publish=false: /api/publish with admin token ok", (st, body))
    r = p.cmd("PUB prices.x.y 1")
    check(r == [], "client-publish: prices.x.y not in prices.* -> clients may publish", r)
finish()
