// #/ and #/overview?range=1h|6h|24h|7d : the landing page (GET /overview). Runs started,
// completed, failed and cancelled per bucket; per workflow, counts and the p50/p95 of
// duration and of queue wait; queue depth with the oldest queued run's age; the
// workflows failing most with their latest error; tokens and cost per day and model.
// Refreshed live from GET /events (throttled: the page sums a whole range) with a slow
// poll as the floor, which also moves the window on as time passes.

import { get, stream } from "./api.js";
import { bucketLabel, refocus, s, short, timeChart } from "./charts.js";
import { alert, count, h, money, replace, seconds, throttle, time } from "./ui.js";

export const RANGES = [
  ["1h", "Last hour"],
  ["6h", "Last 6 hours"],
  ["24h", "Last 24 hours"],
  ["7d", "Last 7 days"],
];
const LIVE_GAP_MS = 2000;
const POLL_MS = 15000;

/** The range asked for in the hash query (an unknown one reads as the last hour). */
export function rangeOf(query) {
  const r = query.get("range") || "1h";
  return RANGES.some(([v]) => v === r) ? r : "1h";
}

/** The range picker: a labelled <select> that moves to `hashFor(range)`. */
export function rangePicker(range, hashFor) {
  const select = h("select", { id: "range", name: "range",
    onchange: (e) => { location.hash = hashFor(e.target.value); } },
  RANGES.map(([value, text]) => h("option", { value, selected: value === range }, text)));
  return h("form", { class: "filters range-picker", "aria-label": "Time range",
    onsubmit: (e) => e.preventDefault() },
  h("div", {}, h("label", { for: "range" }, "Time range"), select));
}

/** Call `load` when runs change (at most once per 2 s) and every 15 s, until the page goes. */
export function follow(ctx, load) {
  const refresh = throttle(load, LIVE_GAP_MS);
  stream("events", {
    signal: ctx.signal,
    onEvent: (ev) => {
      if (ev.event === "runs") refresh();
    },
    onState: ctx.setLive,
  });
  const timer = setInterval(refresh, POLL_MS);
  ctx.signal.addEventListener("abort", () => clearInterval(timer), { once: true });
}

const RUN_KEYS = [
  { key: "completed", label: "Completed", cls: "k-completed" },
  { key: "failed", label: "Failed", cls: "k-failed" },
  { key: "cancelled", label: "Cancelled", cls: "k-cancelled" },
  { key: "started", label: "Started", cls: "k-started" },
];
const RANGE_WORDS = { "1h": "last hour", "6h": "last 6 hours", "24h": "last 24 hours",
  "7d": "last 7 days" };

/** Sums of a series' counts. */
export function totals(series) {
  const sum = { started: 0, completed: 0, failed: 0, cancelled: 0 };
  for (const b of series) for (const k of Object.keys(sum)) sum[k] += Number(b[k] || 0);
  return sum;
}

/** Completed out of completed and failed runs (cancelled ones left out, as the API's
 * success_rate), as "93.5%"; a dash before any finished. */
export function rate(completed, failed) {
  const done = completed + failed;
  return done ? percent(completed / done) : "—";
}

/** A fraction as a percentage with one decimal ("97.4%"), or a dash. */
export function percent(fraction) {
  if (fraction === null || fraction === undefined) return "—";
  return `${(Math.round(fraction * 1000) / 10).toFixed(1)}%`;
}

/** The runs chart of a series: outcomes stacked per bucket, runs started as a line. */
export function runsChart(id, data, what = "Runs") {
  const unit = data.bucket_s >= 3600 ? "hour" : "minute";
  const sum = totals(data.series);
  const summary = `${what} per ${unit}, ${RANGE_WORDS[data.range] ?? data.range}: `
    + `${sum.started} started, ${sum.completed} completed, ${sum.failed} failed, `
    + `${sum.cancelled} cancelled`;
  const busiest = data.series.reduce((best, b) => (best && best.completed >= b.completed
    ? best : b), null);
  const description = busiest && busiest.completed
    ? `${summary}. Most completions: ${busiest.completed} in the ${unit} from `
      + `${bucketLabel(busiest.at, data.bucket_s)}.` : `${summary}.`;
  return timeChart({
    id,
    keys: RUN_KEYS,
    stack: ["completed", "failed", "cancelled"],
    line: ["started"],
    summary,
    description,
    caption: `${what} per ${unit}`,
    buckets: data.series.map((b) => ({
      at: b.at,
      label: bucketLabel(b.at, data.bucket_s),
      values: { started: b.started, completed: b.completed, failed: b.failed,
        cancelled: b.cancelled },
    })),
  });
}

/** A duration in milliseconds (null: a dash), with the exact value in data-ms. */
export function msCell(ms, col) {
  return h("td", { class: "num", "data-col": col, "data-ms": ms ?? "" },
    ms === null || ms === undefined ? "—" : seconds(ms / 1000));
}

export function stat(id, label, value) {
  return h("div", { class: "stat" }, h("dt", {}, label), h("dd", { id }, value));
}

export async function render(ctx) {
  const { main, query, signal } = ctx;
  ctx.title("Overview");
  const range = rangeOf(query);
  const message = h("div", { id: "overview-message" });
  const asOf = h("p", { class: "muted as-of", id: "overview-as-of" });
  const content = h("div", { id: "overview" });
  replace(main, h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "Overview"),
    rangePicker(range, (r) => `#/overview?range=${r}`)), asOf, message, content);

  async function load() {
    let data;
    try {
      data = await get("overview", { range }, signal);
    } catch (exc) {
      if (signal.aborted || exc.status === 401) return;
      replace(message, alert(`Could not load the overview: ${exc.message}`));
      return;
    }
    if (signal.aborted) return;
    const focused = document.activeElement?.id;
    replace(message);
    replace(asOf, "As of ", time(data.now), ` · ${data.bucket_s >= 3600 ? "hourly" : "per minute"}`);
    content.dataset.range = data.range;
    content.dataset.bucketS = data.bucket_s;
    const sum = totals(data.series);
    replace(content,
      section("overview-runs", "Runs",
        h("dl", { class: "stats" },
          stat("total-started", "Started", count(sum.started)),
          stat("total-completed", "Completed", count(sum.completed)),
          stat("total-failed", "Failed", count(sum.failed)),
          stat("total-cancelled", "Cancelled", count(sum.cancelled)),
          stat("total-success", "Success rate", rate(sum.completed, sum.failed))),
        runsChart("runs-chart", data)),
      section("overview-workflows", "Workflows", workflowsTable(data.workflows)),
      h("div", { class: "cols" },
        section("overview-queues", "Queues", queuesTable(data.queues)),
        section("overview-failing", "Failing most", failingTable(data.failing))),
      section("overview-usage", "Tokens and cost", usage(data)));
    refocus(focused);
  }

  await load();
  if (signal.aborted) return;
  follow(ctx, load);
}

/** A page section titled by its own h2 (the overview's and the workflow page's). */
export function section(id, title, ...children) {
  return h("section", { id, "aria-labelledby": `${id}-title` },
    h("h2", { id: `${id}-title` }, title), children);
}

function workflowsTable(items) {
  if (!items.length) return h("p", { class: "empty" }, "No runs in this range.");
  return h("table", { class: "workflows", id: "workflows-table" },
    h("caption", { class: "sr-only" },
      "Workflows with their runs, duration and queue wait (50th and 95th percentiles)"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Workflow"),
      ["Started", "Completed", "Failed", "Cancelled", "Success", "Duration p50",
        "Duration p95", "Wait p50", "Wait p95"].map((t) =>
        h("th", { scope: "col", class: "num" }, t)))),
    h("tbody", {}, items.map((w) => h("tr", { "data-workflow": w.workflow },
      h("th", { scope: "row" },
        h("a", { href: `#/workflows/${encodeURIComponent(w.workflow)}`,
          id: `wf-link-${w.workflow}` }, w.workflow)),
      ["started", "completed", "failed", "cancelled"].map((k) =>
        h("td", { class: `num${k === "failed" && w.failed ? " error-count" : ""}`,
          "data-col": k }, count(w[k]))),
      h("td", { class: "num", "data-col": "success" },
        rate(w.completed, w.failed)),
      msCell(w.duration_p50_ms, "duration_p50"),
      msCell(w.duration_p95_ms, "duration_p95"),
      msCell(w.wait_p50_ms, "wait_p50"),
      msCell(w.wait_p95_ms, "wait_p95")))));
}

function queuesTable(items) {
  if (!items.length) return h("p", { class: "empty" }, "No queues yet.");
  const top = Math.max(1, ...items.map((q) => q.queued + q.running + q.waiting));
  return h("table", { class: "queue-depth", id: "queues-table" },
    h("caption", { class: "sr-only" }, "Queue depth: runs queued, running and waiting"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Queue"),
      ["Queued", "Running", "Waiting"].map((t) => h("th", { scope: "col", class: "num" }, t)),
      h("th", { scope: "col" }, "Depth"),
      h("th", { scope: "col", class: "num" }, "Oldest queued"))),
    h("tbody", {}, items.map((q) => h("tr", { "data-queue": q.queue },
      h("th", { scope: "row", class: "mono" },
        h("a", { href: `#/queues/${encodeURIComponent(q.queue)}` }, q.queue),
        q.paused ? [" ", h("span", { class: "badge status-paused" }, "paused")] : null),
      // Counts stop at 10,000 (capped): a bounded read.
      ["queued", "running", "waiting"].map((k) =>
        h("td", { class: "num", "data-col": k }, count(q[k]), q.capped ? "+" : "")),
      h("td", { class: "depth" }, depthBar(q, top)),
      h("td", { class: "num", "data-col": "oldest" }, q.oldest_queued_age_s == null ? "—"
        : seconds(q.oldest_queued_age_s))))));
}

/** A queue's runs as one horizontal bar (queued, running, waiting), scaled to the deepest. */
function depthBar(q, top) {
  let x = 0;
  const parts = ["running", "waiting", "queued"].map((k) => {
    const w = (q[k] / top) * 100;
    const rect = s("rect", { class: `seg k-${k}`, x: x.toFixed(2), y: 0, width: w.toFixed(2),
      height: 10 });
    x += w;
    return q[k] ? rect : null;
  });
  const label = `${q.queue}: ${q.queued} queued, ${q.running} running, ${q.waiting} waiting`;
  return s("svg", { class: "hbar", viewBox: "0 0 100 10", preserveAspectRatio: "none",
    role: "img", "aria-label": label, focusable: "false" },
  s("title", {}, label), s("rect", { class: "track", x: 0, y: 0, width: 100, height: 10 }), parts);
}

function failingTable(items) {
  if (!items.length) return h("p", { class: "empty" }, "No failures in this range.");
  return h("table", { class: "failing", id: "failing-table" },
    h("caption", { class: "sr-only" }, "Workflows failing most, with their latest error"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Workflow"),
      h("th", { scope: "col", class: "num" }, "Failed"),
      h("th", { scope: "col" }, "Latest error"),
      h("th", { scope: "col" }, "Latest run"))),
    h("tbody", {}, items.map((f) => h("tr", { "data-workflow": f.workflow },
      h("th", { scope: "row" },
        h("a", { href: `#/workflows/${encodeURIComponent(f.workflow)}` }, f.workflow)),
      h("td", { class: "num", "data-col": "failed" }, count(f.failed)),
      h("td", { class: "error-text", "data-col": "error" }, errorText(f.last_error)),
      h("td", {}, f.last_run_id
        ? [h("a", { href: `#/runs/${f.last_run_id}`, class: "run-id",
          "aria-label": `Latest failed run of ${f.workflow}` }, f.last_run_id.slice(0, 8)),
        h("br"), time(f.last_failed_at)]
        : "—")))));
}

/** A recorded error ({type, message}, a string or null) on one line. */
export function errorText(error) {
  if (!error) return "—";
  if (typeof error === "string") return error;
  return [error.type, error.message].filter(Boolean).join(": ") || JSON.stringify(error);
}

const MODEL_CLASSES = 6;

function usage(data) {
  const items = data.usage || [];
  if (!items.length) return h("p", { class: "empty" }, "No usage recorded in this range.");
  const models = [...new Set(items.map((u) => u.model ?? "unknown"))].sort();
  const days = [...new Set(items.map((u) => u.day))].sort();
  const byCost = Number(data.usage_total_cost_usd || 0) > 0;
  const keys = models.map((m, i) => ({ key: m, label: m, cls: `model-${i % MODEL_CLASSES}` }));
  const value = (u) => (byCost ? Number(u.cost_usd || 0)
    : Number(u.input_tokens || 0) + Number(u.output_tokens || 0));
  const buckets = days.map((day) => {
    const values = {};
    for (const u of items.filter((x) => x.day === day)) {
      const m = u.model ?? "unknown";
      values[m] = (values[m] || 0) + value(u);
    }
    return { at: day, label: day, values };
  });
  const totalTokens = items.reduce((n, u) => n + Number(u.input_tokens || 0)
    + Number(u.output_tokens || 0), 0);
  const fmt = byCost ? (n) => `$${Number(n.toPrecision(3))}` : (n) => count(n);
  const summary = `${byCost ? "Cost" : "Tokens"} per day by model, `
    + `${RANGE_WORDS[data.range] ?? data.range}: ${count(totalTokens)} tokens, `
    + `$${Number(data.usage_total_cost_usd || 0).toFixed(2)} in all`;
  const chart = timeChart({ id: "usage-chart", keys, stack: models, summary, buckets,
    height: 180, format: fmt, tickFormat: byCost ? (n) => `$${short(n)}` : short,
    caption: `${byCost ? "Cost" : "Tokens"} per day by model` });
  const table = h("table", { class: "usage", id: "usage-day-table" },
    h("caption", { class: "sr-only" }, "Tokens and cost per day and model"),
    h("thead", {}, h("tr", {},
      ["Day", "Model"].map((t) => h("th", { scope: "col" }, t)),
      ["Input tokens", "Output tokens", "Cost"].map((t) =>
        h("th", { scope: "col", class: "num" }, t)))),
    h("tbody", {}, items.map((u) => h("tr", { "data-day": u.day, "data-model": u.model ?? "" },
      h("td", {}, u.day),
      h("td", { class: "mono" }, u.model ?? "—"),
      h("td", { class: "num", "data-col": "input" }, count(u.input_tokens)),
      h("td", { class: "num", "data-col": "output" }, count(u.output_tokens)),
      h("td", { class: "num", "data-col": "cost" }, money(u.cost_usd))))),
    h("tfoot", {}, h("tr", {},
      h("th", { scope: "row", colspan: "4" }, "Total"),
      h("td", { class: "num", id: "usage-total-cost" }, money(data.usage_total_cost_usd)))));
  return [chart, table];
}

