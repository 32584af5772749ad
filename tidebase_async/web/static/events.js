// #/events?status=&name=&key=&cursor= : events sent by key (GET /keyed-events; stored
// ones are kept for the next run that waits for them) and the runs waiting for one
// (GET /event-waits). Refreshed live from GET /events, with a slow poll as the floor.

import { get, stream } from "./api.js";
import { alert, badge, compact, h, replace, throttle, time } from "./ui.js";

const POLL_MS = 5000;
const EVENT_STATUSES = ["stored", "delivered", "consumed"];
const FILTERS = ["status", "name", "key"];

function eventsHash(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const s = q.toString();
  return s ? `#/events?${s}` : "#/events";
}

export async function render(ctx) {
  const { main, query, signal } = ctx;
  ctx.title("Events");
  // Every status by default: the page shows what was sent, stored or not.
  const filters = Object.fromEntries(FILTERS.map((k) => [k, query.get(k) || ""]));
  const cursor = query.get("cursor") || "";

  const status = h("select", { id: "e-status", name: "status" },
    h("option", { value: "" }, "any"),
    EVENT_STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s)),
    filters.status && !EVENT_STATUSES.includes(filters.status)
      ? h("option", { value: filters.status, selected: true }, filters.status) : null);
  const name = h("input", { id: "e-name", name: "name", value: filters.name, autocomplete: "off" });
  const key = h("input", { id: "e-key", name: "key", value: filters.key, autocomplete: "off" });
  const apply = () => {
    location.hash = eventsHash({ status: status.value, name: name.value.trim(),
      key: key.value.trim() });
  };
  status.addEventListener("change", apply);
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter events",
    onsubmit: (e) => { e.preventDefault(); apply(); } },
  h("div", {}, h("label", { for: "e-status" }, "Status"), status),
  h("div", {}, h("label", { for: "e-name" }, "Event"), name),
  h("div", { class: "grow" }, h("label", { for: "e-key" }, "Key"), key),
  h("div", { class: "buttons" },
    h("button", { type: "submit" }, "Apply"),
    h("a", { href: "#/events", class: "button secondary" }, "Clear")));

  const message = h("div", { id: "events-message" });
  const body = h("tbody");
  const table = h("table", { class: "keyed-events", id: "keyed-events" },
    h("caption", {}, "Events sent by key, oldest first"),
    h("thead", {}, h("tr", {}, ["Event", "Key", "Status", "Sent", "Expires", "Received by",
      "Payload"].map((t) => h("th", { scope: "col" }, t)))),
    body);
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  const waits = h("section", { id: "event-waits", "aria-labelledby": "waits-title" });

  replace(main, h("h1", { tabindex: "-1" }, "Events"),
    h("p", { class: "muted" }, "Events sent with tide.events.send or POST /events. One sent "
      + "while no run waits for its name and key is stored until it expires, for the next "
      + "run that waits for them."),
    form, message, table, pager, waits);

  async function loadEvents() {
    let page;
    try {
      page = await get("keyed-events", { status: filters.status || "all", name: filters.name,
        key: filters.key, cursor, limit: 50 }, signal);
    } catch (exc) {
      if (signal.aborted || exc.status === 401) return;
      table.hidden = true;
      replace(pager);
      replace(message, alert(`Could not list the events: ${exc.message}`));
      return;
    }
    if (signal.aborted) return;
    table.hidden = false;
    replace(message);
    if (!page.items.length) {
      const filtered = FILTERS.some((k) => filters[k]);
      replace(body, h("tr", {}, h("td", { colspan: "7", class: "empty" },
        filtered ? "No events match these filters." : "No events sent (or all past their retention).")));
    } else {
      replace(body, page.items.map(eventRow));
    }
    replace(pager,
      cursor ? h("a", { href: eventsHash(filters) }, "← First page") : null,
      page.next_cursor
        ? h("a", { href: eventsHash({ ...filters, cursor: page.next_cursor }), rel: "next" },
          "Next page →")
        : null);
  }

  async function loadWaits() {
    let items;
    try {
      ({ items } = await get("event-waits", { name: filters.name, key: filters.key, limit: 100 },
        signal));
    } catch (exc) {
      if (signal.aborted || exc.status === 401) return;
      replace(waits, h("h2", { id: "waits-title" }, "Runs waiting for an event"),
        alert(`Could not list the waiting runs: ${exc.message}`));
      return;
    }
    if (signal.aborted) return;
    replace(waits, h("h2", { id: "waits-title" }, "Runs waiting for an event"),
      items.length ? h("table", { class: "event-waits" },
        h("caption", { class: "sr-only" }, "Open waits for events by key, oldest first"),
        h("thead", {}, h("tr", {}, ["Run", "Event", "Key", "Waiting since", "Times out"]
          .map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, items.map((w) => h("tr", { "data-run-id": w.run_id, "data-event": w.name },
          h("td", {}, h("a", { href: `#/runs/${w.run_id}`, class: "run-id" }, w.run_id)),
          h("td", { class: "mono" }, w.name),
          h("td", { class: "mono" }, w.key),
          h("td", {}, time(w.created_at)),
          h("td", {}, w.expires_at ? time(w.expires_at) : h("span", { class: "muted" }, "never"))))))
        : h("p", { class: "empty" }, "No run is waiting for an event."));
  }

  async function load() {
    const focused = document.activeElement?.id;
    await Promise.all([loadEvents(), loadWaits()]);
    const again = focused && document.getElementById(focused);
    if (again && again !== document.activeElement) again.focus();
  }

  await load();
  if (signal.aborted) return;
  const refresh = throttle(load, 500);
  stream("events", { signal, onEvent: refresh, onState: ctx.setLive });
  const timer = setInterval(refresh, POLL_MS);
  signal.addEventListener("abort", () => clearInterval(timer), { once: true });
}

function eventRow(e) {
  const payload = e.payload === null || e.payload === undefined ? null : compact(e.payload);
  return h("tr", { "data-event-id": e.id, "data-event": e.name, "data-key": e.key },
    h("td", { class: "mono" }, e.name),
    h("td", { class: "mono" }, e.key),
    h("td", {}, badge(e.status)),
    h("td", {}, time(e.sent_at)),
    h("td", {}, time(e.expires_at)),
    h("td", {}, e.received_by.length
      ? e.received_by.map((rid, i) => [i ? ", " : null,
        h("a", { href: `#/runs/${rid}`, class: "run-id" }, rid)])
      : h("span", { class: "muted" }, "nobody yet")),
    h("td", {}, payload === null ? h("span", { class: "muted" }, "none")
      : h("code", { class: "payload" }, payload.length > 120 ? `${payload.slice(0, 119)}…` : payload)));
}
