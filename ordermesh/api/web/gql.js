// A small GraphQL client: queries over HTTP POST, subscriptions over one WebSocket
// speaking graphql-transport-ws (https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md).
// The socket reconnects by itself with exponential backoff and re-subscribes everything.

const PROTOCOL = "graphql-transport-ws";
const ACK_TIMEOUT_MS = 5000;
const PING_EVERY_MS = 15000;
const PONG_TIMEOUT_MS = 10000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15000;
const RESUBSCRIBE_AFTER_MS = 3000;

export class GraphQLError extends Error {
  constructor(errors) {
    super(errors.map((e) => e.message).join("; ") || "GraphQL error");
    this.errors = errors;
  }
}

/** POST a query to `url` (default /graphql); resolves to `data`, rejects on any error. */
export async function query(document, variables = {}, url = "/graphql") {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ query: document, variables }),
  });
  let body;
  try {
    body = await response.json();
  } catch {
    throw new Error(`HTTP ${response.status}`);
  }
  if (body.errors && body.errors.length) throw new GraphQLError(body.errors);
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return body.data;
}

export class SubscriptionClient {
  /** @param {string} url ws:// or wss:// URL; @param {(state: string, detail?: string) => void} onState */
  constructor(url, onState = () => {}) {
    this.url = url;
    this.onState = onState;
    this.subs = new Map(); // id -> {document, variables, next, error, active}
    this.nextId = 1;
    this.attempt = 0;
    this.ws = null;
    this.acked = false;
    this.timers = {};
    this.closedByUs = false;
  }

  start() {
    this.closedByUs = false;
    this.connect();
    // Come back at once when the network or the tab does.
    window.addEventListener("online", () => this.reconnectNow());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && !this.ws) this.reconnectNow();
    });
  }

  /** Subscribe; returns a function that ends the subscription. Survives reconnects. */
  subscribe(document, variables, { next, error = () => {} }) {
    const id = String(this.nextId++);
    const sub = { document, variables, next, error, active: false };
    this.subs.set(id, sub);
    if (this.acked) this.send({ id, type: "subscribe", payload: { query: document, variables } });
    sub.active = this.acked;
    return () => {
      if (!this.subs.delete(id)) return;
      if (this.acked && sub.active) this.send({ id, type: "complete" });
    };
  }

  connect() {
    this.clear("reconnect");
    this.acked = false;
    this.onState(this.attempt === 0 ? "connecting" : "reconnecting");
    let ws;
    try {
      ws = new WebSocket(this.url, PROTOCOL);
    } catch (exc) {
      this.scheduleReconnect(String(exc));
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.send({ type: "connection_init", payload: {} });
      this.timers.ack = setTimeout(() => ws.close(4408, "connection_ack timeout"), ACK_TIMEOUT_MS);
    };
    ws.onmessage = (event) => this.receive(event.data);
    ws.onerror = () => {}; // onclose follows and decides what to do
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.acked = false;
      for (const sub of this.subs.values()) sub.active = false;
      this.clear("ack", "ping", "pong");
      if (this.closedByUs) return;
      this.scheduleReconnect(event.reason || `closed (${event.code})`);
    };
  }

  receive(raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      return;
    }
    const sub = msg.id !== undefined ? this.subs.get(msg.id) : undefined;
    switch (msg.type) {
      case "connection_ack":
        clearTimeout(this.timers.ack);
        this.acked = true;
        this.attempt = 0;
        this.onState("open");
        for (const [id, s] of this.subs) {
          this.send({ id, type: "subscribe", payload: { query: s.document, variables: s.variables } });
          s.active = true;
        }
        this.timers.ping = setInterval(() => this.ping(), PING_EVERY_MS);
        break;
      case "ping":
        this.send({ type: "pong" });
        break;
      case "pong":
        clearTimeout(this.timers.pong);
        break;
      case "next":
        if (sub) sub.next(msg.payload);
        break;
      case "error":
        // The server ended this operation: tell the caller, try it again a little later.
        if (sub) {
          sub.active = false;
          sub.error(new GraphQLError(msg.payload || []));
          this.resubscribeLater(msg.id);
        }
        break;
      case "complete":
        if (sub) {
          sub.active = false;
          this.resubscribeLater(msg.id); // our streams are endless: a completion is a server hiccup
        }
        break;
      default:
        break;
    }
  }

  resubscribeLater(id) {
    setTimeout(() => {
      const s = this.subs.get(id);
      if (s && this.acked && !s.active) {
        this.send({ id, type: "subscribe", payload: { query: s.document, variables: s.variables } });
        s.active = true;
      }
    }, RESUBSCRIBE_AFTER_MS);
  }

  ping() {
    if (!this.acked) return;
    this.send({ type: "ping" });
    clearTimeout(this.timers.pong);
    this.timers.pong = setTimeout(() => this.ws && this.ws.close(4000, "pong timeout"), PONG_TIMEOUT_MS);
  }

  scheduleReconnect(detail) {
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2); // jittered
    this.attempt += 1;
    this.onState("closed", `${detail}; retrying in ${(delay / 1000).toFixed(1)} s`);
    this.timers.reconnect = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.ws || this.closedByUs) return;
    this.attempt = 0;
    this.connect();
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  clear(...names) {
    for (const name of names) {
      clearTimeout(this.timers[name]);
      clearInterval(this.timers[name]);
      delete this.timers[name];
    }
  }

  stop() {
    this.closedByUs = true;
    this.clear("reconnect", "ack", "ping", "pong");
    if (this.ws) this.ws.close(1000, "bye");
    this.ws = null;
  }
}
