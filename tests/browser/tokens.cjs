// The JavaScript client with short-lived tokens, in headless Chromium (playwright-core): a page
// subscribes with getToken() handing out tokens that live 3 seconds; a backend publishes every
// 100 ms for 9 seconds (three token lifetimes). The page must receive every message exactly once,
// in order, having refreshed its token before each expiry (getToken called again, and the server
// closed no connection for an expired token), over WebSocket and over the SSE fallback alike.
// Run by tests/browser.rs, which passes FANOUT_BIN, PORT and PLAYWRIGHT_CORE.
"use strict";
const { scenario } = require("./server.cjs");
const crypto = require("crypto");
const fs = require("fs");
const os = require("os");
const path = require("path");

const port = process.env.PORT;
const origin = `http://127.0.0.1:${port}`;
const secret = "browser-test-secret-" + process.pid;
const apiKey = "browser-test-api-key-" + process.pid;
const step = (what) => console.log(`[${new Date().toISOString().slice(11, 23)}] ${what}`);

function b64url(text) {
  return Buffer.from(text).toString("base64").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}

// An HS256 token, as a backend would mint it.
function mint(sub, channels, ttlSeconds) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const exp = Math.floor(Date.now() / 1000) + ttlSeconds;
  const body = b64url(JSON.stringify({ sub, exp, subscribe: channels, publish: channels }));
  const mac = crypto.createHmac("sha256", secret).update(`${head}.${body}`).digest("base64")
    .replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
  return `${head}.${body}.${mac}`;
}

// The server's arguments, with its secret and API key written to files of their own.
function serverArgs() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fanout-tokens-"));
  fs.writeFileSync(path.join(dir, "secret"), secret + "\n");
  fs.writeFileSync(path.join(dir, "api-key"), apiKey + "\n");
  return [
    "--auth-secret-file", path.join(dir, "secret"), "--api-key-file", path.join(dir, "api-key"),
    "--auth-expiry-grace-secs", "1",
  ];
}

async function metric(name) {
  const text = await (await fetch(`${origin}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line ? Number(line.split(" ")[1]) : NaN;
}

async function run(browser, transport) {
  const channel = `ticks.${transport}`;
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => console.log("page error:", String(e)));
  await page.exposeFunction("mintToken", () => mint("viewer", ["ticks.*"], 3));
  await page.goto(`${origin}/healthz`);
  await page.addScriptTag({ url: `${origin}/fanout.js` });
  await page.evaluate(([channel, transport]) => {
    window.received = [];
    window.tokens = 0;
    window.states = [];
    const client = new Fanout(location.origin, {
      transport,
      getToken: () => { window.tokens++; return window.mintToken(); },
    });
    client.onstate = (state, detail) => window.states.push(state + ":" + JSON.stringify(detail));
    client.subscribe(channel, (data, meta) => window.received.push(meta.offset));
  }, [channel, transport]);
  await page.waitForFunction(() => window.states.some((s) => s.startsWith("open")), null, { timeout: 20000 });
  // The subscription is live once the server answered it; give it a moment over SSE.
  await new Promise((r) => setTimeout(r, 500));
  const total = 90;
  for (let i = 1; i <= total; i++) {
    const response = await fetch(`${origin}/publish?channel=${channel}`, {
      method: "POST", body: `tick ${i}`, headers: { Authorization: `Bearer ${apiKey}` },
    });
    if (!response.ok) throw new Error(`publish ${i}: HTTP ${response.status}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  await page.waitForFunction((n) => window.received.length >= n, total, { timeout: 20000 });
  const { received, tokens, states } = await page.evaluate(() => ({
    received: window.received, tokens: window.tokens, states: window.states,
  }));
  const expected = Array.from({ length: total }, (_, i) => i + 1);
  if (JSON.stringify(received) !== JSON.stringify(expected)) {
    throw new Error(`${transport}: received ${JSON.stringify(received)}`);
  }
  if (tokens < 3) throw new Error(`${transport}: getToken called ${tokens} times over three lifetimes`);
  step(`${transport}: ${total} messages exactly once in order; getToken called ${tokens} times; states ${states.join(" ")}`);
  await page.close();
}

scenario(serverArgs(), [], async (browser) => {
  await run(browser, "websocket");
  const expiredBefore = await metric("fanout_auth_expiry_closes_total");
  if (expiredBefore !== 0) throw new Error(`websocket: ${expiredBefore} connections closed for an expired token`);
  await run(browser, "sse");
  const ok = await metric('fanout_authentications_total{result="ok"}');
  step(`server: ${ok} successful authentications, ${await metric("fanout_auth_expiry_closes_total")} expiry closes`);
  console.log("token test passed");
});
