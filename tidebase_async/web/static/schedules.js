// #/schedules : schedules with cron or interval, timezone, next and last fire; pause/resume.

import { get, post, stream } from "./api.js";
import { alert, h, replace, seconds, throttle, time } from "./ui.js";

const POLL_MS = 5000;

function until(iso) {
  if (!iso) return "";
  const s = (Date.parse(iso) - Date.now()) / 1000;
  if (Number.isNaN(s)) return "";
  return s >= 0 ? `in ${seconds(s)}` : `${seconds(-s)} ago`;
}

export async function render(ctx) {
  const { main, signal } = ctx;
  ctx.title("Schedules");
  const message = h("div", { id: "schedules-message", role: "status", "aria-live": "polite" });
  const content = h("div");
  replace(main, h("h1", { tabindex: "-1" }, "Schedules"), message, content);

  async function load() {
    let items;
    try {
      ({ items } = await get("schedules", {}, signal));
    } catch (exc) {
      if (signal.aborted || exc.status === 401) return;
      replace(content, alert(`Could not list the schedules: ${exc.message}`));
      return;
    }
    if (signal.aborted) return;
    const focused = document.activeElement?.id;
    if (!items.length) {
      replace(content, h("p", { class: "empty" },
        "No schedules. Declare one with @tide.workflow(..., schedule=...) or tide.schedules.set()."));
      return;
    }
    replace(content, h("table", { class: "schedules" },
      h("caption", { class: "sr-only" }, "Schedules"),
      h("thead", {}, h("tr", {}, ["Schedule", "Workflow", "When", "Timezone", "Next fire (your time)",
        "Last fire", "Last run", "State", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, items.map((s) => h("tr", { "data-schedule": s.name },
        h("th", { scope: "row", class: "mono" }, s.name),
        h("td", {}, h("a", { href: `#/runs?workflow=${encodeURIComponent(s.workflow)}` },
          s.workflow)),
        h("td", { class: "mono" }, s.cron ? s.cron : s.every != null ? `every ${seconds(s.every)}` : "—"),
        h("td", {}, s.timezone),
        h("td", {}, s.enabled ? [time(s.next_fire_at), " ", h("span", { class: "muted" },
          until(s.next_fire_at))] : h("span", { class: "muted" }, "paused")),
        h("td", {}, time(s.last_fire_at)),
        h("td", {}, s.last_run_id ? h("a", { href: `#/runs/${s.last_run_id}`, class: "run-id" },
          s.last_run_id) : "—"),
        h("td", {}, h("span", { class: `badge ${s.enabled ? "status-active" : "status-paused"}` },
          s.enabled ? "active" : "paused")),
        h("td", {}, h("button", {
          type: "button",
          id: `schedule-toggle-${s.name}`,
          class: s.enabled ? "secondary" : "",
          "aria-label": `${s.enabled ? "Pause" : "Resume"} schedule ${s.name}`,
          onclick: (e) => toggle(e.target, s),
        }, s.enabled ? "Pause" : "Resume")))))));
    const again = focused && document.getElementById(focused);
    if (again) again.focus();
  }

  async function toggle(button, schedule) {
    button.disabled = true;
    const action = schedule.enabled ? "pause" : "resume";
    try {
      await post(`schedules/${encodeURIComponent(schedule.name)}/${action}`, undefined, signal);
      replace(message, h("p", { class: "flash ok" },
        `Schedule "${schedule.name}" ${schedule.enabled ? "paused" : "resumed"}.`));
    } catch (exc) {
      if (signal.aborted || exc.status === 401) return;
      replace(message, alert(`Could not ${action} schedule "${schedule.name}": ${exc.message}`));
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
