# Does data sent right before the client's close (close_notify / FIN) get processed? TLS vs plaintext.
import socket, ssl, time, common, subprocess, json
def last(ch):
    s=common.tls_conn(); s.sendall(f'GET /sse?channel={ch} HTTP/1.1\r\nHost: x\r\n\r\n'.encode()); s.settimeout(1); b=b''
    try:
        while b'"status"' not in b: b+=s.recv(4096)
    except Exception: pass
    s.close(); i=b.find(b'"last":'); return int(b[i+7:b.find(b',',i)])
def case(name, fn):
    ch='hc'+str(time.time_ns()); fn(ch); time.sleep(0.5); print(f'{name:55s} published: {last(ch)}')
def plain_fin(ch):
    s=socket.create_connection((common.H,common.P)); s.sendall(f'PUB {ch} x\n'.encode()); s.shutdown(socket.SHUT_WR); time.sleep(0.3); s.close()
def plain_close(ch):
    s=socket.create_connection((common.H,common.P)); s.sendall(f'PUB {ch} x\n'.encode()); s.close()
def tls_unwrap(ch):
    s=common.tls_conn(); s.sendall(f'PUB {ch} x\n'.encode()); 
    try: s.unwrap()
    except Exception as e: print('   unwrap:',e)
    s.close()
def tls_unwrap_delay(ch):
    s=common.tls_conn(); s.sendall(f'PUB {ch} x\n'.encode()); time.sleep(0.2)
    try: s.unwrap()
    except Exception as e: print('   unwrap:',e)
    s.close()
def tls_close(ch):
    s=common.tls_conn(); s.sendall(f'PUB {ch} x\n'.encode()); s.close()
def tls_fin(ch):
    raw=socket.create_connection((common.H,common.P)); s=common.CTX.wrap_socket(raw, server_hostname='localhost')
    s.sendall(f'PUB {ch} x\n'.encode()); socket.socket.shutdown(s, socket.SHUT_WR); time.sleep(0.3); s.close()
def tls_3pubs_unwrap(ch):
    s=common.tls_conn(); 
    for i in range(3): s.sendall(f'PUB {ch} x{i}\n'.encode())
    try: s.unwrap()
    except Exception as e: print('   unwrap:',e)
def sclient(ch):
    subprocess.run(f"printf 'PUB {ch} x\\n' | openssl s_client -connect 127.0.0.1:{common.P} -CAfile {common.CA} -servername localhost", shell=True, capture_output=True, timeout=10)
def http_post_cn(ch):
    s=common.tls_conn(); s.sendall(f'POST /publish?channel={ch} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx'.encode())
    try: s.unwrap()
    except Exception as e: print('   unwrap:',e)
def plain_http_post_fin(ch):
    s=socket.create_connection((common.H,common.P)); s.sendall(f'POST /publish?channel={ch} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx'.encode()); s.shutdown(socket.SHUT_WR); s.settimeout(2); print('   reply:', s.recv(100)[:15]); s.close()
def resp_cn(ch):
    s=common.tls_conn(); s.sendall(f'*3\r\n$7\r\nPUBLISH\r\n${len(ch)}\r\n{ch}\r\n$1\r\nx\r\n'.encode())
    try: s.unwrap()
    except Exception as e: print('   unwrap:',e)
for n,f in [('plaintext: PUB + shutdown(SHUT_WR)',plain_fin),('plaintext: PUB + close()',plain_close),
            ('TLS: PUB + close_notify (ssl.unwrap) immediately',tls_unwrap),('TLS: PUB, 200ms, close_notify',tls_unwrap_delay),
            ('TLS: PUB + close() (no close_notify)',tls_close),('TLS: PUB + TCP FIN, no close_notify',tls_fin),('TLS: 3 PUBs + close_notify',tls_3pubs_unwrap),
            ("TLS: printf 'PUB..' | openssl s_client",sclient),('TLS: HTTP POST + close_notify',http_post_cn),('plaintext: HTTP POST + FIN',plain_http_post_fin),('TLS: RESP PUBLISH + close_notify',resp_cn)]:
    case(n,f)
