# usage: slowloris.py MODE N HOLD_SECS
# MODE: partial (record header + 10 bytes), onebyte (0x16), trickle (1 byte/s), afterhello (full hello, never reply), nothing (connect only)
import sys, socket, time, selectors, common, rawtls as R
mode, N, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
hello=R.client_hello()
m0=common.metrics(); r0=common.rss()
can=common.Canary(); can.start(); time.sleep(0.3)
sel=selectors.DefaultSelector(); socks=[]; t0=time.time()
for i in range(N):
    s=socket.create_connection((common.H,common.P)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,1)
    if mode=='partial': s.sendall(hello[:15])
    elif mode=='onebyte': s.sendall(b'\x16')
    elif mode=='afterhello': s.sendall(hello)
    elif mode=='trickle': s.sendall(hello[:1])
    s.setblocking(False); sel.register(s, selectors.EVENT_READ, [time.time(),1,0]); socks.append(s)
print(f'opened {N} in {time.time()-t0:.1f}s; rss {common.rss()} fds {common.nfds()}')
closed=[]; lasttrickle=time.time(); peak=common.rss()['VmRSS']; m_mid=None
while time.time()-t0<hold and len(closed)<N:
    for key,_ in sel.select(0.2):
        s=key.fileobj; st=key.data
        try: d=s.recv(65536)
        except (ConnectionResetError,BlockingIOError): d=b'' if not isinstance(sys.exc_info()[1],BlockingIOError) else None
        if d is None: continue
        if d: st[2]+=len(d); continue
        closed.append(time.time()-st[0]); sel.unregister(s); s.close()
    if mode=='trickle' and time.time()-lasttrickle>=1:
        lasttrickle=time.time()
        for key in list(sel.get_map().values()):
            st=key.data
            if st[1]<len(hello):
                try: key.fileobj.send(hello[st[1]:st[1]+1]); st[1]+=1
                except OSError: pass
    peak=max(peak, common.rss()['VmRSS'])
    if m_mid is None and time.time()-t0>5: m_mid=common.metrics()
m1=common.metrics()
print(f'closed by server: {len(closed)}/{N}; close-after s: min={min(closed) if closed else None:.1f} max={max(closed) if closed else 0:.1f}' if closed else f'closed by server: 0/{N}')
print('gauge at 5s:', {k:v for k,v in (m_mid or {}).items() if 'connections' in k})
print('metrics diff:', common.mdiff(m0,m1)); print('rss before', r0, 'peak', peak, 'after', common.rss(), 'fds', common.nfds())
print(can.report()); print('fresh handshake', common.fresh_handshake_ms()); print('server alive', common.alive())
for s in socks: s.close()
