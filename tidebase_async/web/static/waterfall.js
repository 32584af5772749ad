// The run page's waterfall: where a run's time went, on one time axis from its creation
// to its end (or now, while it is active). One row per thing that took time: the wait in
// the queue before the first claim, each attempt of the run (a retry's backoff drawn as
// a wait before the next one), each history entry (steps solid; gates, sleeps and events
// hatched as waits, with what they waited for; model requests and tool calls of agent
// runs named as such, with their tokens), and child runs, expandable in place: their own
// rows, indented, on the same axis. Attempts come from the run's event log
// (GET /runs/<id>/event-log: the only place with the time of each claim and retry).
//
// Positions are percentages of the track, set through CSSOM (the CSP forbids style
// attributes, not el.style). The rows are a list; each span is focusable, says what it is
// in its aria-label and shows the same as a tooltip on hover or focus.

import { get } from "./api.js";
import { ACTIVE, count, h, replace, seconds } from "./ui.js";

const WAITS = new Set(["gate", "sleep", "event"]);
/** Events that end a worker's hold on the run (a claim starts one). */
const RELEASES = new Set(["run.retrying", "run.failed", "run.completed", "run.cancelled",
  "run.waiting", "run.released", "run.requeued", "run.reset"]);
const TICK_STEPS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 15e3, 3e4,
  6e4, 12e4, 3e5, 6e5, 9e5, 18e5, 36e5, 72e5, 108e5, 216e5, 432e5, 864e5, 1728e5, 6048e5];

/** The run's whole event log, with times (every page). */
async function eventLog(id, signal) {
  const items = [];
  let after = 0;
  for (let page = 0; page < 50; page += 1) {
    const got = await get(`runs/${encodeURIComponent(id)}/event-log`, { after, limit: 1000 },
      signal);
    items.push(...got.items);
    if (got.next_after == null) break;
    after = got.next_after;
  }
  return items;
}

/** What an agent's step is, from the name Pydantic AI's journal gives it. */
export function agentOp(name) {
  let m = /^(.*)__model\.request(?:_stream)?(#\d+)?$/.exec(name);
  if (m) return { op: "model request", label: `${m[1]}: model request${m[2] ? ` ${m[2]}` : ""}` };
  m = /^(.*?)__.*\.call_tool:(.+?)(#\d+)?$/.exec(name);
  if (m) return { op: "tool call", label: `${m[1]}: tool ${m[2]}${m[3] ? ` ${m[3]}` : ""}` };
  m = /^(.*?)__.*\.(get_tools|list_tools)(#\d+)?$/.exec(name);
  if (m) return { op: "tool listing", label: `${m[1]}: list tools` };
  return null;
}

function tokens(usage) {
  if (!usage || !usage.records) return null;
  return `${count(usage.input_tokens)} in / ${count(usage.output_tokens)} out tokens`;
}

const ms = (iso) => (iso ? Date.parse(iso) : NaN);

/**
 * The stints of the run's attempts: [{attempt, start, end, outcome, data}], in order. A
 * claim counts in the event's data (a fencing token: a resume after a wait claims
 * again); an attempt is what starts with the first claim or after a retry.
 */
function stints(events, endMs) {
  const out = [];
  let open = null;
  let attempt = 0;
  let retried = true;
  for (const ev of events) {
    const at = ms(ev.at);
    if (ev.type === "run.claimed") {
      if (open) out.push({ ...open, end: at, outcome: "run.released" });
      if (retried) attempt += 1;
      retried = false;
      open = { attempt, start: at };
    } else if (ev.type === "run.retrying" || ev.type === "run.retried") {
      retried = true;
      if (open) out.push({ ...open, end: at, outcome: "run.retrying", data: ev.data });
      open = null;
    } else if (open && RELEASES.has(ev.type)) {
      out.push({ ...open, end: at, outcome: ev.type, data: ev.data });
      open = null;
    }
  }
  if (open) out.push({ ...open, end: endMs, outcome: null, live: true });
  return out;
}

function errorText(data) {
  const e = data?.error ?? data;
  if (!e || typeof e !== "object") return null;
  return [e.type, e.message].filter(Boolean).join(": ") || null;
}

/**
 * The waterfall panel. `node` goes into the page once; `update(run)` redraws it for the
 * run as fetched now (the page calls it on every live refresh).
 */
export function waterfallPanel(signal) {
  const node = h("section", { id: "run-waterfall", "aria-labelledby": "waterfall-title" });
  const tip = h("div", { id: "wf-tip", class: "wf-tip", role: "tooltip", hidden: true });
  /** child run id -> {run, events} once fetched; present (null) while expanded & loading */
  const expanded = new Map();
  let current = null; // {run, events}
  let tipFor = null; // the id of the span whose tooltip shows
  let drawn = null; // what the drawing shows, as JSON

  async function update(run) {
    let events;
    try {
      events = await eventLog(run.id, signal);
    } catch {
      if (signal.aborted) return;
      events = current?.run.id === run.id ? current.events : [];
    }
    if (signal.aborted) return;
    current = { run, events };
    // Expanded children that are still running are fetched again with their parent.
    await Promise.all([...expanded.entries()]
      .filter(([, v]) => !v || ACTIVE.has(v.run.status))
      .map(([id]) => loadChild(id)));
    if (signal.aborted) return;
    // A finished run's refresh that changed nothing keeps the drawing (and the hover).
    const seen = JSON.stringify([run, events, [...expanded]]);
    if (seen === drawn && !ACTIVE.has(run.status)) return;
    drawn = seen;
    draw();
  }

  async function loadChild(id) {
    try {
      const [run, events] = await Promise.all([
        get(`runs/${encodeURIComponent(id)}`, {}, signal), eventLog(id, signal)]);
      if (expanded.has(id)) expanded.set(id, { run, events });
    } catch {
      // shown as "could not load" below; the next refresh tries again
    }
  }

  async function toggle(ids) {
    const open = ids.every((id) => expanded.has(id));
    for (const id of ids) {
      if (open) expanded.delete(id);
      else expanded.set(id, null);
    }
    draw();
    if (!open) {
      await Promise.all(ids.map(loadChild));
      if (!signal.aborted) draw();
    }
  }

  function draw() {
    if (!current) return;
    const { run, events } = current;
    const focused = node.contains(document.activeElement) ? document.activeElement.id : null;
    const t0 = ms(run.created_at);
    const t1 = run.finished_at ? ms(run.finished_at) : Date.now();
    const axis = { t0, span: Math.max(1, t1 - t0), now: Date.now() };
    const list = h("ul", { class: "wf-rows", role: "list", "aria-label": "Where the time went" },
      rowsOf(run, events, axis, 0));
    replace(node, h("h2", { id: "waterfall-title" }, "Waterfall"),
      h("p", { class: "muted wf-total" }, `${seconds(axis.span / 1000)} from creation to `,
        run.finished_at ? "the end" : "now", "."),
      h("div", { class: "wf" }, ticks(axis), list), tip);
    const again = focused && document.getElementById(focused);
    if (again) {
      again.focus();
    } else if (tipFor) {
      hideTip();
    }
  }

  // -- rows ---------------------------------------------------------------------------

  function rowsOf(run, events, axis, depth) {
    const end = run.finished_at ? ms(run.finished_at) : axis.now;
    const key = run.id.slice(0, 8);
    const rows = [];
    const all = stints(events, end);
    const firstClaim = all.length ? all[0].start : ACTIVE.has(run.status) ? end : NaN;
    if (!Number.isNaN(firstClaim)) {
      const waited = firstClaim - ms(run.created_at);
      rows.push(row({ kind: "queue", depth, name: "Queued", note: `waited ${seconds(waited / 1000)}`,
        spans: [{ id: `wf-${key}-queue`, cls: "wf-wait wf-queue", start: ms(run.created_at),
          end: firstClaim, name: "Queued", kind: "queue wait", live: !all.length }] }, axis));
    }
    const attempts = [...new Set(all.map((s) => s.attempt))];
    attempts.forEach((attempt, i) => {
      const own = all.filter((s) => s.attempt === attempt);
      const last = own[own.length - 1];
      const failed = last.outcome === "run.retrying" || last.outcome === "run.failed";
      const spans = [];
      const prev = i > 0 ? all.filter((s) => s.attempt === attempts[i - 1]).at(-1) : null;
      if (prev && prev.outcome === "run.retrying") {
        spans.push({ id: `wf-${key}-backoff-${attempt}`, cls: "wf-wait wf-backoff", start: prev.end,
          end: own[0].start, name: `Backoff before attempt ${attempt}`, kind: "retry wait" });
      }
      own.forEach((s, j) => spans.push({ id: `wf-${key}-attempt-${attempt}-${j + 1}`,
        cls: `wf-attempt${failed && s === last ? " wf-failed" : ""}`, start: s.start, end: s.end,
        name: `Attempt ${attempt}`, kind: s === last && failed ? "attempt, failed" : "attempt",
        attempt, live: s.live, extra: s === last && failed ? errorText(s.data) : null }));
      rows.push(row({ kind: "attempt", depth, name: `Attempt ${attempt}`, failed, attempt,
        note: failed ? (last.outcome === "run.retrying" ? "failed, retried" : "failed")
          : last.live ? "running" : null, spans }, axis));
    });
    run.steps.forEach((s, i) => rows.push(entryRow(run, events, s, i, axis, depth, end)));
    rows.push(...openWaits(run, events, axis, depth, end));
    return rows;
  }

  function entryRow(run, events, s, i, axis, depth, end) {
    const key = run.id.slice(0, 8);
    const start = ms(s.started_at);
    const stop = s.finished_at ? ms(s.finished_at) : end;
    const agent = s.kind === "step" ? agentOp(s.name) : null;
    const tok = tokens(s.usage);
    const isWait = WAITS.has(s.kind);
    const kindName = agent ? agent.op : isWait ? `${s.kind} wait` : s.kind;
    const name = agent ? agent.label : isWait ? `${s.kind} ${s.name}` : s.name;
    const took = seconds((stop - start) / 1000);
    const note = [isWait ? `waited ${took}` : null, tok,
      s.attempt > 1 ? `attempt ${s.attempt}` : null].filter(Boolean).join(", ") || null;
    const cls = [isWait ? "wf-wait" : "wf-step", `wf-${s.kind}`, agent ? `wf-${agent.op.replace(" ", "-")}` : null,
      s.status === "failed" ? "wf-failed" : null].filter(Boolean).join(" ");
    const span = { id: `wf-${key}-entry-${i + 1}`, cls, start, end: stop, name, kind: kindName,
      attempt: s.attempt, tokens: tok, live: !s.finished_at,
      extra: s.error ? [s.error.type, s.error.message].filter(Boolean).join(": ") : null };
    const kids = s.kind === "child" || s.kind === "fanout" ? childIds(run, events, s) : [];
    return row({ kind: s.kind, op: agent?.op, depth, name, entry: s.name, note, spans: [span],
      failed: s.status === "failed", kids, tokens: s.usage }, axis);
  }

  /** Waits the run is in now: they have no history entry until they end. */
  function openWaits(run, events, axis, depth, end) {
    const key = run.id.slice(0, 8);
    const rows = [];
    const waitRow = (kind, id, name, since, extra) => row({ kind, depth, name, open: true,
      note: `waiting ${seconds((end - since) / 1000)}`, spans: [{ id, cls: `wf-wait wf-${kind}`,
        start: since, end, name, kind: `${kind} wait`, live: true, extra }] }, axis);
    for (const g of run.gates.filter((x) => x.status === "pending")) {
      rows.push(waitRow("gate", `wf-${key}-gate-${g.name}`, `gate ${g.name}`, ms(g.created_at)));
    }
    for (const w of (run.event_waits || []).filter((x) => x.status === "waiting")) {
      rows.push(waitRow("event", `wf-${key}-event-${w.wait}`, `event ${w.name}`,
        ms(w.created_at), `key ${w.key}`));
    }
    if (run.status === "waiting" && run.wake_at) {
      const started = events.filter((e) => e.type === "sleep.started").at(-1);
      if (started) {
        rows.push(waitRow("sleep", `wf-${key}-sleep`, `sleep ${started.data?.name ?? ""}`.trim(),
          ms(started.at), `wakes ${new Date(run.wake_at).toLocaleTimeString()}`));
      }
    }
    return rows;
  }

  /** The child runs a child/fanout entry started (from its child.started event). */
  function childIds(run, events, s) {
    const started = events.find((e) => e.type === "child.started" && e.data?.name === s.name);
    if (started && Array.isArray(started.data.children)) return started.data.children;
    // Before the event log loads (or a release without it): children created in the entry.
    const a = ms(s.started_at);
    const b = s.finished_at ? ms(s.finished_at) : Infinity;
    return run.children.filter((c) => ms(c.created_at) >= a - 1 && ms(c.created_at) <= b)
      .map((c) => c.id);
  }

  function row(spec, axis) {
    const { kind, depth, name, note, spans, kids = [] } = spec;
    const open = kids.length > 0 && kids.every((id) => expanded.has(id));
    const label = h("div", { class: "wf-label" });
    label.style.paddingLeft = `${depth * 1.25}rem`;
    if (kids.length) {
      const button = h("button", { type: "button", class: "wf-toggle link",
        id: `${spans[0].id}-toggle`, "aria-expanded": open ? "true" : "false",
        onclick: () => toggle(kids) },
      h("span", { "aria-hidden": "true", class: "wf-caret" }, open ? "▾" : "▸"), " ",
      h("span", { class: "wf-name" }, name),
      h("span", { class: "sr-only" }, ` (${kids.length === 1 ? "child run" : `${kids.length} child runs`})`));
      label.append(button);
    } else {
      label.append(h("span", { class: "wf-name" }, name));
    }
    if (note) label.append(" ", h("span", { class: "wf-note" }, note));
    const li = h("li", { class: `wf-row wf-row-${kind}${spec.failed ? " wf-row-failed" : ""}`,
      role: "listitem", "data-kind": kind, "data-depth": depth, "data-op": spec.op,
      "data-entry": spec.entry, "data-attempt": spec.attempt,
      "data-input-tokens": spec.tokens?.records ? spec.tokens.input_tokens : null,
      "data-output-tokens": spec.tokens?.records ? spec.tokens.output_tokens : null },
    label, h("div", { class: "wf-track" }, spans.map((s) => bar(s, axis))));
    if (open) li.append(h("ul", { class: "wf-rows wf-nested", role: "list",
      "aria-label": `Child runs of ${name}` }, kids.map((id) => childRows(id, axis, depth + 1))));
    return li;
  }

  function childRows(id, axis, depth) {
    const got = expanded.get(id);
    if (!got) {
      return h("li", { class: "wf-row wf-row-loading", role: "listitem", "data-child": id },
        h("div", { class: "wf-label muted" }, "Loading the child run…"), h("div"));
    }
    const { run, events } = got;
    const start = ms(run.created_at);
    const end = run.finished_at ? ms(run.finished_at) : axis.now;
    const head = row({ kind: "run", depth, name: run.workflow, note: run.status,
      failed: run.status === "failed",
      spans: [{ id: `wf-${run.id.slice(0, 8)}-run`, cls: `wf-run wf-status-${run.status}`, start, end,
        name: `child run ${run.workflow}`, kind: "child run", attempt: run.attempt,
        live: !run.finished_at }] }, axis);
    head.setAttribute("data-child", id);
    head.querySelector(".wf-name").replaceWith(h("a", { href: `#/runs/${id}`, class: "wf-name" },
      run.workflow));
    head.append(h("ul", { class: "wf-rows wf-nested", role: "list",
      "aria-label": `Timeline of child run ${run.workflow}` }, rowsOf(run, events, axis, depth + 1)));
    return head;
  }

  // -- spans and the tooltip ----------------------------------------------------------

  function describe(s, axis) {
    const from = seconds((s.start - axis.t0) / 1000);
    const took = seconds((s.end - s.start) / 1000);
    return [s.name, s.kind, `starts at +${from}`, `${s.live ? "so far " : ""}${took}`,
      s.attempt ? `attempt ${s.attempt}` : null, s.tokens, s.extra].filter(Boolean);
  }

  function bar(s, axis) {
    if (Number.isNaN(s.start) || Number.isNaN(s.end)) return null;
    const left = Math.min(100, Math.max(0, ((s.start - axis.t0) / axis.span) * 100));
    const width = Math.max(0, Math.min(100 - left, ((s.end - s.start) / axis.span) * 100));
    const parts = describe(s, axis);
    const el = h("span", { class: `wf-span ${s.cls}${s.live ? " wf-live" : ""}`, id: s.id,
      tabindex: "0", role: "img", "aria-label": parts.join(", "),
      "data-start-ms": Math.round(s.start - axis.t0), "data-duration-ms": Math.round(s.end - s.start),
      onmouseenter: () => showTip(el, parts), onmouseleave: () => hideTip(),
      onfocus: () => showTip(el, parts), onblur: () => hideTip() });
    el.style.left = `${left}%`;
    el.style.width = `${width}%`;
    return el;
  }

  function showTip(el, parts) {
    tipFor = el.id;
    replace(tip, h("strong", {}, parts[0]), parts.slice(1).map((p) => h("span", {}, p)));
    tip.hidden = false;
    const box = el.getBoundingClientRect();
    const host = node.getBoundingClientRect();
    tip.style.left = `${Math.max(0, Math.min(box.left - host.left, host.width - 260))}px`;
    tip.style.top = `${box.bottom - host.top + 4}px`;
    el.setAttribute("aria-describedby", "wf-tip");
  }

  function hideTip() {
    tipFor = null;
    tip.hidden = true;
  }

  return { node, update };
}

/** The axis: ticks at a round step in human units. */
function ticks(axis) {
  const step = TICK_STEPS_MS.find((s) => axis.span / s <= 8) ?? TICK_STEPS_MS.at(-1);
  const marks = [];
  for (let t = 0; t <= axis.span + 0.5; t += step) {
    const mark = h("span", { class: "wf-tick", "data-ms": t }, t === 0 ? "0" : seconds(t / 1000));
    mark.style.left = `${(t / axis.span) * 100}%`;
    marks.push(mark);
  }
  return h("div", { class: "wf-axis", "aria-hidden": "true" }, h("div", { class: "wf-label" }),
    h("div", { class: "wf-track" }, marks));
}
