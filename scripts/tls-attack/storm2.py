# storm2.py TRANSPORT CLOSE PUBLISH SECS: find which path leaves fanout_queued_bytes elevated
import socket, ssl, time, threading, common, sys
tr, how, pub, secs = sys.argv[1], sys.argv[2], sys.argv[3]=='1', float(sys.argv[4])
base=common.metrics()['fanout_queued_bytes']; stop=False; n=[0]
def worker():
    while not stop:
        try:
            raw=socket.create_connection((common.H,common.P))
            s=common.CTX.wrap_socket(raw, server_hostname='localhost') if tr=='tls' else raw
            s.sendall(b'SUB storm\n'); s.settimeout(3); b=b''
            while b'OK SUB' not in b: b+=s.recv(4096)
            if how=='rst': s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\0\0\0\0\0\0\0'); s.close()
            elif how=='unwrap':
                try: s.unwrap()
                except Exception: pass
                s.close()
            else: s.close()
            n[0]+=1
        except Exception as e: pass
def publisher():
    p=socket.create_connection((common.H,common.P))
    while not stop: p.sendall(b'PUB storm hello-storm\n'*10); time.sleep(0.001)
NW=int(sys.argv[5]) if len(sys.argv)>5 else 4
ts=[threading.Thread(target=worker) for _ in range(NW)]+([threading.Thread(target=publisher)] if pub else [])
for t in ts: t.start()
time.sleep(secs); stop=True
for t in ts: t.join()
time.sleep(1.5)
print(f'{tr:5s} close={how:6s} publisher={pub}: {n[0]} conns; queued_bytes leak = {common.metrics()["fanout_queued_bytes"]-base:.0f}')
