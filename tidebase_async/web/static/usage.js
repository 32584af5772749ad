// #/usage?workflow=&group_by= : the usage ledger summed across runs (GET /usage), by
// workflow and model unless asked otherwise.

import { get } from "./api.js";
import { alert, count, h, money, replace } from "./ui.js";

const GROUPINGS = [
  ["workflow,model", "workflow and model"],
  ["workflow", "workflow"],
  ["model", "model"],
  ["provider,model", "provider and model"],
  ["kind", "kind"],
];
const DIMENSION_TITLES = { workflow: "Workflow", model: "Model", provider: "Provider", kind: "Kind" };

function usageHash(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const s = q.toString();
  return s ? `#/usage?${s}` : "#/usage";
}

export async function render(ctx) {
  const { main, query, signal } = ctx;
  ctx.title("Usage");
  const workflowFilter = query.get("workflow") || "";
  const groupBy = query.get("group_by") || "workflow,model";
  const dimensions = groupBy.split(",").filter(Boolean);

  const workflow = h("input", { id: "u-workflow", name: "workflow", value: workflowFilter,
    autocomplete: "off" });
  const grouping = h("select", { id: "u-group", name: "group_by" },
    GROUPINGS.map(([value, text]) => h("option", { value, selected: value === groupBy }, text)),
    GROUPINGS.some(([value]) => value === groupBy) ? null
      : h("option", { value: groupBy, selected: true }, groupBy));
  const apply = () => {
    location.hash = usageHash({ workflow: workflow.value.trim(),
      group_by: grouping.value === "workflow,model" ? "" : grouping.value });
  };
  grouping.addEventListener("change", apply);
  const form = h("form", { class: "filters", "aria-label": "Usage filters",
    onsubmit: (e) => { e.preventDefault(); apply(); } },
  h("div", {}, h("label", { for: "u-workflow" }, "Workflow"), workflow),
  h("div", {}, h("label", { for: "u-group" }, "Group by"), grouping),
  h("div", { class: "buttons" },
    h("button", { type: "submit" }, "Apply"),
    h("a", { href: "#/usage", class: "button secondary" }, "Clear")));
  const content = h("div", { id: "usage-content" });
  replace(main, h("h1", { tabindex: "-1" }, "Usage"), form, content);

  let items;
  try {
    ({ items } = await get("usage", { workflow: workflowFilter, group_by: groupBy }, signal));
  } catch (exc) {
    if (signal.aborted || exc.status === 401) return;
    replace(content, alert(`Could not sum the usage: ${exc.message}`));
    return;
  }
  if (signal.aborted) return;
  if (!items.length) {
    replace(content, h("p", { class: "empty" },
      workflowFilter ? "No usage recorded by this workflow." : "No usage recorded yet."));
    return;
  }
  const total = (k) => items.reduce((sum, row) => sum + Number(row[k] || 0), 0);
  const cell = (dim, value) => {
    if (value === null || value === undefined) return h("td", { class: "muted" }, "—");
    if (dim === "workflow") {
      return h("td", {}, h("a", { href: `#/runs?workflow=${encodeURIComponent(value)}` }, value));
    }
    return h("td", { class: "mono" }, value);
  };
  replace(content, h("table", { class: "usage", id: "usage-table" },
    h("caption", { class: "sr-only" }, `Usage by ${dimensions.join(" and ")}`),
    h("thead", {}, h("tr", {},
      dimensions.map((d) => h("th", { scope: "col" }, DIMENSION_TITLES[d] ?? d)),
      ["Runs", "Records", "Input tokens", "Output tokens", "Cost"].map((t) =>
        h("th", { scope: "col", class: "num" }, t)))),
    h("tbody", {}, items.map((row) => h("tr", {
      "data-group": dimensions.map((d) => row.group[d] ?? "").join("/"),
    },
    dimensions.map((d) => cell(d, row.group[d])),
    h("td", { class: "num" }, count(row.runs)),
    h("td", { class: "num" }, count(row.records)),
    h("td", { class: "num" }, count(row.input_tokens)),
    h("td", { class: "num" }, count(row.output_tokens)),
    h("td", { class: "num" }, money(row.cost_usd))))),
    items.length > 1 ? h("tfoot", {}, h("tr", {},
      h("th", { scope: "row", colspan: String(dimensions.length) }, "Total"),
      h("td", { class: "num" }, "—"),
      h("td", { class: "num" }, count(total("records"))),
      h("td", { class: "num" }, count(total("input_tokens"))),
      h("td", { class: "num" }, count(total("output_tokens"))),
      h("td", { class: "num" }, money(total("cost_usd"))))) : null));
}
