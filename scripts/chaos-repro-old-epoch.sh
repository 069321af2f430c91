#!/usr/bin/env bash
# Reproduction found by scripts/cluster-chaos.sh (restart_older): usage scripts/chaos-repro-old-epoch.sh (about 15 s).
# An epoch comes back from an older snapshot: (channel, epoch, offset) then names two payloads.
# One Redis (RDB), one fanout node, one subscriber that stays connected throughout.
set -u
D=$(mktemp -d); RP=21555; NP=21655; F=/work/main/target/release/fanout
R=; N=; S=
trap 'kill -9 $R $N $S 2>/dev/null; rm -rf $D' EXIT
rs() { redis-server --port $RP --bind 127.0.0.1 --dir $D --save '' --appendonly no --loglevel warning --logfile $D/redis.log & R=$!; sleep 0.3; }
puba() { /usr/bin/python3 -c '
import socket,sys
s=socket.create_connection(("127.0.0.1",int(sys.argv[1]))); s.settimeout(3)
for p in sys.argv[2:]:
    s.sendall(("PUBA c "+p+"\r\n").encode()); r=b""
    while not r.endswith(b"\r\n"): r+=s.recv(100)
    print("  PUBA c", p, "->", r.decode().strip())' $NP "$@"; }
rs
$F serve --listen 127.0.0.1:$NP --redis redis://127.0.0.1:$RP --workers 1 --no-pin --stats-interval-secs 0 >$D/node.log 2>&1 & N=$!
sleep 1
/usr/bin/python3 -u -c '
import socket,sys
s=socket.create_connection(("127.0.0.1",int(sys.argv[1]))); s.sendall(b"SUB c 0\r\n")
f=s.makefile("rb")
for line in f: print("  subscriber:", line.decode().strip(), flush=True)' $NP > $D/sub.txt & S=$!
sleep 0.5
echo "1. publish old1..old3, SAVE (the snapshot holds epoch E1 up to offset 3), publish old4 old5"
puba old1 old2 old3; redis-cli -p $RP SAVE >/dev/null; cp $D/dump.rdb $D/snap.rdb; puba old4 old5
echo "2. SIGKILL Redis, restart it empty; publish new1 (a new epoch E2)"
kill -9 $R; wait $R 2>/dev/null; rm -f $D/dump.rdb; rs; sleep 1.5; puba new1
echo "3. SIGKILL Redis, restart it from the snapshot of step 1; publish again1 again2"
kill -9 $R; wait $R 2>/dev/null; cp $D/snap.rdb $D/dump.rdb; rs; sleep 1.5; puba again1 again2
sleep 8
E1=$(awk '/HIST c/ {print $4; exit}' $D/sub.txt)
echo "4. another client resumes: SUB c 3 $E1 (it read old1..old3 of E1)"
/usr/bin/python3 -c '
import socket,sys,time
s=socket.create_connection(("127.0.0.1",int(sys.argv[1]))); s.settimeout(1); s.sendall(("SUB c 3 "+sys.argv[2]+"\r\n").encode()); time.sleep(0.5)
print("".join("  resume: "+l+"\n" for l in s.recv(10000).decode().split("\r\n") if l), end="")' $NP $E1
echo "what the subscriber connected throughout received:"; cat $D/sub.txt
