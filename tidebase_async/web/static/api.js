// Talking to the HTTP API: JSON requests, the API key, and server-sent events read with
// fetch() (EventSource cannot send an Authorization header).

// The API is mounted where the page is: this file is served at <mount>/assets/api.js.
const BASE = new URL("../", import.meta.url);
const KEY_NAME = "tidebase.apiKey";

/** An error answered by the API ({"error": {"code", "message"}}) or by the network. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// The key lives in this tab's sessionStorage only: never in the page, the URL or a cookie.
export const auth = {
  get key() {
    try {
      return sessionStorage.getItem(KEY_NAME) || "";
    } catch {
      return "";
    }
  },
  set key(value) {
    try {
      if (value) sessionStorage.setItem(KEY_NAME, value);
      else sessionStorage.removeItem(KEY_NAME);
    } catch {
      // Storage disabled: the key lasts until the next 401.
    }
  },
  // Called with no arguments when a request was refused for want of a valid key.
  onUnauthorized: () => {},
};

function headers(extra = {}) {
  const h = { Accept: "application/json", ...extra };
  const key = auth.key;
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

/** The URL of an API path ("runs", "runs/<id>") with query parameters (empty ones left out). */
export function apiUrl(path, params = {}) {
  const url = new URL(path, BASE);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  return url;
}

async function errorOf(resp) {
  let code = "http_" + resp.status;
  let message = `${resp.status} ${resp.statusText}`.trim();
  try {
    const body = await resp.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // Not JSON (a proxy's page, say): keep the status line.
  }
  if (resp.status === 401) auth.onUnauthorized();
  return new ApiError(resp.status, code, message);
}

/** A JSON request; resolves to the decoded body, rejects with ApiError. */
export async function request(method, path, { params, body, signal } = {}) {
  const init = { method, headers: headers(), signal, cache: "no-store" };
  if (method !== "GET") {
    // Every POST is JSON, an empty one included: the server refuses other types.
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body === undefined ? {} : body);
  }
  let resp;
  try {
    resp = await fetch(apiUrl(path, params), init);
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError(0, "network", "The server cannot be reached: " + exc.message);
  }
  if (!resp.ok) throw await errorOf(resp);
  return resp.json();
}

export const get = (path, params, signal) => request("GET", path, { params, signal });
export const post = (path, body, signal) => request("POST", path, { body, signal });

/**
 * Read a server-sent event stream at `path` until `signal` aborts.
 *
 * `onEvent({id, event, data})` gets each event (data JSON-decoded when it is JSON).
 * `onState(state)` hears "live", "reconnecting" and "ended". When the server ends the
 * stream and `resume` is false, reading stops ("ended"); otherwise, and after network
 * errors, it reconnects with a growing delay, sending Last-Event-ID when ids were seen.
 * A refusal (4xx) ends it with the ApiError passed to `onError`.
 */
export async function stream(path, { signal, onEvent, onState = () => {}, onError = () => {},
  resume = true, params } = {}) {
  let lastId = "";
  let delay = 500;
  while (!signal.aborted) {
    let ended = false;
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (lastId) h["Last-Event-ID"] = lastId;
      const resp = await fetch(apiUrl(path, params), { headers: h, signal, cache: "no-store" });
      if (!resp.ok) {
        const err = await errorOf(resp);
        if (resp.status < 500) {
          onState("ended");
          onError(err);
          return;
        }
        throw err;
      }
      onState("live");
      delay = 500;
      await readEvents(resp.body, (ev) => {
        if (ev.id) lastId = ev.id;
        onEvent(ev);
      });
      ended = true;
    } catch (exc) {
      if (signal.aborted || exc.name === "AbortError") return;
    }
    if (ended && !resume) {
      onState("ended");
      return;
    }
    onState("reconnecting");
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 10000);
  }
}

async function readEvents(body, dispatch) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let ev = { id: "", event: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") {
        if (ev.data.length) dispatch({ id: ev.id, event: ev.event, data: parseData(ev.data) });
        ev = { id: ev.id, event: "message", data: [] };
        continue;
      }
      if (line.startsWith(":")) continue; // a comment: connected, keepalive
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") ev.data.push(value);
      else if (field === "event") ev.event = value;
      else if (field === "id") ev.id = value;
    }
  }
}

function parseData(lines) {
  const text = lines.join("\n");
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}
