// The JavaScript client given a cluster's two nodes, in headless Chromium (playwright-core): one
// redis-server, node A on PORT and node B on a free port, joined through it. A page loaded from
// node A subscribes through A with both addresses; a backend publishes to node B every 40 ms;
// a third of the way through node A is killed (SIGKILL). The page must move to node B and
// receive every message exactly once, in order, over WebSocket and over the SSE fallback alike.
// Run by tests/browser.rs, which passes FANOUT_BIN, PORT, PLAYWRIGHT_CORE and CHROMIUM.
"use strict";
const { startServer, launchBrowser } = require("./server.cjs");
const { spawn } = require("child_process");
const fs = require("fs");
const net = require("net");
const os = require("os");
const path = require("path");

const step = (what) => console.log(`[${new Date().toISOString().slice(11, 23)}] ${what}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.on("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

async function startRedis() {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fanout-cluster-redis-"));
  const child = spawn("redis-server", [
    "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
    "--dir", dir, "--protected-mode", "no",
  ], { stdio: "ignore" });
  for (let i = 0; i < 200; i++) {
    const up = await new Promise((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () => { socket.end(); resolve(true); });
      socket.on("error", () => resolve(false));
    });
    if (up) return { child, url: `redis://127.0.0.1:${port}` };
    await sleep(50);
  }
  throw new Error("redis-server did not start (apt-get install redis-server)");
}

async function ready(origin) {
  for (let i = 0; i < 200; i++) {
    try {
      if ((await fetch(`${origin}/healthz`)).status === 200) return;
    } catch (e) {
      // not listening yet
    }
    await sleep(50);
  }
  throw new Error(`${origin} did not become ready`);
}

async function run(browser, redis, transport) {
  const portA = process.env.PORT;
  const nodeA = await startServer(["--redis", redis.url]);
  const portB = await freePort();
  const nodeB = await startServer(["--redis", redis.url], portB);
  const [originA, originB] = [`http://127.0.0.1:${portA}`, `http://127.0.0.1:${portB}`];
  await ready(originA);
  await ready(originB);
  const channel = `feed.${transport}`;
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => console.log("page error:", String(e)));
  await page.goto(`${originA}/healthz`);
  await page.addScriptTag({ url: `${originA}/fanout.js` });
  await page.evaluate(([channel, transport, bases]) => {
    window.received = [];
    window.states = [];
    const client = new Fanout(bases, { transport });
    client.onstate = (state, detail) => window.states.push(state + ":" + JSON.stringify(detail));
    client.subscribe(channel, (data, meta) => window.received.push([meta.offset, data]));
  }, [channel, transport, [originA, originB]]);
  await page.waitForFunction(() => window.states.some((s) => s.startsWith("open")), null, { timeout: 20000 });
  await sleep(500);
  const total = 60;
  try {
    for (let i = 1; i <= total; i++) {
      const response = await fetch(`${originB}/publish?channel=${channel}`, { method: "POST", body: `m${i}` });
      if (!response.ok) throw new Error(`publish ${i}: HTTP ${response.status}`);
      if (i === total / 3) {
        nodeA.kill("SIGKILL");
        step(`${transport}: node A killed after ${i} messages`);
      }
      await sleep(40);
    }
    await page.waitForFunction((n) => window.received.length >= n, total, { timeout: 30000 });
    const { received, states } = await page.evaluate(() => ({ received: window.received, states: window.states }));
    const expected = Array.from({ length: total }, (_, i) => [i + 1, `m${i + 1}`]);
    if (JSON.stringify(received) !== JSON.stringify(expected)) {
      throw new Error(`${transport}: received ${JSON.stringify(received)}`);
    }
    if (!states.some((s) => s.startsWith("reconnecting"))) {
      throw new Error(`${transport}: the client never reconnected: ${states.join(" ")}`);
    }
    step(`${transport}: ${total} messages exactly once in order across the move; states ${states.join(" ")}`);
  } finally {
    await page.close();
    nodeA.kill("SIGKILL");
    nodeB.kill("SIGKILL");
  }
}

(async () => {
  const redis = await startRedis();
  const browser = await launchBrowser();
  try {
    await run(browser, redis, "websocket");
    await run(browser, redis, "sse");
    console.log("cluster test passed");
  } finally {
    await browser.close();
    redis.child.kill("SIGKILL");
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
