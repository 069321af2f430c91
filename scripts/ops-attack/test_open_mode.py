#!/usr/bin/env python3
"""Promise 3 (security) without any access-control flag: a namespace that says anonymous-sub = false.
Every client here has no token, i.e. is anonymous, so the namespace could protect nothing: the
server must refuse to start (the fix for this tester's first finding), saying why."""
import sys, os, subprocess
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

cfg = wfile("open.toml", '''listen = "127.0.0.1:0"
workers = 1
no-pin = true

[[namespace]]
pattern = "secret.>"
anonymous-sub = false
anonymous-pub = false
''')
run = subprocess.run([BIN, "serve", "--config", cfg], capture_output=True, text=True, timeout=20)
print("   exit", run.returncode, "|", run.stderr.strip()[-300:])
check(run.returncode != 0, "SECURITY: a namespace closed to strangers without access control does not start", run.returncode)
check("access control is off" in run.stderr and "open.toml" in run.stderr,
      "the refusal says why and names the file", run.stderr[-300:])
finish()
