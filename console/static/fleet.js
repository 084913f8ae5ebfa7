// Fleet: the devices by version, hardware, region and state, online
// devices, the alarms of active rollouts and the live event feed.
import * as api from "./api.js";
import { h, card, table, badge, time, svg, stepPath } from "./ui.js";
import { on, feed } from "./app.js";
import { healthy } from "./devices.js";

// A fleet larger than this is summarised from its first devices (the page
// says so).
const maxDevices = 20000;

export async function allDevices(query, cap = maxDevices) {
  const out = [];
  let after = "";
  for (;;) {
    const r = await api.get("/devices", { ...query, after, limit: 1000 });
    out.push(...r.devices);
    if (!r.next || out.length >= cap) return { devices: out, more: !!r.next };
    after = r.next;
  }
}

const terminal = ["completed", "aborted", "ended"];

function tally(devs, key) {
  const m = new Map();
  for (const d of devs) {
    const k = key(d) || "(none)";
    m.set(k, (m.get(k) || 0) + 1);
  }
  return [...m.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
}

// bars renders counts as labelled horizontal bars.
function bars(title, counts, total, link) {
  return card(title, h("ul", { class: "bars" }, counts.map(([k, n]) => {
    const bar = h("span", { class: "fill" });
    bar.style.width = `${total ? (100 * n) / total : 0}%`;
    const label = link ? h("a", { href: link(k) }, k) : k;
    return h("li", {}, h("span", { class: "k" }, label), h("span", { class: "bar", "aria-hidden": "true" }, bar), h("span", { class: "n" }, String(n)));
  })));
}

export function describe(ev) {
  const parts = [ev.type];
  if (ev.id) parts.push(ev.id);
  if (ev.wave) parts.push("wave " + ev.wave);
  if (ev.state) parts.push(ev.state);
  if (ev.firmware) parts.push(ev.firmware);
  if (ev.progress !== undefined) parts.push(ev.progress + "%");
  if (ev.reason) parts.push("(" + ev.reason + ")");
  return parts.join(" ");
}

// adoption draws, for the versions most devices run, how many of the
// devices on each came to it over time (the first birth each reported on
// it: status.firmware_since), against the whole fleet.
function adoption(devices) {
  const versions = tally(devices, (d) => d.status.firmware).filter(([v]) => v !== "(none)").slice(0, 4);
  const series = versions.map(([v]) => ({
    v,
    times: devices.filter((d) => d.status.firmware === v).map((d) => Date.parse(d.status.firmware_since)).filter((t) => !isNaN(t)).sort((a, b) => a - b),
  })).filter((s) => s.times.length);
  if (!series.length) return h("p", { class: "hint", id: "fleet-adoption" }, "No device has reported its firmware yet.");
  const start = Math.min(...series.map((s) => s.times[0]));
  const end = Math.max(Date.now(), ...series.map((s) => s.times[s.times.length - 1]));
  const total = devices.length;
  const W = 600, H = 160, P = 30;
  const x = (t) => P + ((W - 2 * P) * (t - start)) / Math.max(1, end - start);
  const y = (n) => H - P - ((H - 2 * P) * n) / Math.max(1, total);
  const paths = series.map((s, i) => svg("path", { d: stepPath(s.times, start, end, x, y), class: `curve series-${i}`, "data-version": s.v }));
  const span = end - start;
  const spanText = span >= 2 * 86400e3 ? `${Math.round(span / 86400e3)} days` : span >= 2 * 3600e3 ? `${Math.round(span / 3600e3)} h` : `${Math.round(span / 60e3)} min`;
  const label = series.map((s) => `${s.v}: ${s.times.length}`).join(", ");
  return h("figure", { id: "fleet-adoption" },
    svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `devices by the time they came to their version, over ${spanText}: ${label}`, class: "chart" },
      svg("line", { x1: P, y1: H - P, x2: W - P, y2: H - P, class: "axis" }), svg("line", { x1: P, y1: P, x2: P, y2: H - P, class: "axis" }),
      svg("line", { x1: P, y1: y(total), x2: W - P, y2: y(total), class: "goal" }),
      ...paths,
      svg("text", { x: P, y: H - 8 }, new Date(start).toLocaleString()), svg("text", { x: W - P, y: H - 8, "text-anchor": "end" }, "now"),
      svg("text", { x: P + 4, y: y(total) - 4 }, `${total} devices`)),
    h("figcaption", {}, h("ul", { class: "legend" }, series.map((s, i) =>
      h("li", { class: `series-${i}` }, `${s.v}: ${s.times.length} devices, the first since ${new Date(s.times[0]).toLocaleString()}`)))));
}

function feedItem(e) {
  return h("li", { "data-received": String(e.received), "data-type": e.data.type, "data-id": e.data.id || "" },
    time(e.data.time), " ", describe(e.data));
}

export async function fleetPage() {
  const [{ devices, more }, ro] = await Promise.all([allDevices({}), api.get("/rollouts", { limit: 100 })]);
  const active = (ro.rollouts || []).filter((r) => !terminal.includes(r.state));
  const details = await Promise.all(active.map((r) => api.get("/rollouts/" + encodeURIComponent(r.id))));
  const online = devices.filter((d) => d.status.online).length;
  const total = devices.length;
  const health = devices.filter((d) => !healthy(d.status)).length;
  const alarms = details.flatMap((r) => (r.alarms || []).map((a) => ({ ...a, rollout: r.id, rstate: r.state })));

  const list = h("ul", { class: "feed", id: "feed" }, feed.map(feedItem));
  on("fleet", () => list.replaceChildren(...feed.map(feedItem)));

  const devLink = (key) => (v) => "#/devices?" + new URLSearchParams({ [key]: v === "(none)" ? "" : v });
  return h("div", { class: "page" },
    h("h1", {}, "Fleet"),
    more ? h("p", { class: "warn" }, `Summarised from the first ${total} devices.`) : null,
    h("div", { class: "stats" },
      h("div", { class: "stat" }, h("span", { class: "n", id: "stat-devices" }, String(total)), " devices"),
      h("div", { class: "stat" }, h("span", { class: "n", id: "stat-online" }, String(online)), " online"),
      h("div", { class: "stat" }, h("span", { class: "n" }, String(health)), " failing a health check"),
      h("div", { class: "stat" + (alarms.length ? " alarm" : "") }, h("span", { class: "n", id: "stat-alarms" }, String(alarms.length)), " rollout alarms")),
    alarms.length ? card("Alarms", table([
      { head: "Rollout", cell: (a) => h("a", { href: "#/rollouts/" + encodeURIComponent(a.rollout) }, a.rollout) },
      { head: "State", cell: (a) => badge(a.rstate) },
      { head: "Level", cell: (a) => badge(a.level) },
      { head: "Message", cell: (a) => a.message },
      { head: "Time", cell: (a) => time(a.time) },
    ], alarms, { id: "fleet-alarms" })) : null,
    h("div", { class: "grid" },
      bars("By version", tally(devices, (d) => d.status.firmware), total, devLink("firmware")),
      bars("By hardware", tally(devices, (d) => d.hardware || d.status.reported_hardware), total, devLink("hardware")),
      bars("By region", tally(devices, (d) => d.region), total, devLink("region")),
      bars("By OTA state", tally(devices, (d) => d.status.ota_state), total),
      bars("Online", tally(devices, (d) => (d.status.online ? "online" : "offline")), total)),
    card("Adoption", adoption(devices),
      h("p", { class: "hint" }, "Devices on each version by the time they first reported it (a device that left a version no longer counts on it); each rollout's page draws its own curve.")),
    card("Live events", h("p", { class: "hint" }, "Fleet events as the broker streams them (newest first)."), list));
}
