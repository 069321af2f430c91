import os, struct, socket, time
def u8(x): return bytes([x])
def u16(x): return struct.pack('>H',x)
def u24(x): return struct.pack('>I',x)[1:]
def vec8(b): return u8(len(b))+b
def vec16(b): return u16(len(b))+b
def ext(t,d): return u16(t)+vec16(d)
def sni_ext(name): 
    n=name.encode() if isinstance(name,str) else name
    return ext(0, vec16(b'\x00'+vec16(n)))
def client_hello_body(sni='localhost', tls13=True, extra=(), alpn=None, ciphers=None, keyshare=True, sni_raw=None):
    if ciphers is None: ciphers=[0x1301,0x1302,0x1303,0xc02b,0xc02c,0xc02f,0xc030,0xcca9,0xcca8]
    exts=b''
    if sni is not None: exts+= sni_raw if sni_raw is not None else sni_ext(sni)
    exts+=ext(10, vec16(u16(0x1d)+u16(0x17)))               # groups x25519, p256
    exts+=ext(11, vec8(b'\x00'))                           # ec point formats
    exts+=ext(13, vec16(b''.join(u16(x) for x in [0x0403,0x0804,0x0401,0x0503,0x0805,0x0501,0x0806,0x0601])))
    exts+=ext(0xff01, b'\x00')                               # renegotiation_info
    exts+=ext(23, b'')                                       # EMS
    if alpn: exts+=ext(16, vec16(b''.join(vec8(a) for a in alpn)))
    if tls13:
        exts+=ext(43, vec8(u16(0x0304)+u16(0x0303)))
        if keyshare: exts+=ext(51, vec16(u16(0x1d)+vec16(os.urandom(32))))
        exts+=ext(45, vec8(b'\x01'))
    for t,d in extra: exts+=ext(t,d)
    body=u16(0x0303)+os.urandom(32)+vec8(os.urandom(32))+vec16(b''.join(u16(c) for c in ciphers))+vec8(b'\x00')+vec16(exts)
    return body
def hs(msgtype, body): return u8(msgtype)+u24(len(body))+body
def records(ctype, data, ver=0x0301, maxlen=16384):
    out=b''
    for i in range(0, len(data), maxlen): out+=u8(ctype)+u16(ver)+vec16(data[i:i+maxlen])
    return out
def client_hello(**kw): return records(22, hs(1, client_hello_body(**kw)))
def probe(data, wait=3.0, host='127.0.0.1', port=int(__import__('os').environ.get('PORT', '7443')), chunk=None, hold=False):
    """send data, return (bytes received, how it ended, seconds)"""
    s=socket.create_connection((host,port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,1)
    t=time.time(); end='open'
    try:
        if chunk:
            for i in range(0,len(data),chunk): s.sendall(data[i:i+chunk])
        else: s.sendall(data)
    except OSError as e: end='send:'+e.__class__.__name__
    s.settimeout(wait); got=b''
    try:
        while True:
            d=s.recv(65536)
            if not d: end='closed' if end=='open' else end; break
            got+=d
    except socket.timeout: pass
    except ConnectionResetError: end='reset'
    dt=time.time()-t; s.close(); return got, end, dt
def desc(got):
    out=[]; i=0
    while i+5<=len(got):
        ct=got[i]; n=int.from_bytes(got[i+3:i+5],'big'); b=got[i+5:i+5+n]
        name={20:'CCS',21:'Alert',22:'HS',23:'AppData'}.get(ct,f'?{ct}')
        if ct==21 and len(b)==2: name+=f'(level={b[0]},desc={b[1]})'
        elif ct==22 and b: name+=f'(type={b[0]})'
        out.append(f'{name}[{n}]'); i+=5+n
    if i<len(got): out.append(f'raw:{got[i:i+40]!r}')
    return ' '.join(out)
