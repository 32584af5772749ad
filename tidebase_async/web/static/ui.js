// Small DOM helpers: every text goes in as a text node (never as HTML), so nothing a run
// holds can inject markup.

/** h("a", {href: "#/runs", class: "x"}, "text", child, ...) */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "value" && "value" in node) {
      node.value = value;
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : String(child));
  }
}

export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export const STATUSES = ["queued", "running", "waiting", "completed", "failed", "cancelled"];
export const ACTIVE = new Set(["queued", "running", "waiting"]);

/** A status badge: the word itself, the colour only repeats it. */
export function badge(status) {
  return h("span", { class: `badge status-${status}` }, status ?? "—");
}

/** An aware timestamp shown in local time, the exact UTC value in the tooltip. */
export function time(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const pad = (n) => String(n).padStart(2, "0");
  const text = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return h("time", { datetime: iso, title: iso }, text);
}

/** Seconds as "350 ms", "2.4 s", "3 min 5 s", "2 h 3 min", "1 d 2 h". */
export function seconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "—";
  if (s < 1) return `${Math.max(0, Math.round(s * 1000))} ms`;
  if (s < 60) return `${s < 10 ? s.toFixed(2) : s.toFixed(1)} s`;
  const units = [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]];
  const parts = [];
  let rest = Math.round(s);
  for (const [name, size] of units) {
    if (rest >= size) {
      parts.push(`${Math.floor(rest / size)} ${name}`);
      rest %= size;
    }
    if (parts.length === 2) break;
  }
  return parts.join(" ");
}

/** The duration between two timestamps (to now when `end` is missing and `live`). */
export function duration(start, end, live = false) {
  if (!start) return "—";
  const a = Date.parse(start);
  const b = end ? Date.parse(end) : live ? Date.now() : NaN;
  return Number.isNaN(b) ? "—" : seconds((b - a) / 1000);
}

/** A JSON value, pretty-printed (or a dash). */
export function json(value) {
  if (value === undefined || value === null) return h("span", { class: "muted" }, "none");
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

/** A recorded error: {type, message, traceback?}. */
export function errorBlock(error, label = "Error") {
  if (!error) return null;
  const title = [error.type, error.message].filter(Boolean).join(": ") || JSON.stringify(error);
  return h("div", { class: "run-error" },
    h("p", {}, h("strong", {}, `${label}: `), h("span", { class: "error-text" }, title)),
    error.traceback
      ? h("details", {}, h("summary", {}, "Traceback"), h("pre", { class: "trace" }, error.traceback))
      : null);
}

/** A message in place of the page or above it: role=alert so that it is announced. */
export function alert(message, kind = "error") {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
}

export const UUID_RE = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

/**
 * A refresher that calls `fn` at most once per `gap` ms however often it is poked, and
 * never twice at the same time; the last poke always gets a call after it.
 */
export function throttle(fn, gap = 300) {
  let running = false;
  let again = false;
  let last = 0;
  async function go() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    const wait = last + gap - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    try {
      again = false;
      last = Date.now();
      await fn();
    } catch {
      // fn reports its own errors
    } finally {
      running = false;
      if (again) go();
    }
  }
  return go;
}

/** A whole number with the reader's digit grouping (or a dash). */
export function count(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "—";
  return Number(n).toLocaleString();
}

/** An amount in US dollars: cents from $1 on, three significant digits below; exact in the tooltip. */
export function money(usd) {
  const v = Number(usd);
  if (usd === null || usd === undefined || Number.isNaN(v)) return "—";
  const text = Math.abs(v) >= 1
    ? v.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 })
    : v.toLocaleString(undefined, { maximumSignificantDigits: 3 });
  return h("span", { class: "money", title: `${v} USD` }, `$${text}`);
}

/** A JSON value on one line, for short displays (a diff, a chunk). */
export function compact(value) {
  return value === undefined ? "undefined" : JSON.stringify(value);
}
