# 100 handshakes aborted by TCP RST (SO_LINGER 0): which failure counter moves?
import socket, time, common, rawtls as R
ch=R.client_hello()
for name,data,wait in [('partial CH + RST',ch[:50],0),('full CH + RST (after ServerHello)',ch,0.05),('0x16 only + RST',b'\x16',0),('full CH + FIN',ch,'fin')]:
    m0=common.metrics()
    for i in range(100):
        s=socket.create_connection((common.H,common.P)); s.sendall(data)
        if wait=='fin': s.shutdown(socket.SHUT_WR); time.sleep(0.01); s.close(); continue
        time.sleep(wait or 0.005)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\0\0\0\0\0\0\0'); s.close()
    time.sleep(0.5); print(f'{name:36s} x100 ->', {k.replace('fanout_',''):v for k,v in common.mdiff(m0,common.metrics()).items()})
