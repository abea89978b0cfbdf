// The templates page of an admin key: every template it may see, a template's versions
// (activate one after a confirmation, diff two), and an editor: the YAML of a version,
// applied with the admin PUT; a refusal is the API's message, and where it names a line
// the editor selects that line.

import { api, sendText } from "./api.js";
import { lineDiff, toYaml } from "./documents.js";
import { clear, confirmDialog, field, h, notice, table } from "./dom.js";

const YAML = "application/yaml";
const owned = (name, owner, tail = "") => {
  const query = new URLSearchParams(owner ? { tenant: owner } : {});
  return `/admin/templates/${encodeURIComponent(name)}${tail}${query.size ? `?${query}` : ""}`;
};
const ownerText = (owner) => (owner ? `tenant ${owner}` : "global");

export async function templateAdmin(view) {
  const [{ data }, tenants] = await Promise.all([api("GET", "/admin/templates"), api("GET", "/admin/tenants")]);
  const detail = h("div", { id: "template-admin-detail" });
  const reopen = async (name, owner) => {
    clear(view);
    await templateAdmin(view);
    await openTemplate(name, owner, view.querySelector("#template-admin-detail"), reopen);
  };
  if (!data.length) view.append(h("p", { text: "No template yet." }));
  view.append(
    table(data, [
      ["template", (t) => h("button", { type: "button", class: "link", "data-template": t.name, "data-owner": t.owner ?? "", text: t.name, onclick: () => openTemplate(t.name, t.owner, detail, reopen) })],
      ["owner", (t) => ownerText(t.owner)],
      ["active version", (t) => String(t.active_version)],
    ]),
    h("div", { class: "buttons" }, h("button", { type: "button", id: "template-new", class: "secondary", text: "New template", onclick: () => clear(detail, editor(null, null, "", tenants.data, reopen)) })),
    detail,
  );
}

async function openTemplate(name, owner, detail, reopen) {
  let described;
  try {
    described = await api("GET", owned(name, owner));
  } catch (e) {
    clear(detail, notice(e.message));
    return;
  }
  const active = described.versions.find((v) => v.active) ?? described.versions.at(-1);
  clear(
    detail,
    h("section", { class: "card", id: "template-versions" },
      h("h2", { text: `${name} (${ownerText(owner)})` }),
      table(described.versions, [
        ["version", (v) => String(v.version)],
        ["created", (v) => v.created_at.slice(0, 19).replace("T", " ")],
        ["digest", (v) => h("code", { text: v.digest.slice(0, 12) })],
        ["", (v) => (v.active
          ? h("strong", { class: "active-version", text: "active" })
          : h("button", { type: "button", "data-template-activate": String(v.version), text: "Activate", onclick: () => activate(name, owner, v.version, described.active_version, reopen) }))],
      ]),
      h("div", { id: "template-admin-status", "aria-live": "polite" }),
      diffForm(described.versions),
    ),
    editor(name, owner, toYaml(active.document), null, reopen),
  );
}

async function activate(name, owner, version, current, reopen) {
  const lines = [`Calls to ${name} (${ownerText(owner)}) that name no version answer with version ${version} from now on (version ${current} now).`];
  if (!(await confirmDialog(`Activate version ${version} of ${name}?`, lines, "Activate"))) return;
  try {
    await api("POST", owned(name, owner, "/activate"), { version });
  } catch (e) {
    clear(document.querySelector("#template-admin-status"), notice(e.message));
    return;
  }
  await reopen(name, owner);
  document.querySelector("#template-admin-status").append(notice(`${name}: version ${version} is active.`, "ok"));
}

// Two versions' YAML, line by line: removed lines marked -, added +.
function diffForm(versions) {
  const pick = (id, chosen) => h("select", { id }, versions.map((v) => h("option", { value: String(v.version), selected: v.version === chosen, text: `version ${v.version}` })));
  const last = versions.at(-1).version;
  const from = pick("diff-from", versions.at(-2)?.version ?? last);
  const to = pick("diff-to", last);
  const out = h("div", { id: "template-diff" });
  const form = h("form", { class: "inline", id: "template-diff-form" }, field("From", from), field("To", to), h("button", { type: "submit", class: "secondary", text: "Diff" }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = (n) => toYaml(versions.find((v) => v.version === Number(n)).document);
    const diff = lineDiff(text(from.value), text(to.value));
    if (diff === null) {
      clear(out, notice("These versions are too long to diff here."));
      return;
    }
    const changed = diff.filter(([sign]) => sign !== " ").length;
    clear(out,
      h("p", { class: "muted", text: changed ? `version ${from.value} → ${to.value}: ${changed} lines differ` : "The two versions are the same." }),
      h("pre", { class: "diff" }, diff.map(([sign, line]) => h("span", { class: { "+": "added", "-": "removed", " ": "same" }[sign], text: `${sign} ${line}\n` }))));
  });
  return h("div", {}, h("h3", { text: "Compare two versions" }), form, out);
}

// The editor: a template's YAML (a new one: a name and an owner too), applied as a new version.
function editor(name, owner, text, tenants, reopen) {
  const nameInput = name === null ? h("input", { id: "template-edit-name", required: true, autocomplete: "off" }) : null;
  const ownerSelect = name === null
    ? h("select", { id: "template-edit-owner" }, h("option", { value: "", text: "global" }), tenants.map((t) => h("option", { value: t.name, text: `tenant ${t.name}` })))
    : null;
  const area = h("textarea", { id: "template-yaml", rows: "18", spellcheck: "false", text });
  const live = h("input", { type: "checkbox", id: "template-activate", checked: true });
  const status = h("div", { id: "template-edit-status", "aria-live": "polite" });
  const apply = h("button", { type: "submit", id: "template-apply", text: "Apply" });
  const form = h("form", { class: "card", id: "template-editor" },
    h("h2", { text: name === null ? "New template" : `Edit ${name}` }),
    nameInput ? h("div", { class: "inline" }, field("Name", nameInput), field("Owner", ownerSelect)) : null,
    field("YAML", area, "Applying stores a new version (an unchanged document is the same version)."),
    h("label", { class: "choice" }, live, " Make it the active version"),
    h("div", { class: "buttons" }, apply),
    status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const target = name ?? nameInput.value.trim();
    const by = name === null ? ownerSelect.value || null : owner;
    apply.disabled = true;
    clear(status, h("p", { class: "muted", text: "applying…" }));
    try {
      const query = live.checked ? "" : `${by ? "&" : "?"}activate=false`;
      const made = await sendText("PUT", owned(target, by) + query, area.value, YAML);
      await reopen(target, by);
      document.querySelector("#template-admin-status").append(notice(`Applied ${target}: version ${made.version}${made.active ? ", active" : ""}.`, "ok"));
    } catch (e) {
      clear(status, notice(e.message), at(area, e.message));
    } finally {
      apply.disabled = false;
    }
  });
  return form;
}

// Where the API's message names a line: that line shown under the editor and selected in it.
function at(area, message) {
  const found = /\bline (\d+)\b/.exec(message);
  if (!found) return null;
  const number = Number(found[1]);
  const lines = area.value.split("\n");
  if (number < 1 || number > lines.length) return null;
  const start = lines.slice(0, number - 1).reduce((sum, line) => sum + line.length + 1, 0);
  area.focus();
  area.setSelectionRange(start, start + lines[number - 1].length);
  return h("p", { class: "error-line" }, h("span", { class: "muted", text: `line ${number}: ` }), h("code", { id: "template-error-line", text: lines[number - 1] }));
}
