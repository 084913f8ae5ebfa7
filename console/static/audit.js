// The audit log, newest first, with its filters (actor, action, target).
import * as api from "./api.js";
import { h, card, table, time, field, badge } from "./ui.js";

export async function auditPage({ params }) {
  const query = {};
  for (const k of ["actor", "action", "target", "before"]) if (params.get(k)) query[k] = params.get(k);
  const r = await api.get("/audit", { ...query, limit: 100 });
  const form = h("form", { class: "filters", id: "audit-filters", onsubmit: (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(ev.target)) if (v) p.set(k, v);
    location.hash = "#/audit" + (p.toString() ? "?" + p : "");
  } },
  field("Actor", { name: "actor", value: params.get("actor") || "" }),
  field("Action (resource/verb)", { name: "action", value: params.get("action") || "", placeholder: "rollout/pause" }),
  field("Target", { name: "target", value: params.get("target") || "" }),
  h("div", { class: "row" }, h("button", { type: "submit" }, "Filter"), h("a", { href: "#/audit", class: "button secondary" }, "Clear")));
  const recs = r.records || [];
  const older = r.next ? "#/audit?" + new URLSearchParams({ ...query, before: String(r.next) }) : null;
  return h("div", { class: "page" },
    h("h1", {}, "Audit log"),
    card("Filter", form),
    table([
      { head: "#", cell: (a) => String(a.seq) },
      { head: "Time", cell: (a) => time(a.time) },
      { head: "Actor", cell: (a) => [a.actor, a.role ? h("span", { class: "hint" }, ` (${a.role})`) : null] },
      { head: "Action", cell: (a) => h("code", {}, a.action) },
      { head: "Target", cell: (a) => a.target || "—" },
      { head: "Result", cell: (a) => badge(a.result === "ok" ? "ok" : a.result) },
      { head: "From", cell: (a) => [a.remote || "—", a.session ? h("span", { class: "hint" }, " " + a.session) : null] },
      { head: "Arguments", cell: (a) => a.args && Object.keys(a.args).length ? h("code", { class: "wrap" }, JSON.stringify(a.args)) : "—" },
    ], recs, { id: "audit-table", caption: `${recs.length} record(s), newest first`, empty: "No record matches." }),
    h("div", { class: "row" }, query.before ? h("a", { href: "#/audit?" + new URLSearchParams({ ...query, before: "" }) }, "Newest") : null,
      older ? h("a", { href: older, id: "audit-older" }, "Older records") : null));
}
