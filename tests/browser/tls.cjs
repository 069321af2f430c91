// The demo page over https in headless Chromium (playwright-core): the server has a certificate
// from the test's own CA (CERT, KEY; the browser is told to trust that certificate's key, as a
// company's root would be trusted); one page on WebSocket (wss://, derived by the JS client from
// the https page, unchanged) and one whose WebSocket is blocked (SSE and HTTP publish over https)
// see each other's comments and who is watching. A backend publishes over https too.
// Run by tests/browser.rs, which passes FANOUT_BIN, PORT, CERT, KEY, PLAYWRIGHT_CORE and
// NODE_EXTRA_CA_CERTS (the test CA, for this script's own fetches).
"use strict";
const { blockWebSocket, scenario } = require("./server.cjs");
const crypto = require("crypto");
const fs = require("fs");

const port = process.env.PORT;
const origin = `https://localhost:${port}`;
const channel = "tls-demo-" + process.pid;
const step = (what) => console.log(`[${new Date().toISOString().slice(11, 23)}] ${what}`);

// Chromium's --ignore-certificate-errors-spki-list takes base64 SHA-256 of the key (SPKI).
function spkiHash(pemFile) {
  const cert = new crypto.X509Certificate(fs.readFileSync(pemFile));
  const spki = cert.publicKey.export({ type: "spki", format: "der" });
  return crypto.createHash("sha256").update(spki).digest("base64");
}

async function waitForComment(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll("#comments li")].some((li) => li.lastChild.textContent === t),
    text, { timeout: 30000 });
}

scenario(
  ["--tls-cert", process.env.CERT, "--tls-key", process.env.KEY, "--join-leave", ">"],
  [`--ignore-certificate-errors-spki-list=${spkiHash(process.env.CERT)}`],
  async (browser) => {
    const open = async (withoutWebSocket) => {
      const page = await (await browser.newContext()).newPage();
      if (withoutWebSocket) {
        await blockWebSocket(page);
      } else {
        // Record the WebSocket URLs the client opens (it must derive wss:// from the page).
        await page.addInitScript(() => {
          const Native = window.WebSocket;
          window.openedSockets = [];
          window.WebSocket = function (url, protocols) {
            window.openedSockets.push(String(url));
            return new Native(url, protocols);
          };
          Object.assign(window.WebSocket, Native);
        });
      }
      page.on("pageerror", (e) => console.log("page error:", String(e)));
      await page.goto(`${origin}/?channel=${channel}`);
      await page.waitForSelector("#state.open", { timeout: 20000 }).catch(async (e) => {
        throw new Error(`page never opened; it shows ${await page.textContent("#state")}: ${e}`);
      });
      return page;
    };
    const ws = await open(false);
    const sse = await open(true);
    const states = [await ws.textContent("#state"), await sse.textContent("#state")];
    if (states[0] !== "open · websocket" || states[1] !== "open · sse") {
      throw new Error("pages show " + JSON.stringify(states));
    }
    const sockets = await ws.evaluate(() => window.openedSockets);
    if (!sockets.length || !sockets.every((u) => u.startsWith(`wss://localhost:${port}/`))) {
      throw new Error("the client opened " + JSON.stringify(sockets));
    }
    const protocol = await ws.evaluate(() => location.protocol);
    if (protocol !== "https:") throw new Error("the page is on " + protocol);
    step(`two pages open over https: ${JSON.stringify(states)}, sockets ${JSON.stringify(sockets)}`);

    for (const page of [ws, sse]) {
      await page.waitForFunction(() => document.querySelector("#watching").textContent.startsWith("2 watching"),
        null, { timeout: 20000 });
    }
    await ws.fill("#text", "from the wss page");
    await ws.click("#send");
    await sse.fill("#text", "from the https SSE page");
    await sse.click("#send");
    const response = await fetch(`${origin}/publish?channel=${channel}`, {
      method: "POST", body: JSON.stringify({ name: "backend", text: "from a backend over https" }),
    });
    if (!response.ok) throw new Error("backend publish failed: " + response.status);
    for (const page of [ws, sse]) {
      for (const text of ["from the wss page", "from the https SSE page", "from a backend over https"]) {
        await waitForComment(page, text);
      }
    }
    step("every comment on both pages");
    const metrics = await (await fetch(`${origin}/metrics`)).text();
    const value = (name) => Number((metrics.split("\n").find((l) => l.startsWith(name + " ")) || " NaN").split(" ")[1]);
    if (!(value("fanout_tls_handshakes_total") >= 3) || value("fanout_connections_tls") < 2) {
      throw new Error("metrics: " + metrics.split("\n").filter((l) => l.startsWith("fanout_tls") || l.startsWith("fanout_connections_tls")).join("; "));
    }
    step(`server counted ${value("fanout_tls_handshakes_total")} handshakes, ${value("fanout_connections_tls")} TLS connections open`);
    console.log("tls browser test passed");
  });
