# slowcons.py MODE(tls|plain) N SECS [PAYLOAD_BYTES] [PUB_RATE_PER_S]
# N subscribers (tiny SO_RCVBUF) SUB 'flood' and never read; a publisher floods; a well-behaved TLS subscriber reads.
import sys, socket, time, threading, common, ssl
mode, N, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
psize=int(sys.argv[4]) if len(sys.argv)>4 else 1000; rate=float(sys.argv[5]) if len(sys.argv)>5 else 0
m0=common.metrics(); r0=common.rss()
slow=[]
for i in range(N):
    raw=socket.socket(); raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096); raw.connect((common.H,common.P))
    s=common.CTX.wrap_socket(raw, server_hostname='localhost') if mode=='tls' else raw
    proto=sys.argv[6] if len(sys.argv)>6 else 'text'
    if proto=='text': s.sendall(b'SUB flood\n')
    elif proto=='sse': s.sendall(b'GET /sse?channel=flood HTTP/1.1\r\nHost: x\r\n\r\n')
    elif proto=='ws': s.sendall(b'GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: fanout.json\r\n\r\n'); time.sleep(0.01); s.sendall(bytes([0x81,0x80|30])+b'\0\0\0\0'+b'{"op":"sub","channel":"flood"}')
    elif proto=='resp': s.sendall(b'*2\r\n$9\r\nSUBSCRIBE\r\n$5\r\nflood\r\n')
    slow.append(s)
time.sleep(0.5)
print(f'{N} {mode} slow subscribers ready; rss {common.rss()["VmRSS"]} kB')
good={'n':0,'last':0,'gaps':0,'err':None}
def goodsub():
    s=common.tls_conn(); s.sendall(b'SUB flood\n'); s.settimeout(5); buf=b''
    try:
        while not stop:
            d=s.recv(1<<20)
            if not d: good['err']='EOF'; break
            buf+=d; lines=buf.split(b'\n'); buf=lines.pop()
            for l in lines:
                if l.startswith(b'MSG'):
                    off=int(l.split(b' ',3)[2])
                    if good['last'] and off!=good['last']+1: good['gaps']+=1
                    good['last']=off; good['n']+=1
    except Exception as e: good['err']=repr(e)
stop=False
gt=threading.Thread(target=goodsub,daemon=True); gt.start()
can=common.Canary(); can.start(); time.sleep(0.3)
pub=socket.create_connection((common.H,common.P)); pub.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,1)
msg=b'PUB flood '+b'x'*psize+b'\n'; batch=msg*50
t0=time.time(); sent=0; peak=0; lastsample=0; samples=[]
while time.time()-t0<secs:
    pub.sendall(batch); sent+=50
    if rate: 
        target=t0+sent/rate
        if target>time.time(): time.sleep(target-time.time())
    if time.time()-lastsample>0.5:
        lastsample=time.time(); r=common.rss()['VmRSS']; peak=max(peak,r); samples.append(r)
time.sleep(1); stop=True
m1=common.metrics()
alive_slow=0
for s in slow:
    try:
        s.setblocking(False); d=s.recv(1)  # if closed by server: b'' or data then EOF; we just count still-open ones via MSG_PEEK
    except (BlockingIOError, ssl.SSLWantReadError): alive_slow+=1
    except Exception: pass
print(f'published {sent} msgs of {psize}B in {secs}s ({sent/secs:.0f}/s)')
print('good subscriber:', good)
print('metrics diff:', {k.replace("fanout_",""):v for k,v in common.mdiff(m0,m1).items()})
print('rss kB before', r0['VmRSS'], 'peak', peak, 'end', common.rss()['VmRSS'], 'samples', samples[::max(1,len(samples)//10)])
print(can.report()); print('server alive', common.alive())
for s in slow: s.close()
time.sleep(1); print('after closing all: rss', common.rss()['VmRSS'], 'fds', common.nfds())
