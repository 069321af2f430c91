#!/usr/bin/env python3
"""Promise 2: SIGHUP reloads."""
import sys, os, re, subprocess, ssl
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

S1, S2 = "reload-secret-ONE-0123456789abcdef", "reload-secret-TWO-0123456789abcdef"
K1, K2 = "reload-api-key-one", "reload-api-key-two"
sec = wfile("rl_secret", S1)
key = wfile("rl_apikey", K1)

BASE = f'''listen = "127.0.0.1:0"
workers = 1
no-pin = true
auth-secret-file = "{sec}"
api-key-file = "{key}"
anonymous-sub = ["news", "secret.open"]
auth-expiry-grace-secs = 1
history-messages = 100
max-subscribes-per-sec = 0

[[namespace]]
pattern = "secret.>"
anonymous-sub = false
'''
cfgp = wfile("rl.toml", BASE)


def write_cfg(text):
    wfile("rl.toml", text)


srv = Server(["--max-auth-failures", "0"], config=cfgp, name="rl")
A = srv.addr
try:
    print("== secret and API key rotation")
    old_tok_short = token(S1, sub="alice", subscribe=["room.1"], publish=["room.1"], ttl=4)
    old_tok = token(S1, sub="bob", subscribe=["room.1", "room.2"], publish=["room.1"])
    c_old = Text(A); r = c_old.cmd("AUTH " + old_tok); check(r == ["OK AUTH bob"], "before reload: token(S1) ok", r)
    r = c_old.cmd("SUB room.1"); check(r == ["OK SUB room.1"], "before reload: SUB room.1", r)
    c_short = Text(A); r = c_short.cmd("AUTH " + old_tok_short); c_short.cmd("SUB room.1")
    anon = Text(A); r = anon.cmd("SUB news"); check(r == ["OK SUB news"], "before reload: anonymous SUB news", r)
    st, _, body = api_publish(A, K1, "room.1", "m1")
    check(st == 200, "before reload: API key K1 publishes", (st, body))

    wfile("rl_secret", S2 + "\n")  # trailing newline must be ignored
    wfile("rl_apikey", K2 + "\n")
    write_cfg(BASE.replace('anonymous-sub = ["news", "secret.open"]', 'anonymous-sub = ["news2", ">"]')
              + "")
    out = srv.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
    print("   log:", out.strip().replace("\n", " | ")[:400])
    check("configuration reloaded" in out, "reload: info line says reloaded", out)
    check(re.search(r"changed:.*(secret|key)", out) is not None,
          "reload: info line names the changed HMAC secret / API key (doc: 'naming what changed')", out.strip(), soft=True)
    n = Text(A); r = n.cmd("AUTH " + token(S1, sub="carol", subscribe=["room.1"]))
    check(r and r[0].startswith("ERR 401"), "after reload: new connection with token(S1) refused", r)
    n2 = Text(A); r = n2.cmd("AUTH " + token(S2, sub="carol", subscribe=["room.1"]))
    check(r == ["OK AUTH carol"], "after reload: new connection with token(S2) accepted", r)
    c_old.drain(0.3)
    r = c_old.cmd("AUTH " + token(S1, sub="bob", subscribe=[">"]))
    check(r and r[0].startswith("ERR 401"), "after reload: existing connection re-AUTH with a fresh S1 token refused", r)
    r = c_old.cmd("SUB room.2")
    check(r == ["OK SUB room.2"], "after reload: existing connection keeps its token's permissions (SUB room.2)", r)
    r = c_old.cmd("SUB room.3")
    check(r and r[0].startswith("ERR 403"), "after reload: existing connection's permissions not widened (SUB room.3)", r)
    st, _, body = api_publish(A, K1, "room.1", "m-old-key")
    check(st == 401 or st == 403, "after reload: old API key refused", (st, body))
    st, _, body = api_publish(A, K2, "room.1", "m2")
    check(st == 200, "after reload: new API key (file with trailing newline) accepted", (st, body))
    r = c_old.drain(0.4)
    check(any("m2" in l for l in r), "after reload: existing subscriber still receives", r)
    check(not any("m-old-key" in l for l in r), "after reload: old-key publish not delivered", r)

    print("== anonymous patterns reload (and namespaces still apply)")
    a2 = Text(A)
    r = a2.cmd("SUB news2"); check(r == ["OK SUB news2"], "after reload: new anonymous pattern news2 applies", r)
    r = a2.cmd("SUB news"); check(r == ["OK SUB news"], "after reload: anonymous '>' grants news", r)
    r = a2.cmd("SUB secret.x")
    check(r and r[0].startswith("ERR"), "SECURITY after reload to anonymous-sub '>': namespace secret.> still closed (SUB)", r)
    r = a2.cmd("PSUB >")
    check(r and r[0].startswith("ERR"), "SECURITY after reload to anonymous-sub '>': PSUB > refused", r)
    r = a2.cmd("PSUB secret.*")
    check(r and r[0].startswith("ERR"), "SECURITY after reload: PSUB secret.* refused", r)
    r = a2.cmd("SUB secret.open")
    check(r and r[0].startswith("ERR"), "after reload: secret.open (global grant removed, namespace closed) refused", r)
    st, _, body = http(A, "GET", "/poll?channel=secret.x&from=0&timeout=0")
    check(st in (401, 403), "SECURITY after reload: anonymous long-poll secret.x refused", (st, body[:100]))
    check(anon.cmd("PING") == [], "after reload: existing anonymous connection stays", "")

    print("== token expiry after reload")
    time.sleep(max(0, 4 + 1 + 1.0 - 1.5))
    r = c_short.drain(2.0)
    check(any(l.startswith("ERR 401") for l in r) and c_short.closed,
          "token(S1) with exp: existing connection closed with ERR 401 after exp + grace", (r, c_short.closed))

    print("== restart-only keys are warned and keep their running value")
    b = Text(A)
    for i in range(6):
        pass
    write_cfg(BASE.replace('anonymous-sub = ["news", "secret.open"]', 'anonymous-sub = ["news2", ">"]')
              .replace("workers = 1", "workers = 2").replace("history-messages = 100", "history-messages = 2")
              .replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:1"')
              + '\n[[namespace]]\npattern = "hidden.>"\nanonymous-sub = false\n')
    out = srv.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
    print("   log:", out.strip().replace("\n", " | ")[:600])
    for k in ["workers", "history-messages", "listen"]:
        check(re.search(rf"WARN.*`{k}`.*restart", out) is not None, f"restart-only key `{k}` warned", out)
    check(re.search(r"WARN.*namespace.*restart", out) is not None, "restart-only: namespaces change warned", out)
    for i in range(5):
        api_publish(A, K2, "hist.a", f"h{i}")
    h = Text(A); h.cmd("AUTH " + token(S2, sub="h", subscribe=[">"]))
    r = h.cmd("SUB hist.a 0"); time.sleep(0.2); r += h.drain(0.3)
    msgs = [l for l in r if l.startswith("MSG hist.a")]
    check(len(msgs) == 5, "restart-only: history-messages keeps its running value (100, not 2)", r)
    a3 = Text(A)
    r = a3.cmd("SUB hidden.x")
    check(r == ["OK SUB hidden.x"], "restart-only: new namespace not applied until restart (doc'd)", r, soft=True)
    rc, pc, _ = run_cli(["serve", "--config", cfgp, "--print-config"])

    print("== broken reloads keep the running configuration entirely")
    good_plus = lambda extra: BASE.replace('anonymous-sub = ["news", "secret.open"]', 'anonymous-sub = ["news2", ">", "brandnew"]') + extra
    write_cfg(BASE.replace('anonymous-sub = ["news", "secret.open"]', 'anonymous-sub = ["news2", ">"]'))
    srv.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")  # back to a steady state
    # anonymous-sub '>' now; narrow it in each broken file to ["only-this"] and verify news2 still works
    broken = {
        "bad TOML": BASE.replace('anonymous-sub = ["news", "secret.open"]', 'anonymous-sub = ["only-this"') ,
        "unknown key": BASE.replace('anonymous-sub = ["news", "secret.open"]', 'anonymous-sub = ["only-this"]\nlisen = 1'),
        "bad value": BASE.replace('anonymous-sub = ["news", "secret.open"]', 'anonymous-sub = ["only-this"]\nmax-publishes-per-sec = "many"'),
        "bad anonymous pattern": BASE.replace('anonymous-sub = ["news", "secret.open"]', 'anonymous-sub = ["only-this", "a..b"]'),
        "missing key file": BASE.replace('anonymous-sub = ["news", "secret.open"]', 'anonymous-sub = ["only-this"]').replace(key, key + ".gone"),
        "auth off": BASE.replace('anonymous-sub = ["news", "secret.open"]', '').replace(f'auth-secret-file = "{sec}"\n', '').replace(f'api-key-file = "{key}"\n', ''),
        "bad namespace": BASE.replace('anonymous-sub = ["news", "secret.open"]', 'anonymous-sub = ["only-this"]') + '\n[[namespace]]\npattern = "a..b"\n',
        "empty secret file": BASE.replace('anonymous-sub = ["news", "secret.open"]', 'anonymous-sub = ["only-this"]').replace(sec, wfile("rl_empty_secret", "")),
        "tls on": BASE.replace('anonymous-sub = ["news", "secret.open"]', 'anonymous-sub = ["only-this"]') + f'tls-cert = ["{WORK}/nonexistent.pem"]\ntls-key = ["{WORK}/nonexistent.key"]\n',
    }
    # TOML needs top-level keys before tables: move appended keys up
    def fix(t):
        if "[[namespace]]" in t and t.rstrip().splitlines()[-1].startswith(("tls-", "lisen")):
            pass
        lines = t.splitlines()
        top, rest, in_tab = [], [], False
        for l in lines:
            if l.startswith("[[namespace]]"):
                in_tab = True
            if in_tab and (l.startswith("tls-") or l.startswith("lisen")):
                top.append(l); continue
            (rest if in_tab else top).append(l)
        return "\n".join(top + rest) + "\n"
    for name, text in broken.items():
        write_cfg(fix(text))
        out = srv.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
        refused = "not reloaded" in out and "WARN" in out
        print(f"   [{name}]", out.strip().splitlines()[0][20:220] if out.strip() else "(no log)")
        check(refused, f"broken reload ({name}): refused with a warn line", out.strip()[:300])
        c = Text(A)
        r = c.cmd("SUB news2")
        check(r == ["OK SUB news2"], f"broken reload ({name}): running anonymous-sub stays", r)
        r = c.cmd("SUB only-this")
        check(r == ["OK SUB only-this"], f"broken reload ({name}): (control) '>' still grants only-this", r)
        st, _, body = api_publish(A, K2, "room.1", "x")
        check(st == 200, f"broken reload ({name}): running API key stays", (st, body))
        c.close()
        check(srv.alive(), f"broken reload ({name}): server alive", "")
    write_cfg(BASE.replace('anonymous-sub = ["news", "secret.open"]', 'anonymous-sub = ["news2", ">"]'))
    srv.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")

    print("== abuse limits, origins, log level, aud/iss")
    wfile("rl_secret", S2)
    write_cfg(BASE.replace('anonymous-sub = ["news", "secret.open"]', 'anonymous-sub = ["news2", ">"]\nanonymous-pub = [">"]')
              .replace("max-subscribes-per-sec = 0", 'max-subscribes-per-sec = 0\nmax-publishes-per-sec = 2\nallowed-origins = ["https://good.example"]\nlog-level = "debug"\nauth-audience = "svc"'))
    out = srv.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
    print("   log:", out.strip().replace("\n", " | ")[:400])
    p = Text(A)
    for i in range(6):
        p.send(f"PUB pubtest.a m{i}")
    r = p.cmd("PING") + p.drain(0.3)
    check(any(l.startswith("ERR 429") for l in r), "reload: max-publishes-per-sec=2 applies to a new connection", r)
    st, head, body = http(A, "GET", "/healthz", headers={"Origin": "https://evil.example"})
    check(st == 403, "reload: allowed-origins applies (evil origin 403)", (st, body[:100]))
    st, head, body = http(A, "GET", "/healthz", headers={"Origin": "https://good.example"})
    check(st == 200, "reload: allowed-origins applies (good origin 200)", (st, body[:100]))
    before = len(srv.log())
    bad = Text(A); bad.send("BOGUSCOMMAND"); bad.drain(0.3)
    time.sleep(0.3)
    check("DEBUG" in srv.log()[before:], "reload: log-level=debug applies (debug lines appear)", srv.log()[before:][:300])
    n = Text(A); r = n.cmd("AUTH " + token(S2, sub="zed", subscribe=["room.1"]))
    check(r and r[0].startswith("ERR 401"), "reload: auth-audience applies (token without aud refused)", r)
    n = Text(A); r = n.cmd("AUTH " + token(S2, sub="zed", subscribe=["room.1"], aud="svc"))
    check(r == ["OK AUTH zed"], "reload: auth-audience applies (token with aud=svc accepted)", r)

    print("== command-line flags still win after reload")
finally:
    srv.stop()

# CLI wins on reload: --max-publishes-per-sec 1 given on the command line, the file says 50
wfile("rl2_secret", S1)
cfg2 = wfile("rl2.toml", f'listen = "127.0.0.1:0"\nworkers = 1\nno-pin = true\nauth-secret-file = "{WORK}/rl2_secret"\nanonymous-pub = [">"]\nmax-publishes-per-sec = 50\n')
with Server(["--max-publishes-per-sec", "1"], config=cfg2, name="rl2") as s2:
    wfile("rl2.toml", f'listen = "127.0.0.1:0"\nworkers = 1\nno-pin = true\nauth-secret-file = "{WORK}/rl2_secret"\nanonymous-pub = [">"]\nmax-publishes-per-sec = 60\n')
    out = s2.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
    p = Text(s2.addr)
    for i in range(4):
        p.send(f"PUB a m{i}")
    r = p.cmd("PING") + p.drain(0.3)
    check(any(l.startswith("ERR 429") for l in r), "reload: command-line flag (--max-publishes-per-sec 1) still wins over the file", (r, out.strip()[:200]))
    # reload when the config file has been deleted
    os.rename(cfg2, cfg2 + ".moved")
    out = s2.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
    check("not reloaded" in out, "reload: config file gone -> refused with warn", out.strip()[:200])
    check(s2.alive(), "reload: server alive after config file gone", "")
    os.rename(cfg2 + ".moved", cfg2)

# without --config: SIGHUP still re-reads the key files named by flags
wfile("rl3_secret", S1)
with Server(["--listen", "127.0.0.1:0", "--auth-secret-file", f"{WORK}/rl3_secret"], name="rl3") as s3:
    wfile("rl3_secret", S2)
    out = s3.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
    t = Text(s3.addr); r = t.cmd("AUTH " + token(S2, sub="q", subscribe=["a"]))
    check(r == ["OK AUTH q"], "reload without --config: new secret from flag-named file applies", (r, out.strip()[:200]))
    t = Text(s3.addr); r = t.cmd("AUTH " + token(S1, sub="q", subscribe=["a"]))
    check(r and r[0].startswith("ERR 401"), "reload without --config: old secret refused", r)

finish()
