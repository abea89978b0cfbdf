// The templates page of a tenant key: its templates, a form made from a template's input
// schema, a classify answer's probabilities as bars (calibrated and raw) and its attribution
// highlights, a generate answer's JSON; side by side, one input run on two versions.

import { api } from "./api.js";
import { bar, clear, field, h, notice, table } from "./dom.js";

export async function templates(view) {
  const { data } = await api("GET", "/v1/templates");
  const detail = h("div", { id: "template-detail" });
  if (!data.length) view.append(h("p", { text: "No template is visible to this key." }));
  view.append(
    table(data, [
      ["template", (t) => h("button", { type: "button", class: "link", "data-template": t.name, text: t.name, onclick: () => openTemplate(t.name, detail) })],
      ["kind", (t) => t.kind],
      ["model", (t) => t.model],
      ["version", (t) => String(t.version)],
      ["description", (t) => t.description],
    ]),
    detail,
  );
}

async function openTemplate(name, detail) {
  clear(detail, h("p", { text: "loading…" }));
  const spec = await api("GET", `/v1/templates/${encodeURIComponent(name)}`).catch((e) => e);
  if (spec instanceof Error) {
    clear(detail, notice(spec.message));
    return;
  }
  const controls = inputControls(spec.inputs);
  const result = h("div", { id: "template-result", "aria-live": "polite" });
  const run = h("button", { type: "submit", id: "template-run", text: "Run" });
  const explain = h("input", { type: "checkbox", id: "template-explain" });
  const why = spec.kind === "classify"
    ? h("label", { class: "choice" }, explain, " Explain: highlight the words that moved the label (costs one scored prompt per word)")
    : null;
  const compare = sideBySide(spec.version);
  const form = h(
    "form",
    { class: "card", id: "template-form" },
    h("h2", { text: `${spec.name} (version ${spec.version}, ${spec.kind})` }),
    spec.description ? h("p", { text: spec.description }) : null,
    controls.map(([, element]) => element),
    why,
    compare.element,
    run,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const inputs = Object.fromEntries(controls.map(([read]) => read()).filter(([, v]) => v !== undefined));
    run.disabled = true;
    clear(result, h("p", { text: "running…" }));
    const body = { inputs };
    if (spec.kind === "classify") body.explain = explain.checked ? "attributions" : true; // raw log-probabilities too
    const call = (extra) => api("POST", `/v1/templates/${encodeURIComponent(name)}`, { ...body, ...extra });
    const shown = (answer, suffix) => (spec.kind === "classify" ? classified(answer, inputs, suffix) : generated(answer, suffix));
    try {
      if (compare.on()) {
        const [a, b] = compare.versions();
        const answers = await Promise.allSettled([call({ version: a }), call({ version: b })]);
        clear(result, h("div", { class: "side-by-side", id: "template-compare-result" },
          [a, b].map((version, i) => h("div", { class: "side", "data-version": String(version) },
            h("h3", { text: `version ${version}` }),
            answers[i].status === "fulfilled" ? shown(answers[i].value, `-${"ab"[i]}`) : notice(answers[i].reason.message)))));
        return;
      }
      clear(result, shown(await call({}), ""));
    } catch (e) {
      clear(result, notice(e.message));
    } finally {
      run.disabled = false;
    }
  });
  clear(detail, form, result);
  form.querySelector("input, textarea, select")?.focus();
}

// One control per property of the template's input schema: [read() → [name, value], element].
function inputControls(schema) {
  const required = new Set(schema.required ?? []);
  return Object.entries(schema.properties ?? {}).map(([name, property]) => {
    const id = `input-${name}`;
    let control;
    let read;
    if (Array.isArray(property.enum)) {
      control = h("select", { id }, property.enum.map((v) => h("option", { value: String(v), text: String(v) })));
      read = () => [name, control.value];
    } else if (property.type === "boolean") {
      control = h("input", { id, type: "checkbox" });
      read = () => [name, control.checked];
    } else if (property.type === "number" || property.type === "integer") {
      control = h("input", { id, type: "number", step: property.type === "integer" ? "1" : "any", required: required.has(name) });
      read = () => [name, control.value === "" ? undefined : Number(control.value)];
    } else {
      const attrs = { id, rows: "4", required: required.has(name) };
      if (property.maxLength) attrs.maxlength = String(property.maxLength);
      control = h("textarea", attrs);
      read = () => [name, control.value];
    }
    const hint = [property.description, property.maxLength ? `at most ${property.maxLength} characters` : null].filter(Boolean).join("; ");
    return [read, field(name, control, hint || null)];
  });
}

// Side by side: the same inputs on two versions of the template (a call can name its version).
function sideBySide(active) {
  const on = h("input", { type: "checkbox", id: "template-compare" });
  const pick = (id, value) => h("input", { id, type: "number", min: "1", step: "1", value: String(value), disabled: true });
  const a = pick("compare-a", active);
  const b = pick("compare-b", Math.max(1, active - 1));
  on.addEventListener("change", () => {
    a.disabled = b.disabled = !on.checked;
  });
  const element = h("fieldset", { class: "compare" },
    h("legend", { text: "Side by side" }),
    h("label", { class: "choice" }, on, " Run this input on two versions of the template"),
    h("div", { class: "inline" }, field("Version", a), field("and version", b)));
  return { element, on: () => on.checked, versions: () => [Number(a.value), Number(b.value)] };
}

function classified(answer, inputs, suffix) {
  const raw = answer.explain?.logprobs ? softmax(answer.explain.logprobs) : null;
  return h(
    "div",
    { class: "card" },
    h("p", {}, "label: ", h("strong", { id: `template-label${suffix}`, text: answer.label })),
    bars(`template-bars${suffix}`, answer.scores, answer.label, answer.calibrated ? "calibrated probabilities" : "probabilities (not calibrated)"),
    answer.calibrated && raw ? bars(`template-raw-bars${suffix}`, raw, answer.label, "raw probabilities (before calibration and temperature)") : null,
    answer.explain?.attributions ? highlights(answer.explain.attributions, inputs, suffix) : null,
    usageLine(answer.usage),
  );
}

// Log-probabilities → probabilities over the labels.
function softmax(logprobs) {
  const top = Math.max(...Object.values(logprobs));
  const weights = Object.entries(logprobs).map(([label, lp]) => [label, Math.exp(lp - top)]);
  const total = weights.reduce((sum, [, w]) => sum + w, 0);
  return Object.fromEntries(weights.map(([label, w]) => [label, w / total]));
}

function bars(id, scores, chosen, caption) {
  const entries = Object.entries(scores).sort((a, b) => b[1] - a[1]);
  return h(
    "figure",
    { class: "bars-figure" },
    h("figcaption", { class: "muted", text: caption }),
    h(
      "ul",
      { class: "bars", id },
      entries.map(([label, p]) =>
        h(
          "li",
          { "data-label": label, "data-probability": String(p), class: label === chosen ? "chosen" : null },
          h("span", { class: "bar-label", text: label }),
          bar(p, `${label}: ${(p * 100).toFixed(1)}%`),
          h("span", { class: "bar-value", text: p.toFixed(4) }),
        ),
      ),
    ),
  );
}

// Each input field's text with its attribution spans marked: the stronger a unit's
// contribution to the label, the stronger its colour (offsets count code points).
function highlights(attributions, inputs, suffix) {
  const most = Math.max(...attributions.spans.map((s) => Math.abs(s.contribution)), 1e-9);
  const fields = [...new Set(attributions.spans.map((s) => s.field))];
  return h(
    "figure",
    { id: `template-attributions${suffix}`, class: "attributions" },
    h("figcaption", { class: "muted", text: `why ${attributions.label}: ${attributions.method} over ${attributions.units}; green raised its probability, red lowered it` }),
    fields.map((name) => {
      const chars = Array.from(String(inputs[name] ?? ""));
      const spans = attributions.spans.filter((s) => s.field === name).sort((a, b) => a.start - b.start);
      const parts = [];
      let at = 0;
      for (const span of spans) {
        parts.push(chars.slice(at, span.start).join(""));
        const mark = h("mark", {
          "data-contribution": String(span.contribution),
          title: `${span.contribution >= 0 ? "+" : ""}${span.contribution.toFixed(3)}`,
          text: chars.slice(span.start, span.end).join(""),
        });
        const strength = Math.abs(span.contribution) / most;
        mark.style.backgroundColor = span.contribution >= 0 ? `rgb(27 138 75 / ${0.15 + 0.6 * strength})` : `rgb(179 38 30 / ${0.15 + 0.6 * strength})`;
        parts.push(mark);
        at = span.end;
      }
      parts.push(chars.slice(at).join(""));
      return h("p", { class: "attributed", "data-field": name }, h("span", { class: "muted", text: `${name}: ` }), parts);
    }),
  );
}

function generated(answer, suffix) {
  return h("div", { class: "card" }, h("pre", { id: `template-json${suffix}`, text: JSON.stringify(answer, null, 2) }));
}

function usageLine(usage) {
  if (!usage) return null;
  return h("p", { class: "muted", text: `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens` });
}

