// The live output pane of a run: GET /runs/<id>/stream?stream=output (what the run
// emits with run.emit, not stored) and ?stream=agent (the stream events of a Pydantic AI
// agent, see tidebase_async/pydantic_ai/events.py), both followed while the run is
// active and shown in the same pane. Output text chunks are appended as they are; any
// other JSON chunk goes on a line of its own, compact. Agent text is appended as running
// text, tool calls and results go on lines of their own, other agent events are skipped.

import { ApiError, stream } from "./api.js";
import { compact, h, replace } from "./ui.js";

// Past this many characters the oldest output goes, so that a chatty run cannot fill
// the tab's memory.
const MAX_CHARS = 1_000_000;
// Tool arguments and results longer than this are cut, with an ellipsis.
const MAX_TOOL_CHARS = 200;
// The streams followed: the run's own output and its agent's events.
const STREAMS = ["output", "agent"];

/** `value` on one line, cut to `MAX_TOOL_CHARS` characters. */
function clip(value) {
  const one = value.replace(/\s*[\r\n]+\s*/g, " ");
  return one.length > MAX_TOOL_CHARS ? `${one.slice(0, MAX_TOOL_CHARS - 1)}…` : one;
}

/** A tool call's arguments (a JSON object, or the JSON text of one), compact. */
function toolArgs(args) {
  if (args === null || args === undefined || args === "") return "";
  if (typeof args === "string") {
    try {
      return compact(JSON.parse(args));
    } catch {
      return args; // arguments the model streamed as invalid JSON: shown as they are
    }
  }
  return compact(args);
}

export function outputPane(runId, signal) {
  const state = h("p", { id: "output-state", class: "muted", role: "status" });
  const text = h("pre", { id: "output-text", class: "output", tabindex: "0",
    "aria-label": "Live output", "data-chunks": "0" });
  const node = h("section", { id: "run-output", "aria-labelledby": "output-title", hidden: true },
    h("h2", { id: "output-title" }, "Live output"), state, text);
  // Per stream: whether it is followed, its state ("connecting", "live",
  // "reconnecting", "ended"), whether the server said the run is over, and the message
  // of a refusal.
  const feeds = new Map(STREAMS.map((name) => [name, {
    following: false, state: "ended", over: false, error: null }]));
  let chunks = 0;
  let chars = 0;
  // The stream whose running text the pane ends with (null after a line of its own).
  let source = null;

  function add(piece) {
    if (!piece) return;
    // Keep the view at the bottom while the reader has not scrolled up.
    const atBottom = text.scrollHeight - text.scrollTop - text.clientHeight < 8;
    const last = text.lastChild;
    if (last && last.nodeType === Node.TEXT_NODE) last.appendData(piece);
    else text.append(piece);
    chars += piece.length;
    while (chars > MAX_CHARS && text.firstChild) {
      const first = text.firstChild;
      const drop = Math.min(first.data.length, chars - MAX_CHARS);
      if (drop === first.data.length) first.remove();
      else first.deleteData(0, drop);
      chars -= drop;
    }
    if (atBottom) text.scrollTop = text.scrollHeight;
  }

  /** Whether the pane is empty or ends with a line break. */
  function atLineStart() {
    const last = text.lastChild;
    return !last || !last.data || last.data.endsWith("\n");
  }

  /** Running text from `from`; on a new line when it does not continue that stream's
   * text (another stream wrote meanwhile) or when `fresh` (a new text part). */
  function write(from, piece, fresh = false) {
    if (!piece && !fresh) return;
    const cut = (fresh || source !== from) && !atLineStart();
    add(`${cut ? "\n" : ""}${piece}`);
    source = from;
  }

  /** `piece` on a line of its own. */
  function line(piece) {
    add(`${atLineStart() ? "" : "\n"}${piece}\n`);
    source = null;
  }

  function counted() {
    chunks += 1;
    text.dataset.chunks = String(chunks);
  }

  /** A chunk of the "output" stream. */
  function onChunk(data) {
    counted();
    if (typeof data === "string") write("output", data);
    else line(compact(data));
  }

  /** A chunk of the "agent" stream: one of Pydantic AI's AgentStreamEvent, as JSON. */
  function onAgentEvent(event) {
    counted();
    if (!event || typeof event !== "object") return;
    const kind = event.event_kind;
    const part = event.part && typeof event.part === "object" ? event.part : {};
    const tool = typeof part.tool_name === "string" && part.tool_name ? part.tool_name : "tool";
    if (typeof event.omitted === "string") {
      line(`(${kind ?? "an agent"} event not shown: ${event.omitted})`);
    } else if (kind === "part_start" && part.part_kind === "text") {
      write("agent", typeof part.content === "string" ? part.content : "", true);
    } else if (kind === "part_delta" && event.delta?.part_delta_kind === "text") {
      const delta = event.delta.content_delta;
      if (typeof delta === "string") write("agent", delta);
    } else if (kind === "function_tool_call") {
      line(`→ ${tool}(${clip(toolArgs(part.args))})`);
    } else if (kind === "function_tool_result") {
      // A failed, denied or retried call says so; a plain return does not.
      const outcome = part.part_kind === "retry-prompt" ? "retried" : part.outcome;
      const label = outcome && outcome !== "success" ? `${tool} (${outcome})` : tool;
      const content = typeof part.content === "string" ? part.content : compact(part.content);
      line(`← ${label}: ${clip(content)}`);
    }
    // Anything else (tool-call deltas, part ends, final results, ...) is not shown.
  }

  /** The pane's state line from the states of the streams. */
  function show() {
    const all = [...feeds.values()];
    const refused = all.find((f) => f.error !== null);
    if (refused) {
      replace(state, `Could not follow the output: ${refused.error}`);
    } else if (all.some((f) => f.state === "reconnecting")) {
      replace(state, "Reconnecting… (output emitted meanwhile is not shown: it is not stored)");
    } else if (all.some((f) => f.state === "connecting")) {
      replace(state, "Connecting…");
    } else if (all.some((f) => f.state === "live" && !f.over)) {
      replace(state, "Following the output live.");
    } else {
      replace(state, all.some((f) => f.over) ? "The output stream ended: the run is over."
        : "The output stream ended.");
    }
    if (all.every((f) => !f.following)) text.dataset.ended = "true";
    else delete text.dataset.ended;
  }

  function followStream(name, onData) {
    const feed = feeds.get(name);
    if (feed.following) return false;
    Object.assign(feed, { following: true, state: "connecting", over: false, error: null });
    stream(`runs/${encodeURIComponent(runId)}/stream`, {
      signal,
      params: { stream: name },
      resume: false,
      onEvent: (ev) => {
        if (ev.event === "chunk") {
          onData(ev.data);
        } else if (ev.event === "end") {
          feed.over = true;
          show();
        }
      },
      onState: (s) => {
        feed.state = s;
        if (s === "ended") feed.following = false;
        show();
      },
      onError: (exc) => {
        feed.following = false;
        if (exc instanceof ApiError && exc.status !== 401) {
          feed.error = exc.message;
          show();
        }
      },
    });
    return true;
  }

  /** Follow the streams (again, after a retry) that are not followed already. */
  function follow() {
    if (signal.aborted) return;
    const output = followStream("output", onChunk);
    const agent = followStream("agent", onAgentEvent);
    if (!output && !agent) return;
    node.hidden = false;
    show();
  }

  return { node, follow, onChunk, onAgentEvent };
}
