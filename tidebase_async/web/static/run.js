// #/runs/<id> : one run, live. The run's event stream (GET /runs/<id>/events) is shown as
// it arrives, and every event refreshes the rest of the page from GET /runs/<id> (and the
// state history from GET /runs/<id>/state). While the run is active its live output
// (GET /runs/<id>/stream, streams "output" and "agent", see output.js) is followed too.
// A step row can fork the run from that step. The waterfall (waterfall.js) shows where
// the run's time went, redrawn with the rest.

import { ApiError, get, post, stream } from "./api.js";
import { historyPanel } from "./history.js";
import { outputPane } from "./output.js";
import { waterfallPanel } from "./waterfall.js";
import {
  ACTIVE, alert, badge, compact, count, duration, errorBlock, h, json, money, replace, throttle,
  time,
} from "./ui.js";

const ACTOR_KEY = "tidebase.actor";

export async function render(ctx) {
  const { main, signal } = ctx;
  const id = ctx.params[0];
  ctx.title("Run");

  let run;
  try {
    run = await get(`runs/${encodeURIComponent(id)}`, {}, signal);
  } catch (exc) {
    if (signal.aborted || exc.status === 401) return;
    const what = exc.status === 404 ? "Run not found"
      : exc.status === 400 ? "Not a run id" : "Could not load the run";
    replace(main, h("h1", { tabindex: "-1" }, what), alert(exc.message),
      h("p", {}, h("a", { href: "#/runs" }, "← Back to the runs")));
    return;
  }
  if (signal.aborted) return;

  const heading = h("h1", { tabindex: "-1" });
  const flash = h("div", { id: "run-flash", role: "status", "aria-live": "polite" });
  const summary = h("section", { "aria-label": "Summary" });
  const usage = h("section", { id: "run-usage", "aria-labelledby": "usage-title" });
  const actions = h("div", { class: "actions" });
  const errorBox = h("section", { id: "run-error", "aria-label": "Error" });
  const gates = h("section", { id: "run-gates", "aria-labelledby": "gates-title" });
  const eventWaits = h("section", { id: "run-event-waits", "aria-labelledby": "event-waits-title" });
  const steps = h("section", { id: "run-steps", "aria-labelledby": "steps-title" });
  const children = h("section", { id: "run-children", "aria-labelledby": "children-title" });
  const data = h("section", { id: "run-data", "aria-labelledby": "data-title" });
  const history = historyPanel(id, signal);
  const output = outputPane(id, signal);
  const waterfall = waterfallPanel(signal);
  const eventList = h("ol", { id: "run-events", class: "events" });
  const eventsState = h("p", { class: "muted", id: "events-state" });
  const events = h("section", { "aria-labelledby": "events-title" },
    h("h2", { id: "events-title" }, "Events"), eventsState, eventList);

  replace(main, h("p", { class: "crumbs" }, h("a", { href: "#/runs" }, "← Runs")),
    heading, flash, actions, summary, usage, errorBox, gates, eventWaits, output.node,
    waterfall.node, steps,
    children,
    data, history.node, events);

  const say = (text, kind = "ok") => replace(flash, h("p", { class: `flash ${kind}` }, text));

  // -- drawing ------------------------------------------------------------------------

  function draw() {
    // Live redraws must not take the keyboard focus away: put it back by id, with the
    // text selection of a field (typing over a selected name must replace it).
    const before = document.activeElement;
    const focused = before?.id;
    const selection = typeof before?.selectionStart === "number"
      ? [before.selectionStart, before.selectionEnd] : null;
    drawAll();
    const again = focused && document.getElementById(focused);
    if (again && again !== document.activeElement) {
      again.focus();
      if (selection && typeof again.setSelectionRange === "function") {
        try {
          again.setSelectionRange(...selection);
        } catch {
          // a field type without a selection
        }
      }
    }
  }

  function drawAll() {
    ctx.title(`${run.workflow} (${run.status})`);
    replace(heading, `${run.workflow} `, badge(run.status));
    drawSummary();
    drawUsage();
    drawActions();
    replace(errorBox, errorBlock(run.error, run.status === "failed" ? "Failed" : "Last error"));
    drawGates();
    drawEventWaits();
    drawSteps();
    waterfall.update(run);
    drawChildren();
    replace(data, h("h2", { id: "data-title" }, "Input, output and state"),
      h("div", { class: "cols" },
        h("div", {}, h("h3", {}, "Input"), json(run.input)),
        h("div", {}, h("h3", {}, "Output"), json(run.output)),
        h("div", {}, h("h3", {}, "State"), json(run.state))));
    if (ACTIVE.has(run.status)) output.follow();
  }

  function drawSummary() {
    const rows = [
      ["Run id", h("span", { class: "mono" }, run.id)],
      ["Status", badge(run.status)],
      ["Queue", run.queue],
      run.version != null ? ["Version", h("span", { class: "mono", id: "run-version" },
        run.version)] : null,
      ["Attempt", `${run.attempt} of ${run.max_attempts}`],
      ["Priority", run.priority],
      run.dedupe_key ? ["Dedupe key", h("span", { class: "mono" }, run.dedupe_key)] : null,
      run.concurrency_key != null ? ["Concurrency key", h("span", { class: "mono",
        id: "run-concurrency-key" }, run.concurrency_key)] : null,
      run.debounce_key != null ? ["Debounce key", h("span", { class: "mono",
        id: "run-debounce-key" }, run.debounce_key)] : null,
      run.singleton_key != null ? ["Singleton key", h("span", { class: "mono",
        id: "run-singleton-key" }, run.singleton_key)] : null,
      run.parent_id ? ["Parent", h("a", { href: `#/runs/${run.parent_id}`, class: "mono" },
        run.parent_id)] : null,
      run.forked_from ? ["Forked from", [
        h("a", { href: `#/runs/${run.forked_from}`, class: "mono", id: "forked-from" },
          run.forked_from),
        run.forked_at ? [" at step ", h("code", {}, run.forked_at)] : null]] : null,
      ["Created", time(run.created_at)],
      ["Started", time(run.started_at)],
      ["Finished", time(run.finished_at)],
      ["Duration", duration(run.started_at, run.finished_at, ACTIVE.has(run.status))],
      run.wake_at ? ["Wakes at", time(run.wake_at)] : null,
      run.deadline ? ["Deadline", time(run.deadline)] : null,
      run.cancel_reason ? ["Cancel reason", run.cancel_reason] : null,
      run.metadata ? ["Metadata", json(run.metadata)] : null,
    ].filter(Boolean);
    replace(summary, h("dl", { class: "summary" },
      rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
  }

  function drawUsage() {
    const u = run.usage;
    if (!u || !u.records) {
      replace(usage);
      return;
    }
    const rows = [
      ["Input tokens", count(u.input_tokens)],
      ["Output tokens", count(u.output_tokens)],
      ["Cost", money(u.cost_usd)],
      ["Records", count(u.records)],
    ];
    replace(usage, h("h2", { id: "usage-title" }, "Usage"),
      h("dl", { class: "summary usage" },
        rows.map(([k, v]) => [h("dt", {}, k), h("dd", { "data-usage": k }, v)])),
      h("p", {}, h("a", { href: `#/usage?workflow=${encodeURIComponent(run.workflow)}` },
        `Usage of every ${run.workflow} run`)));
  }

  let confirming = false;
  function drawActions() {
    const buttons = [];
    if (ACTIVE.has(run.status)) {
      if (!confirming) {
        buttons.push(h("button", { type: "button", class: "danger", id: "cancel-run",
          onclick: () => { confirming = true; drawActions(); } }, "Cancel run…"));
      } else {
        buttons.push(h("span", {}, "Cancel this run and its children? "),
          h("button", { type: "button", class: "danger", id: "confirm-cancel",
            onclick: (e) => act(e.target, "cancel", "Run cancelled.") }, "Yes, cancel it"),
          h("button", { type: "button", class: "secondary",
            onclick: () => { confirming = false; drawActions(); } }, "Keep it"));
      }
    }
    if (run.status === "failed") {
      buttons.push(h("button", { type: "button", id: "retry-run",
        onclick: (e) => act(e.target, "retry", "Run queued again; it resumes from its checkpoints.") },
      "Retry run"));
    }
    replace(actions, buttons);
    if (confirming) actions.querySelector("#confirm-cancel")?.focus();
  }

  async function act(button, action, done) {
    button.disabled = true;
    try {
      await post(`runs/${encodeURIComponent(run.id)}/${action}`, {}, signal);
      confirming = false;
      say(done);
      if (action === "retry") follow();
      await refresh();
    } catch (exc) {
      if (exc.status === 401 || signal.aborted) return;
      button.disabled = false;
      say(`Could not ${action} the run: ${exc.message}`, "error");
    }
  }

  function drawGates() {
    const pending = run.gates.filter((g) => g.status === "pending");
    const decided = run.gates.filter((g) => g.status !== "pending");
    if (!run.gates.length) {
      replace(gates);
      return;
    }
    // Keep what the user typed as their name across live redraws.
    const actorNow = gates.querySelector("#gate-actor")?.value;
    const actor = h("input", { id: "gate-actor", name: "actor", autocomplete: "name",
      value: actorNow ?? (sessionStorage.getItem(ACTOR_KEY) || "dashboard") });
    actor.addEventListener("change", () => sessionStorage.setItem(ACTOR_KEY, actor.value.trim()));
    replace(gates, h("h2", { id: "gates-title" }, "Gates"),
      pending.length ? h("p", { class: "actor" }, h("label", { for: "gate-actor" },
        "Resolve as "), actor) : null,
      pending.map((g) => gateCard(g, actor)),
      decided.length ? h("table", { class: "gates" },
        h("caption", {}, "Decided gates"),
        h("thead", {}, h("tr", {}, ["Gate", "Status", "By", "At"].map((t) =>
          h("th", { scope: "col" }, t)))),
        h("tbody", {}, decided.map((g) => h("tr", {},
          h("td", {}, g.name), h("td", {}, badge(g.status)), h("td", {}, g.actor ?? "—"),
          h("td", {}, time(g.resolved_at)))))) : null);
  }

  function gateCard(gate, actor) {
    const note = h("div", { class: "gate-note" });
    const resolve = async (approved, event) => {
      const card = event.target.closest(".gate");
      for (const b of card.querySelectorAll("button")) b.disabled = true;
      try {
        await post(`runs/${encodeURIComponent(run.id)}/gates/${encodeURIComponent(gate.name)}/resolve`,
          { approved, actor: actor.value.trim() || "dashboard" }, signal);
        say(`Gate "${gate.name}" ${approved ? "approved" : "rejected"}.`);
        await refresh();
      } catch (exc) {
        if (exc.status === 401 || signal.aborted) return;
        for (const b of card.querySelectorAll("button")) b.disabled = false;
        replace(note, alert(`Could not resolve the gate: ${exc.message}`));
        if (exc.status === 409) refresh();
      }
    };
    return h("article", { class: "gate", "data-gate": gate.name, "aria-label": `Gate ${gate.name}` },
      h("h3", {}, gate.name, " ", badge(gate.status)),
      gate.prompt ? h("p", { class: "prompt" }, gate.prompt) : null,
      gate.data !== null && gate.data !== undefined ? json(gate.data) : null,
      h("p", { class: "muted" }, "Opened ", time(gate.created_at),
        gate.expires_at ? [", expires ", time(gate.expires_at)] : null),
      h("div", { class: "buttons" },
        h("button", { type: "button", class: "approve", id: `gate-approve-${gate.name}`,
          onclick: (e) => resolve(true, e) }, "Approve"),
        h("button", { type: "button", class: "danger", id: `gate-reject-${gate.name}`,
          onclick: (e) => resolve(false, e) }, "Reject")),
      note);
  }

  // Waits for events by key (run.wait_for_event): the open one is said in words (a
  // waiting run has no step for it yet), the closed ones listed.
  function drawEventWaits() {
    const all = run.event_waits || [];
    if (!all.length) {
      replace(eventWaits);
      return;
    }
    const open = all.filter((w) => w.status === "waiting");
    const closed = all.filter((w) => w.status !== "waiting");
    replace(eventWaits, h("h2", { id: "event-waits-title" }, "Events by key"),
      open.map((w) => h("div", { class: "event-wait", "data-wait": w.wait },
      h("p", {}, h("strong", {}, `Waiting for event ${w.name} (key ${w.key})`)),
      h("p", { class: "muted" }, "Since ", time(w.created_at),
        w.expires_at ? [", times out ", time(w.expires_at)] : ", no timeout",
        ". ", h("a", { href: `#/events?name=${encodeURIComponent(w.name)}&key=${encodeURIComponent(w.key)}` },
          "Events with this name and key")))),
      closed.length ? h("table", { class: "event-waits" },
        h("caption", {}, "Events waited for"),
        h("thead", {}, h("tr", {}, ["Wait", "Event", "Key", "Status", "Closed", "Payload"]
          .map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, closed.map((w) => h("tr", { "data-wait": w.wait },
          h("td", { class: "mono" }, w.wait),
          h("td", { class: "mono" }, w.name),
          h("td", { class: "mono" }, w.key),
          h("td", {}, badge(w.status)),
          h("td", {}, time(w.closed_at)),
          h("td", {}, w.payload === null || w.payload === undefined
            ? h("span", { class: "muted" }, "none")
            : h("code", { class: "payload" }, compact(w.payload))))))) : null);
  }

  /** The Kind cell of a history entry: an event wait says its key, a patch what it is. */
  function kindCell(s) {
    if (s.kind === "event") {
      const wait = (run.event_waits || []).find((w) => w.wait === s.name);
      return h("td", {}, "event", wait ? h("span", { class: "step-note" },
        ` (${wait.name}, key ${wait.key})`) : null);
    }
    if (s.kind === "patch") {
      return h("td", { title: "A patch point this run took with the new code (run.patched)" },
        "patch", h("span", { class: "step-note" }, " (new code)"));
    }
    return h("td", {}, s.kind);
  }

  function drawSteps() {
    const list = run.steps;
    replace(steps, h("h2", { id: "steps-title" }, "Steps"),
      list.length ? h("table", { class: "steps" },
        h("caption", { class: "sr-only" }, "Steps in execution order"),
        h("thead", {}, h("tr", {}, ["#", "Step", "Kind", "Status", "Attempt", "Started",
          "Duration"].map((t) => h("th", { scope: "col" }, t)),
        h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Actions")))),
        h("tbody", {}, list.map((s, i) => [
          h("tr", { class: `step step-${s.status}`, "data-step": s.name },
            h("td", { class: "num" }, i + 1),
            h("td", { class: "mono" }, s.name),
            kindCell(s),
            h("td", {}, badge(s.status)),
            h("td", { class: "num" }, s.attempt),
            h("td", {}, time(s.started_at)),
            h("td", { class: "num" }, duration(s.started_at, s.finished_at)),
            h("td", { class: "step-actions" }, forkControls(s, i))),
          s.error ? h("tr", { class: "step-error-row" }, h("td", {}),
            h("td", { colspan: "7" }, errorBlock(s.error, `Step "${s.name}" failed`))) : null,
        ])))
        : h("p", { class: "muted" }, ACTIVE.has(run.status) ? "No step has finished yet."
          : "This run recorded no steps."));
  }

  // A fork executes this step and the ones after it again, side effects included: the
  // button asks first (the question survives live redraws).
  let forking = null; // the name of the step whose fork is being confirmed
  function forkControls(s, i) {
    const ask = (name, focusId) => {
      forking = name;
      drawSteps();
      document.getElementById(focusId)?.focus();
    };
    if (forking !== s.name) {
      return h("button", { type: "button", class: "secondary", id: `fork-${i + 1}`,
        onclick: () => ask(s.name, `fork-yes-${i + 1}`) },
      "Fork from here", h("span", { class: "sr-only" }, ` (step ${s.name})`));
    }
    return h("div", { class: "fork-confirm", role: "group",
      "aria-label": `Fork from step ${s.name}` },
    h("span", {}, "A new run executes this step and the next ones again. "),
    h("button", { type: "button", id: `fork-yes-${i + 1}`,
      onclick: (e) => fork(e.target, s.name) }, "Fork run"),
    " ",
    h("button", { type: "button", class: "secondary", onclick: () => ask(null, `fork-${i + 1}`) },
      "Keep"));
  }

  async function fork(button, step) {
    button.disabled = true;
    let created;
    try {
      created = await post(`runs/${encodeURIComponent(run.id)}/fork`, { from_step: step }, signal);
    } catch (exc) {
      if (exc.status === 401 || signal.aborted) return;
      button.disabled = false;
      say(`Could not fork the run: ${exc.message}`, "error");
      return;
    }
    forking = null;
    button.blur(); // the new run's page takes the focus to its heading
    location.hash = `#/runs/${created.id}`;
  }

  function drawChildren() {
    if (!run.children.length) {
      replace(children);
      return;
    }
    replace(children, h("h2", { id: "children-title" }, "Children"),
      h("table", { class: "children" },
        h("thead", {}, h("tr", {}, ["Run", "Workflow", "Status", "Created", "Duration"]
          .map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, run.children.map((c) => h("tr", { "data-run-id": c.id },
          h("td", {}, h("a", { href: `#/runs/${c.id}`, class: "run-id" }, c.id)),
          h("td", {}, c.workflow),
          h("td", {}, badge(c.status)),
          h("td", {}, time(c.created_at)),
          h("td", { class: "num" }, duration(c.started_at, c.finished_at,
            ACTIVE.has(c.status))))))));
  }

  // -- live ---------------------------------------------------------------------------

  async function load() {
    try {
      run = await get(`runs/${encodeURIComponent(run.id)}`, {}, signal);
    } catch (exc) {
      if (signal.aborted || exc.status === 401) return;
      say(`Could not refresh the run: ${exc.message}`, "error");
      return;
    }
    if (!signal.aborted) draw();
    await history.load();
  }
  const refresh = throttle(load, 250);

  let lastSeq = 0;
  let following = false;
  function onEvent(ev) {
    const seq = Number(ev.id);
    if (seq && seq <= lastSeq) return;
    if (seq) lastSeq = seq;
    const data = ev.data;
    const detail = data === null || data === undefined ? ""
      : typeof data === "string" ? data : JSON.stringify(data);
    eventList.append(h("li", { "data-seq": ev.id, "data-type": ev.event },
      h("span", { class: "seq" }, `#${ev.id}`), " ",
      h("span", { class: "type" }, ev.event),
      detail ? [" ", h("code", { class: "detail" }, detail)] : null));
    refresh();
  }

  function follow() {
    if (following || signal.aborted) return;
    following = true;
    stream(`runs/${encodeURIComponent(run.id)}/events`, {
      signal,
      params: { after: lastSeq },
      resume: false,
      onEvent,
      onState: (state) => {
        ctx.setLive(state);
        replace(eventsState, { live: "Following live.", reconnecting: "Reconnecting…",
          ended: "The run has finished; the log is complete." }[state] ?? "");
        if (state === "ended") {
          following = false;
          refresh();
        }
      },
      onError: (exc) => {
        if (exc instanceof ApiError && exc.status !== 401) say(exc.message, "error");
      },
    });
  }

  draw();
  follow();
  await history.load();
}
