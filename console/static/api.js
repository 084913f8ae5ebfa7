// The HTTP API (/api/v1), as the console uses it: the session cookie that
// login sets (HttpOnly: this script never sees it) and, on every request
// that changes state, the session's CSRF token in X-CSRF-Token.

let csrf = "";

// ApiError is a refused request: the API's error code and message.
export class ApiError extends Error {
  constructor(status, code, message, detail) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || "";
    this.detail = detail || {};
  }
}

export function setCSRF(token) { csrf = token || ""; }

// reply decodes an API reply ({ok, result} or {ok: false, error}).
function reply(status, text) {
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new ApiError(status, "", `HTTP ${status}: the reply is not JSON`);
  }
  if (!body.ok) {
    const e = body.error || {};
    throw new ApiError(status, e.code, e.message, e);
  }
  return body.result;
}

// call sends method path with a JSON body (or a raw body of type ctype)
// and returns the result, or throws ApiError.
export async function call(method, path, body, ctype) {
  const headers = {};
  let data;
  if (body !== undefined) {
    if (ctype) {
      data = body;
      headers["Content-Type"] = ctype;
    } else {
      data = JSON.stringify(body);
      headers["Content-Type"] = "application/json";
    }
  }
  if (method !== "GET" && method !== "HEAD" && csrf) headers["X-CSRF-Token"] = csrf;
  let resp;
  try {
    resp = await fetch("/api/v1" + path, { method, headers, body: data, credentials: "same-origin", cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, "network", `the broker did not answer: ${err.message}`);
  }
  return reply(resp.status, await resp.text());
}

export const get = (path, query) => call("GET", path + qs(query));
export const post = (path, body) => call("POST", path, body);

// qs renders the query parameters that have a value.
export function qs(query) {
  if (!query) return "";
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== "") p.set(k, String(v));
  }
  const s = p.toString();
  return s ? "?" + s : "";
}

// upload sends a multipart form to path with XMLHttpRequest, which (unlike
// fetch) reports the upload's progress: onProgress(sent, total).
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open("POST", "/api/v1" + path);
    if (csrf) x.setRequestHeader("X-CSRF-Token", csrf);
    x.upload.onprogress = (ev) => { if (ev.lengthComputable) onProgress(ev.loaded, ev.total); };
    x.onload = () => {
      try {
        resolve(reply(x.status, x.responseText));
      } catch (e) {
        reject(e);
      }
    };
    x.onerror = () => reject(new ApiError(0, "network", "the upload broke off (the broker keeps what it received: the same upload again resumes it)"));
    x.send(form);
  });
}

// events opens the live event stream; handlers maps an event name
// ("fleet", "rollout", "end") to a function of its decoded data. It
// returns the EventSource (close() ends it).
export function events(handlers, onState) {
  const es = new EventSource("/api/v1/events");
  es.onopen = () => onState("live");
  es.onerror = () => onState(es.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  for (const [name, fn] of Object.entries(handlers)) {
    es.addEventListener(name, (ev) => {
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch {
        return;
      }
      fn(data);
    });
  }
  return es;
}
