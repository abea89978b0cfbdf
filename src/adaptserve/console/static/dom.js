// Small DOM helpers: elements are built with h(), never from HTML strings, so nothing
// an API answers (a model's text, a tenant's name) is ever parsed as markup.

export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "text") {
      element.textContent = value;
    } else if (name in element && typeof value !== "string") {
      element[name] = value; // value, checked, disabled...
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

// A table: `columns` are [header, row => cell content] pairs.
export function table(rows, columns, caption) {
  return h(
    "table",
    {},
    caption ? h("caption", { text: caption }) : null,
    h("thead", {}, h("tr", {}, columns.map(([name]) => h("th", { scope: "col", text: name })))),
    h("tbody", {}, rows.map((row) => h("tr", {}, columns.map(([, cell]) => h("td", {}, cell(row)))))),
  );
}

// A labelled form field; `control` is the input, select or textarea.
let fieldCount = 0;
export function field(label, control, hint) {
  const id = control.id || `field-${++fieldCount}`;
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id, text: label }), control, hint ? h("small", { text: hint }) : null);
}

// A message line: an error is the API's message, shown as it is.
export function notice(text, kind = "error") {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status", text });
}

// A modal confirmation (<dialog>: focus stays inside, Escape cancels). Resolves true
// only when the confirming button is pressed.
export function confirmDialog(title, lines, confirmLabel) {
  return new Promise((resolve) => {
    const yes = h("button", { type: "button", class: "danger", id: "confirm-yes", text: confirmLabel });
    const no = h("button", { type: "button", class: "secondary", id: "confirm-no", text: "Cancel" });
    const dialog = h(
      "dialog",
      { "aria-labelledby": "confirm-title", id: "confirm" },
      h("h2", { id: "confirm-title", text: title }),
      lines.map((line) => h("p", { text: line })),
      h("div", { class: "buttons" }, no, yes),
    );
    const close = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    yes.addEventListener("click", () => close(true));
    no.addEventListener("click", () => close(false));
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      close(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    no.focus();
  });
}

// A horizontal bar for a share in [0, 1] (CSSOM width: allowed by the page's CSP,
// which forbids style attributes).
export function bar(share, label) {
  const fill = h("span", { class: "fill" });
  fill.style.width = `${Math.max(0, Math.min(1, share)) * 100}%`;
  return h("span", { class: "bar", role: "img", "aria-label": label }, fill);
}
