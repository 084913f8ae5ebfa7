// Fleet: the devices by version, hardware, region and state, online
// devices, the alarms of active rollouts and the live event feed.
import * as api from "./api.js";
import { h, card, table, badge, time } from "./ui.js";
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
    card("Adoption",
      h("p", {}, "The API keeps no history of the fleet's versions, so the fleet-wide adoption curve over time cannot be drawn here; ",
        "each rollout's page draws its own: devices succeeded over time, from the times rollout/devices reports.")),
    card("Live events", h("p", { class: "hint" }, "Fleet events as the broker streams them (newest first)."), list));
}
