// #/queues/<name> : one queue's controls, its per-key controls and its flow control by
// key right now: the busiest concurrency keys (running and queued runs), the pending
// debounce runs and the active singleton runs (GET /queues/<name>/keys).
// Refreshed live from GET /events, with a slow poll as the floor.

import { get, stream } from "./api.js";
import { alert, badge, count, h, replace, STATUSES, throttle, time } from "./ui.js";

const POLL_MS = 5000;
// Queued runs per key are counted up to this many (QUEUE_KEY_COUNT_MAX).
const COUNT_MAX = 1000;

export async function render(ctx) {
  const { main, signal } = ctx;
  const name = ctx.params[0];
  ctx.title(`Queue ${name}`);
  const content = h("div");
  replace(main,
    h("p", { class: "back" }, h("a", { href: "#/queues" }, "← All queues")),
    h("h1", { tabindex: "-1" }, "Queue ", h("span", { class: "mono" }, name)),
    content);
  const path = `queues/${encodeURIComponent(name)}`;

  async function load() {
    let queues;
    let keys;
    try {
      [{ items: queues }, keys] = await Promise.all([
        get("queues", {}, signal),
        get(`${path}/keys`, {}, signal),
      ]);
    } catch (exc) {
      if (signal.aborted || exc.status === 401) return;
      replace(content, alert(`Could not read queue "${name}": ${exc.message}`));
      return;
    }
    if (signal.aborted) return;
    const queue = queues.find((q) => q.name === name) || { name, counts: {} };
    replace(content, controls(queue, keys), keysTable(keys), debounceTable(keys),
      singletonTable(keys));
  }

  await load();
  if (signal.aborted) return;
  const refresh = throttle(load, 500);
  stream("events", { signal, onEvent: refresh, onState: ctx.setLive });
  const timer = setInterval(refresh, POLL_MS);
  signal.addEventListener("abort", () => clearInterval(timer), { once: true });
}

const limit = (v) => v ?? "no limit";

function controls(queue, keys) {
  const present = STATUSES.filter((s) => queue.counts[s]);
  const rows = [
    ["State", h("span", { class: `badge ${queue.paused ? "status-paused" : "status-active"}` },
      queue.paused ? "paused" : "active")],
    ["Concurrency", limit(queue.concurrency)],
    ["Rate / min", limit(queue.rate_per_minute)],
    ["Per-key concurrency", h("span", { id: "per-key-concurrency" },
      limit(keys.per_key_concurrency))],
    ["Per-key rate / min", h("span", { id: "per-key-rate" },
      limit(keys.per_key_rate_per_minute))],
    ["Runs", present.length ? present.map((s, i) => [i ? ", " : "",
      h("a", { href: `#/runs?queue=${encodeURIComponent(queue.name)}&status=${s}` },
        `${count(queue.counts[s])} ${s}`)]) : h("span", { class: "muted" }, "none")],
  ];
  return h("section", { id: "queue-controls", "aria-labelledby": "controls-title" },
    h("h2", { id: "controls-title" }, "Controls"),
    h("dl", { class: "summary" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
}

function section(id, title, ...children) {
  return h("section", { id, "aria-labelledby": `${id}-title` },
    h("h2", { id: `${id}-title` }, title), ...children);
}

function head(columns, numeric) {
  return h("thead", {}, h("tr", {}, columns.map((t) =>
    h("th", { scope: "col", class: numeric.includes(t) ? "num" : null }, t))));
}

function keysTable(keys) {
  const title = "Busiest keys";
  if (!keys.keys.length) {
    return section("queue-keys", title,
      h("p", { class: "empty" }, "No running or queued run of this queue has a concurrency key."));
  }
  const cap = keys.per_key_concurrency;
  return section("queue-keys", title,
    keys.complete ? null : h("p", { class: "muted" },
      "This queue has too many keys to visit them all: the busiest may be missing."),
    h("table", { class: "keys" },
      h("caption", { class: "sr-only" },
        "Concurrency keys with the most running and queued runs"),
      head(["Key", "Running", "Queued"], ["Running", "Queued"]),
      h("tbody", {}, keys.keys.map((k) => h("tr", {
        "data-key": k.key,
        class: cap != null && k.running >= cap ? "key-at-cap" : null,
      },
      h("th", { scope: "row", class: "mono" }, k.key),
      h("td", { class: "num", "data-count": "running",
        title: cap != null ? `cap ${cap} per key` : null }, count(k.running)),
      h("td", { class: "num", "data-count": "queued" },
        k.queued >= COUNT_MAX ? `${count(COUNT_MAX)}+` : count(k.queued)))))));
}

function runLink(id) {
  return h("a", { href: `#/runs/${id}`, class: "mono" }, id);
}

function debounceTable(keys) {
  const title = "Pending debounce runs";
  if (!keys.debounces.length) {
    return section("queue-debounces", title,
      h("p", { class: "empty" }, "No debounced run of this queue is pending."));
  }
  return section("queue-debounces", title,
    h("table", {},
      h("caption", { class: "sr-only" }, "Debounce keys with the run they will start"),
      head(["Workflow", "Key", "Run", "Starts", "Deadline"], []),
      h("tbody", {}, keys.debounces.map((d) => h("tr", { "data-run-id": d.run_id },
        h("td", {}, d.workflow),
        h("th", { scope: "row", class: "mono" }, d.key),
        h("td", {}, runLink(d.run_id)),
        h("td", {}, time(d.run_at)),
        h("td", {}, d.deadline ? time(d.deadline) : h("span", { class: "muted" }, "none")))))));
}

function singletonTable(keys) {
  const title = "Active singleton runs";
  if (!keys.singletons.length) {
    return section("queue-singletons", title,
      h("p", { class: "empty" }, "No singleton run of this queue is active."));
  }
  return section("queue-singletons", title,
    h("table", {},
      h("caption", { class: "sr-only" }, "Singleton keys with their active run"),
      head(["Workflow", "Key", "Run", "Status"], []),
      h("tbody", {}, keys.singletons.map((s) => h("tr", { "data-run-id": s.run_id },
        h("td", {}, s.workflow),
        h("th", { scope: "row", class: "mono" }, s.key),
        h("td", {}, runLink(s.run_id)),
        h("td", {}, badge(s.status)))))));
}
