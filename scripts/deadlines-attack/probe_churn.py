"""Channel churn at --max-channels 50: three connections in turn publish to 300 fresh names
each (the outside tester's reproduction of an occasional 429 at the limit, which the build
before issue 23's changes shows too: a channel another worker cached cannot be freed until that
worker's next cache pass). Prints the refusals per connection."""
import os
import sys, time
sys.argv=[sys.argv[0]]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'deadlines.py')).read().split("def main():")[0])
os.makedirs(WORKDIR, exist_ok=True)
def seq(srv, prefix, n=300, close=True):
    s, r = text_session(srv)
    fails = []
    for i in range(n):
        s.sendall(f"PUBA {prefix}{i} m{i}\n".encode())
        out, pong = collect_until_pong(s, r)
        e = [l for l in out if l.startswith("ERR")]
        if e:
            t1 = T(); k = 0
            while True:
                k += 1
                s.sendall(f"PUBA {prefix}{i} m{i}\n".encode())
                o, _ = collect_until_pong(s, r)
                if any(l.startswith("ACK") for l in o) or k > 400: break
                time.sleep(0.002)
            fails.append((i, e[0][:30], round(T()-t1, 3), k))
    if close: s.close()
    return fails
for rep in range(4):
    for hist in (5, 0):
        srv = Server(f"P{hist}", ["--max-channels", "50", "--history-messages", str(hist)])
        f1 = seq(srv, "q")
        f2_ = seq(srv, "b")
        f3 = seq(srv, "c")
        print(rep, "hist", hist, "conn1", f1, "conn2", f2_, "conn3", f3, flush=True)
        srv.stop()
