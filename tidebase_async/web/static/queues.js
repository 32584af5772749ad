// #/queues : every queue with its controls (per-key ones too) and its runs counted by
// status; pause/resume. A queue's name leads to its page (#/queues/<name>, queue.js).
// Below, the queued runs of versioned workflows per version with the live workers that
// have that version (none: those runs stay queued until such a worker starts).
// Refreshed live from GET /events, with a slow poll as the floor.

import { get, post, stream } from "./api.js";
import { alert, h, replace, seconds, STATUSES, throttle } from "./ui.js";

const POLL_MS = 5000;

export async function render(ctx) {
  const { main, signal } = ctx;
  ctx.title("Queues");
  const message = h("div", { id: "queues-message", role: "status", "aria-live": "polite" });
  const content = h("div");
  replace(main, h("h1", { tabindex: "-1" }, "Queues"), message, content);

  async function load() {
    let items;
    try {
      ({ items } = await get("queues", {}, signal));
    } catch (exc) {
      if (signal.aborted || exc.status === 401) return;
      replace(content, alert(`Could not list the queues: ${exc.message}`));
      return;
    }
    if (signal.aborted) return;
    const focused = document.activeElement?.id;
    if (!items.length) {
      replace(content, h("p", { class: "empty" }, "No queues yet: a queue appears with its first run."));
      return;
    }
    replace(content, h("table", { class: "queues" },
      h("caption", { class: "sr-only" }, "Queues with their runs counted by status"),
      h("thead", {}, h("tr", {},
        ["Queue", "State", "Concurrency", "Rate / min", "Per key", ...STATUSES, ""].map((t) =>
          h("th", { scope: "col", class: STATUSES.includes(t) ? "num" : null }, t)))),
      h("tbody", {}, items.map((q) => h("tr", { "data-queue": q.name },
        h("th", { scope: "row", class: "mono" },
          h("a", { href: `#/queues/${encodeURIComponent(q.name)}` }, q.name)),
        h("td", {}, h("span", { class: `badge ${q.paused ? "status-paused" : "status-active"}` },
          q.paused ? "paused" : "active")),
        h("td", { class: "num" }, q.concurrency ?? "no limit"),
        h("td", { class: "num" }, q.rate_per_minute ?? "no limit"),
        h("td", { "data-per-key": "" }, perKey(q)),
        STATUSES.map((s) => h("td", { class: "num" },
          q.counts[s] ? h("a", { href: `#/runs?queue=${encodeURIComponent(q.name)}&status=${s}`,
            "aria-label": `${q.counts[s]} ${s} runs in ${q.name}` }, q.counts[s]) : "0")),
        h("td", {}, h("button", {
          type: "button",
          id: `queue-toggle-${q.name}`,
          class: q.paused ? "" : "secondary",
          "aria-label": `${q.paused ? "Resume" : "Pause"} queue ${q.name}`,
          onclick: (e) => toggle(e.target, q),
        }, q.paused ? "Resume" : "Pause")))))), versionsTable(items));
    const again = focused && document.getElementById(focused);
    if (again) again.focus();
  }

  async function toggle(button, queue) {
    button.disabled = true;
    try {
      await post(`queues/${encodeURIComponent(queue.name)}`, { paused: !queue.paused }, signal);
      replace(message, h("p", { class: "flash ok" },
        `Queue "${queue.name}" ${queue.paused ? "resumed" : "paused"}.`));
    } catch (exc) {
      if (signal.aborted || exc.status === 401) return;
      replace(message, alert(`Could not change queue "${queue.name}": ${exc.message}`));
    }
    await load();
  }

  await load();
  if (signal.aborted) return;
  const refresh = throttle(load, 500);
  stream("events", { signal, onEvent: refresh, onState: ctx.setLive });
  const timer = setInterval(refresh, POLL_MS);
  signal.addEventListener("abort", () => clearInterval(timer), { once: true });
}

/** A queue's per-key controls in a few words ("2 running, 60 / min"). */
function perKey(q) {
  const parts = [];
  if (q.per_key_concurrency != null) parts.push(`max ${q.per_key_concurrency} running`);
  if (q.per_key_rate_per_minute != null) parts.push(`${q.per_key_rate_per_minute} / min`);
  return parts.length ? parts.join(", ") : "no limit";
}

/** Queued runs of versioned workflows, per queue, workflow and version. */
function versionsTable(items) {
  const rows = items.flatMap((q) => (q.versions || []).map((v) => ({ queue: q.name, ...v })));
  const title = h("h2", { id: "versions-title" }, "Queued runs by version");
  if (!rows.length) {
    return h("section", { id: "queue-versions", "aria-labelledby": "versions-title" }, title,
      h("p", { class: "empty" }, "No queued runs of a versioned workflow."));
  }
  return h("section", { id: "queue-versions", "aria-labelledby": "versions-title" }, title,
    h("table", { class: "versions" },
      h("caption", { class: "sr-only" },
        "Queued runs per workflow version, with the live workers that have that version"),
      h("thead", {}, h("tr", {}, ["Queue", "Workflow", "Version", "Queued", "Oldest waits",
        "Live workers"].map((t) => h("th", { scope: "col",
        class: ["Queued", "Oldest waits", "Live workers"].includes(t) ? "num" : null }, t)))),
      h("tbody", {}, rows.map((v) => h("tr", {
        "data-queue": v.queue, "data-workflow": v.workflow, "data-version": v.version,
        class: v.workers ? null : "version-stuck",
      },
      h("td", { class: "mono" }, v.queue),
      h("td", {}, h("a", { href: `#/runs?workflow=${encodeURIComponent(v.workflow)}&status=queued` },
        v.workflow)),
      h("th", { scope: "row", class: "mono" }, v.version),
      h("td", { class: "num" }, v.queued),
      h("td", { class: "num" }, seconds(v.oldest_s)),
      h("td", { class: "num" }, v.workers ? String(v.workers)
        : h("span", { class: "no-worker" }, "0 · no worker has this version")))))));
}
