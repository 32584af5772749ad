// The research page: ask a question, follow the agent's live output, approve or reject
// the report it wants to send, show the answer. No build step and no inline script
// (the page's Content-Security-Policy allows scripts from this origin only).
//
//   POST research                                   {"question"} -> {"id", "deduplicated"}
//   GET  research/<id>                              status, pending_gate, answer, error
//   GET  tidebase/runs/<id>/stream?stream=agent     live output (server-sent "chunk" events)
//   POST tidebase/runs/<id>/gates/<gate>/resolve    {"approved", "actor"}
//
// Live output is not stored: the page sees what the agent does from the moment it
// subscribes. The answer and the approval come from the run itself (polled), so a
// reload or a missed event loses nothing that matters.

const $ = (id) => document.getElementById(id);
const url = (path) => new URL(path, document.baseURI);
const FINISHED = new Set(["completed", "failed", "cancelled"]);

let current = null; // { id, source, timer, gate }

async function postJson(path, body) {
  const resp = await fetch(url(path), {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const error = data.error;
    throw new Error(typeof error === "string" ? error : error?.message || resp.statusText);
  }
  return data;
}

// -- live output ----------------------------------------------------------------------

function appendText(text) {
  const live = $("live");
  const atBottom = live.scrollHeight - live.scrollTop - live.clientHeight < 8;
  const last = live.lastChild;
  if (last && last.nodeType === Node.TEXT_NODE) last.appendData(text);
  else live.append(text);
  if (atBottom) live.scrollTop = live.scrollHeight;
}

function appendLine(text) {
  const line = document.createElement("span");
  line.className = "tool";
  line.textContent = text;
  $("live").append(line);
}

const seen = new Set();

function once(key) {
  // A run resumed after its approval replays the agent's last tool calls: show each once.
  if (seen.has(key)) return false;
  seen.add(key);
  return true;
}

function short(value, max = 120) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > max ? text.slice(0, max) + "…" : text;
}

function onAgentEvent(event) {
  switch (event.event_kind) {
    case "part_start":
      if (event.part.part_kind === "text") appendText(event.part.content);
      break;
    case "part_delta":
      if (event.delta.part_delta_kind === "text") appendText(event.delta.content_delta);
      break;
    case "function_tool_call":
      if (once("call:" + event.part.tool_call_id)) {
        appendLine(`→ ${event.part.tool_name}(${short(event.part.args)})`);
      }
      break;
    case "function_tool_result":
      if (once("result:" + event.part.tool_call_id)) {
        appendLine(`← ${event.part.tool_name}: ${short(event.part.content)}`);
      }
      break;
    case "deferred_tool_requests":
      for (const call of event.requests.approvals) {
        if (once("ask:" + call.tool_call_id)) appendLine(`… ${call.tool_name} waits for approval`);
      }
      break;
    default:
      break;
  }
}

function follow(id) {
  // EventSource sends no Authorization header: this works while the API has no key
  // (loopback only, the default). Behind a key, read the stream with fetch() instead,
  // as the dashboard does (tidebase_async/web/static/api.js).
  const source = new EventSource(url(`tidebase/runs/${encodeURIComponent(id)}/stream?stream=agent`));
  source.addEventListener("chunk", (e) => onAgentEvent(JSON.parse(e.data)));
  source.addEventListener("end", () => source.close());
  source.addEventListener("error", (e) => {
    if (e.data) appendLine(`(live output stopped: ${JSON.parse(e.data)})`); // from the server
    if (current?.finished) source.close();
  });
  return source;
}

// -- the run --------------------------------------------------------------------------

function showApproval(gate) {
  const box = $("approval");
  if (!gate) {
    box.hidden = true;
    return;
  }
  const args = gate.data?.args || {};
  $("approval-to").textContent = args.to ?? "";
  $("approval-subject").textContent = args.subject ?? "";
  $("approval-body").textContent = args.body ?? "";
  $("approve").disabled = $("reject").disabled = false;
  box.hidden = false;
}

async function decide(approved) {
  const gate = current?.gate;
  if (!gate) return;
  $("approve").disabled = $("reject").disabled = true;
  const path = `tidebase/runs/${encodeURIComponent(current.id)}/gates/${encodeURIComponent(gate.name)}/resolve`;
  try {
    await postJson(path, { approved, actor: "research page" });
    $("approval").hidden = true;
  } catch (err) {
    $("status").textContent = `Could not record the decision: ${err.message}`;
  }
  poll();
}

async function poll() {
  const run = current;
  if (!run) return;
  clearTimeout(run.timer);
  try {
    const resp = await fetch(url(`research/${encodeURIComponent(run.id)}`), { cache: "no-store" });
    const view = await resp.json();
    if (run !== current) return;
    run.gate = view.pending_gate;
    $("status").textContent = view.pending_gate
      ? "waiting for your approval"
      : view.status;
    showApproval(view.pending_gate);
    if (FINISHED.has(view.status)) {
      run.finished = true;
      $("result").hidden = false;
      $("answer").textContent = view.answer ?? JSON.stringify(view.error, null, 2);
      return;
    }
  } catch (err) {
    $("status").textContent = `(cannot reach the app: ${err.message})`;
  }
  run.timer = setTimeout(poll, 1000);
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  let created;
  try {
    created = await postJson("research", { question });
  } catch (err) {
    $("status").textContent = err.message;
    $("run").hidden = false;
    return;
  }
  if (current) {
    clearTimeout(current.timer);
    current.source.close();
  }
  seen.clear();
  $("live").replaceChildren();
  $("result").hidden = true;
  $("run").hidden = false;
  $("run-id").textContent = created.id;
  current = { id: created.id, source: follow(created.id), timer: null, gate: null, finished: false };
  if (created.deduplicated) appendLine("(the same question is already being researched: following that run)");
  poll();
}

$("ask").addEventListener("submit", ask);
$("approve").addEventListener("click", () => decide(true));
$("reject").addEventListener("click", () => decide(false));
