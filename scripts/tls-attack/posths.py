# raw bytes injected after a completed TLS handshake; plus EOF cases. Expect: only that conn closed, counted.
import socket, ssl, time, os, common, rawtls as R
def run(name, inject, fin=False, tls12=False, rst=False):
    m0=common.metrics()
    raw=socket.create_connection((common.H,common.P))
    cx=common.ctx(maxv=ssl.TLSVersion.TLSv1_2) if tls12 else common.CTX
    s=cx.wrap_socket(raw, server_hostname='localhost'); s.sendall(b'SUB ph\n'); s.settimeout(3); s.recv(100)
    raw2=socket.socket(fileno=os.dup(s.fileno()))
    if inject: raw2.sendall(inject)
    if fin: raw2.shutdown(socket.SHUT_WR)
    if rst: raw2.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\0\0\0\0\0\0\0'); raw2.close(); s.close(); time.sleep(0.3)
    got=b''; end='open'
    if not rst:
        raw2.settimeout(3)
        try:
            while True:
                d=raw2.recv(65536)
                if not d: end='closed'; break
                got+=d
        except socket.timeout: pass
        except ConnectionResetError: end='reset'
    time.sleep(0.2)
    d={k.replace('fanout_',''):v for k,v in common.mdiff(m0,common.metrics()).items() if 'tls_f' in k or 'connections_tls' in k}
    print(f'{name:45s} -> {end:6s} reply {R.desc(got)[:40]:25s} {d}')
    try: raw2.close(); s.close()
    except Exception: pass
can=common.Canary(); can.start(); time.sleep(0.2)
run('bad-MAC appdata record (1.3)', R.records(23, os.urandom(100), ver=0x0303))
run('bad-MAC appdata record (1.2)', R.records(23, os.urandom(100), ver=0x0303), tls12=True)
run('oversized record hdr 0xffff post-hs', b'\x17\x03\x03\xff\xff'+os.urandom(1000))
run('plaintext PING post-hs', b'PING\n')
run('new ClientHello post-hs (1.3)', R.client_hello())
run('plaintext handshake record post-hs (1.2)', R.client_hello(tls13=False), tls12=True)
run('half a record then FIN', b'\x17\x03\x03\x01\x00'+os.urandom(100), fin=True)
run('FIN without close_notify (clean boundary)', b'', fin=True)
run('RST after handshake', b'', rst=True)
run('partial record, then idle', b'\x17\x03\x03\x40\x00'+os.urandom(1000))
# EOF during handshake
for nm,data in [('partial CH then FIN',R.client_hello()[:50]),('full CH then FIN',R.client_hello())]:
    m0=common.metrics(); s=socket.create_connection((common.H,common.P)); s.sendall(data); s.shutdown(socket.SHUT_WR); s.settimeout(3)
    try:
        while s.recv(65536): pass
    except Exception: pass
    time.sleep(0.2); print(f'{nm:45s} -> {common.mdiff(m0,common.metrics())}')
m0=common.metrics(); s=socket.create_connection((common.H,common.P)); s.sendall(R.client_hello()[:50]); s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\0\0\0\0\0\0\0'); s.close(); time.sleep(0.3)
print(f'{"partial CH then RST":45s} -> {common.mdiff(m0,common.metrics())}')
print(can.report()); can.stop=True; can.join(1)
