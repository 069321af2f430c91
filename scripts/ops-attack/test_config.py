#!/usr/bin/env python3
"""Promise 1: --config FILE, CLI precedence, errors, --print-config round trip + masking."""
import sys, os, re
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

print("== config file basics")
cfg = wfile("c_basic.toml", 'listen = "127.0.0.1:0"\nworkers = 1\nanonymous-sub = ["news"]\nno-pin = true\n')
with Server([], config=cfg, name="c_basic") as s:
    check(s.addr is not None, "config: server starts from file with listen=127.0.0.1:0", s.log()[-500:])
    check("with 1 worker(s)" in s.log(), "config: workers=1 from file honoured", s.log()[-500:])
    c = Text(s.addr)
    r = c.cmd("SUB news")
    check(r == ["OK SUB news"], "config: anonymous-sub from file allows SUB news", r)
    r = c.cmd("SUB other")
    check(len(r) == 1 and r[0].startswith("ERR 403"), "config: anonymous-sub from file refuses SUB other", r)
    c.close()

print("== command line wins")
cfg = wfile("c_prec.toml", 'listen = "127.0.0.1:0"\nworkers = 1\nno-pin = true\nanonymous-sub = ["a", "b"]\nmax-subscriptions = 2\n')
rc, out, err = run_cli(["serve", "--config", cfg, "--max-subscriptions", "5", "--anonymous-sub", "c", "--print-config"])
check(re.search(r"^max-subscriptions = 5$", out, re.M) is not None, "config: scalar flag on CLI wins in --print-config", out[:200])
check(re.search(r'^anonymous-sub = \["c"\]$', out, re.M) is not None, "config: repeatable flag on CLI replaces file's list (print-config)",
      re.findall(r"^anonymous-sub.*$", out, re.M))
with Server(["--max-subscriptions", "3", "--anonymous-sub", "c"], config=cfg, name="c_prec") as s:
    c = Text(s.addr)
    r = c.cmd("SUB a")
    check(r and r[0].startswith("ERR 403"), "config: file's anonymous-sub list replaced (SUB a refused)", r)
    r = c.cmd("SUB c")
    check(r == ["OK SUB c"], "config: CLI anonymous-sub applies (SUB c ok)", r)
    c.close()

print("== errors")
p = wfile("c_unknown.toml", 'workers = 1\nlisen = "127.0.0.1:0"\n')
rc, out, err = run_cli(["serve", "--config", p])
check(rc != 0 and "lisen" in err and "line 2" in err, "config: unknown key refused with name and line", err)
p = wfile("c_unknown_table.toml", 'workers = 1\n\n[other]\nx = 1\n')
rc, out, err = run_cli(["serve", "--config", p])
check(rc != 0 and "other" in err, "config: unknown table refused", err)
check("line 3" in err, "config: unknown table refused WITH its line (usability)", err.strip())
p = wfile("c_unknown_ns.toml", 'workers = 1\n[[namespace]]\npattern = "a.*"\nbogus = 1\n')
rc, out, err = run_cli(["serve", "--config", p])
check(rc != 0 and "bogus" in err, "config: unknown namespace key refused", err)
check("line 4" in err, "config: unknown namespace key refused WITH its line (usability)", err.strip())
for name, text in [("c_bad_workers.toml", 'workers = "x"\n'), ("c_bad_fsync.toml", 'fsync = "sometimes"\n'),
                   ("c_bad_switch.toml", 'no-pin = "yes"\n'), ("c_bad_toml.toml", 'workers = \n'),
                   ("c_bad_anon.toml", 'listen = "127.0.0.1:0"\nanonymous-sub = ["a b"]\n'),
                   ("c_bad_ns_dup.toml", 'listen = "127.0.0.1:0"\n[[namespace]]\npattern = "a"\n[[namespace]]\npattern = "a"\n')]:
    p = wfile(name, text)
    try:
        rc, out, err = run_cli(["serve", "--config", p], timeout=4)
    except Exception as e:
        rc, err = 0, f"did not exit: {e}"
    errl = "\n".join(l for l in err.splitlines() if "ERROR" in l)
    check(rc != 0 and name in errl, f"config: bad value refused naming the file ({name})", errl.strip()[:300])

print("== --print-config round trip and masking")
secret = wfile("secret", "s3cretvalue-for-hmac")
apikey = wfile("apikey", "api-key-value-123")
rich = wfile("c_rich.toml", f'''listen = "127.0.0.1:0"
workers = 1
no-pin = true
auth-secret-file = "{secret}"
api-key-file = "{apikey}"
anonymous-sub = ["news", "scores.>"]
allowed-origins = ["https://example.com", "https://b.example"]
history-messages = 1000
log-level = "info,fanout::server=debug"
redis = ["redis://bob:hunter2@127.0.0.1:6390/1", "redis://:s3cr%40t@127.0.0.1:6391", "rediss://u:p@ss@127.0.0.1:6392"]
presence = ["room.>"]
node-name = "n1"
max-publishes-per-sec = 7

[[namespace]]
pattern = "chat.>"
history-messages = 50
history-age-secs = 3600
join-leave = true
max-message-bytes = 4096

[[namespace]]
pattern = "prices.*"
client-publish = false
anonymous-sub = true
history-messages = 1
''')
rc, out1, err = run_cli(["serve", "--config", rich, "--max-subscribes-per-sec", "9", "--print-config"])
check(rc == 0, "print-config: exits 0", err)
check(not re.search(r"hunter2|s3cr%40t|s3cr@t|p@ss", out1), "print-config: redis passwords masked",
      re.findall(r"^redis =.*$", out1, re.M))
check("hunter2" not in out1 and "s3cretvalue" not in out1 and "api-key-value" not in out1, "print-config: no key file contents", "")
p1 = wfile("c_rich_printed.toml", out1)
rc, out2, err = run_cli(["serve", "--config", p1, "--print-config"])
strip = lambda t: "\n".join(l for l in t.splitlines() if not l.startswith("# fanout serve's configuration in force"))
check(rc == 0 and strip(out1) == strip(out2), "print-config: output reads back to itself", err[:300])
for k, v in [("max-subscribes-per-sec", "9"), ("max-publishes-per-sec", "7"), ("history-messages", "1000")]:
    check(re.search(rf"^{k} = {v}$", out1, re.M) is not None, f"print-config: shows {k} = {v}", "")
check(out1.count("[[namespace]]") == 2, "print-config: namespaces printed", "")
# default config round trip
rc, d1, _ = run_cli(["serve", "--print-config"])
pd = wfile("c_default_printed.toml", d1)
rc, d2, err = run_cli(["serve", "--config", pd, "--print-config"])
check(rc == 0 and strip(d1) == strip(d2), "print-config: default config reads back to itself", err[:300])
m = re.search(r"^max-query-bytes = (\d+)$", d1, re.M)
check(m and m.group(1) != "0", "print-config: max-query-bytes shows the value in force (frame+64KiB), not 0 (usability)",
      m.group(0) if m else "absent", soft=True)

print("== passwords in error messages")
rc, out, err = run_cli(["serve", "--redis", "redis://u:topsecretpw@127.0.0.1:6390/x", "--print-config"])
check(rc != 0, "bad redis URL refused", err)
check("topsecretpw" not in err, "bad redis URL: error message does not echo the password (stderr/journal)", err.strip()[:200], soft=True)
p = wfile("c_bad_redis.toml", 'redis = ["redis://u:filesecretpw@127.0.0.1:6390/x"]\n')
rc, out, err = run_cli(["serve", "--config", p, "--print-config"])
check("filesecretpw" not in err, "bad redis URL in file: error message does not echo the password", err.strip()[:200], soft=True)

finish()
