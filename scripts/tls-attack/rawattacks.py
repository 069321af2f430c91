import rawtls as R, common, time, sys, os
tests={}
ch=R.client_hello()
tests['baseline valid CH13']=ch
tests['oversized record len=0xffff']=b'\x16\x03\x01\xff\xff'+os.urandom(65535)
tests['record len=18433 (>2^14+2048)']=b'\x16\x03\x01'+R.u16(18433)+os.urandom(18433)
tests['empty handshake record']=b'\x16\x03\x01\x00\x00'+ch
tests['100k empty hs records']=b'\x16\x03\x01\x00\x00'*100000
tests['0x16 then plaintext']=b'\x16GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n'
tests['CH then plaintext HTTP']=ch+b'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n'
tests['CH then appdata garbage']=ch+R.records(23,os.urandom(100),ver=0x0303)
tests['CH declared 16MB']=R.records(22, b'\x01\xff\xff\xff'+os.urandom(16380))*64
tests['CH declared 65535 (sent 64K)']=R.records(22, b'\x01\x00\xff\xff'+os.urandom(65535))
tests['huge SNI 60000 bytes']=R.client_hello(sni='a'*60000)
tests['SNI 300 char label']=R.client_hello(sni='a'*300)
tests['SNI with NUL']=R.client_hello(sni='local\x00host')
tests['SNI IP literal']=R.client_hello(sni='127.0.0.1')
tests['two SNI ext']=R.client_hello(extra=[(0,R.vec16(b'\x00'+R.vec16(b'x.test')))])
tests['ALPN h2 only']=R.client_hello(alpn=[b'h2'])
tests['ALPN 1000 protocols']=R.client_hello(alpn=[b'p%d'%i for i in range(1000)])
tests['SSLv3 hello']=R.records(22, R.hs(1, R.client_hello_body(tls13=False).replace(b'\x03\x03',b'\x03\x00',1)), ver=0x0300)
tests['TLS1.0 hello no 1.3']=R.records(22, R.hs(1, b'\x03\x01'+R.client_hello_body(tls13=False)[2:]))
tests['SSLv2 compat hello (0x80)']=bytes.fromhex('802b01030100120000001000003900003800003500001600001300000a0700c000003300003200002f0300800000050000040100800000150000120000090600400000140000110000080000060400800000030200800000ff')
tests['no cipher overlap']=R.client_hello(ciphers=[0x002f,0x0035])
tests['TLS1.3 no key_share']=R.client_hello(keyshare=False)
tests['early_data ext without PSK']=R.client_hello(extra=[(42,b'')])
tests['CH + early appdata records']=R.client_hello(extra=[(42,b'')])+R.records(23,os.urandom(200),ver=0x0303)*50
tests['alert warning flood before CH']=b'\x15\x03\x01\x00\x02\x01\x00'*1000+ch
tests['CCS flood before CH']=b'\x14\x03\x01\x00\x01\x01'*1000+ch
tests['CCS flood after CH']=ch+b'\x14\x03\x03\x00\x01\x01'*10000
tests['heartbeat record type 24']=b'\x18\x03\x01\x00\x03\x01\x40\x00'
tests['unknown record type 0x16 then 0x99']=ch+b'\x99\x03\x03\x00\x01\x00'
tests['two ClientHellos']=ch+ch
tests['fatal alert after CH']=ch+b'\x15\x03\x03\x00\x02\x02\x28'
tests['close_notify after CH']=ch+b'\x15\x03\x03\x00\x02\x01\x00'
tests['record version 0x0000']=b'\x16\x00\x00'+ch[3:]
tests['record version 0xffff']=b'\x16\xff\xff'+ch[3:]
tests['random bytes after 0x16 (1MB)']=b'\x16'+os.urandom(1<<20)
only=sys.argv[1:] 
can=common.Canary(); can.start(); time.sleep(0.2)
r0=common.rss()
for name,data in tests.items():
    if only and not any(o in name for o in only): continue
    m0=common.metrics()
    got,end,dt=R.probe(data, wait=12)
    time.sleep(0.05)
    d=common.mdiff(m0,common.metrics()); d={k.replace('fanout_',''):v for k,v in d.items()}
    print(f'{name:34s} -> {end:7s} {dt:5.2f}s  reply: {R.desc(got)[:80]:40s} | {d}')
    if not common.alive(): print('SERVER DIED'); break
print('rss', r0, '->', common.rss(), 'fds', common.nfds()); print(can.report())
