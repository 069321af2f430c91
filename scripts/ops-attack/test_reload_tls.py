#!/usr/bin/env python3
"""Promise 2, TLS part: certificates re-read on SIGHUP; TLS on/off refused; broken cert refused."""
import sys, os, re, subprocess, ssl, shutil
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

for n in ("a", "b"):
    if not os.path.exists(f"{WORK}/tls_{n}.pem"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-keyout", f"{WORK}/tls_{n}.key", "-out", f"{WORK}/tls_{n}.pem", "-days", "2",
                        "-subj", f"/CN=cert-{n}.test"], check=True, capture_output=True)
shutil.copy(f"{WORK}/tls_a.pem", f"{WORK}/tls_live.pem")
shutil.copy(f"{WORK}/tls_a.key", f"{WORK}/tls_live.key")


def peer_cn(addr):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(addr, timeout=2)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    der = s.getpeercert(binary_form=True)
    pem = ssl.DER_cert_to_PEM_cert(der)
    out = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=pem, capture_output=True, text=True).stdout
    return s, out.strip()


SEC = wfile("tls_secret", "tls-reload-secret-0123456789abcdef")
base = f'''listen = "127.0.0.1:0"
workers = 1
no-pin = true
auth-secret-file = "{SEC}"
anonymous-sub = [">"]
anonymous-pub = [">"]
tls-cert = ["{WORK}/tls_live.pem"]
tls-key = ["{WORK}/tls_live.key"]
'''
cfg = wfile("tls.toml", base)
with Server([], config=cfg, name="tls") as s:
    A = s.addr
    c1, cn = peer_cn(A)
    check("cert-a" in cn, "tls: serves cert a at start", cn)
    c1.sendall(b"SUB t\nPING\n"); time.sleep(0.2); c1.recv(100)
    # rotate contents in place
    shutil.copy(f"{WORK}/tls_b.pem", f"{WORK}/tls_live.pem")
    shutil.copy(f"{WORK}/tls_b.key", f"{WORK}/tls_live.key")
    out = s.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
    c2, cn = peer_cn(A)
    check("cert-b" in cn, "tls reload: same paths, new contents -> new cert served", (cn, out.strip()[:200]))
    c1.sendall(b"PING\n"); time.sleep(0.2)
    try:
        d = c1.recv(100)
    except Exception as e:
        d = repr(e).encode()
    check(b"PONG" in d, "tls reload: existing TLS connection stays", d)
    # new paths
    wfile("tls.toml", base.replace("tls_live.pem", "tls_a.pem").replace("tls_live.key", "tls_a.key"))
    out = s.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
    c3, cn = peer_cn(A)
    check("cert-a" in cn, "tls reload: new paths applied", (cn, out.strip()[:200]))
    # broken: cert and key mismatch
    wfile("tls.toml", base.replace("tls_live.pem", "tls_a.pem").replace("tls_live.key", "tls_b.key"))
    out = s.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
    check("not reloaded" in out, "tls reload: cert/key mismatch refused", out.strip()[:300])
    c4, cn = peer_cn(A)
    check("cert-a" in cn, "tls reload: after refused reload the running cert stays", cn)
    # broken: garbage PEM
    wfile("garbage.pem", "-----BEGIN CERTIFICATE-----\nnotbase64!!\n-----END CERTIFICATE-----\n")
    wfile("tls.toml", base.replace(f"{WORK}/tls_live.pem", f"{WORK}/garbage.pem").replace("tls_live.key", "tls_a.key"))
    out = s.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
    check("not reloaded" in out, "tls reload: garbage certificate refused", out.strip()[:300])
    # broken: TLS off
    wfile("tls.toml", base.split("tls-cert")[0])
    out = s.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
    check("not reloaded" in out, "tls reload: turning TLS off refused", out.strip()[:300])
    c5, cn = peer_cn(A)
    check("cert-a" in cn, "tls reload: TLS still on after refused off", cn)
    # tls-only toggle
    wfile("tls.toml", base.replace("tls_live.pem", "tls_a.pem").replace("tls_live.key", "tls_a.key") + "tls-only = true\n")
    out = s.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
    print("   tls-only change:", out.strip()[:300])
    check("tls-only" in out, "tls reload: a tls-only change is either applied or warned by name", out.strip()[:300])
    for c in (c1, c2, c3, c4, c5):
        c.close()

cfg2 = wfile("tls2.toml", f'listen = "127.0.0.1:0"\nworkers = 1\nno-pin = true\nauth-secret-file = "{SEC}"\n')
with Server([], config=cfg2, name="tls2") as s:
    wfile("tls2.toml", f'listen = "127.0.0.1:0"\nworkers = 1\nno-pin = true\nauth-secret-file = "{SEC}"\ntls-cert = ["{WORK}/tls_a.pem"]\ntls-key = ["{WORK}/tls_a.key"]\n')
    out = s.hup(wait_for=r"SIGHUP: configuration (reloaded|not reloaded).*\n")
    check("not reloaded" in out, "tls reload: turning TLS on (valid cert) refused", out.strip()[:300])
    t = Text(s.addr); r = t.cmd("PING")
    check(r == [], "tls reload: plaintext still works after refused TLS-on", r)
finish()
