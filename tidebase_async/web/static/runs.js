// #/runs?status=&workflow=&queue=&dedupe_key=&cursor= : the runs list, filtered, paged,
// refreshed live from GET /events (ids of runs that changed) with a slow poll as the floor
// (a run enqueued while no worker runs changes nothing that /events hears of).

import { get, stream } from "./api.js";
import { alert, badge, duration, h, replace, STATUSES, throttle, time, UUID_RE } from "./ui.js";

const FILTERS = ["status", "workflow", "queue", "dedupe_key"];
const POLL_MS = 5000;

function runsHash(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const s = q.toString();
  return s ? `#/runs?${s}` : "#/runs";
}

export async function render(ctx) {
  const { main, query, signal } = ctx;
  ctx.title("Runs");
  const filters = Object.fromEntries(FILTERS.map((k) => [k, query.get(k) || ""]));
  const cursor = query.get("cursor") || "";

  const status = h("select", { id: "f-status", name: "status" },
    h("option", { value: "" }, "any"),
    STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s)),
    // A status the API does not know stays visible, so that its error makes sense.
    filters.status && !STATUSES.includes(filters.status)
      ? h("option", { value: filters.status, selected: true }, filters.status) : null);
  const workflow = h("input", { id: "f-workflow", name: "workflow", value: filters.workflow,
    autocomplete: "off" });
  const queue = h("input", { id: "f-queue", name: "queue", value: filters.queue,
    autocomplete: "off" });
  const search = h("input", { id: "f-search", name: "search", type: "search",
    value: filters.dedupe_key, placeholder: "run id or dedupe key", autocomplete: "off" });

  const apply = () => {
    const text = search.value.trim();
    if (UUID_RE.test(text)) {
      location.hash = `#/runs/${text.toLowerCase()}`;
      return;
    }
    location.hash = runsHash({ status: status.value, workflow: workflow.value.trim(),
      queue: queue.value.trim(), dedupe_key: text });
  };
  status.addEventListener("change", apply);

  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter runs",
    onsubmit: (e) => { e.preventDefault(); apply(); } },
    h("div", {}, h("label", { for: "f-status" }, "Status"), status),
    h("div", {}, h("label", { for: "f-workflow" }, "Workflow"), workflow),
    h("div", {}, h("label", { for: "f-queue" }, "Queue"), queue),
    h("div", { class: "grow" }, h("label", { for: "f-search" }, "Search"), search),
    h("div", { class: "buttons" },
      h("button", { type: "submit" }, "Apply"),
      h("a", { href: "#/runs", class: "button secondary" }, "Clear")));

  const message = h("div", { id: "runs-message" });
  const body = h("tbody");
  const table = h("table", { class: "runs", id: "runs-table" },
    h("caption", { class: "sr-only" }, "Runs, newest first"),
    h("thead", {}, h("tr", {},
      ["Run", "Workflow", "Queue", "Status", "Attempt", "Created", "Duration"]
        .map((t) => h("th", { scope: "col" }, t)))),
    body);
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });

  replace(main, h("h1", { tabindex: "-1" }, "Runs"), form, message, table, pager);

  async function load() {
    let page;
    try {
      page = await get("runs", { ...filters, cursor, limit: 50 }, signal);
    } catch (exc) {
      if (signal.aborted || exc.status === 401) return;
      table.hidden = true;
      replace(pager);
      replace(message, alert(`Could not list runs: ${exc.message}`));
      return;
    }
    if (signal.aborted) return;
    const focused = document.activeElement?.id;
    table.hidden = false;
    replace(message);
    replace(body, page.items.map(row));
    if (!page.items.length) {
      const filtered = FILTERS.some((k) => filters[k]);
      replace(body, h("tr", {}, h("td", { colspan: "7", class: "empty" },
        filtered ? "No runs match these filters." : "No runs yet.")));
    }
    replace(pager,
      cursor ? h("a", { href: runsHash(filters) }, "← First page") : null,
      page.next_cursor
        ? h("a", { href: runsHash({ ...filters, cursor: page.next_cursor }), rel: "next" },
          "Next page →")
        : null);
    // A live refresh must not take the keyboard focus away from a row's link.
    const again = focused && document.getElementById(focused);
    if (again && body.contains(again) && again !== document.activeElement) again.focus();
  }

  await load();
  if (signal.aborted) return;
  const refresh = throttle(load, 300);
  stream("events", {
    signal,
    onEvent: (ev) => {
      if (ev.event === "runs") refresh();
    },
    onState: ctx.setLive,
  });
  const timer = setInterval(refresh, POLL_MS);
  signal.addEventListener("abort", () => clearInterval(timer), { once: true });
}

function row(run) {
  const active = run.status === "queued" || run.status === "running" || run.status === "waiting";
  return h("tr", { "data-run-id": run.id, class: `run-${run.status}` },
    h("td", {}, h("a", { href: `#/runs/${run.id}`, class: "run-id", id: `run-${run.id}` },
      run.id)),
    h("td", {}, run.workflow, run.version != null
      ? [" ", h("span", { class: "version", title: "workflow version" }, `v${run.version}`)]
      : null),
    h("td", {}, run.queue),
    h("td", {}, badge(run.status)),
    h("td", { class: "num" }, run.attempt),
    h("td", {}, time(run.created_at)),
    h("td", { class: "num" }, duration(run.started_at, run.finished_at, active)));
}
