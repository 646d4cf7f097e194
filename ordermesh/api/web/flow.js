// FlowVisualization: the systemTopology graph in fixed columns, left to right as messages
// flow (client → command/query → event store and partners → relay → EVENTS/DLQ →
// projections/saga). Edges carry their rate as a label and a dotted pulse whose speed
// follows the rate.

import { fmtInt, fmtRate, s } from "./util.js";

const NODE_W = 160;
const NODE_H = 46;
// Horizontal layout (wide windows): columns left to right.
const COL_GAP = 104;
const ROW_GAP = 34;
// Vertical layout (narrow windows): the same columns as rows, top to bottom.
const V_ROW_GAP = 64;
const V_COL_GAP = 28;
const MARGIN = 24;
const LOOP = 72; // room for edges that loop back (over the top, or down the right side)
/** Below this width (CSS pixels) of its container the graph is drawn top to bottom. */
export const VERTICAL_BELOW = 640;

const TOPICS = ["commands", "events", "queries", "sagas", "dlq", "partners"];

/** The column a node belongs to; fixed so the picture stays put as traffic comes and goes.
 * The partners share the event store's column, below it: the command service's two
 * destinations side by side, one step right of it (drawn vertically: one row down, the
 * store on the left), and nothing flows on from them, so no edge crosses another. */
export function columnOf(node) {
  const key = `${node.id} ${node.label}`.toLowerCase();
  if (node.kind === "client" || /\bclient\b/.test(key)) return 0;
  if (/partner|gateway|carrier/.test(key)) return 2;
  if (node.kind === "store" || /store|eventstore|kurrent|sqlite/.test(key)) return 2;
  if (/relay/.test(key)) return 3;
  if (node.kind === "stream" || /\bevents\b|\bdlq\b/.test(key)) return 4;
  if (/projection|saga/.test(key)) return 5;
  if (/command|query|api/.test(key)) return 1;
  return node.kind === "service" ? 5 : 4;
}

/** Order within a column: the usual suspects first, others by label. The event store
 * comes before the partners, so the back edge from the saga (over the top) reaches it
 * without passing the partners. */
function rankOf(node) {
  const key = `${node.id} ${node.label}`.toLowerCase();
  const order = ["api", "command", "query", "events", "dlq", "saga", "projection", "store", "partner"];
  const i = order.findIndex((word) => key.includes(word));
  return i === -1 ? order.length : i;
}

export function edgeKey(e) {
  return `${e.source}|${e.target}|${e.topic}`;
}

/** Pixels per second of the pulse for a rate in messages per minute. */
function speedFor(ratePerMinute) {
  if (!(ratePerMinute > 0)) return 0;
  return Math.min(140, 18 + 34 * Math.log10(1 + ratePerMinute));
}

/** "0.5", "12", "1.2k": short enough for an edge label. */
function shortRate(r) {
  if (!(r > 0)) return "0";
  if (r < 10) return r.toFixed(1).replace(/\.0$/, "");
  if (r < 1000) return String(Math.round(r));
  return `${(r / 1000).toFixed(1).replace(/\.0$/, "")}k`;
}

function topicClass(topic) {
  return TOPICS.includes(topic) ? topic : "other";
}

/** A node's two lines: its label, and its kind; a label with a part in brackets
 * ("partners (gateway, carrier)") puts that part on the second line instead, where it
 * fits the box rather than being cut off. */
export function nodeLines(node) {
  const m = /^(.+?)\s*\((.+)\)$/.exec(node.label);
  return m ? [m[1], m[2]] : [node.label, node.kind];
}

export class FlowGraph {
  constructor(svg) {
    this.svg = svg;
    this.signature = "";
    this.edges = new Map(); // key -> {g, pulse, rate, title, speed, offset}
    this.labels = new Map();
    this.nodes = new Map(); // id -> g
    this.running = false;
    this.last = 0;
    this.reducedMotion = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    this.frame = (t) => this.tick(t);
    this.vertical = false;
    this.latest = null;
  }

  /** Draw top to bottom when the container is narrow; rebuilds only when that changes. */
  setVertical(vertical) {
    if (vertical === this.vertical) return;
    this.vertical = vertical;
    this.signature = "";
    if (this.latest) this.update(...this.latest);
  }

  update(nodes, edges) {
    this.latest = [nodes, edges];
    const known = new Set(nodes.map((n) => n.id));
    // An edge may name a node the topology did not list: draw it rather than drop the edge.
    for (const e of edges) {
      for (const id of [e.source, e.target]) {
        if (!known.has(id)) {
          nodes = [...nodes, { id, label: id, kind: "service", healthy: true }];
          known.add(id);
        }
      }
    }
    const signature = JSON.stringify([nodes.map((n) => n.id).sort(), edges.map(edgeKey).sort()]);
    if (signature !== this.signature) {
      this.signature = signature;
      this.build(nodes, edges);
    }
    for (const n of nodes) {
      const g = this.nodes.get(n.id);
      if (!g) continue;
      g.dataset.healthy = String(Boolean(n.healthy));
      g.classList.toggle("down", !n.healthy);
      g.querySelector("title").textContent = `${n.label} (${n.kind}): ${n.healthy ? "healthy" : "not healthy"}`;
    }
    for (const e of edges) {
      const item = this.edges.get(edgeKey(e));
      if (!item) continue;
      item.g.dataset.count = String(e.count);
      item.g.dataset.rate = String(e.ratePerMinute);
      item.rate.textContent = shortRate(e.ratePerMinute);
      item.title.textContent = `${e.source} → ${e.target} (${e.topic}): ${fmtInt(e.count)} messages, ${fmtRate(e.ratePerMinute)} per minute`;
      item.speed = speedFor(e.ratePerMinute);
      item.g.classList.toggle("idle", item.speed === 0);
    }
    // Size each label to its text, then nudge any that would cover one already placed.
    const placed = [];
    for (const label of this.labels.values()) {
      label.g.classList.toggle("idle", label.parts.every((part) => part.textContent === "0"));
      const width = 14 + 6.7 * label.text.textContent.length; // 11px monospace digits
      const box = { x: label.x - width / 2, w: width, h: 18 };
      for (const dy of [0, -20, 20, -40, 40, 60]) {
        box.y = label.y - 9 + dy;
        if (!placed.some((o) => box.x < o.x + o.w + 4 && o.x < box.x + box.w + 4 && box.y < o.y + o.h && o.y < box.y + box.h)) break;
      }
      placed.push({ ...box });
      label.bg.setAttribute("x", box.x.toFixed(1));
      label.bg.setAttribute("y", box.y.toFixed(1));
      label.bg.setAttribute("width", width.toFixed(1));
      label.text.setAttribute("y", (box.y + 13).toFixed(1));
    }
  }

  build(nodes, edges) {
    this.svg.querySelectorAll(":scope > :not(desc)").forEach((el) => el.remove());
    this.nodes.clear();
    this.edges.clear();

    // Columns in use, compacted; nodes stacked and centred in each (or, drawn vertically,
    // rows in use, nodes side by side).
    const columns = new Map();
    for (const n of nodes) {
      const c = columnOf(n);
      if (!columns.has(c)) columns.set(c, []);
      columns.get(c).push(n);
    }
    const used = [...columns.keys()].sort((a, b) => a - b);
    const widest = Math.max(1, ...[...columns.values()].map((list) => list.length));
    const pos = new Map();
    let width;
    let height;
    if (!this.vertical) {
      const innerH = widest * NODE_H + (widest - 1) * ROW_GAP;
      width = MARGIN * 2 + used.length * NODE_W + Math.max(0, used.length - 1) * COL_GAP;
      height = LOOP + innerH + MARGIN;
      used.forEach((c, ci) => {
        const list = columns.get(c).sort((a, b) => rankOf(a) - rankOf(b) || a.label.localeCompare(b.label));
        const colH = list.length * NODE_H + (list.length - 1) * ROW_GAP;
        const top = LOOP + (innerH - colH) / 2;
        list.forEach((n, ri) => {
          pos.set(n.id, { x: MARGIN + ci * (NODE_W + COL_GAP), y: top + ri * (NODE_H + ROW_GAP), col: ci });
        });
      });
    } else {
      const innerW = widest * NODE_W + (widest - 1) * V_COL_GAP;
      width = LOOP + innerW + LOOP;
      height = MARGIN * 2 + used.length * NODE_H + Math.max(0, used.length - 1) * V_ROW_GAP;
      used.forEach((c, ri) => {
        const list = columns.get(c).sort((a, b) => rankOf(a) - rankOf(b) || a.label.localeCompare(b.label));
        const rowW = list.length * NODE_W + (list.length - 1) * V_COL_GAP;
        const left = LOOP + (innerW - rowW) / 2;
        list.forEach((n, ci) => {
          pos.set(n.id, { x: left + ci * (NODE_W + V_COL_GAP), y: MARGIN + ri * (NODE_H + V_ROW_GAP), col: ri });
        });
      });
    }
    width = Math.max(width, 200);
    this.svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    this.svg.style.setProperty("--flow-aspect", `${width} / ${height}`);
    this.svg.classList.toggle("vertical", this.vertical);
    const maxX = width;

    const defs = s("defs");
    for (const topic of [...TOPICS, "other"]) {
      defs.append(
        s(
          "marker",
          { id: `arrow-${topic}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
          s("path", { d: "M0,0 L10,5 L0,10 z", class: `arrow topic-${topic}` }),
        ),
      );
    }
    const edgeLayer = s("g", { class: "edges" });
    const labelLayer = s("g", { class: "edge-labels" });
    const nodeLayer = s("g", { class: "nodes" });
    this.svg.append(defs, edgeLayer, nodeLayer, labelLayer);

    // Parallel edges between the same two nodes fan out; edges from one node to another
    // share one label (a rate per topic) so labels never sit on each other.
    const pairs = new Map();
    for (const e of edges) {
      const pair = [e.source, e.target].sort().join("|");
      pairs.set(pair, (pairs.get(pair) || 0) + 1);
    }
    const seen = new Map();
    const loops = new Map(); // source -> back edges (to an earlier column) drawn from it so far
    this.labels = new Map(); // "source>target" -> {bg, text, mids: []}

    for (const e of edges) {
      const a = pos.get(e.source);
      const b = pos.get(e.target);
      if (!a || !b) continue;
      const pair = [e.source, e.target].sort().join("|");
      const index = seen.get(pair) || 0;
      seen.set(pair, index + 1);
      const fan = (index - (pairs.get(pair) - 1) / 2) * 10;
      let loop = 0;
      if (b.col < a.col && index === 0) {
        loop = loops.get(e.source) || 0;
        loops.set(e.source, loop + 1);
      } else if (b.col < a.col) {
        loop = (loops.get(e.source) || 1) - 1;
      }
      const { d, mid } = this.vertical ? routeVertical(a, b, fan, maxX, loop) : route(a, b, fan, loop);
      const topic = topicClass(e.topic);
      const title = s("title");
      const base = s("path", { d, class: "edge-line", "marker-end": `url(#arrow-${topic})` });
      const pulse = s("path", { d, class: "edge-pulse" });
      const g = s(
        "g",
        {
          class: `edge topic-${topic}`,
          dataset: { testid: "flow-edge", source: e.source, target: e.target, topic: e.topic, count: String(e.count) },
        },
        title,
        base,
        pulse,
      );
      edgeLayer.append(g);
      const direction = `${e.source}>${e.target}`;
      let label = this.labels.get(direction);
      if (!label) {
        label = { bg: s("rect", { class: "edge-label-bg", height: 18, rx: 9 }), text: s("text", { class: "edge-label", "text-anchor": "middle" }), mids: [], parts: [] };
        label.g = s("g", { class: "edge-label-group" }, label.bg, label.text);
        labelLayer.append(label.g);
        this.labels.set(direction, label);
      }
      label.mids.push(mid);
      const rate = s("tspan", { class: `topic-${topic}` });
      if (label.parts.length) label.text.append(s("tspan", { class: "sep" }, " · "));
      label.text.append(rate);
      label.parts.push(rate);
      this.edges.set(edgeKey(e), { g, pulse, rate, title, speed: 0, offset: 0 });
    }
    for (const label of this.labels.values()) {
      label.text.append(s("tspan", { class: "sep" }, "/min"));
      const x = label.mids.reduce((sum, m) => sum + m.x, 0) / label.mids.length;
      const y = label.mids.reduce((sum, m) => sum + m.y, 0) / label.mids.length;
      label.x = x;
      label.y = y;
      label.text.setAttribute("x", x.toFixed(1));
    }

    for (const n of nodes) {
      const p = pos.get(n.id);
      const g = s(
        "g",
        { class: `node kind-${n.kind}`, transform: `translate(${p.x},${p.y})`, dataset: { testid: "flow-node", id: n.id } },
        s("title"),
        s("rect", { class: "node-box", width: NODE_W, height: NODE_H, rx: 10 }),
        s("circle", { class: "node-health", cx: 14, cy: NODE_H / 2, r: 5 }),
        s("text", { class: "node-label", x: 26, y: 20 }, truncate(nodeLines(n)[0], 16)),
        s("text", { class: "node-kind", x: 26, y: 35 }, truncate(nodeLines(n)[1], 22)),
      );
      nodeLayer.append(g);
      this.nodes.set(n.id, g);
    }
  }

  start() {
    if (this.running || this.reducedMotion) return;
    this.running = true;
    this.last = performance.now();
    requestAnimationFrame(this.frame);
  }

  stop() {
    this.running = false;
  }

  tick(now) {
    if (!this.running) return;
    const dt = Math.min(0.1, (now - this.last) / 1000);
    this.last = now;
    for (const item of this.edges.values()) {
      if (item.speed === 0) continue;
      item.offset = (item.offset - item.speed * dt) % 1000;
      item.pulse.style.strokeDashoffset = item.offset.toFixed(1);
    }
    requestAnimationFrame(this.frame);
  }
}

function truncate(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

/** Drawn top to bottom: forward edges run down, others loop round the right-hand side. */
function routeVertical(a, b, fan, maxX, loop = 0) {
  let p0;
  let p1;
  let p2;
  let p3;
  if (b.col > a.col) {
    p0 = { x: a.x + NODE_W / 2 + fan, y: a.y + NODE_H };
    p3 = { x: b.x + NODE_W / 2 + fan, y: b.y - 2 };
    const dy = (p3.y - p0.y) / 2;
    p1 = { x: p0.x, y: p0.y + dy };
    p2 = { x: p3.x, y: p3.y - dy };
  } else if (b.col === a.col) {
    const right = b.x > a.x;
    p0 = { x: right ? a.x + NODE_W : a.x, y: a.y + NODE_H / 2 + fan };
    p3 = { x: right ? b.x - 2 : b.x + NODE_W + 2, y: b.y + NODE_H / 2 + fan };
    p1 = { x: (p0.x + p3.x) / 2, y: p0.y };
    p2 = { x: (p0.x + p3.x) / 2, y: p3.y };
  } else {
    // Back up the page: round the outer side nearer to both ends.
    const left = a.x + b.x + NODE_W < maxX;
    const out = LOOP / 2 - loop * 14 + fan;
    const side = left ? out : maxX - out;
    p0 = { x: left ? a.x : a.x + NODE_W, y: a.y + NODE_H / 2 + fan };
    p3 = { x: left ? b.x - 2 : b.x + NODE_W + 2, y: b.y + NODE_H / 2 + fan };
    p1 = { x: side, y: p0.y };
    p2 = { x: side, y: p3.y };
  }
  const d = `M${p0.x},${p0.y} C${p1.x},${p1.y} ${p2.x},${p2.y} ${p3.x},${p3.y}`;
  return { d, mid: bezierMid(p0, p1, p2, p3) };
}

function bezierMid(p0, p1, p2, p3) {
  return { x: (p0.x + 3 * p1.x + 3 * p2.x + p3.x) / 8, y: (p0.y + 3 * p1.y + 3 * p2.y + p3.y) / 8 };
}

/** A cubic Bézier from a to b and its midpoint: forward edges run right, an edge back to
 * the previous column runs straight left, longer ones loop over the top. */
function route(a, b, fan, loop = 0) {
  let p0;
  let p1;
  let p2;
  let p3;
  if (b.col > a.col || b.col === a.col - 1) {
    const back = b.col < a.col;
    p0 = { x: back ? a.x : a.x + NODE_W, y: a.y + NODE_H / 2 + fan };
    p3 = { x: back ? b.x + NODE_W + 2 : b.x - 2, y: b.y + NODE_H / 2 + fan };
    const dx = (p3.x - p0.x) / 2;
    p1 = { x: p0.x + dx, y: p0.y };
    p2 = { x: p3.x - dx, y: p3.y };
  } else if (b.col === a.col) {
    const down = b.y > a.y;
    p0 = { x: a.x + NODE_W, y: a.y + NODE_H / 2 };
    p3 = { x: b.x + NODE_W + 2, y: b.y + NODE_H / 2 };
    p1 = { x: p0.x + 40 + Math.abs(fan), y: p0.y + (down ? 10 : -10) };
    p2 = { x: p3.x + 40 + Math.abs(fan), y: p3.y + (down ? -10 : 10) };
  } else {
    const lift = 30 + Math.abs(fan) + loop * 16;
    const shift = loop * 28 - 14;
    p0 = { x: a.x + NODE_W / 2 + shift + fan, y: a.y };
    p3 = { x: b.x + NODE_W / 2 + shift + fan, y: b.y - 2 };
    const top = Math.max(6, Math.min(a.y, b.y) - lift);
    p1 = { x: p0.x, y: top };
    p2 = { x: p3.x, y: top };
  }
  const d = `M${p0.x},${p0.y} C${p1.x},${p1.y} ${p2.x},${p2.y} ${p3.x},${p3.y}`;
  return { d, mid: bezierMid(p0, p1, p2, p3) };
}
