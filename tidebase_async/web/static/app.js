// The dashboard's entry point: hash routing (#/ and #/overview, #/workflows/<name>,
// #/runs, #/runs/<id>, #/queues, #/queues/<name>, #/schedules, #/events, #/usage), the login prompt, and the "live" indicator. Each page
// is a module exporting render(ctx); ctx.signal aborts when the page is left, which
// stops its streams.

import { auth } from "./api.js";
import { render as eventsPage } from "./events.js";
import { render as overviewPage } from "./overview.js";
import { render as queuePage } from "./queue.js";
import { render as queuesPage } from "./queues.js";
import { render as runPage } from "./run.js";
import { render as runsPage } from "./runs.js";
import { render as schedulesPage } from "./schedules.js";
import { render as usagePage } from "./usage.js";
import { alert, h, replace } from "./ui.js";
import { render as workflowPage } from "./workflow.js";

const main = document.getElementById("app");
const login = document.getElementById("login");
const loginForm = document.getElementById("login-form");
const loginKey = document.getElementById("login-key");
const loginError = document.getElementById("login-error");
const logout = document.getElementById("logout");
const liveBadge = document.getElementById("live");

const ROUTES = [
  [/^\/(overview\/?)?$/, "overview", overviewPage],
  [/^\/workflows\/(.+)$/, "workflows", workflowPage],
  [/^\/runs\/?$/, "runs", runsPage],
  [/^\/runs\/([^/]+)$/, "runs", runPage],
  [/^\/queues\/?$/, "queues", queuesPage],
  [/^\/queues\/(.+)$/, "queues", queuePage],
  [/^\/schedules\/?$/, "schedules", schedulesPage],
  [/^\/events\/?$/, "events", eventsPage],
  [/^\/usage\/?$/, "usage", usagePage],
];

let current = null; // AbortController of the page shown
let loginShown = false;

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const q = raw.indexOf("?");
  const path = q < 0 ? raw : raw.slice(0, q);
  const query = new URLSearchParams(q < 0 ? "" : raw.slice(q + 1));
  let decoded = path;
  try {
    decoded = decodeURIComponent(path);
  } catch {
    // a malformed escape: route on the raw text
  }
  return { path: decoded, query };
}

function setLive(state) {
  const text = { live: "● Live", reconnecting: "Reconnecting…", ended: "" }[state] ?? "";
  liveBadge.textContent = text;
  liveBadge.className = state ? `live state-${state}` : "live";
}

function markNav(section) {
  for (const a of document.querySelectorAll("nav a[data-section]")) {
    if (a.dataset.section === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

async function route() {
  if (loginShown) return;
  current?.abort();
  const controller = new AbortController();
  current = controller;
  setLive("");
  logout.hidden = !auth.key;
  const focusedId = main.contains(document.activeElement) ? document.activeElement.id : "";

  const { path, query } = parseHash();
  const found = ROUTES.map(([re, section, page]) => [path.match(re), section, page])
    .find(([m]) => m);
  replace(main);
  if (!found) {
    markNav("");
    document.title = "Not found · tidebase";
    replace(main, h("h1", { tabindex: "-1" }, "Page not found"),
      alert(`There is no page "#${path}".`),
      h("p", {}, h("a", { href: "#/runs" }, "Go to the runs")));
    main.querySelector("h1").focus();
    return;
  }
  const [match, section, page] = found;
  markNav(section);
  const ctx = {
    main,
    params: match.slice(1),
    query,
    signal: controller.signal,
    setLive: (state) => {
      if (!controller.signal.aborted) setLive(state);
    },
    title: (text) => {
      document.title = `${text} · tidebase`;
    },
  };
  try {
    await page(ctx);
  } catch (exc) {
    if (controller.signal.aborted || exc.name === "AbortError") return;
    // Pages show their own errors; this is the net under them.
    replace(main, h("h1", { tabindex: "-1" }, "Something went wrong"),
      alert(String(exc.message || exc)));
  }
  if (controller.signal.aborted) return;
  const again = focusedId && document.getElementById(focusedId);
  if (again && main.contains(again)) again.focus();
  else if (document.activeElement === document.body || !document.activeElement) {
    main.querySelector("h1")?.focus({ preventScroll: true });
  }
}

function showLogin() {
  const hadKey = Boolean(auth.key);
  auth.key = "";
  if (loginShown) return;
  loginShown = true;
  current?.abort();
  setLive("");
  main.hidden = true;
  logout.hidden = true;
  login.hidden = false;
  loginError.hidden = !hadKey;
  loginError.textContent = hadKey ? "That API key was refused; check it and try again." : "";
  loginKey.value = "";
  loginKey.focus();
}

auth.onUnauthorized = showLogin;

loginForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = loginKey.value.trim();
  loginKey.value = ""; // the key never stays in the page
  if (!key) return;
  auth.key = key;
  loginShown = false;
  login.hidden = true;
  main.hidden = false;
  route();
});

logout.addEventListener("click", () => {
  auth.key = "";
  route();
});

window.addEventListener("hashchange", route);
route();
