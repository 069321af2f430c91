#!/usr/bin/env python3
"""Promise 2: every key changed on SIGHUP is either applied (named in the info line) or warned as
needing a restart, key by key. A key that is neither is silently ignored."""
import sys, os, re
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

sec = wfile("rk_secret", "reload-keys-secret-0123456789abcdef")
key = wfile("rk_apikey", "reload-keys-api-key")
os.makedirs(f"{WORK}/rk_data", exist_ok=True)
BASE = f'''listen = "127.0.0.1:0"
workers = 1
no-pin = true
auth-secret-file = "{sec}"
api-key-file = "{key}"
anonymous-sub = ["news"]
'''
CHANGES = {
    "log-level": '"debug"', "listen": '"127.0.0.1:1"', "workers": "2", "no-pin": "false",
    "max-connections": "5000", "max-frame-bytes": "2097152", "max-query-bytes": "3000000",
    "write-queue-cap-bytes": "9000000", "ring-slots": "32768", "max-channels": "5000", "max-subscriptions": "7",
    "max-patterns": "9", "max-pattern-tokens": "8", "ping-interval-secs": "30", "ping-timeout-secs": "20",
    "stats-interval-secs": "5", "history-messages": "7", "history-bytes-per-channel": "1000000",
    "history-age-secs": "60", "history-total-bytes": "2000000", "data-dir": f'"{WORK}/rk_data"',
    "redis-prefix": '"zz"', "redis-key-ttl-secs": "100", "redis-timeout-ms": "1000", "redis-name-lease-ms": "2000",
    "fsync": '"never"', "fsync-interval-ms": "50", "segment-bytes": "1000000", "max-open-segments": "10",
    "coalesce-ms": "2", "ws-echo": "true", "http-head-timeout-secs": "3", "socket-send-buffer-bytes": "100000",
    "shutdown-grace-secs": "2", "auth-audience": '"aud1"', "auth-issuer": '"iss1"',
    "anonymous-sub": '["news", "more"]', "anonymous-pub": '["x"]', "auth-timeout-secs": "3",
    "auth-expiry-grace-secs": "2", "max-token-bytes": "4096", "private-metrics": "true",
    "allowed-origins": '["https://a.example"]', "max-publishes-per-sec": "5", "max-subscribes-per-sec": "6",
    "max-auth-failures": "3", "max-connections-per-ip": "50", "presence": '["p.>"]', "join-leave": '["j.>"]',
    "presence-max-members": "10", "join-leave-window-ms": "50", "presence-ttl-ms": "3000", "max-info-bytes": "100",
    "node-name": '"nodeX"', "revocation-ttl-secs": "100",
}
cfgp = wfile("rk.toml", BASE)
silent = []
with Server([], config=cfgp, name="rk") as s:
    for k, v in CHANGES.items():
        text = BASE
        if re.search(rf"^{k} = ", text, re.M):
            text = re.sub(rf"^{k} = .*$", f"{k} = {v}", text, flags=re.M)
        else:
            text += f"{k} = {v}\n"
        wfile("rk.toml", text)
        out = s.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
        applied = re.search(rf"changed:[^)]*\b{re.escape(k)}\b", out) is not None
        warned = re.search(rf"WARN.*`{re.escape(k)}`", out) is not None
        refused = "not reloaded" in out
        state = "applied" if applied else "warned" if warned else "REFUSED" if refused else "SILENT"
        print(f"   {k:28s} {state}" + ("" if state in ("applied", "warned") else "  :: " + out.strip()[:200].replace("\n", " | ")))
        if state == "SILENT":
            silent.append(k)
        # back to base
        wfile("rk.toml", BASE)
        s.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
    check(not silent, "reload: every changed key is applied or warned (none silently ignored)", silent)
    check(s.alive(), "reload: server alive after many reloads", "")
finish()
