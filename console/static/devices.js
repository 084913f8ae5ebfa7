// Devices: the list with otactl device list's filters, and a device's
// page: status, health, slot, boot reason, the offer and the timeline.
import * as api from "./api.js";
import { h, card, table, badge, time, dl, field, notify, errorText, bytes } from "./ui.js";
import { on } from "./app.js";

const filters = [
  ["hardware", "Hardware"], ["region", "Region"], ["connectivity", "Connectivity"], ["group", "Group"],
  ["tag", "Tag (key=value)"], ["parent", "Parent gateway"], ["firmware", "Firmware version"],
];
const bools = [["online", "Online"], ["revoked", "Revoked"]];

export async function devicesPage({ params }) {
  const query = {};
  for (const [k] of [...filters, ...bools, ["role"], ["after"]]) if (params.get(k)) query[k] = params.get(k);
  const res = await api.get("/devices", { ...query, limit: 100 });

  const form = h("form", { class: "filters", id: "device-filters", onsubmit: (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(ev.target)) if (v) p.set(k, v);
    location.hash = "#/devices" + (p.toString() ? "?" + p : "");
  } },
  filters.map(([k, label]) => field(label, { name: k, value: params.get(k) || "" })),
  field("Role", { tag: "select", name: "role", value: params.get("role") || "", options: [["", "any"], ["device", "device"], ["gateway", "gateway"]] }),
  bools.map(([k, label]) => field(label, { tag: "select", name: k, value: params.get(k) || "", options: [["", "any"], ["true", "yes"], ["false", "no"]] })),
  h("div", { class: "row" }, h("button", { type: "submit" }, "Filter"), h("a", { href: "#/devices", class: "button secondary" }, "Clear")));

  const find = h("form", { class: "inline", id: "device-find", role: "search", onsubmit: async (ev) => {
    ev.preventDefault();
    const id = ev.target.id.value.trim();
    if (!id) return;
    try {
      await api.get("/devices/" + encodeURIComponent(id));
      location.hash = "#/devices/" + encodeURIComponent(id);
    } catch (e) {
      notify(`Device ${id}: ${errorText(e)}`, false);
    }
  } }, field("Device ID", { name: "id", id: "find-id", autocomplete: "off" }), h("button", { type: "submit" }, "Open"));

  const rows = res.devices || [];
  const next = res.next ? "#/devices?" + new URLSearchParams({ ...query, after: res.next }) : null;
  return h("div", { class: "page" },
    h("h1", {}, "Devices"),
    card("Find", find),
    card("Filter", form),
    table([
      { head: "Device", cell: (d) => h("a", { href: "#/devices/" + encodeURIComponent(d.id) }, d.id) },
      { head: "Role", cell: (d) => d.role },
      { head: "Hardware", cell: (d) => d.hardware || d.status.reported_hardware || "—" },
      { head: "Region", cell: (d) => d.region || "—" },
      { head: "Firmware", cell: (d) => d.status.firmware || "—" },
      { head: "OTA state", cell: (d) => badge(d.status.ota_state) },
      { head: "Online", cell: (d) => (d.revoked ? badge("revoked") : d.status.online ? badge("online") : badge("offline")) },
      { head: "Last seen", cell: (d) => time(d.status.last_seen) },
    ], rows, { id: "devices-table", caption: `${rows.length} device(s) on this page`, empty: "No device matches." }),
    h("div", { class: "row" }, params.get("after") ? h("a", { href: "#/devices?" + new URLSearchParams({ ...query, after: "" }) }, "First page") : null,
      next ? h("a", { href: next, id: "devices-next" }, "Next page") : null));
}

// The heartbeat's health flags are checks that passed (docs/PROTOCOL.md).
const checks = [[1, "application"], [2, "required resources"], [4, "messaging"]];
export function healthy(s) { return !s.heartbeat_at || (s.health_flags & 7) === 7; }
function healthText(s) {
  if (!s.heartbeat_at) return "no heartbeat yet";
  const failed = checks.filter(([bit]) => !(s.health_flags & bit)).map(([, n]) => n);
  return failed.length ? `failing: ${failed.join(", ")}` : "healthy (application, resources, messaging ok)";
}

function timelineTable(entries) {
  return table([
    { head: "Time", cell: (e) => time(e.time) },
    { head: "Source", cell: (e) => e.source },
    { head: "Type", cell: (e) => e.type },
    { head: "Rollout", cell: (e) => e.rollout_id ? h("a", { href: "#/rollouts/" + encodeURIComponent(e.rollout_id.split("~")[0]) }, e.rollout_id) : "—" },
    { head: "Version", cell: (e) => e.version || "—" },
    { head: "Detail", cell: (e) => [e.error ? h("strong", {}, e.error, " ") : null, e.detail || ""] },
  ], entries, { id: "timeline", empty: "No timeline entries." });
}

export async function devicePage({ args }) {
  const id = args[0];
  const enc = encodeURIComponent(id);
  const [d, tl] = await Promise.all([api.get("/devices/" + enc), api.get(`/devices/${enc}/timeline`, { limit: 50 })]);
  const s = d.status || {};
  const statusBox = h("div", {});
  const renderStatus = (s) => statusBox.replaceChildren(dl([
    ["Online", s.online ? badge("online") : badge("offline")],
    ["Last seen", time(s.last_seen)],
    ["Firmware", s.firmware],
    ["OTA state", badge(s.ota_state)],
    ["Slot", String(s.slot ?? "—")],
    ["Boot reason", s.boot_reason],
    ["Boots since commit", String(s.boots_since_commit ?? "—")],
    ["Bootloader", s.bootloader],
    ["Agent", s.agent_version],
    ["Secure version", String(s.secure_version ?? "—")],
    ["Link", s.link],
    ["Remote", s.remote],
    ["Connects", String(s.connects ?? 0)],
    ["Disconnect reason", s.disconnect_reason],
  ]));
  renderStatus(s);
  const healthBox = dl([
    ["Health", healthText(s)],
    ["Heartbeat", time(s.heartbeat_at)],
    ["Uptime", s.uptime_s !== undefined ? `${s.uptime_s} s` : "—"],
    ["Free heap", bytes(s.free_heap)],
    ["RSSI", s.rssi ? `${s.rssi} dBm` : "—"],
    ["Watchdog resets", String(s.watchdog_resets ?? 0)],
    s.download_offset !== undefined ? ["Download offset", bytes(s.download_offset)] : null,
  ]);

  const tlBox = h("div", {}, timelineTable(tl.entries || []));
  let before = tl.next;
  const more = h("button", { type: "button", class: "secondary", hidden: !before, onclick: async () => {
    try {
      const r = await api.get(`/devices/${enc}/timeline`, { limit: 50, before });
      tl.entries.push(...(r.entries || []));
      before = r.next;
      more.hidden = !before;
      tlBox.replaceChildren(timelineTable(tl.entries));
    } catch (e) {
      notify("Timeline: " + errorText(e), false);
    }
  } }, "Older entries");

  // The device's events as they happen.
  const lastEvent = h("p", { class: "hint", id: "device-live" }, "Live: waiting for this device's events.");
  on("fleet", (ev) => {
    if (ev.id !== id) return;
    lastEvent.textContent = `Live: ${ev.type}${ev.state ? " " + ev.state : ""}${ev.progress !== undefined ? " " + ev.progress + "%" : ""} at ${new Date(ev.time).toLocaleTimeString()}`;
  });

  return h("div", { class: "page" },
    h("p", {}, h("a", { href: "#/devices" }, "← Devices")),
    h("h1", {}, "Device ", h("span", { id: "device-id" }, d.id)),
    lastEvent,
    h("div", { class: "grid" },
      card("Status", statusBox),
      card("Health", healthBox),
      card("Registration", dl([
        ["Role", d.role], ["Auth", d.auth], ["Hardware", d.hardware], ["Region", d.region],
        ["Connectivity", d.connectivity], ["Groups", (d.groups || []).join(", ")],
        ["Tags", Object.entries(d.tags || {}).map(([k, v]) => `${k}=${v}`).join(", ")],
        ["Parent", d.parent], ["Revoked", d.revoked ? `yes: ${d.revoke_reason || ""}` : "no"],
        ["Created", time(d.created)],
      ])),
      d.offer ? card("Current offer", dl([
        ["Rollout", d.offer.rollout_id ? h("a", { href: "#/rollouts/" + encodeURIComponent(d.offer.rollout_id.split("~")[0]) }, d.offer.rollout_id) : "—"],
        ["Release", d.offer.release], ["Version", d.offer.version], ["Size", bytes(d.offer.size)],
      ])) : null),
    card("Timeline", tlBox, more));
}
