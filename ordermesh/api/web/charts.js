// Inline SVG sparklines: the last `capacity` points, scaled to their own range.

import { s } from "./util.js";

const W = 240;
const H = 48;

export class Sparkline {
  constructor({ capacity = 120, label = "", minZero = true } = {}) {
    this.capacity = capacity;
    this.minZero = minZero;
    this.points = [];
    this.area = s("path", { class: "spark-area" });
    this.line = s("path", { class: "spark-line" });
    this.el = s(
      "svg",
      { class: "spark", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": label },
      s("line", { class: "spark-base", x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5 }),
      this.area,
      this.line,
    );
  }

  push(value) {
    this.points.push(value === null || value === undefined || Number.isNaN(value) ? null : value);
    if (this.points.length > this.capacity) this.points.splice(0, this.points.length - this.capacity);
    this.render();
  }

  render() {
    const values = this.points.filter((v) => v !== null);
    if (values.length === 0) {
      this.line.setAttribute("d", "");
      this.area.setAttribute("d", "");
      return;
    }
    let lo = Math.min(...values);
    let hi = Math.max(...values);
    if (this.minZero) lo = Math.min(0, lo);
    if (hi - lo < 1e-9) hi = lo + 1;
    const step = W / (this.capacity - 1);
    const offset = this.capacity - this.points.length; // new points enter from the right
    const pad = 3;
    const y = (v) => pad + (H - 2 * pad) * (1 - (v - lo) / (hi - lo));
    let d = "";
    let firstX = null;
    let lastX = 0;
    let pen = false;
    this.points.forEach((v, i) => {
      if (v === null) {
        pen = false;
        return;
      }
      const x = (offset + i) * step;
      const yy = y(v);
      d += `${pen ? "L" : "M"}${x.toFixed(1)},${yy.toFixed(1)}`;
      pen = true;
      if (firstX === null) firstX = x;
      lastX = x;
    });
    this.line.setAttribute("d", d);
    this.area.setAttribute(
      "d",
      `${d}L${lastX.toFixed(1)},${H}L${(firstX ?? 0).toFixed(1)},${H}Z`.replace(/M/g, (m, idx) => (idx === 0 ? "M" : "L")),
    );
  }
}
