// The live output pane of a run: GET /runs/<id>/stream?stream=output (what the run
// emits with run.emit, not stored), followed while the run is active. Text chunks are
// appended as they are; any other JSON chunk goes on a line of its own, compact.

import { ApiError, stream } from "./api.js";
import { compact, h, replace } from "./ui.js";

// Past this many characters the oldest output goes, so that a chatty run cannot fill
// the tab's memory.
const MAX_CHARS = 1_000_000;

export function outputPane(runId, signal) {
  const state = h("p", { id: "output-state", class: "muted", role: "status" });
  const text = h("pre", { id: "output-text", class: "output", tabindex: "0",
    "aria-label": "Live output", "data-chunks": "0" });
  const node = h("section", { id: "run-output", "aria-labelledby": "output-title", hidden: true },
    h("h2", { id: "output-title" }, "Live output"), state, text);
  let following = false;
  let chunks = 0;
  let chars = 0;

  function add(piece) {
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

  function onChunk(data) {
    chunks += 1;
    text.dataset.chunks = String(chunks);
    if (typeof data === "string") {
      add(data);
      return;
    }
    const before = text.textContent;
    add(`${before && !before.endsWith("\n") ? "\n" : ""}${compact(data)}\n`);
  }

  /** Follow the output (again, after a retry) unless it is followed already. */
  function follow() {
    if (following || signal.aborted) return;
    following = true;
    node.hidden = false;
    delete text.dataset.ended;
    replace(state, "Connecting…");
    stream(`runs/${encodeURIComponent(runId)}/stream`, {
      signal,
      params: { stream: "output" },
      resume: false,
      onEvent: (ev) => {
        if (ev.event === "chunk") onChunk(ev.data);
        else if (ev.event === "end") replace(state, "The output stream ended: the run is over.");
      },
      onState: (s) => {
        if (s === "live") {
          replace(state, "Following the output live.");
        } else if (s === "reconnecting") {
          replace(state, "Reconnecting… (output emitted meanwhile is not shown: it is not stored)");
        } else if (s === "ended") {
          following = false;
          text.dataset.ended = "true";
          if (!/ended/.test(state.textContent)) replace(state, "The output stream ended.");
        }
      },
      onError: (exc) => {
        following = false;
        if (exc instanceof ApiError && exc.status !== 401) {
          replace(state, `Could not follow the output: ${exc.message}`);
        }
      },
    });
  }

  return { node, follow, onChunk };
}
