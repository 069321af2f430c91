"""A third-party WebSocket client (the Python `websockets` library) against fanout's documented
JSON protocol. Usage: ws_subscriber.py URL CHANNEL COUNT [CA_FILE]. With a wss:// URL, the
server's certificate is checked against CA_FILE. Prints "ready" once subscribed, then
expects messages 1..COUNT with data "message N", publishes one message with an acknowledgement,
and resumes on a second connection from COUNT - 2. Exits non-zero on any mismatch."""

import asyncio
import json
import ssl
import sys

import websockets


async def recv_json(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), 20))


async def main(url, channel, count, ca_file):
    tls = ssl.create_default_context(cafile=ca_file) if url.startswith("wss:") else None
    async with websockets.connect(url, subprotocols=["fanout.json"], ssl=tls) as ws:
        assert ws.subprotocol == "fanout.json", ws.subprotocol
        await ws.send(json.dumps({"op": "sub", "channel": channel}))
        ok = await recv_json(ws)
        assert ok == {"op": "ok", "cmd": "sub", "arg": channel}, ok
        print("ready", flush=True)
        for offset in range(1, count + 1):
            m = await recv_json(ws)
            expected = {"op": "msg", "channel": channel, "offset": offset, "data": f"message {offset}"}
            assert m == expected, (m, expected)
        await ws.send(json.dumps({"op": "pub", "channel": channel, "data": "from python", "ack": True}))
        got = [await recv_json(ws), await recv_json(ws)]
        assert {"op": "ack", "channel": channel, "offset": count + 1} in got, got
        assert {"op": "msg", "channel": channel, "offset": count + 1, "data": "from python"} in got, got

    async with websockets.connect(url, subprotocols=["fanout.json"], ssl=tls) as ws:
        await ws.send(json.dumps({"op": "sub", "channel": channel, "after": count - 2}))
        hist = await recv_json(ws)
        assert hist["op"] == "hist" and hist["status"] == "ok" and hist["last"] == count + 1, hist
        for offset in range(count - 1, count + 2):
            m = await recv_json(ws)
            assert m["op"] == "msg" and m["offset"] == offset, m
        assert await recv_json(ws) == {"op": "ok", "cmd": "sub", "arg": channel}
    print(f"ok {count}", flush=True)


if __name__ == "__main__":
    ca = sys.argv[4] if len(sys.argv) > 4 else None
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), ca))
