// The classifier heads page of an admin key (the operator's: every head, global or a
// tenant's; a tenant admin's: its tenant's and the global ones, the API decides): each
// head's owner and versions (labels, embedding model, dimension), activate a version,
// roll back, delete (each after a confirmation), and upload a head JSON file (as
// `adaptserve train --method head` writes it) under a name.

import { api } from "./api.js";
import { clear, confirmDialog, field, h, notice, table } from "./dom.js";

const path = (...parts) => parts.map(encodeURIComponent).join("/");

// `?tenant=` for a tenant's head; nothing for a global one (owner null).
const whose = (owner) => (owner ? `?${new URLSearchParams({ tenant: owner })}` : "");
const ownerText = (owner) => (owner ? `tenant ${owner}` : "global");

export async function heads(view) {
  const [{ data }, tenants] = await Promise.all([api("GET", "/admin/heads"), api("GET", "/admin/tenants")]);
  const status = h("div", { id: "head-status", "aria-live": "polite" });
  view.append(uploadForm(view, tenants.data), status);
  if (!data.length) view.append(h("p", { text: "No classifier head yet." }));
  const refresh = async (message) => {
    clear(view);
    await heads(view);
    view.querySelector("#head-status").append(notice(message, "ok"));
  };
  const fail = (e) => clear(status, notice(e.message));
  for (const head of data) view.append(headCard(head, refresh, fail));
}

function headCard(head, refresh, fail) {
  const { name, owner } = head;
  const active = head.versions.find((v) => v.version === head.active_version);
  const buttons = h("div", { class: "inline" },
    head.previous_version
      ? h("button", { type: "button", class: "secondary", "data-rollback": name, text: `Roll back to ${head.previous_version}`, onclick: () => rollback(head, refresh, fail) })
      : null,
    h("button", { type: "button", class: "danger", "data-delete": name, text: "Delete", onclick: () => remove(head, refresh, fail) }));
  return h("section", { class: "card", "data-head": name, "data-owner": owner ?? "" },
    h("h2", {}, name, " ", h("small", { class: "muted head-owner", text: ownerText(owner) })),
    h("p", { class: "head-summary" },
      "Active version ", h("code", { class: "head-active", text: head.active_version }),
      active ? `: labels ${active.labels.join(", ")}; embedding model ${active.embedding_model}, dimension ${active.dim}` : ""),
    table(head.versions, [
      ["version", (v) => h("code", { text: v.version })],
      ["labels", (v) => v.labels.join(", ")],
      ["embedding model", (v) => h("code", { text: v.embedding_model })],
      ["dimension", (v) => String(v.dim)],
      ["size", (v) => `${(v.size_bytes / 1024).toFixed(1)} KiB`],
      ["created", (v) => v.created_at.slice(0, 19).replace("T", " ")],
      ["", (v) => (v.version === head.active_version
        ? h("strong", { class: "active-version", text: "active" })
        : h("button", { type: "button", "data-activate": v.version, text: "Activate", onclick: () => activate(head, v.version, refresh, fail) }))],
    ]),
    buttons);
}

async function activate(head, version, refresh, fail) {
  const { name, owner } = head;
  const lines = [`Templates that name head ${name} (${ownerText(owner)}) classify with version ${version} from now on; Roll back returns to ${head.active_version}.`];
  if (!(await confirmDialog(`Activate version ${version} of ${name}?`, lines, "Activate"))) return;
  try {
    const result = await api("POST", `/admin/heads/${path(name)}/activate${whose(owner)}`, { version });
    await refresh(`${name}: ${result.previous_version} → ${result.active_version}.`);
  } catch (e) {
    fail(e);
  }
}

async function rollback(head, refresh, fail) {
  const { name, owner } = head;
  const lines = [`Templates that name head ${name} (${ownerText(owner)}) classify with version ${head.previous_version} again.`];
  if (!(await confirmDialog(`Roll ${name} back to ${head.previous_version}?`, lines, "Roll back"))) return;
  try {
    const result = await api("POST", `/admin/heads/${path(name)}/rollback${whose(owner)}`);
    await refresh(`${name}: rolled back, ${result.previous_version} → ${result.active_version}.`);
  } catch (e) {
    fail(e);
  }
}

async function remove(head, refresh, fail) {
  const { name, owner } = head;
  const lines = [
    `Its ${head.versions.length} version(s) are deleted (${ownerText(owner)}).`,
    `Templates that name head ${name} answer 404 until a head of that name is uploaded again.`,
  ];
  if (!(await confirmDialog(`Delete head ${name}?`, lines, "Delete"))) return;
  try {
    await api("DELETE", `/admin/heads/${path(name)}${whose(owner)}`);
    await refresh(`Deleted ${name} (${ownerText(owner)}).`);
  } catch (e) {
    fail(e);
  }
}

function uploadForm(view, tenants) {
  const name = h("input", { id: "head-name", required: true, autocomplete: "off" });
  const owner = h("select", { id: "head-owner" },
    h("option", { value: "", text: "global" }),
    tenants.map((t) => h("option", { value: t.name, text: `tenant ${t.name}` })));
  const file = h("input", { id: "head-file", type: "file", accept: ".json,application/json", required: true });
  const status = h("div", { id: "head-upload-status", "aria-live": "polite" });
  const form = h("form", { class: "card inline", id: "head-upload" },
    field("Head name", name),
    field("Owner", owner, "A tenant admin key's heads are always its tenant's."),
    field("Head file (JSON, as train --method head writes it)", file),
    h("button", { type: "submit", text: "Upload" }),
    status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(status);
    let body;
    try {
      body = JSON.parse(await file.files[0].text());
    } catch (e) {
      clear(status, notice(`${file.files[0].name} is not JSON: ${e.message}`));
      return;
    }
    try {
      const made = await api("PUT", `/admin/heads/${path(name.value.trim())}${whose(owner.value)}`, body);
      clear(view);
      await heads(view);
      view.querySelector("#head-status").append(
        notice(`Uploaded ${made.name} version ${made.version} (${ownerText(made.owner)}); active: ${made.active_version}.`, "ok"));
    } catch (e) {
      clear(status, notice(e.message));
    }
  });
  return form;
}
