// DOM helpers. Every text from the API goes in as text (textContent),
// never as markup.

// h builds an element: h("a", {href: "#/x", class: "c"}, "text", child…).
// Attributes starting with "on" are listeners; false/null attributes are
// left out.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

// table renders rows with columns [{head, cell: row => node|text}].
export function table(columns, rows, opts = {}) {
  const t = h("table", { class: "data", ...(opts.id ? { id: opts.id } : {}) },
    opts.caption ? h("caption", {}, opts.caption) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c.head)))),
    h("tbody", {}, rows.length === 0
      ? h("tr", { class: "empty-row" }, h("td", { colspan: columns.length, class: "empty" }, opts.empty || "Nothing to show."))
      : rows.map((r) => h("tr", opts.rowAttrs ? opts.rowAttrs(r) : {}, columns.map((c) => h("td", { "data-label": c.head }, c.cell(r)))))));
  return h("div", { class: "scroll" }, t);
}

// dl renders [label, value] pairs as a description list.
export function dl(pairs) {
  return h("dl", { class: "fields" }, pairs.filter((p) => p).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v === undefined || v === null || v === "" ? "—" : v)]));
}

export function time(t) {
  if (!t || t.startsWith("0001-")) return "—";
  const d = new Date(t);
  if (isNaN(d)) return t;
  return h("time", { datetime: t, title: t }, d.toLocaleString());
}

export function bytes(n) {
  if (n === undefined || n === null) return "—";
  const u = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return `${i ? v.toFixed(1) : v} ${u[i]}`;
}

// notify shows an action's result (ok) or an error in the status region,
// which screen readers announce.
export function notify(text, ok = true) {
  const s = document.getElementById("status");
  s.replaceChildren(h("p", { class: ok ? "ok" : "err", "data-kind": ok ? "ok" : "error" }, text,
    h("button", { type: "button", class: "link", "aria-label": "Dismiss", onclick: () => s.replaceChildren() }, "×")));
}

// errorText is an API error as the console shows it.
export function errorText(e) {
  if (e && e.code) return `${e.message} (${e.code}${e.status ? ", HTTP " + e.status : ""})`;
  return String(e && e.message ? e.message : e);
}

// confirm asks in the page's dialog; it resolves to {ok, reason}.
export function confirmAction(title, text, withReason) {
  const d = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  const reason = document.getElementById("confirm-reason");
  reason.value = "";
  reason.hidden = !withReason;
  document.getElementById("confirm-reason-label").hidden = !withReason;
  return new Promise((resolve) => {
    d.addEventListener("close", () => resolve({ ok: d.returnValue === "ok", reason: reason.value.trim() }), { once: true });
    d.returnValue = "";
    d.showModal();
    (withReason ? reason : document.getElementById("confirm-ok")).focus();
  });
}

// badge is a state shown as a word with a colour class.
export function badge(state) {
  return h("span", { class: "badge st-" + String(state || "none").replace(/[^a-z_]/g, "") }, state || "—");
}

// card is a titled section.
export function card(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

// form helpers: a labelled input.
let uid = 0;
export function field(label, attrs = {}) {
  const id = attrs.id || "f" + ++uid;
  const input = attrs.tag === "select"
    ? h("select", { id, name: attrs.name }, (attrs.options || []).map((o) => h("option", { value: o[0], ...(o[0] === attrs.value ? { selected: true } : {}) }, o[1])))
    : attrs.tag === "textarea"
      ? h("textarea", { id, name: attrs.name, rows: attrs.rows || 8, spellcheck: "false", placeholder: attrs.placeholder }, attrs.value || "")
      : h("input", { id, type: "text", ...attrs, tag: null, options: null });
  return h("div", { class: "field" }, h("label", { for: id }, label), input);
}

// svg builds an SVG element.
export function svg(tag, attrs, ...kids) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const k of kids) e.appendChild(typeof k === "string" ? document.createTextNode(k) : k);
  return e;
}

// stepPath is the SVG path of a count that goes up by one at each of the
// sorted times, from start to end, on the scales x (time) and y (count).
export function stepPath(times, start, end, x, y) {
  let d = `M${x(start).toFixed(1)},${y(0).toFixed(1)}`;
  times.forEach((t, i) => { d += ` L${x(t).toFixed(1)},${y(i).toFixed(1)} L${x(t).toFixed(1)},${y(i + 1).toFixed(1)}`; });
  return d + ` L${x(end).toFixed(1)},${y(times.length).toFixed(1)}`;
}
