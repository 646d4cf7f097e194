// ordermesh live monitor: MetricsDashboard, EventStream, FlowVisualization, Sagas, Runtime.
// Plain ES modules, no build step. Live data comes over one graphql-transport-ws socket,
// the rest from /graphql over HTTP, polled every 2 s while the socket is up.

import { query, SubscriptionClient } from "./gql.js";
import { Sparkline } from "./charts.js";
import { FlowGraph, VERTICAL_BELOW } from "./flow.js";
import {
  $, h, fmtAgo, fmtBytes, fmtDateTime, fmtDuration, fmtError, fmtInt, fmtMs, fmtPercent, fmtRate,
  fmtTime, prettyJson, throttle,
} from "./util.js";

const VIEWS = ["dashboard", "events", "flow", "sagas", "runtime"];
const POLL_MS = 2000;
const MAX_ROWS = 500; // rows in the EventStream table
const MAX_KEPT = 1000; // messages kept in memory (the server's buffer holds as many)
const SPARK_POINTS = 120;
const JAEGER_URL = (document.querySelector('meta[name="ordermesh-jaeger-url"]')?.content || "")
  .trim()
  .replace(/\/+$/, "");

const MESSAGE_FIELDS = `id topic subject type source timestamp traceId correlationId aggregateId
  payload truncated headers latencyMs ok`;
const STATS_FIELDS = `timestamp commandsExecuted queriesExecuted eventsStored eventsPerSecond
  commandErrors errorRatio commandLatencyMeanMs commandLatencyP95Ms sagasActive
  sagasByStatus { status count }`;
const TOPOLOGY_QUERY = `query Topology { systemTopology {
  instances { instance service services host pid startedAt lastSeen healthy
    runtime { residentMemoryBytes cpuSeconds openFds tasks eventLoopLagSeconds gcCollections
      topCoroutines { name count } } }
  nodes { id label kind healthy }
  edges { source target topic count ratePerMinute } } }`;
const SAGA_FIELDS = `sagaId status currentStep error steps { step status attempts error } compensations`;
// Topics whose messages are requests: the server fills in their reply's latency and ok.
const REQUEST_TOPICS = ["commands", "queries", "partners"];

const state = {
  view: "dashboard",
  connected: false,
};

// -- connection -------------------------------------------------------------------------------

const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/graphql`;
const client = new SubscriptionClient(wsUrl, setConnection);

function setConnection(status, detail = "") {
  const el = document.querySelector('[data-testid="connection-status"]');
  const text = {
    connecting: "connecting…",
    reconnecting: "reconnecting…",
    open: "live",
    closed: "offline",
  }[status];
  el.dataset.state = status;
  el.querySelector(".conn-text").textContent = text;
  el.title = detail || (status === "open" ? "Connected to /graphql" : text);
  el.setAttribute("aria-label", `Connection: ${text}${detail ? ` (${detail})` : ""}`);
  const was = state.connected;
  state.connected = status === "open";
  if (state.connected && !was) {
    // (Re)connected: catch up on what was missed and refresh whatever is on screen.
    backfillMessages();
    refreshVisible();
  }
}

// -- small notices instead of console noise -------------------------------------------------

let toastTimer = null;
const lastNotice = new Map();
function notice(where, error) {
  const text = `${where}: ${error && error.message ? error.message : error}`;
  const now = Date.now();
  if (lastNotice.get(text) > now - 30000) return; // once per half minute is plenty
  lastNotice.set(text, now);
  const toast = $("toast");
  toast.textContent = text;
  toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (toast.hidden = true), 6000);
}

/** Run a poll unless the same one is still in flight or the server is unreachable. */
const inFlight = new Set();
async function poll(name, fn) {
  if (inFlight.has(name) || !state.connected) return;
  inFlight.add(name);
  try {
    await fn();
  } catch (exc) {
    notice(name, exc);
  } finally {
    inFlight.delete(name);
  }
}

// -- navigation -------------------------------------------------------------------------------

const tabs = [...document.querySelectorAll('[role="tab"]')];

function select(view, { focus = false } = {}) {
  if (!VIEWS.includes(view)) view = "dashboard";
  state.view = view;
  for (const tab of tabs) {
    const on = tab.dataset.view === view;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    if (on && focus) tab.focus();
  }
  for (const v of VIEWS) $(`view-${v}`).hidden = v !== view;
  if (view === "flow") flow.start();
  else flow.stop();
  if (location.hash !== `#${view}`) history.replaceState(null, "", `#${view}`);
  refreshVisible();
}

for (const tab of tabs) tab.addEventListener("click", () => select(tab.dataset.view));
document.querySelector('[role="tablist"]').addEventListener("keydown", (event) => {
  const i = VIEWS.indexOf(state.view);
  const next = {
    ArrowRight: (i + 1) % VIEWS.length,
    ArrowLeft: (i - 1 + VIEWS.length) % VIEWS.length,
    Home: 0,
    End: VIEWS.length - 1,
  }[event.key];
  if (next === undefined) return;
  event.preventDefault();
  select(VIEWS[next], { focus: true });
});
window.addEventListener("hashchange", () => select(location.hash.slice(1)));

// -- MetricsDashboard -------------------------------------------------------------------------

const STATS = [
  {
    id: "commands", label: "Commands executed", value: (d) => d.commandsExecuted, fmt: fmtInt,
    series: (d, prev, dt) => rate(d.commandsExecuted, prev?.commandsExecuted, dt),
    sub: (d, r) => `${fmtRate(r)} per second`,
  },
  {
    id: "queries", label: "Queries executed", value: (d) => d.queriesExecuted, fmt: fmtInt,
    series: (d, prev, dt) => rate(d.queriesExecuted, prev?.queriesExecuted, dt),
    sub: (d, r) => `${fmtRate(r)} per second`,
  },
  {
    id: "events-rate", label: "Events per second", value: (d) => d.eventsPerSecond, fmt: fmtRate,
    series: (d) => d.eventsPerSecond, sub: (d) => `${fmtInt(d.eventsStored)} stored`,
  },
  {
    id: "sagas-active", label: "Active sagas", value: (d) => d.sagasActive, fmt: fmtInt,
    series: (d) => d.sagasActive, sub: (d) => sagaSummary(d.sagasByStatus),
  },
  {
    id: "error-ratio", label: "Command error ratio", value: (d) => d.errorRatio, fmt: fmtPercent,
    series: (d) => d.errorRatio, sub: (d) => `${fmtInt(d.commandErrors)} refused or failed`, tone: "error",
  },
  {
    id: "latency-mean", label: "Command latency, mean", value: (d) => d.commandLatencyMeanMs, fmt: fmtMs,
    series: (d) => d.commandLatencyMeanMs, sub: () => "since start",
  },
  {
    id: "latency-p95", label: "Command latency, p95", value: (d) => d.commandLatencyP95Ms, fmt: fmtMs,
    series: (d) => d.commandLatencyP95Ms, sub: () => "since start",
  },
  {
    id: "events-stored", label: "Events stored", value: (d) => d.eventsStored, fmt: fmtInt,
    series: (d, prev, dt) => rate(d.eventsStored, prev?.eventsStored, dt),
    sub: (d, r) => `${fmtRate(r)} per second`,
  },
];

function rate(now, before, dt) {
  if (before === undefined || before === null || !(dt > 0) || now < before) return null;
  return (now - before) / dt;
}

function sagaSummary(byStatus) {
  const failed = byStatus.find((s) => s.status === "failed")?.count || 0;
  const done = byStatus.find((s) => s.status === "completed")?.count || 0;
  return `${fmtInt(done)} completed · ${fmtInt(failed)} failed`;
}

const statCards = new Map();
for (const stat of STATS) {
  const spark = new Sparkline({ capacity: SPARK_POINTS, label: `${stat.label}, last ${SPARK_POINTS} readings` });
  const value = h("div", { class: "stat-value", dataset: { testid: `stat-${stat.id}` } }, "–");
  const sub = h("div", { class: "stat-sub" }, "\u00a0");
  const card = h(
    "section",
    { class: `stat${stat.tone ? ` tone-${stat.tone}` : ""}`, "aria-label": stat.label, dataset: { testid: `stat-card-${stat.id}` } },
    h("h2", { class: "stat-label" }, stat.label),
    value,
    sub,
    h("div", { class: "stat-spark" }, spark.el),
  );
  $("stat-grid").append(card);
  statCards.set(stat.id, { value, sub, spark, card });
}

let previousStats = null;
function onDashboard(d) {
  const dt = previousStats ? (new Date(d.timestamp) - new Date(previousStats.timestamp)) / 1000 : 0;
  for (const stat of STATS) {
    const card = statCards.get(stat.id);
    const v = stat.value(d);
    const point = stat.series(d, previousStats, dt);
    card.value.textContent = stat.fmt(v);
    card.value.dataset.value = v === null || v === undefined ? "" : String(v);
    card.sub.textContent = stat.sub(d, point);
    card.spark.push(point);
    if (stat.tone === "error") card.card.classList.toggle("alarm", d.errorRatio > 0.05);
  }
  previousStats = d;
  renderSagaBars(d.sagasByStatus);
}

function renderSagaBars(byStatus) {
  const list = $("sagas-by-status");
  const max = Math.max(1, ...byStatus.map((s) => s.count));
  const order = ["running", "compensating", "completed", "failed"];
  const sorted = [...byStatus].sort((a, b) => rank(order, a.status) - rank(order, b.status));
  list.replaceChildren(
    ...(sorted.length
      ? sorted.map((s) =>
          h(
            "li",
            { class: `bar status-${s.status}`, dataset: { testid: "saga-status", status: s.status, count: String(s.count) } },
            h("span", { class: "bar-label" }, s.status),
            h("span", { class: "bar-track", "aria-hidden": "true" },
              h("span", { class: "bar-fill", style: `width:${((100 * s.count) / max).toFixed(1)}%` })),
            h("span", { class: "bar-value" }, fmtInt(s.count)),
          ),
        )
      : [h("li", { class: "empty" }, "no sagas yet")]),
  );
}

function rank(order, value) {
  const i = order.indexOf(value);
  return i === -1 ? order.length : i;
}

async function refreshTopicStats() {
  const data = await query(`query { pubsubStats { topic count ratePerMinute lastSeen errors } }`);
  const rows = data.pubsubStats
    .slice()
    .sort((a, b) => b.count - a.count)
    .map((t) =>
      h(
        "tr",
        { dataset: { testid: "topic-row", topic: t.topic } },
        h("td", {}, topicBadge(t.topic)),
        h("td", { class: "num" }, fmtInt(t.count)),
        h("td", { class: "num" }, fmtRate(t.ratePerMinute)),
        h("td", { class: `num${t.errors ? " bad" : ""}` }, fmtInt(t.errors)),
        h("td", { class: "muted" }, fmtAgo(t.lastSeen)),
      ),
    );
  $("topic-stats-body").replaceChildren(
    ...(rows.length ? rows : [h("tr", { class: "empty" }, h("td", { colspan: 5 }, "no traffic yet"))]),
  );
}

function topicBadge(topic) {
  return h("span", { class: `badge topic topic-${topic}` }, topic);
}

// -- EventStream ------------------------------------------------------------------------------

const stream = {
  all: [], // oldest first
  byId: new Map(), // id -> {message, row}
  ready: false,
  early: [], // live messages that arrived before the backlog
  paused: false,
  missed: 0,
  topic: "",
  type: "",
  selected: null,
};

function matches(m) {
  if (stream.topic && m.topic !== stream.topic) return false;
  if (stream.type) {
    const needle = stream.type.toLowerCase().replace(/\*$/, "");
    return (m.type || "").toLowerCase().includes(needle) || m.subject.toLowerCase().includes(needle);
  }
  return true;
}

function onMessage(m) {
  if (!stream.ready) {
    stream.early.push(m);
    return;
  }
  if (stream.byId.has(m.id)) {
    update(m);
    return;
  }
  keep(m);
  if (stream.paused) {
    stream.missed += 1;
    eventsInfo();
    return;
  }
  if (matches(m)) {
    incoming.push(m);
    if (incoming.length > MAX_ROWS) incoming.shift();
    if (!flushTimer) flushTimer = setTimeout(flushIncoming, FLUSH_MS);
  }
}

// New rows are added in batches: a burst of messages costs one DOM update per batch.
const FLUSH_MS = 50;
const incoming = [];
let flushTimer = null;

function flushIncoming() {
  flushTimer = null;
  if (!incoming.length) return;
  const body = $("events-body");
  const rows = document.createDocumentFragment();
  for (let i = incoming.length - 1; i >= 0; i -= 1) {
    if (stream.byId.has(incoming[i].id)) rows.append(rowFor(incoming[i])); // newest first
  }
  incoming.length = 0;
  body.prepend(rows);
  while (body.rows.length > MAX_ROWS) dropRow(body.rows[body.rows.length - 1]);
  eventsInfo();
}

function keep(m) {
  stream.all.push(m);
  stream.byId.set(m.id, { message: m, row: null });
  while (stream.all.length > MAX_KEPT) {
    const old = stream.all.shift();
    const entry = stream.byId.get(old.id);
    if (entry?.row) entry.row.remove();
    stream.byId.delete(old.id);
  }
}

function dropRow(row) {
  const entry = stream.byId.get(row.dataset.id);
  if (entry) entry.row = null;
  row.remove();
}

/** The same message again (its reply arrived): update in place. */
function update(m) {
  const entry = stream.byId.get(m.id);
  Object.assign(entry.message, m);
  if (entry.row) entry.row.replaceWith(rowFor(entry.message));
  if (stream.selected === m.id) showDetails(entry.message);
}

function outcomeCell(m) {
  if (m.latencyMs !== null && m.latencyMs !== undefined) {
    return h("td", { class: `num outcome ${m.ok === false ? "bad" : "good"}` },
      `${fmtMs(m.latencyMs)} `, h("span", { "aria-label": m.ok === false ? "failed" : "ok" }, m.ok === false ? "✕" : "✓"));
  }
  if (m.ok === false) return h("td", { class: "num outcome bad" }, "failed");
  return h("td", { class: "num outcome muted" }, "");
}

function rowFor(m) {
  const open = () => select_message(m.id);
  const row = h(
    "tr",
    {
      class: `event-row${stream.selected === m.id ? " selected" : ""}${m.ok === false ? " failed" : ""}`,
      dataset: { testid: "event-row", id: m.id, topic: m.topic, type: m.type || "" },
      "aria-selected": String(stream.selected === m.id),
      onclick: open,
    },
    h("td", { class: "time" }, fmtTime(m.timestamp)),
    h("td", { class: "topic-cell" }, topicBadge(m.topic)),
    h(
      "td",
      { class: "type" },
      h("button", { type: "button", class: "linklike", "aria-label": `Details of ${m.type || m.subject}` }, ...breakable(m.type || "(untyped)")),
      h("span", { class: "subject" }, m.subject),
    ),
    h("td", { class: "source hide-narrow" }, m.source || "–"),
    outcomeCell(m),
  );
  stream.byId.get(m.id).row = row;
  return row;
}

/** Text with line-break opportunities after dots and underscores (long message types). */
function breakable(text) {
  const parts = [];
  for (const piece of text.split(/(?<=[._])/)) parts.push(piece, h("wbr"));
  parts.pop();
  return parts;
}

function renderEvents() {
  incoming.length = 0;
  const body = $("events-body");
  for (const entry of stream.byId.values()) entry.row = null;
  const shown = [];
  for (let i = stream.all.length - 1; i >= 0 && shown.length < MAX_ROWS; i -= 1) {
    if (matches(stream.all[i])) shown.push(rowFor(stream.all[i]));
  }
  body.replaceChildren(...shown);
  stream.missed = 0;
  eventsInfo();
}

function eventsInfo() {
  const body = $("events-body");
  $("events-empty").hidden = body.rows.length > 0;
  $("events-empty").textContent = stream.all.length ? "No message matches the filter." : "Waiting for messages…";
  const parts = [`${fmtInt(body.rows.length)} shown`];
  if (stream.paused) parts.push(`paused · ${fmtInt(stream.missed)} new`);
  $("events-info").textContent = parts.join(" · ");
}

async function backfillMessages() {
  try {
    const data = await query(`query Backlog { pubsubMessages(limit: ${MAX_ROWS}) { ${MESSAGE_FIELDS} } }`);
    const fresh = data.pubsubMessages.filter((m) => !stream.byId.has(m.id));
    const early = stream.early.filter((m) => !stream.byId.has(m.id));
    stream.early = [];
    const merged = [...stream.all, ...fresh];
    merged.sort((a, b) => new Date(a.timestamp) - new Date(b.timestamp));
    stream.all = [];
    stream.byId.clear();
    for (const m of merged) keep(m);
    for (const m of early) if (!stream.byId.has(m.id)) keep(m);
  } catch (exc) {
    notice("pubsubMessages", exc);
    for (const m of stream.early) if (!stream.byId.has(m.id)) keep(m);
    stream.early = [];
  }
  stream.ready = true;
  if (!stream.paused) renderEvents();
}

/** Requests still waiting for their reply, as far as this page knows. */
function awaitingReply() {
  let n = 0;
  for (let i = stream.all.length - 1; i >= 0 && i >= stream.all.length - 300; i -= 1) {
    const m = stream.all[i];
    if (REQUEST_TOPICS.includes(m.topic) && m.latencyMs == null && m.ok == null) n += 1;
  }
  return n;
}

/** A request is streamed when it is sent; its reply (latency, ok) lands in the server's
 * buffer later. Fetch just those fields for the requests still pending here. */
async function refreshReplies() {
  if (!awaitingReply()) return;
  const fields = REQUEST_TOPICS.map((t) => `${t}: pubsubMessages(topic: "${t}", limit: 300) { id latencyMs ok }`);
  const data = await query(`query Replies { ${fields.join(" ")} }`);
  for (const r of REQUEST_TOPICS.flatMap((t) => data[t])) {
    const entry = stream.byId.get(r.id);
    if (!entry || (r.latencyMs == null && r.ok == null)) continue;
    const m = entry.message;
    if (m.latencyMs === r.latencyMs && m.ok === r.ok) continue;
    update({ ...m, latencyMs: r.latencyMs, ok: r.ok });
  }
}

function select_message(id) {
  stream.selected = id;
  for (const row of $("events-body").querySelectorAll("tr.selected")) {
    row.classList.remove("selected");
    row.setAttribute("aria-selected", "false");
  }
  const entry = stream.byId.get(id);
  if (!entry) return;
  if (entry.row) {
    entry.row.classList.add("selected");
    entry.row.setAttribute("aria-selected", "true");
  }
  showDetails(entry.message);
}

function showDetails(m) {
  const panel = $("details");
  const trace = m.traceId
    ? JAEGER_URL
      ? h("a", { href: `${JAEGER_URL}/trace/${encodeURIComponent(m.traceId)}`, target: "_blank", rel: "noopener noreferrer", dataset: { testid: "jaeger-link" } }, m.traceId)
      : h("code", {}, m.traceId)
    : "–";
  const outcome =
    m.latencyMs !== null && m.latencyMs !== undefined
      ? `${m.ok === false ? "error" : "ok"} in ${fmtMs(m.latencyMs)}`
      : m.ok === false
        ? "failed"
        : REQUEST_TOPICS.includes(m.topic)
          ? "no reply seen yet"
          : "–";
  const headers = Object.entries(m.headers || {});
  $("details-title").textContent = m.type || m.subject;
  $("details-body").replaceChildren(
    h(
      "dl",
      { class: "kv" },
      kv("Topic", topicBadge(m.topic)),
      kv("Subject", h("code", {}, m.subject)),
      kv("Source", m.source || "–"),
      kv("Timestamp", fmtDateTime(m.timestamp)),
      kv("Trace", trace),
      kv("Correlation", m.correlationId ? h("code", {}, m.correlationId) : "–"),
      kv("Aggregate", m.aggregateId ? h("code", {}, m.aggregateId) : "–"),
      kv("Reply", outcome),
      kv("ID", h("code", {}, m.id)),
    ),
    h("h3", {}, "Payload", m.truncated ? h("span", { class: "badge warn" }, "truncated") : null),
    h("pre", { class: "payload", dataset: { testid: "event-payload" }, tabindex: "0" }, prettyJson(m.payload)),
    h("h3", {}, "Headers"),
    headers.length
      ? h("div", { class: "table-wrap" },
          h("table", { class: "data compact" },
            h("tbody", {}, ...headers.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, h("code", {}, String(v))))))))
      : h("p", { class: "muted" }, "none"),
  );
  const opening = panel.hidden;
  panel.hidden = false;
  if (opening) panel.focus({ preventScroll: true });
}

function kv(key, value) {
  return [h("dt", {}, key), h("dd", {}, value)];
}

$("details-close").addEventListener("click", () => {
  $("details").hidden = true;
  stream.selected = null;
  for (const row of $("events-body").querySelectorAll("tr.selected")) {
    row.classList.remove("selected");
    row.setAttribute("aria-selected", "false");
  }
});
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  if (state.view === "events" && !$("details").hidden) $("details-close").click();
  if (state.view === "sagas" && !$("saga-details").hidden) $("saga-close").click();
});
$("filter-topic").addEventListener("change", (event) => {
  stream.topic = event.target.value;
  renderEvents();
});
$("filter-type").addEventListener("input", (event) => {
  stream.type = event.target.value.trim();
  renderEvents();
});
$("pause").addEventListener("click", (event) => {
  stream.paused = !stream.paused;
  event.currentTarget.setAttribute("aria-pressed", String(stream.paused));
  event.currentTarget.textContent = stream.paused ? "Resume" : "Pause";
  if (!stream.paused) renderEvents();
  else eventsInfo();
});
$("clear").addEventListener("click", () => {
  stream.all = [];
  stream.byId.clear();
  $("details").hidden = true;
  stream.selected = null;
  renderEvents();
});

// -- FlowVisualization and Runtime (both from systemTopology) ----------------------------------

const flow = new FlowGraph($("flow-svg"));
new ResizeObserver(([entry]) => {
  const width = entry.contentRect.width;
  if (width > 0) flow.setVertical(width < VERTICAL_BELOW); // 0 while the view is hidden
}).observe($("flow-wrap"));
const cpuSeen = new Map(); // instance -> {cpu, at}
const memory = new Map(); // instance -> Sparkline

async function refreshTopology() {
  const { systemTopology: t } = await query(TOPOLOGY_QUERY);
  flow.update(t.nodes, t.edges);
  const wrap = $("flow-wrap");
  wrap.dataset.ready = "true";
  wrap.dataset.edges = String(t.edges.length);
  renderEdgeTable(t.edges, t.nodes);
  renderInstances(t.instances);
}

function renderEdgeTable(edges, nodes) {
  const label = new Map(nodes.map((n) => [n.id, n.label]));
  const rows = edges
    .slice()
    .sort((a, b) => b.ratePerMinute - a.ratePerMinute || b.count - a.count)
    .map((e) =>
      h(
        "tr",
        { dataset: { testid: "flow-edge-row", source: e.source, target: e.target, count: String(e.count) } },
        h("td", {}, label.get(e.source) || e.source),
        h("td", {}, label.get(e.target) || e.target),
        h("td", { class: "hide-narrow" }, topicBadge(e.topic)),
        h("td", { class: "num" }, fmtInt(e.count)),
        h("td", { class: "num" }, fmtRate(e.ratePerMinute)),
      ),
    );
  $("edges-body").replaceChildren(
    ...(rows.length ? rows : [h("tr", { class: "empty" }, h("td", { colspan: 5 }, "no traffic yet"))]),
  );
}

function renderInstances(instances) {
  const container = $("instances");
  if (!instances.length) {
    container.replaceChildren(h("p", { class: "empty-note" }, "No service has sent a heartbeat yet."));
    return;
  }
  const now = Date.now();
  // Cards are rebuilt each time; keep whichever "top coroutines" the reader opened.
  const open = new Set(
    [...container.querySelectorAll("details.coroutines[open]")].map((d) => d.closest("[data-instance]").dataset.instance),
  );
  const sorted = instances.slice().sort((a, b) => a.service.localeCompare(b.service) || a.pid - b.pid);
  container.replaceChildren(...sorted.map((i) => instanceCard(i, now)));
  for (const card of container.querySelectorAll("[data-instance]")) {
    const details = card.querySelector("details.coroutines");
    if (details && open.has(card.dataset.instance)) details.open = true;
  }
  for (const id of [...memory.keys()]) if (!instances.some((i) => i.instance === id)) memory.delete(id);
}

function instanceCard(i, now) {
  const r = i.runtime;
  const at = new Date(i.lastSeen).getTime();
  const prev = cpuSeen.get(i.instance);
  let cpuRate = prev?.rate ?? null;
  if (prev && at > prev.at) cpuRate = (r.cpuSeconds - prev.cpu) / ((at - prev.at) / 1000);
  if (!prev || at > prev.at) cpuSeen.set(i.instance, { cpu: r.cpuSeconds, at, rate: cpuRate });
  let spark = memory.get(i.instance);
  if (!spark) {
    spark = new Sparkline({ capacity: SPARK_POINTS, label: "Resident memory", minZero: false });
    memory.set(i.instance, spark);
  }
  if (!prev || at > prev.at) spark.push(r.residentMemoryBytes);
  const uptime = (now - new Date(i.startedAt).getTime()) / 1000;
  const lagMs = r.eventLoopLagSeconds * 1000;
  return h(
    "article",
    { class: `panel instance${i.healthy ? "" : " down"}`, dataset: { testid: "runtime-instance", instance: i.instance, service: i.service, healthy: String(i.healthy) } },
    h(
      "header",
      { class: "instance-head" },
      h("h2", {}, i.service),
      h("span", { class: `badge ${i.healthy ? "ok" : "bad"}` }, i.healthy ? "healthy" : "not healthy"),
    ),
    h("p", { class: "muted instance-meta" }, `${i.host} · pid ${i.pid} · up ${fmtDuration(Math.max(0, uptime))} · seen ${fmtAgo(i.lastSeen, now)}`),
    h("div", { class: "chips" }, ...i.services.map((name) => h("span", { class: "chip" }, name))),
    h(
      "dl",
      { class: "metrics" },
      metric("Memory", fmtBytes(r.residentMemoryBytes), spark.el),
      metric("CPU", `${r.cpuSeconds.toFixed(1)} s`, cpuRate === null ? "" : `${(cpuRate * 100).toFixed(1)} % of a core`),
      metric("Open fds", fmtInt(r.openFds)),
      metric("Tasks", fmtInt(r.tasks)),
      metric("Loop lag", fmtMs(lagMs), null, lagMs > 100 ? "bad" : ""),
      metric("GC gen 0/1/2", r.gcCollections.map(fmtInt).join(" / ")),
    ),
    r.topCoroutines.length
      ? h(
          "details",
          { class: "coroutines" },
          h("summary", {}, `Top coroutines (${r.topCoroutines.length})`),
          h("div", { class: "table-wrap" },
            h("table", { class: "data compact" },
              h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Coroutine"), h("th", { scope: "col", class: "num" }, "Tasks"))),
              h("tbody", {}, ...r.topCoroutines.map((c) => h("tr", {}, h("td", {}, h("code", {}, c.name)), h("td", { class: "num" }, fmtInt(c.count))))))),
        )
      : null,
  );
}

function metric(label, value, extra = null, tone = "") {
  return h("div", { class: `metric${tone ? ` ${tone}` : ""}` }, h("dt", {}, label), h("dd", {}, value), extra ? h("dd", { class: "metric-extra" }, extra) : null);
}

async function refreshProjections() {
  const data = await query(`query { projectionStatus { name position lagSeconds state } }`);
  const rows = data.projectionStatus.map((p) =>
    h(
      "tr",
      { dataset: { testid: "projection-row", name: p.name } },
      h("td", {}, p.name),
      h("td", {}, h("span", { class: `badge state-${p.state}` }, p.state)),
      h("td", { class: "num" }, fmtInt(p.position)),
      h("td", { class: "num" }, p.lagSeconds === null ? "–" : fmtMs(p.lagSeconds * 1000)),
    ),
  );
  $("projections-body").replaceChildren(
    ...(rows.length ? rows : [h("tr", { class: "empty" }, h("td", { colspan: 4 }, "no projection reported yet"))]),
  );
}

// -- Sagas ------------------------------------------------------------------------------------

const sagas = { selected: null };

async function refreshSagas() {
  const data = await query(`query Sagas { sagas(limit: 50) { ${SAGA_FIELDS} } }`);
  const list = data.sagas;
  const active = list.filter((x) => x.status === "running" || x.status === "compensating").length;
  $("sagas-info").textContent = `${fmtInt(list.length)} latest · ${fmtInt(active)} active`;
  const rows = list.map((x) => {
    const attempts = x.steps.reduce((sum, step) => sum + step.attempts, 0);
    const retries = x.steps.reduce((sum, step) => sum + Math.max(0, step.attempts - 1), 0);
    const comps = Array.isArray(x.compensations) ? x.compensations : [];
    const done = comps.filter((c) => c && c.status === "done").length;
    return h(
      "tr",
      {
        class: `saga-row${sagas.selected === x.sagaId ? " selected" : ""}`,
        dataset: { testid: "saga-row", sagaId: x.sagaId, status: x.status },
        "aria-selected": String(sagas.selected === x.sagaId),
        onclick: () => openSaga(x.sagaId),
      },
      h("td", {}, h("button", { type: "button", class: "linklike mono", title: x.sagaId, "aria-label": `Timeline of saga ${x.sagaId}` }, shortId(x.sagaId))),
      h("td", {}, statusBadge(x.status)),
      h("td", {}, x.currentStep || h("span", { class: "muted" }, "–")),
      h("td", { class: "num hide-narrow" }, fmtInt(attempts)),
      h("td", { class: `num${retries ? " warn" : ""}` }, fmtInt(retries)),
      h("td", { class: "num hide-narrow" }, comps.length ? `${done}/${comps.length}` : "–"),
    );
  });
  $("sagas-body").replaceChildren(
    ...(rows.length ? rows : [h("tr", { class: "empty" }, h("td", { colspan: 6 }, "no sagas yet"))]),
  );
  if (sagas.selected) await loadSaga(sagas.selected);
}

function shortId(id) {
  return id.length > 22 ? `${id.slice(0, 10)}…${id.slice(-8)}` : id;
}

function statusBadge(status) {
  return h("span", { class: `badge status-${status}` }, status);
}

function openSaga(id) {
  sagas.selected = id;
  for (const row of $("sagas-body").rows) {
    const on = row.dataset.sagaId === id;
    row.classList.toggle("selected", on);
    row.setAttribute("aria-selected", String(on));
  }
  loadSaga(id).catch((exc) => notice("saga", exc));
}

async function loadSaga(id) {
  const data = await query(`query Saga($id: String!) { saga(id: $id) { ${SAGA_FIELDS} } }`, { id });
  if (sagas.selected !== id) return;
  const x = data.saga;
  const panel = $("saga-details");
  $("saga-title").textContent = `Saga ${shortId(id)}`;
  if (!x) {
    $("saga-body").replaceChildren(h("p", { class: "muted" }, "This saga is not known (yet)."));
    panel.hidden = false;
    return;
  }
  const opening = panel.hidden;
  const comps = Array.isArray(x.compensations) ? x.compensations : [];
  $("saga-body").replaceChildren(
    h("dl", { class: "kv" },
      kv("ID", h("code", {}, x.sagaId)),
      kv("Status", statusBadge(x.status)),
      kv("Current step", x.currentStep || "–"),
      x.error ? kv("Error", h("span", { class: "bad" }, fmtError(x.error))) : null),
    h("h3", {}, "Steps"),
    x.steps.length
      ? h("ol", { class: "timeline", dataset: { testid: "saga-steps" } },
          ...x.steps.map((step) =>
            h("li", { class: `tl-item status-${step.status}`, dataset: { testid: "saga-step", step: step.step, status: step.status } },
              h("span", { class: "tl-marker", "aria-hidden": "true" }),
              h("div", { class: "tl-body" },
                h("div", { class: "tl-title" }, h("strong", {}, step.step), " ", statusBadge(step.status)),
                h("div", { class: "muted" }, `${step.attempts} attempt${step.attempts === 1 ? "" : "s"}${step.attempts > 1 ? ` (${step.attempts - 1} retr${step.attempts === 2 ? "y" : "ies"})` : ""}`),
                step.error ? h("div", { class: "bad" }, fmtError(step.error)) : null))))
      : h("p", { class: "muted" }, "No step started yet."),
    h("h3", {}, "Compensations"),
    comps.length
      ? h("ol", { class: "timeline", dataset: { testid: "saga-compensations" } },
          ...comps.map((c) => {
            const action = typeof c === "object" && c ? c.action || JSON.stringify(c) : String(c);
            const status = typeof c === "object" && c ? c.status || "" : "";
            const tone = status === "done" ? "completed" : status === "pending" ? "running" : "failed";
            return h("li", { class: `tl-item status-${tone}` },
              h("span", { class: "tl-marker", "aria-hidden": "true" }),
              h("div", { class: "tl-body" },
                h("div", { class: "tl-title" }, h("strong", {}, action), " ", status ? h("span", { class: `badge status-${tone}` }, status) : null),
                c && c.finished_at ? h("div", { class: "muted" }, fmtDateTime(c.finished_at)) : null));
          }))
      : h("p", { class: "muted" }, "None."),
  );
  panel.hidden = false;
  if (opening) panel.focus({ preventScroll: true });
}

$("saga-close").addEventListener("click", () => {
  sagas.selected = null;
  $("saga-details").hidden = true;
  for (const row of $("sagas-body").rows) {
    row.classList.remove("selected");
    row.setAttribute("aria-selected", "false");
  }
});

const sagaActivity = throttle(() => {
  if (state.view === "sagas") poll("sagas", refreshSagas);
}, 500);

const replyCatchUp = throttle(() => setTimeout(() => poll("replies", refreshReplies), 250), 1000);

// -- polling ----------------------------------------------------------------------------------

function refreshVisible() {
  poll("systemTopology", refreshTopology);
  if (state.view === "dashboard") poll("pubsubStats", refreshTopicStats);
  if (state.view === "sagas") poll("sagas", refreshSagas);
  if (state.view === "runtime") poll("projectionStatus", refreshProjections);
  if (state.view === "events" && !stream.paused) poll("replies", refreshReplies);
}

// -- start ------------------------------------------------------------------------------------

client.subscribe(`subscription Dashboard { dashboardStatsStream(intervalMs: 1000) { ${STATS_FIELDS} } }`, {}, {
  next: (payload) => {
    if (payload.data?.dashboardStatsStream) onDashboard(payload.data.dashboardStatsStream);
    if (payload.errors) notice("dashboardStatsStream", payload.errors[0]);
  },
  error: (exc) => notice("dashboardStatsStream", exc),
});
client.subscribe(`subscription Messages { pubsubStream { ${MESSAGE_FIELDS} } }`, {}, {
  next: (payload) => {
    const m = payload.data?.pubsubStream;
    if (payload.errors) notice("pubsubStream", payload.errors[0]);
    if (!m) return;
    onMessage(m);
    if (m.topic === "sagas") sagaActivity();
    if (REQUEST_TOPICS.includes(m.topic) && state.view === "events") replyCatchUp();
  },
  error: (exc) => notice("pubsubStream", exc),
});

select(location.hash.slice(1) || "dashboard");
client.start();
setInterval(refreshVisible, POLL_MS);
