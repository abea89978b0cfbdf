// The compare page of a tenant key: one message sent to two of its model aliases at
// once, both answers streamed side by side with their time to first token and token counts.

import { api } from "./api.js";
import { clear, field, h, notice } from "./dom.js";
import { streamReply } from "./tenant.js";

export async function compare(view) {
  const { data } = await api("GET", "/v1/models");
  const pick = (id, index) => h("select", { id }, data.map((m, i) => h("option", { value: m.id, text: m.id, selected: i === Math.min(index, data.length - 1) })));
  const ui = {
    a: pick("compare-model-a", 0),
    b: pick("compare-model-b", 1),
    temperature: h("input", { id: "compare-temperature", type: "number", min: "0", max: "2", step: "0.1", value: "0" }),
    maxTokens: h("input", { id: "compare-max-tokens", type: "number", min: "1", step: "1", value: "128" }),
    input: h("textarea", { id: "compare-input", rows: "3", required: true }),
    run: h("button", { type: "submit", id: "compare-run", text: "Send to both" }),
    out: h("div", { id: "compare-result", class: "side-by-side", "aria-live": "polite" }),
  };
  const form = h("form", { class: "card", id: "compare-form" },
    h("p", { class: "muted", text: "One message, two model aliases, at once: their answers side by side." }),
    h("div", { class: "inline" }, field("Model", ui.a), field("and model", ui.b), field("Temperature", ui.temperature), field("Max tokens", ui.maxTokens)),
    field("Message", ui.input),
    h("div", { class: "buttons" }, ui.run));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    ui.run.disabled = true;
    const message = ui.input.value;
    clear(ui.out);
    try {
      await Promise.all([[ui.a.value, "a"], [ui.b.value, "b"]].map(([model, side]) => column(model, side, message, ui)));
    } finally {
      ui.run.disabled = false;
    }
  });
  view.append(form, ui.out);
}

async function column(model, side, message, ui) {
  const log = h("div", { class: "chat-log", id: `compare-log-${side}` });
  const stats = h("p", { class: "stats", id: `compare-stats-${side}`, role: "status" });
  ui.out.append(h("div", { class: "side", "data-model": model }, h("h3", {}, h("code", { text: model })), log, stats));
  const body = {
    model,
    messages: [{ role: "user", content: message }],
    temperature: Number(ui.temperature.value),
    max_tokens: Number(ui.maxTokens.value),
    stream: true,
    stream_options: { include_usage: true },
  };
  try {
    await streamReply(body, log, stats, undefined, `compare-${side}`);
  } catch (e) {
    clear(stats);
    log.append(notice(e.message));
  }
}
