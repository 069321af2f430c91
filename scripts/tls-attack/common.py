import ssl, socket, time, threading, re, urllib.request, os
H='127.0.0.1'; P=int(os.environ.get('PORT', '7443'))
CA=os.path.join(os.environ.get('WORK', '.'), 'ca.pem')
def ctx(alpn=None, minv=None, maxv=None):
    c=ssl.create_default_context(cafile=CA)
    if alpn: c.set_alpn_protocols(alpn)
    if minv: c.minimum_version=minv
    if maxv: c.maximum_version=maxv
    return c
CTX=ctx()
def tls_conn(timeout=10):
    s=socket.create_connection((H,P),timeout=timeout)
    return CTX.wrap_socket(s, server_hostname='localhost')
def pid(): return int(open(os.path.join(os.environ.get('WORK', '.'), 'server.pid')).read())
def alive():
    try: os.kill(pid(),0); return True
    except OSError: return False
def rss():
    d={}
    for l in open(f'/proc/{pid()}/status'):
        if l.startswith(('VmRSS','VmHWM')): d[l.split(':')[0]]=int(l.split()[1])
    return d
def nfds(): return len(os.listdir(f'/proc/{pid()}/fd'))
def metrics():
    # plaintext GET on the same port (not counted as TLS)
    s=socket.create_connection((H,P),timeout=5)
    s.sendall(b'GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
    buf=b''
    while True:
        d=s.recv(65536)
        if not d: break
        buf+=d
    s.close()
    m={}
    for l in buf.decode(errors='replace').splitlines():
        if l.startswith('fanout_tls') or l.startswith('fanout_connections_tls') or l.startswith('fanout_connections_current') or l.startswith('fanout_slow') or (('slow' in l or 'queued_bytes' in l or 'high_water' in l or 'ring_full' in l) and not l.startswith('#')):
            k,v=l.rsplit(' ',1); m[k]=float(v)
    return m
def mdiff(a,b):
    return {k:b[k]-a.get(k,0) for k in b if b[k]!=a.get(k,0)}
class Canary(threading.Thread):
    """Well-behaved TLS client: SUB canary + PING round trip every 50ms; records max latency and errors."""
    def __init__(self):
        super().__init__(daemon=True); self.lat=[]; self.errs=[]; self.stop=False
    def run(self):
        try:
            s=tls_conn(); s.sendall(b'SUB canary\n'); s.settimeout(5)
            buf=b''
            while b'OK SUB' not in buf: buf+=s.recv(4096)
        except Exception as e:
            self.errs.append(('connect',repr(e))); return
        while not self.stop:
            t=time.time()
            try:
                s.sendall(b'PING\n'); buf=b''
                while b'PONG' not in buf:
                    d=s.recv(4096)
                    if not d: raise EOFError('eof')
                    buf+=d
                self.lat.append(time.time()-t)
            except Exception as e:
                self.errs.append((time.strftime('%X'),repr(e)))
                try: s=tls_conn(); s.settimeout(5)
                except Exception as e2: self.errs.append(('reconnect',repr(e2))); time.sleep(0.5)
            time.sleep(0.05)
    def report(self):
        self.stop=True
        l=sorted(self.lat)
        if not l: return f'canary: NO successful pings, errs={self.errs[:5]}'
        return f'canary: {len(l)} pings, p50={l[len(l)//2]*1000:.1f}ms max={l[-1]*1000:.1f}ms errs={len(self.errs)} {self.errs[:3]}'
def fresh_handshake_ms():
    t=time.time(); s=tls_conn(); s.sendall(b'PING\n'); s.settimeout(5); r=s.recv(100); s.close(); return (time.time()-t)*1000, r
