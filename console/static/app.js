// The console's shell: the session, the router (the URL's fragment:
// #/fleet, #/devices/ID, …), the live event stream and the pages.
import * as api from "./api.js";
import { h, notify, errorText } from "./ui.js";
import { fleetPage } from "./fleet.js";
import { devicesPage, devicePage } from "./devices.js";
import { releasesPage, releasePage } from "./releases.js";
import { rolloutsPage, rolloutPage } from "./rollouts.js";
import { auditPage } from "./audit.js";

// session is GET /api/v1/session's result while logged in.
export const session = { operator: "", role: "" };

// live fans the stream's events out to the page on screen: a page calls
// on(name, fn) and its listeners go when the page does.
const live = new EventTarget();
let pageListeners = [];
export function on(name, fn) {
  const l = (ev) => fn(ev.detail);
  live.addEventListener(name, l);
  pageListeners.push([name, l]);
}

// feed keeps the last events for the Fleet page's live feed, each with the
// time it arrived (ms since the epoch).
export const feed = [];
const feedMax = 50;

let stream = null;
let retry = null;
function openStream() {
  if (stream) stream.close();
  clearTimeout(retry);
  const dot = document.getElementById("live");
  // A stream the broker refused (too many open) or ended (it is
  // stopping) is opened again later; the browser retries the others.
  const later = () => {
    clearTimeout(retry);
    retry = setTimeout(() => { if (session.operator) openStream(); }, 5000);
  };
  const es = api.events({
    fleet: (d) => {
      feed.unshift({ received: Date.now(), kind: "fleet", data: d });
      feed.length = Math.min(feed.length, feedMax);
      live.dispatchEvent(new CustomEvent("fleet", { detail: d }));
    },
    rollout: (d) => live.dispatchEvent(new CustomEvent("rollout", { detail: d })),
    end: (d) => {
      dot.textContent = "ended: " + (d.reason || "");
      dot.dataset.state = "ended";
      es.close();
      if (d.reason === "session ended") showLogin("Your session ended; log in again.");
      else later();
    },
  }, (state) => {
    dot.textContent = state;
    dot.dataset.state = state;
    if (state === "closed") later();
  });
  stream = es;
}

const routes = [
  [/^\/fleet$/, fleetPage],
  [/^\/devices$/, devicesPage],
  [/^\/devices\/(.+)$/, devicePage],
  [/^\/releases$/, releasesPage],
  [/^\/releases\/(.+)$/, releasePage],
  [/^\/rollouts$/, rolloutsPage],
  [/^\/rollouts\/(.+)$/, rolloutPage],
  [/^\/audit$/, auditPage],
];

let renderSeq = 0;
async function render() {
  if (!session.operator) return;
  const hash = location.hash.replace(/^#/, "") || "/fleet";
  const [path, query] = hash.split("?");
  for (const [name, l] of pageListeners) live.removeEventListener(name, l);
  pageListeners = [];
  const page = document.getElementById("page");
  let match = null;
  let fn = null;
  for (const [re, f] of routes) {
    match = path.match(re);
    if (match) { fn = f; break; }
  }
  for (const a of document.querySelectorAll("#nav a")) {
    if (path.startsWith("/" + a.dataset.page)) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (!fn) {
    page.replaceChildren(h("section", { class: "card" }, h("h1", {}, "Not found"), h("p", {}, `No page ${path}.`), h("a", { href: "#/fleet" }, "Fleet")));
    return;
  }
  const seq = ++renderSeq;
  const params = new URLSearchParams(query || "");
  const args = match.slice(1).map(decodeURIComponent);
  page.setAttribute("aria-busy", "true");
  try {
    const node = await fn({ args, params, isCurrent: () => seq === renderSeq });
    if (seq !== renderSeq) return;
    page.replaceChildren(node);
    page.dataset.page = path.split("/")[1] + (args.length ? "-detail" : "");
  } catch (e) {
    if (seq !== renderSeq) return;
    if (e.status === 401) {
      showLogin("Your session ended; log in again.");
      return;
    }
    page.replaceChildren(h("section", { class: "card" }, h("h1", {}, "Could not load this page"), h("p", { class: "err" }, errorText(e))));
  } finally {
    if (seq === renderSeq) page.removeAttribute("aria-busy");
  }
}

// navigate re-renders the current route (after an action that changed it).
export function refresh() { return render(); }

function showLogin(msg) {
  session.operator = "";
  clearTimeout(retry);
  if (stream) { stream.close(); stream = null; }
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  document.getElementById("page").replaceChildren();
  document.getElementById("login").hidden = false;
  if (msg) notify(msg, false);
  document.getElementById("login-id").focus();
}

function loggedIn(s) {
  session.operator = s.operator;
  session.role = s.role;
  api.setCSRF(s.csrf_token);
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("me").textContent = `${s.operator} (${s.role})`;
  document.body.dataset.role = s.role;
  openStream();
  render();
}

document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const btn = f.querySelector("button");
  btn.disabled = true;
  try {
    const s = await api.post("/login", { id: f.id.value, password: f.password.value });
    f.password.value = "";
    document.getElementById("status").replaceChildren();
    loggedIn(s);
  } catch (e) {
    notify("Login refused: " + errorText(e), false);
  } finally {
    btn.disabled = false;
  }
});

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await api.post("/logout");
    showLogin();
    notify("Logged out.");
  } catch (e) {
    notify("Logout: " + errorText(e), false);
  }
});

window.addEventListener("hashchange", () => {
  document.getElementById("status").replaceChildren();
  render();
  document.getElementById("main").focus({ preventScroll: true });
});

// A reload keeps the session (the cookie); the CSRF token comes from
// GET /api/v1/session.
(async () => {
  try {
    loggedIn(await api.get("/session"));
  } catch (e) {
    showLogin(e.status === 401 ? "" : errorText(e));
  }
})();
