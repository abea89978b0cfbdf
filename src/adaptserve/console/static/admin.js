// The pages of an admin key (the operator's, or a tenant admin's: the API shows each
// only its part): tenants, their keys and model aliases, adapters and their versions,
// the audit trail.

import { api, upload } from "./api.js";
import { clear, confirmDialog, field, h, notice, table } from "./dom.js";
import { tenantSettings } from "./tenant_settings.js";

const path = (...parts) => parts.map(encodeURIComponent).join("/");

// --- tenants and keys --------------------------------------------------------------------

export async function tenants(view) {
  const { data } = await api("GET", "/admin/tenants");
  const detail = h("div", { id: "tenant-detail" });
  const name = h("input", { id: "tenant-name", required: true, autocomplete: "off" });
  const status = h("div");
  const create = h("form", { class: "card inline", id: "tenant-create" }, field("New tenant", name), h("button", { type: "submit", text: "Create tenant" }), status);
  create.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("POST", "/admin/tenants", { name: name.value.trim() });
      const created = name.value.trim();
      clear(view);
      await tenants(view);
      await openTenant(created, view.querySelector("#tenant-detail"));
    } catch (e) {
      clear(status, notice(e.message));
    }
  });
  view.append(
    table(data, [
      ["tenant", (t) => h("button", { type: "button", class: "link", "data-tenant": t.name, text: t.name, onclick: () => openTenant(t.name, detail) })],
      ["created", (t) => t.created_at.slice(0, 19).replace("T", " ")],
      ["quotas", (t) => quotaText(t.quotas)],
    ]),
    create,
    detail,
  );
}

function quotaText(q) {
  const parts = [
    q.requests_per_minute && `${q.requests_per_minute} requests/min`,
    q.tokens_per_minute && `${q.tokens_per_minute} tokens/min`,
    q.max_concurrent && `${q.max_concurrent} at once`,
  ].filter(Boolean);
  return parts.length ? parts.join(", ") : "none";
}

async function openTenant(tenant, detail) {
  const [keys, aliases, adapters, settings] = await Promise.all([
    api("GET", `/admin/tenants/${path(tenant)}/keys`),
    api("GET", `/admin/tenants/${path(tenant)}/models`),
    api("GET", "/admin/adapters"),
    tenantSettings(tenant),
  ]).catch((e) => [e, e, e, e]);
  if (keys instanceof Error) {
    clear(detail, notice(keys.message));
    return;
  }
  const shown = h("div", { id: "new-key-box", "aria-live": "polite" });
  const role = h("select", { id: "key-role" }, h("option", { value: "api", text: "API key" }), h("option", { value: "admin", text: "tenant admin key" }));
  const create = h("form", { class: "inline", id: "key-create" }, field("Role", role), h("button", { type: "submit", id: "key-create-button", text: "Create key" }));
  create.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const made = await api("POST", `/admin/tenants/${path(tenant)}/keys`, { role: role.value });
      await openTenant(tenant, detail);
      detail.querySelector("#new-key-box").append(newKey(made));
    } catch (e) {
      clear(shown, notice(e.message));
    }
  });
  clear(
    detail,
    h("section", { class: "card" },
      h("h2", { text: `Keys of ${tenant}` }),
      table(keys.data, [
        ["id", (k) => h("code", { text: k.id })],
        ["starts with", (k) => h("code", { text: k.prefix })],
        ["role", (k) => k.role],
        ["created", (k) => k.created_at.slice(0, 19).replace("T", " ")],
        ["", (k) => h("button", { type: "button", class: "danger", "data-revoke": k.id, text: "Revoke", onclick: () => revoke(tenant, k.id, detail) })],
      ]),
      create,
      shown,
    ),
    h("section", { class: "card" },
      h("h2", { text: `Model aliases of ${tenant}` }),
      table(aliases.data, [
        ["alias", (a) => h("code", { text: a.alias })],
        ["serves", serves],
        ["", (a) => h("button", { type: "button", class: "danger", "data-alias-delete": a.alias, text: "Delete", onclick: () => deleteAlias(tenant, a, detail) })],
      ]),
      aliasForm(tenant, aliases.data, adapters.data, detail),
      h("div", { id: "alias-status", "aria-live": "polite" }),
    ),
    settings,
  );
}

const serves = (a) => (a.base ? "the base model" : `${a.adapter} @ ${a.version ?? "its active version"}`);

// Point an alias (new, or one that exists) at an adapter, following its active version
// or pinned to one, or at the base model; after a confirmation that says what changes.
function aliasForm(tenant, aliases, adapters, detail) {
  const alias = h("input", { id: "alias-name", required: true, autocomplete: "off" });
  const target = h("select", { id: "alias-target" },
    adapters.map((a) => h("option", { value: a.name, text: `adapter ${a.name}` })),
    h("option", { value: "", text: "the base model" }));
  const version = h("select", { id: "alias-version" });
  const versions = () => {
    const chosen = adapters.find((a) => a.name === target.value);
    clear(version, h("option", { value: "", text: "its active version" }),
      (chosen?.versions ?? []).map((v) => h("option", { value: v.version, text: v.version })));
    version.disabled = !chosen;
  };
  target.addEventListener("change", versions);
  versions();
  const form = h("form", { class: "inline", id: "alias-set" },
    field("Alias", alias), field("Serves", target), field("Version", version),
    h("button", { type: "submit", text: "Set alias" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = alias.value.trim();
    const body = target.value ? { adapter: target.value, version: version.value || null } : { base: true };
    const after = serves({ ...body, base: !target.value });
    const before = aliases.find((a) => a.alias === name);
    const line = before ? `Calls to ${name} serve ${after} from now on (they serve ${serves(before)} now).` : `A new alias: calls to ${name} serve ${after}.`;
    if (!(await confirmDialog(`Point ${name} of ${tenant} at ${after}?`, [line], "Set alias"))) return;
    await aliasChange(tenant, detail, `${name} → ${after}.`, () => api("PUT", `/admin/tenants/${path(tenant)}/models/${path(name)}`, body));
  });
  return form;
}

async function deleteAlias(tenant, a, detail) {
  const lines = [`Calls of ${tenant} to ${a.alias} (now ${serves(a)}) answer 404 from now on.`];
  if (!(await confirmDialog(`Delete alias ${a.alias} of ${tenant}?`, lines, "Delete"))) return;
  await aliasChange(tenant, detail, `Deleted ${a.alias}.`, () => api("DELETE", `/admin/tenants/${path(tenant)}/models/${path(a.alias)}`));
}

async function aliasChange(tenant, detail, done, call) {
  try {
    await call();
  } catch (e) {
    clear(detail.querySelector("#alias-status"), notice(e.message));
    return;
  }
  await openTenant(tenant, detail);
  detail.querySelector("#alias-status").append(notice(done, "ok"));
}

// The new key, shown this once (it is not kept by the page, nor readable again from the API).
function newKey(made) {
  const value = h("input", { id: "new-key", readonly: true, value: made.key, size: "60", "aria-describedby": "new-key-note" });
  return h(
    "div",
    { class: "notice ok" },
    field(`New ${made.role} key ${made.id}`, value),
    h("p", { id: "new-key-note", text: "Copy it now: it is shown once and cannot be read again." }),
    h("button", { type: "button", onclick: () => navigator.clipboard?.writeText(made.key), text: "Copy" }),
  );
}

async function revoke(tenant, id, detail) {
  if (!(await confirmDialog(`Revoke key ${id}?`, [`Calls with this key of ${tenant} fail from now on.`], "Revoke"))) return;
  try {
    await api("DELETE", `/admin/tenants/${path(tenant)}/keys/${path(id)}`);
    await openTenant(tenant, detail);
  } catch (e) {
    detail.prepend(notice(e.message));
  }
}

// --- adapters ------------------------------------------------------------------------

export async function adapters(view) {
  const [{ data }, bases] = await Promise.all([api("GET", "/admin/adapters"), api("GET", "/admin/adapter-bases")]);
  const status = h("div", { id: "adapter-status", "aria-live": "polite" });
  view.append(uploadForm(view, bases.data), status);
  if (!data.length) view.append(h("p", { text: "No adapter yet." }));
  for (const adapter of data) {
    view.append(
      h("section", { class: "card", "data-adapter": adapter.name },
        h("h2", {}, adapter.name, " ", h("small", { class: "muted", text: adapter.owner ? `owned by a tenant` : "global" }),
          " ", h("small", { class: "muted adapter-base", text: `for ${adapter.base}` })),
        table(adapter.versions, [
          ["version", (v) => h("code", { text: v.version })],
          ["rank", (v) => String(v.rank)],
          ["size", (v) => `${(v.size_bytes / 1024).toFixed(1)} KiB`],
          ["created", (v) => v.created_at.slice(0, 19).replace("T", " ")],
          ["state", (v) => v.state + (v.error ? `: ${v.error}` : "")],
          ["", (v) => (v.version === adapter.active_version
            ? h("strong", { class: "active-version", text: "active" })
            : h("button", { type: "button", "data-activate": v.version, text: "Activate", onclick: () => activate(adapter.name, v.version, view, status) }))],
        ]),
      ),
    );
  }
}

// The upload form; `bases` (GET /admin/adapter-bases) are the LLM bases the key may push
// for: a choice only where there is more than the base model (its `base` is then sent).
function uploadForm(view, bases) {
  const name = h("input", { id: "upload-name", required: true, autocomplete: "off" });
  const file = h("input", { id: "upload-file", type: "file", accept: ".tar.gz,.tgz,.zip", required: true });
  const base = h("select", { id: "upload-base" }, bases.map((b) => h("option", {
    value: b.base_model ? "" : b.name, text: b.base_model ? `the base model (${b.name})` : `model ${b.name}` })));
  const progress = h("progress", { id: "upload-progress", max: "1", value: "0", hidden: true });
  const status = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "card inline", id: "upload" },
    field("Adapter name", name),
    field("Archive (.tar.gz or .zip of a PEFT folder)", file),
    bases.length > 1 ? field("For the LLM base", base) : null,
    h("button", { type: "submit", text: "Upload" }),
    progress,
    status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = new FormData();
    body.append("name", name.value.trim());
    if (base.value) body.append("base", base.value);
    body.append("file", file.files[0]);
    progress.hidden = false;
    clear(status);
    try {
      const made = await upload("/admin/adapters", body, (share) => (progress.value = share));
      clear(view);
      await adapters(view);
      view.querySelector("#adapter-status").append(notice(`Uploaded ${made.name} version ${made.version}.`, "ok"));
    } catch (e) {
      progress.hidden = true;
      clear(status, notice(e.message));
    }
  });
  return form;
}

// The aliases that follow `name`'s active version (no version pinned): those that flip.
async function following(name) {
  const { data } = await api("GET", "/admin/tenants");
  const lists = await Promise.all(data.map((t) => api("GET", `/admin/tenants/${path(t.name)}/models`)));
  return lists.flatMap((l) => l.data).filter((a) => a.adapter === name && a.version === null).map((a) => `${a.tenant}/${a.alias}`);
}

async function activate(name, version, view, status) {
  let flips;
  try {
    flips = await following(name);
  } catch (e) {
    clear(status, notice(e.message));
    return;
  }
  const lines = flips.length
    ? [`These aliases follow its active version and serve ${version} from now on: ${flips.join(", ")}.`]
    : ["No alias follows its active version: aliases pinned to a version do not change."];
  if (!(await confirmDialog(`Activate version ${version} of ${name}?`, lines, "Activate"))) return;
  try {
    const result = await api("POST", `/admin/adapters/${path(name)}/activate`, { version });
    clear(view);
    await adapters(view);
    view.querySelector("#adapter-status").append(notice(`${name}: ${result.previous_version} → ${result.active_version}.`, "ok"));
  } catch (e) {
    clear(status, notice(e.message));
  }
}

// --- audit -----------------------------------------------------------------------------

export async function audit(view) {
  const action = h("input", { id: "audit-action", placeholder: "e.g. POST /admin/adapters", autocomplete: "off" });
  const limit = h("input", { id: "audit-limit", type: "number", min: "1", max: "1000", value: "100" });
  const rows = h("div", { id: "audit-rows" });
  const form = h("form", { class: "card inline" }, field("Action starts with", action), field("At most", limit), h("button", { type: "submit", text: "Show" }));
  const load = async () => {
    const query = new URLSearchParams({ limit: limit.value || "100" });
    if (action.value.trim()) query.set("action", action.value.trim());
    try {
      const { data } = await api("GET", `/admin/audit?${query}`);
      clear(rows, table(data, [
        ["at", (e) => e.at.slice(0, 19).replace("T", " ")],
        ["actor", (e) => e.actor],
        ["action", (e) => h("code", { text: e.action })],
        ["target", (e) => h("code", { text: e.target })],
        ["tenant", (e) => e.tenant ?? ""],
        ["status", (e) => String(e.status)],
        ["detail", (e) => (e.detail ? h("code", { text: JSON.stringify(e.detail) }) : "")],
      ]));
    } catch (e) {
      clear(rows, notice(e.message));
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  view.append(form, rows);
  await load();
}

