// Starts `fanout serve` on 127.0.0.1:PORT (or `port`) with extra arguments; resolves once it
// listens. Shared by the browser scenarios (FANOUT_BIN and PORT come from tests/browser.rs).
"use strict";
const { spawn } = require("child_process");

function startServer(extraArgs, port) {
  const child = spawn(process.env.FANOUT_BIN, [
    "serve", "--listen", `127.0.0.1:${port || process.env.PORT}`, "--no-pin", "--workers", "2",
    "--stats-interval-secs", "0", ...extraArgs,
  ], { stdio: ["ignore", "ignore", "pipe"] });
  return new Promise((resolve, reject) => {
    let log = "";
    const timer = setTimeout(() => reject(new Error("server did not start: " + log)), 20000);
    child.stderr.on("data", (chunk) => {
      log += chunk;
      if (log.includes("listening on")) {
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.on("exit", (code) => reject(new Error(`server exited (${code}): ${log}`)));
  });
}

// Headless Debian Chromium, quiet and without the sandbox (containers have no user namespaces).
function launchBrowser(extraArgs) {
  const { chromium } = require(process.env.PLAYWRIGHT_CORE);
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      ...(extraArgs || [])],
  });
}

// What a proxy that blocks WebSocket looks like to a page: connections that close without ever
// opening. The JS client must fall back to SSE + HTTP publish by itself.
async function blockWebSocket(page) {
  await page.addInitScript(() => {
    window.WebSocket = function () {
      const socket = this;
      socket.readyState = 0;
      socket.send = () => {};
      socket.close = () => {};
      setTimeout(() => {
        socket.readyState = 3;
        if (socket.onclose) socket.onclose({ code: 1006 });
      }, 10);
    };
  });
}

// Runs a scenario: `body(browser)` with a server started with `serverArgs` and a browser with
// `browserArgs`, both stopped after; a failure prints and exits non-zero.
function scenario(serverArgs, browserArgs, body) {
  (async () => {
    const server = await startServer(serverArgs);
    const browser = await launchBrowser(browserArgs);
    try {
      await body(browser);
    } finally {
      await browser.close();
      server.kill("SIGKILL");
    }
  })().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}

module.exports = { startServer, launchBrowser, blockWebSocket, scenario };
