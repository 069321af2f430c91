// The operators' page /admin in headless Chromium (playwright-core): it loads without a secret
// and asks for the API key; a wrong key is refused and said so; with the right one it shows the
// node, and while a backend publishes (and the page's own inspector subscribes) the numbers move:
// publishes/s and deliveries/s above zero, the channel in the top tables, the charts drawn, and
// the inspector lists the channel's messages with their offsets, history first. Saves a
// screenshot where SCREENSHOT says. Run by tests/browser.rs (FANOUT_BIN, PORT, PLAYWRIGHT_CORE).
"use strict";
const { scenario } = require("./server.cjs");
const fs = require("fs");
const os = require("os");
const path = require("path");

const port = process.env.PORT;
const origin = `http://127.0.0.1:${port}`;
const apiKey = "admin-page-api-key-" + process.pid;
const step = (what) => console.log(`[${new Date().toISOString().slice(11, 23)}] ${what}`);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fanout-admin-"));
fs.writeFileSync(path.join(dir, "api-key"), apiKey + "\n");

async function publish(channel, data) {
  const r = await fetch(`${origin}/api/publish`, {
    method: "POST",
    headers: { Authorization: `Bearer ${apiKey}`, "Content-Type": "application/json" },
    body: JSON.stringify({ channel, data }),
  });
  if (r.status !== 200) throw new Error(`publish: HTTP ${r.status} ${await r.text()}`);
}

const number = (text) => {
  const m = /^([\d.]+)([kMG]?)$/.exec(text.trim());
  if (!m) return NaN;
  return parseFloat(m[1]) * ({ "": 1, k: 1e3, M: 1e6, G: 1e9 })[m[2]];
};

scenario(["--api-key-file", path.join(dir, "api-key")], [], async (browser) => {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  // Retained history for the inspector to show first.
  for (let i = 1; i <= 3; i++) await publish("scores", `before ${i}`);

  await page.goto(`${origin}/admin`);
  await page.waitForSelector("#login:not([hidden])", { timeout: 10000 });
  step("the page asks for the key");
  await page.fill("#key", "not the key");
  await page.click("#login button");
  await page.waitForFunction(() => document.getElementById("login-error").textContent.includes("refused"),
    null, { timeout: 10000 });
  step("a wrong key is refused: " + await page.textContent("#login-error"));

  await page.fill("#key", apiKey);
  await page.click("#login button");
  await page.waitForSelector("#dashboard:not([hidden])", { timeout: 10000 });
  await page.waitForSelector("#nodes tbody tr", { timeout: 10000 });
  step("dashboard: " + (await page.textContent("#nodes tbody tr")).slice(0, 80));

  // The inspector subscribes from the start of history.
  await page.fill("#inspect-channel", "scores");
  await page.selectOption("#inspect-from", "start");
  await page.click("#inspect-watch");
  await page.waitForFunction(() => document.getElementById("messages").textContent.includes("scores #3"),
    null, { timeout: 10000 });
  step("the inspector replays history with offsets");

  // A backend publishes for a while: the numbers must move.
  let sent = 3;
  const publishing = (async () => {
    const until = Date.now() + 9000;
    while (Date.now() < until) {
      sent++;
      await publish("scores", `live ${sent}`);
      await new Promise((r) => setTimeout(r, 40));
    }
  })();
  await page.waitForFunction(() => {
    const n = (id) => parseFloat(document.getElementById(id).textContent);
    return n("c-in") > 0 && n("c-out") > 0;
  }, null, { timeout: 15000, polling: 200 });
  const rates = { in: await page.textContent("#c-in"), out: await page.textContent("#c-out") };
  step(`publishes/s ${rates.in}, deliveries/s ${rates.out}`);
  if (!(number(rates.in) > 0 && number(rates.out) > 0)) throw new Error("numbers did not move");
  await page.waitForFunction(() => document.querySelector("#top-rate tbody").textContent.includes("scores"),
    null, { timeout: 10000 });
  step("top channels by rate: " + (await page.textContent("#top-rate tbody tr")).trim());
  const subscribers = await page.textContent("#top-subscribers tbody");
  if (!subscribers.includes("scores")) throw new Error("top by subscribers lacks scores: " + subscribers);
  await page.waitForFunction(() => !["-", ""].includes(document.getElementById("c-p99").textContent),
    null, { timeout: 10000 });
  step("delivery p99 " + await page.textContent("#c-p99"));
  // The rate chart draws its lines (delivered in blue, published in green over it: with one
  // subscriber they coincide) once it has two readings with a rate.
  await page.waitForFunction(() => {
    const c = document.getElementById("chart-rate");
    const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let line = 0;
    for (let i = 0; i < data.length; i += 4) {
      const blue = data[i + 2] > 200 && data[i] < 120;
      const green = data[i + 1] > 180 && data[i] < 120 && data[i + 2] < 170;
      if (blue || green) line++;
    }
    return line >= 20;
  }, null, { timeout: 10000, polling: 250 }).catch(async (e) => {
    const seen = await page.evaluate(() => {
      const c = document.getElementById("chart-rate");
      const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      const colors = {};
      for (let i = 0; i < data.length; i += 4) {
        const k = `${data[i]},${data[i + 1]},${data[i + 2]},${data[i + 3]}`;
        colors[k] = (colors[k] || 0) + 1;
      }
      return { w: c.width, h: c.height, colors: Object.entries(colors).sort((a, b) => b[1] - a[1]).slice(0, 8) };
    });
    throw new Error(`the rate chart draws no line: ${JSON.stringify(seen)}: ${e.message}`);
  });
  step("the rate chart is drawn");
  await publishing;
  await page.waitForFunction((last) => document.getElementById("messages").textContent.includes(`scores #${last}`),
    sent, { timeout: 10000 });
  step(`the inspector shows every message up to #${sent}`);
  const lines = await page.$$eval("#messages .offset", (spans) => spans.map((s) => s.textContent));
  const offsets = lines.map((l) => parseInt(l.split("#")[1], 10));
  for (let i = 0; i < offsets.length; i++) {
    if (offsets[i] !== i + 1) throw new Error(`inspector offsets out of order at ${i}: ${offsets.slice(0, i + 2)}`);
  }
  if (process.env.SCREENSHOT) {
    await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    step("screenshot: " + process.env.SCREENSHOT);
  }
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  console.log("admin page test passed");
});
