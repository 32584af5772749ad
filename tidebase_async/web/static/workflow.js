// #/workflows/<name>?range= : one workflow (GET /workflows/{name}): its success rate and
// runs per bucket, counts and durations per version (a chart of p50/p95 and a table),
// its recent failures leading to their runs, and its schedules. Live like the overview.

import { get } from "./api.js";
import { refocus, rowChart } from "./charts.js";
import { errorText, follow, msCell, percent, rangeOf, rangePicker, runsChart, section, stat,
  totals }
  from "./overview.js";
import { alert, count, h, replace, seconds, time } from "./ui.js";

export async function render(ctx) {
  const { main, query, signal, params } = ctx;
  const name = params[0];
  ctx.title(`Workflow ${name}`);
  const range = rangeOf(query);
  const link = encodeURIComponent(name);
  const message = h("div", { id: "workflow-message" });
  const asOf = h("p", { class: "muted as-of", id: "workflow-as-of" });
  const content = h("div", { id: "workflow" });
  replace(main,
    h("p", { class: "crumbs" }, h("a", { href: `#/overview?range=${range}` }, "Overview"), " › "),
    h("div", { class: "page-head" },
      h("h1", { tabindex: "-1" }, "Workflow ", h("span", { class: "mono" }, name)),
      rangePicker(range, (r) => `#/workflows/${link}?range=${r}`)),
    asOf, message, content);

  async function load() {
    let data;
    try {
      data = await get(`workflows/${link}`, { range }, signal);
    } catch (exc) {
      if (signal.aborted || exc.status === 401) return;
      replace(message, alert(exc.status === 404 ? `There is no workflow "${name}".`
        : `Could not load workflow "${name}": ${exc.message}`));
      return;
    }
    if (signal.aborted) return;
    const focused = document.activeElement?.id;
    replace(message);
    replace(asOf, "As of ", time(data.now), " · ",
      h("a", { href: `#/runs?workflow=${link}` }, "its runs"));
    content.dataset.range = data.range;
    content.dataset.bucketS = data.bucket_s;
    const sum = totals(data.series);
    replace(content,
      section("workflow-runs", "Runs",
        h("dl", { class: "stats" },
          stat("wf-success-rate", "Success rate", percent(data.success_rate)),
          stat("wf-started", "Started", count(sum.started)),
          stat("wf-completed", "Completed", count(sum.completed)),
          stat("wf-failed", "Failed", count(sum.failed)),
          stat("wf-cancelled", "Cancelled", count(sum.cancelled)),
          stat("wf-duration-p50", "Duration p50", ms(data.duration_p50_ms)),
          stat("wf-duration-p95", "Duration p95", ms(data.duration_p95_ms)),
          stat("wf-wait-p50", "Wait p50", ms(data.wait_p50_ms)),
          stat("wf-wait-p95", "Wait p95", ms(data.wait_p95_ms))),
        runsChart("workflow-chart", data, `Runs of ${name}`)),
      section("workflow-versions", "Versions", versions(data.versions)),
      section("workflow-failures", "Recent failures", failures(data.recent_failures)),
      section("workflow-schedules", "Schedules", schedules(data.schedules)));
    refocus(focused);
  }

  await load();
  if (signal.aborted) return;
  follow(ctx, load);
}

const ms = (value) => (value === null || value === undefined ? "—" : seconds(value / 1000));

const versionName = (v) => (v.version === null || v.version === undefined ? "unversioned"
  : `v${v.version}`);

function versions(items) {
  if (!items.length) return h("p", { class: "empty" }, "No runs in this range.");
  const timed = items.filter((v) => v.duration_p50_ms != null || v.duration_p95_ms != null);
  const chart = timed.length ? rowChart({
    id: "duration-chart",
    summary: `Duration by version: ${timed.map((v) => `${versionName(v)} p50 `
      + `${seconds((v.duration_p50_ms ?? 0) / 1000)}, p95 `
      + `${seconds((v.duration_p95_ms ?? 0) / 1000)}`).join("; ")}`,
    caption: "Duration by version (50th and 95th percentiles)",
    keys: [{ key: "p50", label: "p50", cls: "k-p50" }, { key: "p95", label: "p95", cls: "k-p95" }],
    format: ms,
    items: timed.map((v) => ({ name: v.version ?? "", label: versionName(v),
      values: { p50: v.duration_p50_ms, p95: v.duration_p95_ms } })),
  }) : null;
  const table = h("table", { class: "versions", id: "versions-table" },
    h("caption", { class: "sr-only" }, "Runs and durations per version"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Version"),
      ["Started", "Completed", "Failed", "Cancelled", "Success", "Duration p50",
        "Duration p95"].map((t) => h("th", { scope: "col", class: "num" }, t)))),
    h("tbody", {}, items.map((v) => h("tr", { "data-version": v.version ?? "" },
      h("th", { scope: "row", class: "mono" }, versionName(v)),
      ["started", "completed", "failed", "cancelled"].map((k) =>
        h("td", { class: "num", "data-col": k }, count(v[k]))),
      h("td", { class: "num", "data-col": "success" }, percent(v.success_rate)),
      msCell(v.duration_p50_ms, "duration_p50"),
      msCell(v.duration_p95_ms, "duration_p95")))));
  return [chart, table];
}

function failures(items) {
  if (!items.length) return h("p", { class: "empty" }, "No failures in this range.");
  return h("table", { class: "failures", id: "failures-table" },
    h("caption", { class: "sr-only" }, "Recent failed runs, newest first"),
    h("thead", {}, h("tr", {},
      ["Run", "Version", "Error", "Failed at"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, items.map((f) => h("tr", { "data-run-id": f.run_id },
      h("td", {}, h("a", { href: `#/runs/${f.run_id}`, class: "run-id" }, f.run_id)),
      h("td", { class: "mono" }, f.version == null ? "—" : `v${f.version}`),
      h("td", { class: "error-text" }, errorText(f.error)),
      h("td", {}, time(f.finished_at))))));
}

function schedules(items) {
  if (!items || !items.length) return h("p", { class: "empty" }, "No schedules start this workflow.");
  return h("table", { class: "schedules", id: "workflow-schedules-table" },
    h("caption", { class: "sr-only" }, "Schedules of this workflow"),
    h("thead", {}, h("tr", {},
      ["Schedule", "When", "Next fire (your time)", "Last run", "State"].map((t) =>
        h("th", { scope: "col" }, t)))),
    h("tbody", {}, items.map((sc) => h("tr", { "data-schedule": sc.name },
      h("th", { scope: "row", class: "mono" }, sc.name),
      h("td", { class: "mono" }, sc.cron ? sc.cron
        : sc.every != null ? `every ${seconds(sc.every)}` : "—"),
      h("td", {}, sc.enabled ? time(sc.next_fire_at) : h("span", { class: "muted" }, "paused")),
      h("td", {}, sc.last_run_id ? h("a", { href: `#/runs/${sc.last_run_id}`, class: "run-id" },
        sc.last_run_id) : "—"),
      h("td", {}, h("span", { class: `badge ${sc.enabled ? "status-active" : "status-paused"}` },
        sc.enabled ? "active" : "paused"))))));
}
