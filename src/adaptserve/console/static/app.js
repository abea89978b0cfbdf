// The console's shell: sign-in, the page list for the key's kind (tenant or admin),
// and hash routing (`#chat`): the URL names a page, never a key.

import { ApiError, api, session } from "./api.js";
import { clear, field, h, notice } from "./dom.js";
import * as admin from "./admin.js";
import { compare } from "./compare.js";
import { fitReports } from "./fit_reports.js";
import { heads } from "./heads.js";
import * as tenant from "./tenant.js";
import { templateAdmin } from "./template_admin.js";
import { templates } from "./templates.js";
import { usage } from "./usage.js";

const PAGES = {
  tenant: [
    ["models", "Models", tenant.models],
    ["chat", "Chat", tenant.chat],
    ["compare", "Compare", compare],
    ["templates", "Templates", templates],
    ["usage", "Usage", usage],
  ],
  admin: [
    ["tenants", "Tenants and keys", admin.tenants],
    ["adapters", "Adapters", admin.adapters],
    ["heads", "Classifier heads", heads],
    ["templates", "Templates", templateAdmin],
    ["fits", "Fit reports", fitReports],
    ["audit", "Audit trail", admin.audit],
  ],
};

const page = document.getElementById("page");
const nav = document.getElementById("nav");
const who = document.getElementById("who");

const NOT_HERE =
  "The admin API is not served on this port: the server gives it its own listener " +
  "(admin_port). Open /console on that port to use an admin key.";

function signIn(message) {
  clear(nav);
  clear(who);
  const key = h("input", { type: "password", id: "key", autocomplete: "off", required: true, spellcheck: "false" });
  const kind = (value, label, checked) =>
    h("label", { class: "choice" }, h("input", { type: "radio", name: "kind", value, checked }), label);
  const error = h("div", { id: "signin-error" });
  const form = h(
    "form",
    { id: "signin", class: "card narrow" },
    h("h1", { text: "Sign in" }),
    field("Key", key, "Kept in this tab's session storage only, and sent as a bearer token."),
    h("fieldset", {}, h("legend", { text: "Kind of key" }), kind("tenant", "Tenant API key", true), kind("admin", "Admin key")),
    h("button", { type: "submit", id: "signin-button", text: "Sign in" }),
    error,
  );
  if (message) error.append(notice(message));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const role = form.elements.kind.value;
    clear(error);
    try {
      await api("GET", role === "admin" ? "/admin/tenants" : "/v1/models", undefined, key.value.trim());
    } catch (e) {
      const text = e instanceof ApiError && e.status === 404 && role === "admin" ? NOT_HERE : e.message;
      error.append(notice(text));
      return;
    }
    session.set(key.value.trim(), role);
    key.value = "";
    const first = `#${PAGES[role][0][0]}`;
    if (location.hash === first) show();
    else location.hash = first; // hashchange shows it
  });
  clear(page, form);
  key.focus();
}

function signOut() {
  session.clear();
  location.hash = "";
  signIn();
}

function renderNav(role, current) {
  clear(
    nav,
    PAGES[role].map(([id, title]) =>
      h("a", { href: `#${id}`, id: `nav-${id}`, "aria-current": id === current ? "page" : null, text: title }),
    ),
  );
  clear(
    who,
    h("span", { text: role === "admin" ? "admin key" : "tenant key" }),
    h("button", { type: "button", id: "signout", class: "link", onclick: signOut, text: "Sign out" }),
  );
}

async function show() {
  const role = session.role();
  if (!session.key() || !PAGES[role]) {
    signIn();
    return;
  }
  const wanted = location.hash.slice(1);
  const [id, title, render] = PAGES[role].find(([name]) => name === wanted) ?? PAGES[role][0];
  renderNav(role, id);
  document.title = `${title} · adaptserve console`;
  const view = h("section", { id: `page-${id}` }); // a later page replaces it: a slow one writes nowhere
  clear(page, h("h1", { text: title }), view);
  try {
    await render(view);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      session.clear();
      signIn(e.message);
      return;
    }
    view.append(notice(e.message));
  }
}

window.addEventListener("hashchange", show);
show();
