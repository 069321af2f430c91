// fanout.js: the browser client of a fanout server. One file, no build step, no dependencies.
//
//   const client = new Fanout();                      // same origin; or new Fanout("http://host:7400")
//   // a cluster's nodes: new Fanout(["http://a:7400", "http://b:7400"]): the next one after a failure
//   client.subscribe("news", (data, meta) => ...);    // meta: {channel, offset}; resumes by offset
//   client.publish("news", "hello");                  // buffered while disconnected, resent until acknowledged
//   client.onstate = (state, detail) => ...;          // "connecting", "open", "reconnecting", "closed"
//
// Presence (channels the server runs with --presence / --join-leave):
//   client.presence("room").then(p => ...);           // {clients, users, members: [{client, user, node, info}]}
//   client.presenceStats("room").then(p => ...);      // {clients, users}
//   client.onjoin = (channel, member) => ...;         // member: {client, user, info}
//   client.onleave = (channel, member) => ...;
//   client.onunsubscribed = (channel, reason) => ...; // the server API took this client out
//
// With access control: new Fanout(base, {token: "eyJ…"}), or {getToken: () => fetch("/my-token")
// .then(r => r.text())}: getToken is called before every (re)connect and again before the token
// expires (at 80% of its life); a fresh token goes to the open WebSocket as {"op":"auth"} (an
// event stream is reopened with it, resuming by offset), so nothing is lost across expiries.
//
// Transport: WebSocket (`/ws`, subprotocol fanout.json). If WebSocket cannot be opened (a proxy
// or firewall that blocks it), the client falls back to Server-Sent Events (`/sse`) for
// receiving and `POST /publish` for sending. Either way it reconnects with exponential backoff
// and jitter and resumes every channel after the last offset it delivered, so a message is
// delivered once, in order, as long as the server still retains it.
(function (global) {
  "use strict";

  var MAX_BACKOFF_MS = 10000;
  var BASE_BACKOFF_MS = 250;
  // WebSocket attempts that never opened before the client tries SSE instead.
  var WS_FAILURES_BEFORE_FALLBACK = 2;

  function Fanout(base, options) {
    options = options || {};
    // Several bases are a cluster's nodes, interchangeable: after a failure the client moves to
    // the next one and resumes there by offset.
    this.bases = (Array.isArray(base) ? base : [base || global.location.origin]).map(function (b) {
      return b.replace(/\/$/, "");
    });
    this.baseIndex = 0;
    this.base = this.bases[0];
    this.transport = options.transport || "auto"; // "auto", "websocket" or "sse"
    this.channels = {}; // name -> {handlers, offset, epoch, from}
    this.outbox = []; // publishes not yet acknowledged: {channel, data, sent}
    this.state = "closed";
    this.onstate = null;
    this.onnotice = null; // (kind, detail): "expired", "epoch", "error"
    this.onjoin = null; // (channel, {client, user, info})
    this.onleave = null; // (channel, {client, user})
    this.onunsubscribed = null; // (channel, reason)
    this.attempt = 0;
    this.wsFailures = 0;
    this.wsWorked = false; // once WebSocket has worked, a failure is an outage, not a blocked proxy
    this.usingSse = this.transport === "sse";
    this.ws = null;
    this.sse = null;
    this.timer = null;
    this.closed = false;
    this.flushing = false;
    this.token = options.token || null;
    this.getToken = options.getToken || null;
    this.refreshTimer = null;
    // Connect once the caller has set its handlers and subscriptions.
    var self = this;
    setTimeout(function () {
      self.connect();
    }, 0);
  }

  // A token's exp (Unix seconds), read from its payload (the server verifies; this only plans
  // the refresh).
  function expiryOf(token) {
    try {
      var part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      while (part.length % 4) part += "=";
      return JSON.parse(global.atob(part)).exp || null;
    } catch (e) {
      return null;
    }
  }

  // Calls back with a token: a fresh one from getToken, else the fixed one (or none).
  Fanout.prototype.withToken = function (callback) {
    var self = this;
    if (!this.getToken) return callback(this.token);
    Promise.resolve()
      .then(function () {
        return self.getToken();
      })
      .then(function (token) {
        self.token = token;
        self.planRefresh();
        callback(token);
      })
      .catch(function (e) {
        self.notice("error", { reason: "getToken failed: " + e });
        self.retry("getToken failed");
      });
  };

  // At 80% of the token's life, get a fresh one and hand it to the open connection.
  Fanout.prototype.planRefresh = function () {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    var exp = this.token && expiryOf(this.token);
    if (!exp || !this.getToken || this.closed) return;
    var left = exp * 1000 - Date.now();
    var self = this;
    this.refreshTimer = setTimeout(function () {
      self.refreshTimer = null;
      self.withToken(function (token) {
        if (self.ws && self.ws.readyState === 1) {
          self.ws.send(JSON.stringify({ op: "auth", token: token }));
        } else if (self.sse) {
          self.reconnectSse();
        }
      });
    }, Math.max(1000, left * 0.8));
  };

  Fanout.prototype.setState = function (state, detail) {
    this.state = state;
    if (this.onstate) this.onstate(state, detail);
  };

  Fanout.prototype.notice = function (kind, detail) {
    if (this.onnotice) this.onnotice(kind, detail);
  };

  // ---- public API ----

  // from: "now" (default: only new messages), "start" (everything retained), or an offset.
  Fanout.prototype.subscribe = function (channel, handler, from) {
    var entry = this.channels[channel];
    if (!entry) {
      entry = this.channels[channel] = { handlers: [], offset: null, epoch: null };
      if (from === "start") entry.offset = 0;
      else if (typeof from === "number") entry.offset = from;
      this.sendSubscribe(channel);
      if (this.usingSse && this.state === "open") this.reconnectSse();
    }
    entry.handlers.push(handler);
  };

  Fanout.prototype.publish = function (channel, data) {
    this.outbox.push({ channel: channel, data: String(data), sent: false });
    this.flushOutbox();
  };

  // Who is subscribed to `channel`, on every node: a Promise of {clients, users, members}.
  // Asked over HTTP (GET /presence) with this client's token, so it works on either transport;
  // the answer is therefore not in order with the joins and leaves on the stream: apply those
  // that arrive while it is on its way again on top of it (the demo page shows how).
  Fanout.prototype.presence = function (channel) {
    return this.askPresence("/presence", channel);
  };

  // How many clients and distinct users are subscribed: a Promise of {clients, users}.
  Fanout.prototype.presenceStats = function (channel) {
    return this.askPresence("/presence_stats", channel);
  };

  Fanout.prototype.askPresence = function (path, channel) {
    var headers = this.token ? { Authorization: "Bearer " + this.token } : {};
    return global
      .fetch(this.base + path + "?channel=" + encodeURIComponent(channel), { headers: headers })
      .then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) throw new Error("presence: " + body.code + " " + body.reason);
          return { clients: body.clients, users: body.users, members: body.members || [] };
        });
      });
  };

  // A join, leave or server unsubscribe (`m`: the server's JSON object).
  Fanout.prototype.presenceEvent = function (m) {
    if (m.op === "join" && this.onjoin) {
      this.onjoin(m.channel, { client: m.client, user: m.user, info: m.info });
    } else if (m.op === "leave" && this.onleave) {
      this.onleave(m.channel, { client: m.client, user: m.user });
    } else if (m.op === "unsubscribed") {
      // Not resubscribed after a reconnect: the server decided.
      delete this.channels[m.channel];
      if (this.onunsubscribed) this.onunsubscribed(m.channel, m.reason);
    }
  };

  Fanout.prototype.close = function () {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.refreshTimer);
    if (this.ws) this.ws.close(1000);
    if (this.sse) this.sse.close();
    this.setState("closed");
  };

  // ---- delivery ----

  Fanout.prototype.deliver = function (channel, offset, data) {
    var entry = this.channels[channel];
    if (!entry) return;
    // A replay and the live stream may overlap across a reconnect: deliver each offset once.
    if (entry.offset !== null && offset <= entry.offset) return;
    entry.offset = offset;
    for (var i = 0; i < entry.handlers.length; i++) {
      entry.handlers[i](data, { channel: channel, offset: offset });
    }
  };

  Fanout.prototype.history = function (h) {
    var entry = this.channels[h.channel];
    if (!entry) return;
    if (entry.offset === null) entry.offset = h.last;
    if (h.status === "epoch") {
      // The server's log for this channel is not the one our offset belongs to (its data was
      // wiped): start over from what it retains.
      entry.offset = h.first - 1;
      this.notice("epoch", h);
    } else if (h.status === "expired") {
      this.notice("expired", h);
    }
    entry.epoch = h.epoch;
  };

  function decode64(text) {
    var bytes = global.atob(text);
    var out = new Uint8Array(bytes.length);
    for (var i = 0; i < bytes.length; i++) out[i] = bytes.charCodeAt(i);
    return out;
  }

  // ---- connecting ----

  Fanout.prototype.connect = function () {
    if (this.closed) return;
    this.setState("connecting", this.usingSse ? "sse" : "websocket");
    var self = this;
    this.withToken(function () {
      if (self.closed) return;
      if (self.usingSse || typeof global.WebSocket !== "function") {
        self.usingSse = true;
        self.connectSse();
      } else {
        self.connectWebSocket();
      }
    });
  };

  Fanout.prototype.retry = function (why) {
    if (this.closed || this.timer) return;
    this.baseIndex = (this.baseIndex + 1) % this.bases.length;
    this.base = this.bases[this.baseIndex];
    var delay = Math.min(MAX_BACKOFF_MS, BASE_BACKOFF_MS * Math.pow(2, this.attempt));
    delay = delay / 2 + Math.random() * delay / 2; // jitter: reconnects of many pages spread out
    this.attempt++;
    this.setState("reconnecting", { inMs: Math.round(delay), why: why });
    var self = this;
    this.timer = setTimeout(function () {
      self.timer = null;
      self.connect();
    }, delay);
  };

  Fanout.prototype.opened = function (transport) {
    this.attempt = 0;
    this.setState("open", transport);
  };

  Fanout.prototype.connectWebSocket = function () {
    var self = this;
    var url = this.base.replace(/^http/, "ws") + "/ws";
    var ws;
    try {
      ws = new global.WebSocket(url, ["fanout.json"]);
    } catch (e) {
      this.wsFailures = WS_FAILURES_BEFORE_FALLBACK;
      return this.fallBack(String(e));
    }
    this.ws = ws;
    var everOpened = false;
    ws.onopen = function () {
      everOpened = true;
      self.wsWorked = true;
      self.wsFailures = 0;
      self.opened("websocket");
      // First, so that the commands after it have its permissions.
      if (self.token) ws.send(JSON.stringify({ op: "auth", token: self.token }));
      for (var channel in self.channels) self.sendSubscribe(channel);
      for (var i = 0; i < self.outbox.length; i++) self.outbox[i].sent = false;
      self.flushOutbox();
    };
    ws.onmessage = function (event) {
      var m;
      try {
        m = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      if (m.op === "msg") {
        self.deliver(m.channel, m.offset, m.data !== undefined ? m.data : decode64(m.data64));
      } else if (m.op === "ack") {
        self.acknowledged(m.channel);
      } else if (m.op === "hist") {
        self.history(m);
      } else if (m.op === "join" || m.op === "leave" || m.op === "unsubscribed") {
        self.presenceEvent(m);
      } else if (m.op === "err") {
        self.notice("error", m);
        // 503: this node cannot publish now (cut off from its cluster's broker, or full): the
        // outbox goes to the next node.
        if (m.code === 503 && self.bases.length > 1) ws.close();
      }
    };
    ws.onclose = function (event) {
      if (self.ws !== ws) return;
      self.ws = null;
      var blocked = !everOpened && !self.wsWorked && ++self.wsFailures >= WS_FAILURES_BEFORE_FALLBACK;
      if (blocked && self.transport === "auto") {
        return self.fallBack("WebSocket did not open");
      }
      self.retry("websocket closed (" + event.code + ")");
    };
  };

  Fanout.prototype.fallBack = function (why) {
    this.usingSse = true;
    this.notice("fallback", why);
    this.retry(why);
  };

  Fanout.prototype.sendSubscribe = function (channel) {
    if (!this.ws || this.ws.readyState !== 1) return;
    var entry = this.channels[channel];
    var sub = { op: "sub", channel: channel };
    if (entry.offset !== null) {
      sub.after = entry.offset;
      if (entry.epoch) sub.epoch = entry.epoch;
    } else {
      // "From now", but learn the latest offset and epoch (a `hist` answer), so that a
      // reconnect before the first message still resumes without a gap.
      sub.after = "now";
    }
    this.ws.send(JSON.stringify(sub));
  };

  // ---- Server-Sent Events fallback ----

  Fanout.prototype.sseUrl = function () {
    var parts = [];
    for (var channel in this.channels) {
      var entry = this.channels[channel];
      parts.push("channel=" + encodeURIComponent(channel));
      parts.push("after=" + (entry.offset !== null ? entry.offset : "now"));
      if (entry.epoch) parts.push("epoch=" + entry.epoch);
    }
    if (this.token) parts.push("token=" + encodeURIComponent(this.token));
    return this.base + "/sse?" + parts.join("&");
  };

  // The channel set changed: a new stream carries every channel, each from its offset.
  Fanout.prototype.reconnectSse = function () {
    if (this.sse) this.sse.close();
    this.sse = null;
    this.connectSse();
  };

  Fanout.prototype.connectSse = function () {
    var self = this;
    if (Object.keys(this.channels).length === 0) {
      // Nothing to receive yet; publishing works without a stream.
      this.opened("sse");
      this.flushOutbox();
      return;
    }
    var source = new global.EventSource(this.sseUrl());
    this.sse = source;
    var listen = function (channel) {
      source.addEventListener(channel, function (event) {
        self.deliver(channel, parseInt(event.lastEventId, 10), event.data);
      });
      source.addEventListener(channel + " base64", function (event) {
        self.deliver(channel, parseInt(event.lastEventId, 10), decode64(event.data));
      });
    };
    for (var channel in this.channels) listen(channel);
    source.addEventListener("fanout history", function (event) {
      self.history(JSON.parse(event.data));
    });
    ["fanout join", "fanout leave", "fanout unsubscribed"].forEach(function (name) {
      source.addEventListener(name, function (event) {
        self.presenceEvent(JSON.parse(event.data));
      });
    });
    source.addEventListener("fanout error", function (event) {
      self.notice("error", JSON.parse(event.data));
    });
    source.onopen = function () {
      self.opened("sse");
      for (var i = 0; i < self.outbox.length; i++) self.outbox[i].sent = false;
      self.flushOutbox();
    };
    source.onerror = function () {
      // The browser would reconnect by itself with the last event id, which names one offset;
      // with several channels we reconnect ourselves, with every channel's offset in the URL.
      if (self.sse !== source) return;
      source.close();
      self.sse = null;
      self.retry("event stream closed");
    };
  };

  // ---- publishing ----

  Fanout.prototype.acknowledged = function (channel) {
    // Acknowledgements arrive in publish order on one connection. Matching by channel too means
    // a publish the server refused (an err, no ack) never makes a later one count as delivered:
    // the refused one stays queued, nothing is dropped unacknowledged.
    for (var i = 0; i < this.outbox.length; i++) {
      if (this.outbox[i].sent && this.outbox[i].channel === channel) {
        this.outbox.splice(i, 1);
        return;
      }
    }
  };

  Fanout.prototype.flushOutbox = function () {
    if (this.ws && this.ws.readyState === 1) {
      for (var i = 0; i < this.outbox.length; i++) {
        var item = this.outbox[i];
        if (item.sent) continue;
        item.sent = true;
        this.ws.send(JSON.stringify({ op: "pub", channel: item.channel, data: item.data, ack: true }));
      }
    } else if (this.usingSse && this.state === "open") {
      this.flushOverHttp();
    }
  };

  // One POST at a time, in order; a failure leaves the rest queued for the next reconnect.
  Fanout.prototype.flushOverHttp = function () {
    var self = this;
    if (this.flushing || this.outbox.length === 0 || typeof global.fetch !== "function") return;
    var item = this.outbox[0];
    this.flushing = true;
    global
      .fetch(this.base + "/publish?channel=" + encodeURIComponent(item.channel), {
        method: "POST",
        body: item.data,
        headers: this.token ? { Authorization: "Bearer " + this.token } : {},
      })
      .then(function (response) {
        self.flushing = false;
        if (!response.ok) throw new Error("publish failed: HTTP " + response.status);
        self.outbox.shift();
        self.flushOverHttp();
      })
      .catch(function (e) {
        self.flushing = false;
        self.notice("error", { reason: String(e) });
        if (self.sse) {
          self.sse.close();
          self.sse = null;
        }
        self.retry("publish failed");
      });
  };

  global.Fanout = Fanout;
})(typeof window !== "undefined" ? window : globalThis);
