// The state history panel of a run (GET /runs/<id>/state): its versions, and a diff
// between two of them (by default the latest and the one before it).

import { get } from "./api.js";
import { alert, compact, h, replace, time } from "./ui.js";

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

function equal(a, b) {
  if (a === b) return true;
  if (Array.isArray(a)) {
    return Array.isArray(b) && a.length === b.length && a.every((x, i) => equal(x, b[i]));
  }
  if (isObject(a) && isObject(b)) {
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length
      && ka.every((k) => Object.hasOwn(b, k) && equal(a[k], b[k]));
  }
  return false;
}

/** `a.b`, or `a["odd key"]` for a key that would read ambiguously after a dot. */
function joinPath(path, key) {
  if (/^[A-Za-z0-9_$-]+$/.test(key)) return path ? `${path}.${key}` : key;
  return `${path}[${JSON.stringify(key)}]`;
}

/**
 * What changed from `a` to `b`: [{kind: "added"|"removed"|"changed", path, old, new}].
 * Objects are compared key by key (paths like `a.b.c`); any other value, arrays
 * included, as a whole. No state yet (null) counts as an empty object.
 */
export function diff(a, b, path = "") {
  if (!path && a === null && isObject(b)) a = {};
  if (!path && b === null && isObject(a)) b = {};
  if (!(isObject(a) && isObject(b))) {
    return equal(a, b) ? [] : [{ kind: "changed", path: path || "(the whole state)", old: a, new: b }];
  }
  // Keys in alphabetical order: the stored state does not keep the order they were written in.
  const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
  const changes = [];
  for (const key of keys) {
    const p = joinPath(path, key);
    if (!Object.hasOwn(b, key)) changes.push({ kind: "removed", path: p, old: a[key] });
    else if (!Object.hasOwn(a, key)) changes.push({ kind: "added", path: p, new: b[key] });
    else changes.push(...diff(a[key], b[key], p));
  }
  return changes;
}

function changeItem(c) {
  const value = (v, cls) => h("code", { class: cls }, compact(v));
  return h("li", { class: `diff-${c.kind}`, "data-kind": c.kind, "data-path": c.path },
    h("span", { class: "diff-kind" }, c.kind), " ",
    h("code", { class: "diff-path" }, c.path),
    c.kind === "added" ? [": ", value(c.new, "diff-new")] : null,
    c.kind === "removed" ? [": was ", value(c.old, "diff-old")] : null,
    c.kind === "changed"
      ? [": ", value(c.old, "diff-old"), h("span", { "aria-label": "became" }, " → "),
        value(c.new, "diff-new")]
      : null);
}

/**
 * The panel: `node` to place in the page, `load()` to (re)read the history. It stays
 * empty while the run has written no state.
 */
export function historyPanel(runId, signal) {
  const node = h("section", { id: "run-history", "aria-labelledby": "history-title" });
  let versions = [];
  let pick = null; // {from, to} once the reader chose; otherwise the latest two
  let failed = "";
  let seen = "";

  const chosen = () => {
    const last = versions.length ? versions[versions.length - 1].version : 0;
    return pick ?? { from: last - 1, to: last };
  };
  const stateOf = (v) => versions.find((x) => x.version === v)?.state ?? null;
  const choose = (from, to) => {
    pick = { from, to };
    draw();
  };

  function draw() {
    if (!versions.length && !failed) {
      replace(node);
      return;
    }
    const focused = node.contains(document.activeElement) ? document.activeElement.id : "";
    const { from, to } = chosen();
    const versionLabel = (v) => {
      const x = versions.find((y) => y.version === v);
      return v === 0 ? "0 (no state)" : x?.label ? `${v} (${x.label})` : String(v);
    };
    const select = (id, value, withEmpty, onchange) => h("select", { id, onchange },
      withEmpty ? h("option", { value: "0", selected: value === 0 }, versionLabel(0)) : null,
      versions.map((x) => h("option", { value: String(x.version), selected: x.version === value },
        versionLabel(x.version))));
    const fromSelect = select("diff-from", from, true,
      (e) => choose(Number(e.target.value), to));
    const toSelect = select("diff-to", to, false,
      (e) => choose(from, Number(e.target.value)));
    const changes = diff(stateOf(from), stateOf(to));

    replace(node, h("h2", { id: "history-title" }, "State history"),
      failed ? alert(failed) : null,
      h("table", { class: "history" },
        h("caption", { class: "sr-only" }, "Versions of the run's state, oldest first"),
        h("thead", {}, h("tr", {}, ["Version", "Step", "Label", "Written", "Compare"]
          .map((t) => h("th", { scope: "col", class: t === "Version" ? "num" : null }, t)))),
        h("tbody", {}, versions.map((x) => h("tr", {
          "data-version": x.version,
          class: x.version === to ? "diff-to" : x.version === from ? "diff-from" : null,
        },
        h("td", { class: "num" }, x.version),
        h("td", { class: "mono" }, x.step ?? "—"),
        h("td", {}, x.label ?? ""),
        h("td", {}, time(x.at)),
        h("td", {}, h("button", {
          type: "button", class: "secondary", id: `diff-prev-${x.version}`,
          "aria-pressed": String(from === x.version - 1 && to === x.version),
          onclick: () => choose(x.version - 1, x.version),
        }, "Diff with previous", h("span", { class: "sr-only" }, ` (version ${x.version})`))))))),
      h("div", { class: "diff-pick filters" },
        h("div", {}, h("label", { for: "diff-from" }, "From version"), fromSelect),
        h("div", {}, h("label", { for: "diff-to" }, "To version"), toSelect)),
      h("div", { id: "state-diff", class: "diff", role: "region", "aria-labelledby": "diff-title" },
        h("h3", { id: "diff-title" }, `Changes from version ${from} to version ${to}`),
        changes.length ? h("ul", { class: "diff-list" }, changes.map(changeItem))
          : h("p", { class: "muted" }, "No differences.")));
    const again = focused && document.getElementById(focused);
    if (again) again.focus();
  }

  async function load() {
    let items;
    try {
      ({ items } = await get(`runs/${encodeURIComponent(runId)}/state`, {}, signal));
    } catch (exc) {
      if (signal.aborted || exc.status === 401) return;
      failed = `Could not load the state history: ${exc.message}`;
      draw();
      return;
    }
    if (signal.aborted) return;
    // Live refreshes redraw only when the history changed (not under an open select).
    const text = JSON.stringify(items);
    if (text === seen && !failed) return;
    seen = text;
    versions = items;
    failed = "";
    draw();
  }

  return { node, load };
}
