#!/usr/bin/env python3
"""Promise 2: public keys re-read on SIGHUP (kid rotation)."""
import sys, os, re, subprocess
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import serialization

keys = {}
for n in ("k1", "k2"):
    pk = ec.generate_private_key(ec.SECP256R1())
    keys[n] = pk
    wfile(f"pk_{n}.pem", pk.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())


def tok(n, kid, sub="pk"):
    t = jwt.encode({"sub": sub, "exp": int(time.time()) + 600, "subscribe": ["room.*"]}, keys[n], algorithm="ES256", headers={"kid": kid})
    return t if isinstance(t, str) else t.decode()


base = 'listen = "127.0.0.1:0"\nworkers = 1\nno-pin = true\nauth-public-key-file = ["{}"]\n'
cfg = wfile("pk.toml", base.format(f"k1={WORK}/pk_k1.pem"))
with Server([], config=cfg, name="pk") as s:
    c = Text(s.addr); r = c.cmd("AUTH " + tok("k1", "k1"))
    check(r == ["OK AUTH pk"], "pubkey: k1 token accepted at start", r)
    wfile("pk.toml", base.format(f"k2={WORK}/pk_k2.pem"))
    out = s.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
    n = Text(s.addr); r = n.cmd("AUTH " + tok("k1", "k1"))
    check(r and r[0].startswith("ERR 401"), "pubkey reload: k1 token refused after k1 removed", (r, out.strip()[:200]))
    n = Text(s.addr); r = n.cmd("AUTH " + tok("k2", "k2"))
    check(r == ["OK AUTH pk"], "pubkey reload: k2 token accepted", r)
    r = c.cmd("SUB room.1")
    check(r == ["OK SUB room.1"], "pubkey reload: existing k1 connection keeps its permissions", r)
    # same path, new contents
    wfile("pk_k2.pem", open(f"{WORK}/pk_k1.pem").read())
    out = s.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
    n = Text(s.addr); r = n.cmd("AUTH " + tok("k1", "k2"))
    check(r == ["OK AUTH pk"], "pubkey reload: same path, new contents applied", (r, out.strip()[:200]))
    wfile("pk_k2.pem", "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n")
    out = s.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
    check("not reloaded" in out, "pubkey reload: garbage PEM refused", out.strip()[:200])
    n = Text(s.addr); r = n.cmd("AUTH " + tok("k1", "k2"))
    check(r == ["OK AUTH pk"], "pubkey reload: running key stays after refused reload", r)
finish()
