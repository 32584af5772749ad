// Charts in hand-written SVG (no library, nothing inline that the CSP refuses: geometry
// in attributes, colours in app.css by class). Every chart is an <svg role="img"> whose
// aria-label and <title>/<desc> state the figures, with a visually hidden table of the
// same numbers; its bars are one keyboard stop (arrow keys, Home and End move along
// them) and the focused bar's value is shown, and announced, under the chart.

import { h } from "./ui.js";

const NS = "http://www.w3.org/2000/svg";

/** s("rect", {x: 1, class: "a"}, child, ...): an SVG element. */
export function s(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else {
      node.setAttribute(name, String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** A round upper bound for an axis and its step (1, 2 or 5 times a power of ten). */
export function niceScale(max, ticks = 4) {
  if (!(max > 0)) return { max: 1, step: 1 };
  const raw = max / ticks;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((v) => v >= raw) ?? 10 * power;
  return { max: Math.ceil(max / step - 1e-9) * step, step };
}

/** A number for an axis or a label: 1.2k, 3.4M; small fractions with their digits. */
export function short(n) {
  const v = Number(n);
  if (!Number.isFinite(v)) return "—";
  const a = Math.abs(v);
  if (a >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toFixed(0)}k`;
  if (a >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  if (a > 0 && a < 1) return `${+v.toPrecision(2)}`;
  return `${+v.toFixed(2)}`;
}

/** A bucket's start in local time: "14:05" for minutes, "Mar 3 14:00" for hours. */
export function bucketLabel(iso, bucketS) {
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  if (bucketS < 3600) return hm;
  if (bucketS < 86400) {
    return `${d.toLocaleDateString("en-US", { month: "short", day: "numeric" })} ${hm}`;
  }
  return d.toLocaleDateString("en-US", { month: "short", day: "numeric" });
}

const W = 960;
const PAD = { top: 12, right: 12, bottom: 30, left: 48 };

/**
 * A bar chart over time: one column per bucket, `stack` keys stacked in it, `line` keys
 * drawn as a line of points over it.
 *
 * `buckets`: [{at, label?, values: {key: number}}], oldest first. `keys`: [{key, label,
 * cls}] (the order of the legend and of the stack, bottom up). `summary`: the sentence
 * the svg's aria-label and title carry; `description` its <desc>. `format(n)`: a value
 * as text (a count, "$0.12"); `tickFormat(n)`: an axis tick.
 * Each column is a <g class="bar" data-at data-<key>=value data-total> with a <title>;
 * the svg has data-scale-max and data-plot-height, so that heights can be checked.
 */
export function timeChart({ id, buckets, keys, stack, line = [], summary, description,
  height = 220, format = (n) => String(n), tickFormat = short, caption }) {
  const plotH = height - PAD.top - PAD.bottom;
  const plotW = W - PAD.left - PAD.right;
  const total = (b) => stack.reduce((sum, k) => sum + Number(b.values[k] || 0), 0);
  const top = Math.max(0, ...buckets.map(total),
    ...buckets.flatMap((b) => line.map((k) => Number(b.values[k] || 0))));
  const scale = niceScale(top);
  const y = (v) => PAD.top + plotH - (v / scale.max) * plotH;
  const slot = plotW / Math.max(1, buckets.length);
  const barW = Math.min(56, Math.max(1, slot * (slot > 6 ? 0.72 : 0.9)));
  const keyOf = Object.fromEntries(keys.map((k) => [k.key, k]));
  const describe = (b) => [b.label,
    ...keys.map((k) => `${format(Number(b.values[k.key] || 0))} ${k.label.toLowerCase()}`)]
    .join(", ");

  const grid = [];
  for (let v = 0; v <= scale.max + 1e-9; v += scale.step) {
    grid.push(s("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }),
      s("text", { class: "tick", x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end" },
        tickFormat(v)));
  }
  const every = Math.max(1, Math.ceil(buckets.length / 8));
  const xTicks = buckets.map((b, i) => (i % every === 0
    ? s("text", { class: "tick", x: PAD.left + slot * i + slot / 2, y: height - PAD.bottom + 16,
      "text-anchor": "middle" }, b.tick ?? b.label) : null));

  const bars = buckets.map((b, i) => {
    const x = PAD.left + slot * i + (slot - barW) / 2;
    let base = 0;
    const rects = stack.map((k) => {
      const v = Number(b.values[k] || 0);
      const rect = s("rect", {
        class: `seg ${keyOf[k].cls}`, x: x.toFixed(2), width: barW.toFixed(2),
        y: y(base + v).toFixed(2), height: ((v / scale.max) * plotH).toFixed(2),
        "data-key": k, "data-value": v,
      }, s("title", {}, `${b.label}: ${format(v)} ${keyOf[k].label.toLowerCase()}`));
      base += v;
      return v > 0 ? rect : null;
    });
    const data = Object.fromEntries(keys.map((k) => [`data-${k.key}`, b.values[k.key] ?? 0]));
    // Ids by bucket time: a live refresh that moves the window keeps the focused bar.
    return s("g", { class: "bar", id: `${id}-bar-${Date.parse(b.at)}`, "data-at": b.at,
      "data-index": i, "data-total": total(b), "data-label": describe(b), ...data,
      tabindex: "-1" },
    s("title", {}, describe(b)),
    // The whole column is the target of the pointer and of the focus ring.
    s("rect", { class: "hit", x: (PAD.left + slot * i).toFixed(2), width: slot.toFixed(2),
      y: PAD.top, height: plotH }),
    rects);
  });
  const lines = line.map((k) => s("polyline", {
    class: `line ${keyOf[k].cls}`,
    points: buckets.map((b, i) => `${(PAD.left + slot * i + slot / 2).toFixed(2)},`
      + `${y(Number(b.values[k] || 0)).toFixed(2)}`).join(" "),
  }));

  const svg = s("svg", { id, class: "chart", viewBox: `0 0 ${W} ${height}`, role: "img",
    "aria-label": summary, "data-scale-max": scale.max, "data-plot-height": plotH,
    "data-bucket-count": buckets.length, focusable: "false" },
  s("title", {}, summary),
  s("desc", {}, description ?? summary),
  grid,
  s("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: y(0), y2: y(0) }),
  xTicks, bars, lines);
  return chartFigure({ id, svg, keys, caption: caption ?? summary,
    head: ["Bucket", ...keys.map((k) => k.label)],
    rows: buckets.map((b) => [b.label,
      ...keys.map((k) => format(Number(b.values[k.key] || 0)))]) });
}

/**
 * Horizontal bars, one row per item: [{name, label, values: {key: n}}] stacked by `keys`.
 * For a few rows (versions, queues); each row is a <g class="bar"> like timeChart's.
 */
export function rowChart({ id, items, keys, summary, format = (n) => String(n), caption }) {
  const rowH = 26;
  const left = 150;
  const height = PAD.top + items.length * rowH + 24;
  const plotW = W - left - PAD.right - 80;
  const top = Math.max(0, ...items.flatMap((it) => keys.map((k) => Number(it.values[k.key] || 0))));
  const scale = niceScale(top);
  const x = (v) => (v / scale.max) * plotW;
  const bars = items.map((it, i) => {
    const y0 = PAD.top + i * rowH;
    const band = (rowH - 6) / keys.length;
    const describe = `${it.label}: ${keys.map((k) => `${k.label.toLowerCase()} `
      + `${format(it.values[k.key])}`).join(", ")}`;
    const data = Object.fromEntries(keys.map((k) => [`data-${k.key}`, it.values[k.key] ?? ""]));
    return s("g", { class: "bar", id: `${id}-bar-${i}`, "data-index": i, "data-name": it.name,
      "data-label": describe, ...data, tabindex: "-1" },
    s("title", {}, describe),
    s("rect", { class: "hit", x: 0, width: W, y: y0, height: rowH }),
    s("text", { class: "tick", x: left - 8, y: y0 + rowH / 2 + 4, "text-anchor": "end" },
      it.label.length > 22 ? `${it.label.slice(0, 21)}…` : it.label),
    keys.map((k, j) => {
      const v = it.values[k.key];
      if (v === null || v === undefined) return null;
      return [s("rect", { class: `seg ${k.cls}`, x: left, y: (y0 + 3 + j * band).toFixed(2),
        width: Math.max(0, x(Number(v))).toFixed(2), height: (band - 1).toFixed(2),
        "data-key": k.key, "data-value": v }),
      s("text", { class: "value", x: left + x(Number(v)) + 6,
        y: (y0 + 3 + j * band + band / 2 + 3).toFixed(2) }, format(v))];
    }));
  });
  const svg = s("svg", { id, class: "chart rows", viewBox: `0 0 ${W} ${height}`, role: "img",
    "aria-label": summary, "data-scale-max": scale.max, focusable: "false" },
  s("title", {}, summary), s("desc", {}, summary),
  s("line", { class: "axis", x1: left, x2: left, y1: PAD.top, y2: height - 24 }), bars);
  return chartFigure({ id, svg, keys, caption: caption ?? summary,
    head: ["", ...keys.map((k) => k.label)],
    rows: items.map((it) => [it.label, ...keys.map((k) => format(it.values[k.key]))]) });
}

/** The chart with its legend, its readout and its hidden table; wires the keyboard. */
function chartFigure({ id, svg, keys, caption, head, rows }) {
  const readout = h("p", { class: "chart-readout", id: `${id}-readout`, "aria-live": "polite" },
    h("span", { class: "muted" }, "Tab to the chart, then use the arrow keys to read each bar."));
  const legend = h("ul", { class: "legend", "aria-hidden": "true" },
    keys.map((k) => h("li", {}, h("span", { class: `swatch ${k.cls}` }), k.label)));
  // In a visually hidden box: a table's own height cannot be made 1px.
  const table = h("div", { class: "sr-only" }, h("table", { id: `${id}-table` },
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.map(([first, ...rest]) => h("tr", {},
      h("th", { scope: "row" }, first), rest.map((v) => h("td", {}, v)))))));
  const bars = [...svg.querySelectorAll("g.bar")];
  // One tab stop: the newest column (or the first row).
  const start = svg.classList.contains("rows") ? bars[0] : bars[bars.length - 1];
  start?.setAttribute("tabindex", "0");
  const show = (bar) => {
    for (const b of bars) b.setAttribute("tabindex", b === bar ? "0" : "-1");
    bar.classList.add("active");
    readout.replaceChildren(bar.dataset.label);
  };
  for (const bar of bars) {
    bar.addEventListener("focus", () => show(bar));
    bar.addEventListener("blur", () => bar.classList.remove("active"));
    bar.addEventListener("mouseenter", () => {
      readout.replaceChildren(bar.dataset.label);
    });
  }
  svg.addEventListener("keydown", (event) => {
    const i = bars.indexOf(document.activeElement);
    if (i < 0) return;
    const vertical = svg.classList.contains("rows");
    const next = {
      [vertical ? "ArrowDown" : "ArrowRight"]: i + 1,
      [vertical ? "ArrowUp" : "ArrowLeft"]: i - 1,
      Home: 0,
      End: bars.length - 1,
    }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    bars[Math.max(0, Math.min(bars.length - 1, next))].focus();
  });
  return h("figure", { class: "chart-figure", id: `${id}-figure` }, legend, svg, readout, table);
}

/** Keep the focus on the same bar (by id) across a live re-render. */
export function refocus(id) {
  const again = id && document.getElementById(id);
  if (again && again !== document.activeElement) again.focus({ preventScroll: true });
}
