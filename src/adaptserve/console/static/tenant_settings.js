// A tenant's settings on the admin tenant page: its quotas (read back from the tenants
// list) and its PII policy (mode, deny list, its own patterns), each a form that PUTs to
// the admin API. Both are the operator's to set: a tenant admin key sees them and is told
// the API's refusal.

import { api } from "./api.js";
import { clear, field, h, notice } from "./dom.js";

const path = (tenant, tail) => `/admin/tenants/${encodeURIComponent(tenant)}/${tail}`;
const QUOTAS = [
  ["requests_per_minute", "Requests per minute"],
  ["tokens_per_minute", "Tokens per minute"],
  ["max_concurrent", "Requests at once"],
];
const MODES = [
  ["off", "off: nothing is looked for"],
  ["log", "log: requests pass; nothing written keeps what was found"],
  ["mask", "mask: placeholders before the engine, restored in answers"],
  ["block", "block: a request with personal data is refused"],
];

export async function tenantSettings(tenant) {
  const [{ data }, pii] = await Promise.all([api("GET", "/admin/tenants"), api("GET", path(tenant, "pii"))]);
  const quotas = data.find((t) => t.name === tenant)?.quotas ?? {};
  return h("section", { class: "card", id: "tenant-settings" },
    h("h2", { text: `Quotas and PII policy of ${tenant}` }),
    quotaForm(tenant, quotas),
    piiForm(tenant, pii));
}

// Saved through `call`; the status line says what was stored, or the API's message.
function saving(form, status, call) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      clear(status, notice(await call(), "ok"));
    } catch (e) {
      clear(status, notice(e.message));
    } finally {
      button.disabled = false;
    }
  });
}

function quotaForm(tenant, quotas) {
  const inputs = QUOTAS.map(([name]) => h("input", { id: `quota-${name}`, type: "number", min: "1", step: "1", value: quotas[name] == null ? "" : String(quotas[name]), placeholder: "no limit" }));
  const status = h("div", { id: "quota-status", "aria-live": "polite" });
  const form = h("form", { id: "quota-form" },
    h("h3", { text: "Quotas" }),
    h("div", { class: "inline" }, QUOTAS.map(([, label], i) => field(label, inputs[i])), h("button", { type: "submit", text: "Save quotas" })),
    h("small", { text: "Empty: no limit." }),
    status);
  saving(form, status, async () => {
    const body = Object.fromEntries(QUOTAS.map(([name], i) => [name, inputs[i].value === "" ? null : Number(inputs[i].value)]));
    const saved = await api("PUT", path(tenant, "quotas"), body);
    const said = QUOTAS.map(([name, label]) => `${label.toLowerCase()}: ${saved.quotas[name] ?? "no limit"}`);
    return `Saved: ${said.join(", ")}.`;
  });
  return form;
}

function piiForm(tenant, policy) {
  const mode = h("select", { id: "pii-mode" }, MODES.map(([value, text]) => h("option", { value, text, selected: value === policy.mode })));
  const deny = h("textarea", { id: "pii-deny", rows: "3", spellcheck: "false", text: policy.deny_list.join("\n") });
  const rows = h("div", { id: "pii-patterns" });
  const addRow = (p = { entity: "", regex: "", score: 0.9 }) => {
    const row = h("div", { class: "inline pattern-row" },
      field("Entity", h("input", { class: "pattern-entity", value: p.entity, placeholder: "ORDER_ID", autocomplete: "off" })),
      field("Regular expression", h("input", { class: "pattern-regex", value: p.regex, spellcheck: "false", autocomplete: "off" })),
      field("Score", h("input", { class: "pattern-score", type: "number", min: "0.4", max: "1", step: "0.05", value: String(p.score) })));
    row.append(h("button", { type: "button", class: "danger", text: "Remove", onclick: () => row.remove() }));
    rows.append(row);
  };
  policy.patterns.forEach(addRow);
  const status = h("div", { id: "pii-status", "aria-live": "polite" });
  const form = h("form", { id: "pii-form" },
    h("h3", { text: "PII policy" }),
    field("Mode", mode),
    field("Deny list", deny, "Words that are always personal data for this tenant, one a line."),
    h("p", { class: "muted", text: "Patterns: the tenant's own identifiers." }),
    rows,
    h("div", { class: "buttons" }, h("button", { type: "button", id: "pii-add", class: "secondary", text: "Add pattern", onclick: () => addRow() }), h("button", { type: "submit", text: "Save PII policy" })),
    status);
  saving(form, status, async () => {
    const patterns = [...rows.querySelectorAll(".pattern-row")].map((row) => ({
      entity: row.querySelector(".pattern-entity").value.trim(),
      regex: row.querySelector(".pattern-regex").value,
      score: Number(row.querySelector(".pattern-score").value),
    }));
    const body = { mode: mode.value, deny_list: deny.value.split("\n").map((w) => w.trim()).filter(Boolean), patterns };
    const saved = await api("PUT", path(tenant, "pii"), body);
    return `Saved: mode ${saved.mode}, ${saved.deny_list.length} denied words, ${saved.patterns.length} patterns.`;
  });
  return form;
}
