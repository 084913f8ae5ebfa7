// Releases and keys: the release list, a release's details, the upload
// from the browser (with its progress), uploads under way, and the keys.
import * as api from "./api.js";
import { h, card, table, time, dl, field, notify, errorText, bytes, confirmAction } from "./ui.js";
import { refresh, session } from "./app.js";

function uploadForm(onUploaded) {
  const bar = h("progress", { id: "upload-progress", max: 100, value: 0, "aria-label": "Upload progress" });
  const pct = h("span", { id: "upload-percent", "aria-live": "polite" }, "");
  const result = h("div", { id: "upload-result" });
  const form = h("form", { id: "upload-form", onsubmit: async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const m = f.manifest.files[0];
    const img = f.image.files[0];
    if (!m || !img) {
      notify("Choose the signed manifest and the image.", false);
      return;
    }
    // The API takes the parts in this order: manifest, then image.
    const fd = new FormData();
    fd.append("manifest", m, m.name);
    fd.append("image", img, img.name);
    const btn = f.querySelector("button[type=submit]");
    btn.disabled = true;
    bar.value = 0;
    pct.textContent = "0%";
    result.replaceChildren();
    try {
      const r = await api.upload("/releases", fd, (sent, total) => {
        const p = Math.floor((100 * sent) / total);
        bar.value = p;
        pct.textContent = `${p}% (${bytes(sent)} of ${bytes(total)})`;
      });
      bar.value = 100;
      const rel = r.release;
      pct.textContent = "100%";
      notify(`Uploaded release ${rel.id}.`);
      result.replaceChildren(h("p", { class: "ok" }, "Release ", h("a", { href: "#/releases/" + encodeURIComponent(rel.id), id: "uploaded-release" }, rel.id), " is in the catalog."));
      onUploaded();
    } catch (e) {
      notify("Upload refused: " + errorText(e), false);
      result.replaceChildren(h("p", { class: "err" }, errorText(e)));
    } finally {
      btn.disabled = false;
    }
  } },
  field("Signed manifest (otactl sign writes IMAGE.manifest)", { type: "file", name: "manifest", id: "upload-manifest", required: true }),
  field("Image", { type: "file", name: "image", id: "upload-image", required: true }),
  h("div", { class: "row" }, h("button", { type: "submit" }, "Upload"), bar, pct),
  result);
  return card("Upload a release", form);
}

function keyForm() {
  return card("Add a key", h("form", { id: "key-form", onsubmit: async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    try {
      const r = await api.post("/keys", { name: f.name.value, pem: f.pem.value });
      notify(`Added key ${r.key ? r.key.kid : ""}.`);
      refresh();
    } catch (e) {
      notify("Key refused: " + errorText(e), false);
    }
  } }, field("Name", { name: "name", required: true }), field("Public key (PEM)", { tag: "textarea", name: "pem", rows: 5 }),
  h("button", { type: "submit" }, "Add key")));
}

function releasesTable(rel) {
  return [table([
    { head: "Release", cell: (r) => h("a", { href: "#/releases/" + encodeURIComponent(r.id) }, r.id) },
    { head: "Version", cell: (r) => r.version },
    { head: "Kind", cell: (r) => r.kind },
    { head: "Hardware", cell: (r) => (r.hardware || []).join(", ") },
    { head: "Size", cell: (r) => bytes(r.size) },
    { head: "Key", cell: (r) => r.kid },
    { head: "Uploaded", cell: (r) => [time(r.created), " by ", r.uploaded_by] },
  ], rel.releases || [], { id: "releases-table", empty: "No release yet." }),
  rel.next ? h("a", { href: "#/releases?" + new URLSearchParams({ after: rel.next }) }, "Next page") : null];
}

export async function releasesPage({ params }) {
  const query = { version: params.get("version"), hardware: params.get("hardware"), after: params.get("after"), limit: 100 };
  const [rel, keys, ups] = await Promise.all([api.get("/releases", query), api.get("/keys", { limit: 100 }), api.get("/uploads", { limit: 100 })]);
  const operator = session.role === "operator";
  const filter = h("form", { class: "inline", id: "release-filter", onsubmit: (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(ev.target)) if (v) p.set(k, v);
    location.hash = "#/releases" + (p.toString() ? "?" + p : "");
  } }, field("Version", { name: "version", value: params.get("version") || "" }), field("Hardware", { name: "hardware", value: params.get("hardware") || "" }),
  h("button", { type: "submit" }, "Filter"));
  const list = h("div", {}, releasesTable(rel));
  // After an upload the list is read again.
  const reread = async () => {
    try {
      list.replaceChildren(...releasesTable(await api.get("/releases", query)).filter(Boolean));
    } catch (e) {
      notify("Releases: " + errorText(e), false);
    }
  };
  return h("div", { class: "page" },
    h("h1", {}, "Releases and keys"),
    operator ? uploadForm(reread) : null,
    card("Releases", filter, list),
    (ups.uploads || []).length ? card("Uploads under way", table([
      { head: "Upload", cell: (u) => u.id },
      { head: "Version", cell: (u) => u.version || "—" },
      { head: "Received", cell: (u) => `${bytes(u.offset)} of ${bytes(u.size)}` },
      { head: "", cell: (u) => operator ? h("button", { type: "button", class: "danger", onclick: async () => {
        if (!(await confirmAction("Abort upload", `Abort upload ${u.id}? What it received is deleted.`)).ok) return;
        try {
          await api.call("DELETE", "/uploads/" + encodeURIComponent(u.id));
          notify(`Aborted upload ${u.id}.`);
          refresh();
        } catch (e) { notify("Abort refused: " + errorText(e), false); }
      } }, "Abort") : "" },
    ], ups.uploads)) : null,
    card("Keys", table([
      { head: "Key ID", cell: (k) => k.kid },
      { head: "Name", cell: (k) => k.name },
      { head: "Added", cell: (k) => [time(k.added), " by ", k.added_by || "—"] },
      { head: "State", cell: (k) => (k.revoked ? `revoked ${k.revoked_at ? new Date(k.revoked_at).toLocaleString() : ""}` : "trusted") },
      { head: "", cell: (k) => operator && !k.revoked ? h("button", { type: "button", class: "danger", onclick: async () => {
        if (!(await confirmAction("Revoke key", `Revoke key ${k.kid} (${k.name})? Releases signed with it can no longer be offered.`)).ok) return;
        try {
          await api.post(`/keys/${encodeURIComponent(k.kid)}/revoke`);
          notify(`Revoked key ${k.kid}.`);
          refresh();
        } catch (e) { notify("Revoke refused: " + errorText(e), false); }
      } }, "Revoke") : "" },
    ], keys.keys || [], { id: "keys-table", empty: "No trusted key: add one before uploading." })),
    operator ? keyForm() : null);
}

export async function releasePage({ args }) {
  const r = await api.get("/releases/" + encodeURIComponent(args[0]));
  const rel = r.release;
  const comps = r.components || [];
  return h("div", { class: "page" },
    h("p", {}, h("a", { href: "#/releases" }, "← Releases")),
    h("h1", {}, "Release ", h("span", { id: "release-id" }, rel.id)),
    h("div", { class: "grid" },
      card("Manifest", dl([
        ["Version", rel.version], ["Kind", rel.kind], ["Hardware", (rel.hardware || []).join(", ")],
        ["Build ID", rel.build_id], ["Sequence", String(rel.sequence)], ["Secure version", String(rel.secure_version)],
        ["Minimum bootloader", rel.min_bootloader], ["Image size", `${bytes(rel.size)} (${rel.size} bytes)`],
        ["Image digest (SHA-256)", h("code", { class: "wrap" }, rel.digest)],
        ["Signing key", `${rel.kid} (${r.key_trusted ? "trusted" : "not trusted now"})`],
        ["Signed manifest", rel.manifest ? `${Math.floor((rel.manifest.length * 3) / 4)} bytes (COSE_Sign1)` : "—"],
        ["Uploaded", [time(rel.created), " by ", rel.uploaded_by]],
      ])),
      card("SBOM components", comps && comps.length ? table([
        { head: "Name", cell: (c) => c.name }, { head: "Version", cell: (c) => c.version }, { head: "Digest", cell: (c) => h("code", { class: "wrap" }, c.digest) },
      ], comps, { id: "sbom-table" }) : h("p", { class: "hint", id: "sbom-note" }, "The manifest lists no components."))),
    h("p", {}, h("a", { href: "#/rollouts?release=" + encodeURIComponent(rel.id), class: "button" }, "Roll this release out")));
}
