// Rollouts: the list, a new rollout from a form or pasted YAML with its
// plan (dry run) before anything is created, and a rollout's page: its
// state, counts, per-wave progress that moves with the live stream,
// alarms, the verbs with confirmation, the adoption curve and the
// per-device table.
import * as api from "./api.js";
import { h, card, table, badge, time, dl, field, notify, errorText, confirmAction, svg, stepPath } from "./ui.js";
import { on, refresh, session } from "./app.js";

export const states = ["eligible", "offered", "downloading", "verified", "installing", "rebooting", "trial",
  "succeeded", "failed", "rolled_back", "timed_out", "skipped", "cancelled"];
const inFlight = ["offered", "downloading", "verified", "installing", "rebooting", "trial"];
const bad = ["failed", "rolled_back", "timed_out"];
const terminal = ["completed", "aborted", "ended"];

// yamlString quotes s for YAML (a JSON string is a YAML string).
const ys = (s) => JSON.stringify(s);
const list = (s) => s.split(",").map((x) => x.trim()).filter(Boolean);

// specFromForm writes the YAML spec the form describes.
function specFromForm(f) {
  const out = [];
  if (f.rid.value.trim()) out.push(`id: ${ys(f.rid.value.trim())}`);
  if (f.rname.value.trim()) out.push(`name: ${ys(f.rname.value.trim())}`);
  out.push(`release: ${ys(f.release.value)}`);
  const sel = [];
  for (const k of ["hardware", "region", "groups"]) {
    const v = list(f["sel_" + k].value);
    if (v.length) sel.push(`  ${k}: [${v.map(ys).join(", ")}]`);
  }
  if (f.sel_version.value.trim()) sel.push(`  version: ${ys(f.sel_version.value.trim())}`);
  if (sel.length) out.push("selector:", ...sel);
  out.push("waves:");
  for (const g of list(f.named.value)) out.push(`  - {name: ${ys(g)}, groups: [${ys(g)}]}`);
  const pct = list(f.percent.value);
  if (pct.length) out.push(`  - {percent: [${pct.join(", ")}]}`);
  for (const k of ["bake", "probation", "success"]) if (f[k].value.trim()) out.push(`${k}: ${ys(f[k].value.trim())}`);
  if (f.per_minute.value.trim()) out.push("rate:", `  per_minute: ${Number(f.per_minute.value)}`);
  if (f.approval.checked) out.push("approval: true");
  return out.join("\n") + "\n";
}

function planView(p) {
  return h("div", { id: "plan" },
    dl([["Release", p.release], ["Version", p.version], ["Devices selected", String(p.selected)], ["Devices in waves", String(p.devices)],
      ["Unassigned (after the last step)", String(p.unassigned || 0)], p.unknown_local_time ? ["Unknown local time", String(p.unknown_local_time)] : null,
      (p.upgrade_path || []).length ? ["Upgrade path", p.upgrade_path.join(" → ")] : null,
      p.provisional ? ["Note", "provisional: the ID is not fixed, so the percentage cohorts may differ at create"] : null]),
    table([
      { head: "Wave", cell: (w) => w.name },
      { head: "Devices", cell: (w) => String(w.devices) },
      { head: "Skipped", cell: (w) => String(w.skipped) },
      { head: "Hardware", cell: (w) => Object.entries(w.hardware || {}).map(([k, n]) => `${k}: ${n}`).join(", ") },
    ], p.waves || [], { id: "plan-waves", caption: "Waves" }),
    (p.skipped || []).length ? table([
      { head: "Skipped because", cell: (s) => s.reason },
      { head: "Devices", cell: (s) => String(s.devices) },
      { head: "For example", cell: (s) => (s.examples || []).join(", ") },
    ], p.skipped, { caption: "Skipped devices" }) : null);
}

function problems(e) {
  const ps = e.detail && e.detail.problems;
  return ps && ps.length ? h("ul", { class: "err" }, ps.map((p) => h("li", {}, typeof p === "string" ? p : `${p.path ? p.path + ": " : ""}${p.message || JSON.stringify(p)}`))) : null;
}

function newRollout(releases, preset) {
  const out = h("div", { id: "new-rollout-result", "aria-live": "polite" });
  const yaml = h("textarea", { id: "rollout-yaml", name: "yaml", rows: 12, spellcheck: "false", "aria-describedby": "yaml-hint" });
  const form = h("form", { id: "rollout-form", class: "filters", oninput: (ev) => {
    if (ev.target !== yaml) yaml.value = specFromForm(form);
  } },
  field("ID (optional)", { name: "rid", id: "ro-id", pattern: "[A-Za-z0-9._-]{1,40}" }),
  field("Name (optional)", { name: "rname" }),
  field("Release", { tag: "select", name: "release", id: "ro-release", value: preset, options: releases.map((r) => [r.id, `${r.id} (${(r.hardware || []).join(", ")})`]) }),
  field("Selector: hardware (comma-separated)", { name: "sel_hardware" }),
  field("Selector: region", { name: "sel_region" }),
  field("Selector: groups", { name: "sel_groups" }),
  field("Selector: version constraint", { name: "sel_version", placeholder: ">=1.0.0 <2.0.0" }),
  field("Named waves: groups, one wave each, in order", { name: "named", id: "ro-named", placeholder: "canary, pilot" }),
  field("Then percentage steps", { name: "percent", id: "ro-percent", value: "10, 50, 100" }),
  field("Bake", { name: "bake", placeholder: "1h" }),
  field("Probation", { name: "probation", placeholder: "10m" }),
  field("Success share", { name: "success", placeholder: "95%" }),
  field("Devices started per minute", { name: "per_minute", type: "number", min: 0 }),
  h("div", { class: "field check" }, h("input", { type: "checkbox", id: "ro-approval", name: "approval" }), h("label", { for: "ro-approval" }, "Needs another operator's approval")));
  const yamlField = h("div", { class: "field wide" }, h("label", { for: "rollout-yaml" }, "Spec (YAML): written from the form, or paste your own"), yaml,
    h("p", { class: "hint", id: "yaml-hint" }, "docs/ROLLOUTS.md describes every key. What is sent is this text."));
  yaml.value = specFromForm(form);
  const send = async (path, what) => {
    out.replaceChildren(h("p", { class: "hint" }, what + "…"));
    try {
      const r = await api.call("POST", path, yaml.value, "application/yaml");
      return r;
    } catch (e) {
      notify(`${what} refused: ${errorText(e)}`, false);
      out.replaceChildren(h("p", { class: "err" }, errorText(e)), problems(e));
      return null;
    }
  };
  const planBtn = h("button", { type: "button", id: "ro-plan", onclick: async () => {
    const p = await send("/rollouts/plan", "Plan");
    if (!p) return;
    notify(`Plan: ${p.devices} devices in ${(p.waves || []).length} waves. Nothing was created.`);
    out.replaceChildren(h("h3", {}, "Plan (dry run: nothing created)"), planView(p), createBtn);
    createBtn.focus();
  } }, "Plan (dry run)");
  const createBtn = h("button", { type: "button", id: "ro-create", onclick: async () => {
    const r = await send("/rollouts", "Create");
    if (!r) return;
    // Navigating clears the status line: the result goes up after.
    window.addEventListener("hashchange", () => notify(`Created rollout ${r.rollout.id} (${r.rollout.state}). Start it from its page.`), { once: true });
    location.hash = "#/rollouts/" + encodeURIComponent(r.rollout.id);
  } }, "Create rollout");
  return card("New rollout", form, yamlField, h("div", { class: "row" }, planBtn), out);
}

export async function rolloutsPage({ params }) {
  const operator = session.role === "operator";
  const [ro, rel] = await Promise.all([api.get("/rollouts", { state: params.get("state"), after: params.get("after"), limit: 100 }),
    operator ? api.get("/releases", { limit: 1000 }) : { releases: [] }]);
  const filter = h("form", { class: "inline", onsubmit: (ev) => {
    ev.preventDefault();
    const s = ev.target.state.value;
    location.hash = "#/rollouts" + (s ? "?state=" + encodeURIComponent(s) : "");
  } }, field("State", { tag: "select", name: "state", value: params.get("state") || "", options: [["", "any"],
    ...["draft", "awaiting_approval", "scheduled", "running", "paused", "completed", "aborted", "ended"].map((s) => [s, s])] }),
  h("button", { type: "submit" }, "Filter"));
  return h("div", { class: "page" },
    h("h1", {}, "Rollouts"),
    card("Rollouts", filter, table([
      { head: "Rollout", cell: (r) => h("a", { href: "#/rollouts/" + encodeURIComponent(r.id) }, r.id) },
      { head: "Name", cell: (r) => r.name || "—" },
      { head: "Release", cell: (r) => r.release },
      { head: "State", cell: (r) => [badge(r.state), r.reason ? h("span", { class: "hint" }, " " + r.reason) : null] },
      { head: "Devices", cell: (r) => String(r.devices) },
      { head: "Succeeded", cell: (r) => String((r.counts || {}).succeeded || 0) },
      { head: "Created", cell: (r) => [time(r.created), " by ", r.created_by] },
    ], ro.rollouts || [], { id: "rollouts-table", empty: "No rollout." }),
    ro.next ? h("a", { href: "#/rollouts?" + new URLSearchParams({ state: params.get("state") || "", after: ro.next }) }, "Next page") : null),
    operator ? ((rel.releases || []).length ? newRollout(rel.releases, params.get("release")) : card("New rollout", h("p", {}, "Upload a release first."))) : null);
}

// waveBar is a wave's progress: succeeded, then failed, then in flight,
// out of its devices.
function waveBar(w) {
  const c = w.counts || {};
  const n = w.devices || 0;
  const ok = c.succeeded || 0;
  const ko = bad.reduce((s, k) => s + (c[k] || 0), 0);
  const fly = inFlight.reduce((s, k) => s + (c[k] || 0), 0);
  const seg = (cls, v) => {
    const e = h("span", { class: "seg " + cls });
    e.style.width = `${n ? (100 * v) / n : 0}%`;
    return e;
  };
  const pct = n ? Math.round((100 * ok) / n) : 0;
  return h("div", { class: "wave", "data-wave": w.name, "data-state": w.state },
    h("div", { class: "wave-head" }, h("strong", {}, w.name), " ", badge(w.state),
      h("span", { class: "hint" }, ` ${ok} of ${n} succeeded, ${fly} in flight, ${ko} failed or rolled back`)),
    h("div", { class: "progress", role: "progressbar", "aria-label": `wave ${w.name}: succeeded`, "aria-valuemin": 0, "aria-valuemax": n,
      "aria-valuenow": ok, "aria-valuetext": `${pct}% succeeded`, "data-succeeded": ok, "data-inflight": fly, "data-failed": ko, "data-devices": n },
    seg("ok", ok), seg("bad", ko), seg("fly", fly)),
    h("div", { class: "hint" }, [w.rollback_rate ? `rollbacks ${w.rollback_rate}` : null, w.health_rate ? `health failures ${w.health_rate}` : null,
      w.bake_until && !w.bake_until.startsWith("0001") ? `bakes until ${new Date(w.bake_until).toLocaleTimeString()}` : null].filter(Boolean).join(" · ")));
}

function countsView(counts) {
  return h("ul", { class: "chips", id: "rollout-counts" }, states.filter((s) => (counts || {})[s]).map((s) =>
    h("li", { "data-state": s }, h("a", { href: `#/rollouts/${encodeURIComponent(current)}?state=${s}` }, badge(s), " ", String(counts[s])))));
}

function alarmsView(alarms) {
  if (!alarms || !alarms.length) return h("p", { class: "hint", id: "rollout-alarms" }, "No alarm.");
  return h("div", { id: "rollout-alarms" }, table([
    { head: "Level", cell: (a) => badge(a.level) },
    { head: "Wave", cell: (a) => a.wave },
    { head: "Kind", cell: (a) => a.kind },
    { head: "Message", cell: (a) => a.message },
    { head: "Time", cell: (a) => time(a.time) },
  ], alarms, { rowAttrs: (a) => ({ class: "alarm-" + a.level }) }));
}


// adoption draws the devices succeeded over time (each device's "since"
// in the succeeded state), against the rollout's devices.
function adoption(v, devs) {
  const times = devs.filter((d) => d.state === "succeeded").map((d) => Date.parse(d.since)).filter((t) => !isNaN(t)).sort((a, b) => a - b);
  const start = Date.parse(v.started);
  if (!times.length || isNaN(start)) return h("p", { class: "hint", id: "adoption" }, "No device has succeeded yet.");
  const end = Math.max(times[times.length - 1], isNaN(Date.parse(v.ended)) || v.ended.startsWith("0001") ? Date.now() : Date.parse(v.ended));
  const W = 600, H = 160, P = 30;
  const x = (t) => P + ((W - 2 * P) * (t - start)) / Math.max(1, end - start);
  const y = (n) => H - P - ((H - 2 * P) * n) / Math.max(1, v.devices);
  const d = stepPath(times, start, end, x, y);
  const secs = Math.round((end - start) / 1000);
  return h("figure", { id: "adoption" }, svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${times.length} of ${v.devices} devices succeeded over ${secs} s`, class: "chart" },
    svg("line", { x1: P, y1: H - P, x2: W - P, y2: H - P, class: "axis" }), svg("line", { x1: P, y1: P, x2: P, y2: H - P, class: "axis" }),
    svg("line", { x1: P, y1: y(v.devices), x2: W - P, y2: y(v.devices), class: "goal" }),
    svg("path", { d, class: "curve" }),
    svg("text", { x: P, y: H - 8 }, "start"), svg("text", { x: W - P, y: H - 8, "text-anchor": "end" }, `+${secs} s`),
    svg("text", { x: P + 4, y: y(v.devices) - 4 }, `${v.devices} devices`)),
  h("figcaption", {}, `${times.length} of ${v.devices} devices succeeded (the rollout's per-device results).`));
}

async function rolloutDevices(id, query, cap) {
  const out = [];
  let after = "";
  for (;;) {
    const r = await api.get(`/rollouts/${encodeURIComponent(id)}/devices`, { ...query, after, limit: 1000 });
    out.push(...(r.devices || []));
    if (!r.next || out.length >= cap) return { devices: out, next: r.next };
    after = r.next;
  }
}

let current = "";

export async function rolloutPage({ args, params, isCurrent }) {
  const id = args[0];
  current = id;
  const enc = encodeURIComponent(id);
  const query = { state: params.get("state") || "", wave: params.get("wave") || "" };
  const [v0, plan, page, all] = await Promise.all([api.get("/rollouts/" + enc), api.get(`/rollouts/${enc}/plan`).catch((e) => ({ error: e })),
    api.get(`/rollouts/${enc}/devices`, { ...query, after: params.get("after"), limit: 200 }), rolloutDevices(id, {}, 5000)]);
  let v = v0;
  const operator = session.role === "operator";

  const head = h("div", {});
  const counts = h("div", {});
  const waves = h("div", { id: "waves" });
  const alarms = h("div", {});
  const actions = h("div", { class: "row", id: "rollout-actions" });
  const curve = h("div", {}, adoption(v, all.devices));
  const devBox = h("div", {});

  const act = (verb, label, text, cls, withReason) => h("button", { type: "button", class: cls || "", id: "ro-" + verb, onclick: async () => {
    const c = await confirmAction(`${label} rollout ${id}`, text, withReason);
    if (!c.ok) return;
    try {
      const r = await api.post(`/rollouts/${enc}/${verb}`, c.reason ? { reason: c.reason } : undefined);
      v = r.rollout || r;
      draw();
      reload();
      notify(`${label}: rollout ${id} is ${v.state || "changed"}.`);
    } catch (e) {
      notify(`${label} refused: ${errorText(e)}`, false);
    }
  } }, label);

  function draw() {
    head.replaceChildren(dl([
      ["State", h("span", { id: "rollout-state", "data-state": v.state }, badge(v.state))],
      v.reason ? ["Reason", h("span", { id: "rollout-reason" }, v.reason)] : null,
      v.paused_by ? ["Paused by", v.paused_by] : null,
      ["Release", h("a", { href: "#/releases/" + encodeURIComponent(v.release) }, v.release)],
      ["Version", v.version],
      ["Devices", String(v.devices)],
      ["Created", [time(v.created), " by ", v.created_by]],
      v.approved ? ["Approved", [time(v.approved.at), " by ", v.approved.by]] : v.approval ? ["Approval", "needed"] : null,
      v.started && !v.started.startsWith("0001") ? ["Started", [time(v.started), " by ", v.started_by || "—"]] : null,
      v.ended && !v.ended.startsWith("0001") ? ["Ended", time(v.ended)] : null,
      v.next ? ["Next", `${v.next.what}${v.next.wave ? " " + v.next.wave : ""} at ${new Date(v.next.at).toLocaleString()}`] : null,
      v.rate && (v.rate.per_minute || v.rate.in_flight_limit) ? ["Rate", `${v.rate.started_last_minute} started in the last minute (limit ${v.rate.per_minute || "none"}), ${v.rate.in_flight} in flight (limit ${v.rate.in_flight_limit || "none"})`] : null,
    ]));
    counts.replaceChildren(countsView(v.counts));
    waves.replaceChildren(...(v.waves || []).map(waveBar));
    alarms.replaceChildren(alarmsView(v.alarms));
    alarms.classList.toggle("has-alarm", !!(v.alarms && v.alarms.length));
    const s = v.state;
    actions.replaceChildren(...(!operator ? [h("p", { class: "hint" }, "Observers read only.")] : [
      s === "awaiting_approval" ? act("approve", "Approve", "Approve this rollout? Another operator may then start it.") : null,
      s === "draft" ? act("start", "Start", `Start offering ${v.release} to ${v.devices} devices, wave by wave?`) : null,
      s === "running" || s === "scheduled" ? act("pause", "Pause", "Pause: no new offers; devices already under way go on.", "", true) : null,
      s === "paused" ? act("resume", "Resume", "Resume offering devices?") : null,
      !terminal.includes(s) ? act("abort", "Abort", "Abort: devices not yet installing get a cancel. This cannot be undone.", "danger", true) : null,
    ].filter(Boolean)));
  }
  draw();

  const devTable = (ds) => table([
    { head: "Device", cell: (d) => h("a", { href: "#/devices/" + encodeURIComponent(d.device) }, d.device) },
    { head: "Wave", cell: (d) => d.wave },
    { head: "State", cell: (d) => badge(d.state) },
    { head: "Reason", cell: (d) => d.reason || "—" },
    { head: "Since", cell: (d) => time(d.since) },
    { head: "Retries", cell: (d) => String(d.retries || 0) },
    { head: "Hardware", cell: (d) => d.hardware || "—" },
    { head: "Region", cell: (d) => d.region || "—" },
  ], ds, { id: "rollout-devices", empty: "No device in this state.", rowAttrs: (d) => ({ "data-state": d.state, ...(bad.includes(d.state) || d.health_failure ? { class: "alarm-warn" } : {}) }) });
  devBox.replaceChildren(devTable(page.devices || []));

  // Live: each summary redraws the page; the device table and the curve
  // follow at most every 2 s.
  let lastFetch = Date.now();
  let pending = null;
  const reload = async () => {
    if (pending) clearTimeout(pending);
    pending = null;
    lastFetch = Date.now();
    try {
      const [pg, a] = await Promise.all([api.get(`/rollouts/${enc}/devices`, { ...query, after: params.get("after"), limit: 200 }), rolloutDevices(id, {}, 5000)]);
      if (!isCurrent()) return;
      devBox.replaceChildren(devTable(pg.devices || []));
      curve.replaceChildren(adoption(v, a.devices));
    } catch (e) {
      if (isCurrent()) notify("Refresh: " + errorText(e), false);
    }
  };
  on("rollout", (sum) => {
    if (sum.id !== id) return;
    v = sum;
    draw();
    if (!pending) pending = setTimeout(reload, Math.max(0, 2000 - (Date.now() - lastFetch)));
  });

  const waveNames = (v.waves || []).map((w) => [w.name, w.name]);
  const devFilter = h("form", { class: "inline", id: "rollout-devices-filter", onsubmit: (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, val] of new FormData(ev.target)) if (val) p.set(k, val);
    location.hash = `#/rollouts/${enc}` + (p.toString() ? "?" + p : "");
  } }, field("State", { tag: "select", name: "state", value: query.state, options: [["", "any"], ...states.map((s) => [s, s])] }),
  field("Wave", { tag: "select", name: "wave", value: query.wave, options: [["", "any"], ...waveNames] }), h("button", { type: "submit" }, "Filter"));
  const next = page.next ? h("a", { href: `#/rollouts/${enc}?` + new URLSearchParams({ ...query, after: page.next }) }, "Next page") : null;

  return h("div", { class: "page" },
    h("p", {}, h("a", { href: "#/rollouts" }, "← Rollouts")),
    h("h1", {}, "Rollout ", h("span", { id: "rollout-id" }, id), v.name ? ` (${v.name})` : ""),
    actions,
    h("div", { class: "grid" }, card("Status", head), card("Devices by state", counts)),
    card("Alarms", alarms),
    card("Waves", waves),
    card("Adoption", curve),
    card("Devices", devFilter, devBox, next),
    card("Plan", plan.error ? h("p", { class: "err" }, errorText(plan.error)) : planView(plan)),
    v.spec ? card("Spec", h("pre", { id: "rollout-spec" }, v.spec)) : null);
}
