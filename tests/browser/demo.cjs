// Drives the demo page in headless Chromium (playwright-core): two viewers see each other's
// comments; the server is killed and restarted on the same port, a comment written while it was
// down and one published by a backend right after the restart both reach every page exactly once,
// in offset order; a third page, whose WebSocket connections never open (as behind a proxy that
// blocks them), falls back to SSE + HTTP publish by itself and takes part too; every page shows
// who is watching (presence, then joins and leaves).
// Run by tests/browser.rs, which passes FANOUT_BIN, PORT, DATA_DIR and PLAYWRIGHT_CORE.
"use strict";
const { startServer: launch, launchBrowser, blockWebSocket } = require("./server.cjs");

const port = process.env.PORT;
const origin = `http://127.0.0.1:${port}`;
const channel = "demo-" + process.pid;
const step = (what) => console.log(`[${new Date().toISOString().slice(11, 23)}] ${what}`);

function startServer() {
  return launch(["--data-dir", process.env.DATA_DIR, "--fsync", "always", "--join-leave", ">"]);
}

async function comments(page) {
  return page.$$eval("#comments li", (items) =>
    items.map((li) => ({ offset: Number(li.dataset.offset), text: li.lastChild.textContent })));
}

async function waitForComment(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll("#comments li")].some((li) => li.lastChild.textContent === t),
    text, { timeout: 30000 });
}

async function post(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
}

(async () => {
  let server = await startServer();
  const browser = await launchBrowser();
  try {
    const open = async (query, withoutWebSocket) => {
      const page = await (await browser.newContext()).newPage();
      if (withoutWebSocket) await blockWebSocket(page);
      page.on("console", (m) => { if (m.type() === "error") console.log("page console:", m.text()); });
      page.on("pageerror", (e) => console.log("page error:", String(e)));
      await page.goto(`${origin}/?channel=${channel}${query}`);
      await page.waitForSelector("#state.open", { timeout: 20000 }).catch(async (e) => {
        throw new Error(`page never opened; it shows ${await page.textContent("#state")}: ${e}`);
      });
      return page;
    };
    const a = await open("");
    const b = await open("");
    const c = await open("", true);
    const cState = await c.textContent("#state");
    if (cState !== "open · sse") throw new Error("the blocked page did not fall back to SSE: " + cState);
    step("three pages open; the one without WebSocket shows: " + cState);
    // Who is watching: each page sees all three viewers (presence, then joins).
    for (const page of [a, b, c]) {
      await page.waitForFunction(() => document.querySelector("#watching").textContent.startsWith("3 watching"),
        null, { timeout: 20000 }).catch(async (e) => {
        throw new Error(`a page shows ${await page.textContent("#watching")}: ${e}`);
      });
    }
    step("every page shows 3 watching");

    await post(a, "hello from A");
    for (const page of [a, b, c]) await waitForComment(page, "hello from A");
    await post(c, "hello from the SSE page");
    for (const page of [a, b, c]) await waitForComment(page, "hello from the SSE page");
    step("comments seen by every page");

    server.kill("SIGKILL");
    await new Promise((r) => server.once("exit", r));
    for (const page of [a, b]) await page.waitForSelector("#state:not(.open)", { timeout: 20000 });
    step("server killed; pages show: " + (await b.textContent("#state")));
    await post(a, "written while the server was down");
    await new Promise((r) => setTimeout(r, 500));

    server = await startServer();
    step("server restarted");
    const response = await fetch(`${origin}/publish?channel=${channel}`, {
      method: "POST", body: JSON.stringify({ name: "backend", text: "published right after the restart" }),
    });
    if (!response.ok) throw new Error("backend publish failed: " + response.status);
    for (const page of [a, b, c]) {
      await page.waitForSelector("#state.open", { timeout: 30000 });
      await waitForComment(page, "written while the server was down");
      await waitForComment(page, "published right after the restart");
    }
    step("every page reconnected and resumed");

    const expected = ["hello from A", "hello from the SSE page", "written while the server was down",
      "published right after the restart"];
    for (const [name, page] of [["a", a], ["b", b], ["c", c]]) {
      const seen = await comments(page);
      const texts = seen.map((s) => s.text);
      for (const text of expected) {
        if (texts.filter((t) => t === text).length !== 1) {
          throw new Error(`page ${name}: ${JSON.stringify(text)} not seen exactly once: ${JSON.stringify(seen)}`);
        }
      }
      for (let i = 1; i < seen.length; i++) {
        if (!(seen[i].offset > seen[i - 1].offset)) {
          throw new Error(`page ${name}: offsets out of order: ${JSON.stringify(seen)}`);
        }
      }
    }
    step("each comment exactly once, in offset order, on every page");
    console.log("browser test passed");
  } finally {
    await browser.close();
    server.kill("SIGKILL");
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
