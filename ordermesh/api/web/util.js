// DOM and formatting helpers shared by the views.

export const SVG_NS = "http://www.w3.org/2000/svg";

/** h("tr", {class: "x", dataset: {testid: "y"}, onclick: f}, child, "text", ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** The same in the SVG namespace. */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") {
      for (const [k, v] of Object.entries(value)) if (v !== undefined && v !== null) el.dataset[k] = v;
    } else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "text") {
      el.textContent = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function $(id) {
  return document.getElementById(id);
}

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const decimal1 = new Intl.NumberFormat("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 });
const decimal2 = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });

export function fmtInt(n) {
  return n === null || n === undefined || Number.isNaN(n) ? "–" : integer.format(n);
}

/** A rate or similar: one decimal under 100, none above. */
export function fmtRate(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Math.abs(n) >= 100 ? integer.format(n) : decimal1.format(n);
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  if (ms >= 1000) return `${decimal2.format(ms / 1000)} s`;
  if (ms >= 10) return `${integer.format(ms)} ms`;
  return `${decimal2.format(ms)} ms`;
}

export function fmtPercent(ratio) {
  if (ratio === null || ratio === undefined || Number.isNaN(ratio)) return "–";
  return `${(ratio * 100).toFixed(ratio > 0 && ratio < 0.001 ? 3 : ratio < 0.1 ? 2 : 1)} %`;
}

export function fmtBytes(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? integer.format(value) : decimal1.format(value)} ${units[unit]}`;
}

function pad(n, width = 2) {
  return String(n).padStart(width, "0");
}

/** HH:MM:SS.mmm in local time. */
export function fmtTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso || "–";
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function fmtDateTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso || "–";
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${fmtTime(iso)}`;
}

/** "3 s ago", "5 min ago" */
export function fmtAgo(iso, now = Date.now()) {
  if (!iso) return "never";
  const seconds = Math.max(0, (now - new Date(iso).getTime()) / 1000);
  if (seconds < 1) return "just now";
  if (seconds < 60) return `${Math.floor(seconds)} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  return `${Math.floor(seconds / 3600)} h ago`;
}

export function fmtDuration(seconds) {
  if (seconds < 60) return `${Math.floor(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.floor(seconds % 60)} s`;
  const hours = Math.floor(seconds / 3600);
  return `${hours} h ${Math.floor((seconds % 3600) / 60)} min`;
}

/** Pretty JSON when the text parses, the text itself otherwise. */
export function prettyJson(text) {
  if (typeof text !== "string") return JSON.stringify(text, null, 2);
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

/** A saga or step error: a string, or an object like {code, message, step}. */
export function fmtError(error) {
  if (error === null || error === undefined || error === "") return "";
  if (typeof error === "string") return error;
  if (typeof error === "object") {
    const parts = [error.step, error.code].filter(Boolean).join(" · ");
    return error.message ? (parts ? `${parts}: ${error.message}` : error.message) : parts || JSON.stringify(error);
  }
  return String(error);
}

/** Run `fn` at most once per `ms`, trailing call included. */
export function throttle(fn, ms) {
  let timer = null;
  let pending = false;
  return (...args) => {
    if (timer) {
      pending = true;
      return;
    }
    fn(...args);
    timer = setTimeout(function tick() {
      timer = null;
      if (pending) {
        pending = false;
        fn(...args);
        timer = setTimeout(tick, ms);
      }
    }, ms);
  };
}
