// The pages of a tenant key: its models and a chat playground (templates: templates.js, usage: usage.js).

import { api, sse } from "./api.js";
import { clear, field, h, notice, table } from "./dom.js";

export async function models(view) {
  const { data } = await api("GET", "/v1/models");
  view.append(
    h("p", { text: "The models this key may call: its aliases that can be served now, then its other engines' models." }),
    table(data, [
      ["model", (m) => h("code", { class: "model-id", text: m.id })],
      ["serves", (m) => (m.parent ? `an adapter on ${m.parent}` : "a base model")],
    ]),
  );
}

// --- chat ----------------------------------------------------------------------------

export async function chat(view) {
  const { data } = await api("GET", "/v1/models");
  const ui = chatControls(data);
  const messages = [];
  let running = null;
  ui.reset.addEventListener("click", () => {
    messages.length = 0;
    clear(ui.log);
    clear(ui.stats);
  });
  ui.stop.addEventListener("click", () => running?.abort());
  ui.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) ui.form.requestSubmit();
  });
  ui.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (running || !ui.input.value.trim()) return;
    messages.push({ role: "user", content: ui.input.value });
    ui.log.append(h("div", { class: "message user" }, h("span", { class: "role", text: "you" }), h("p", { text: ui.input.value })));
    ui.input.value = "";
    const body = {
      model: ui.model.value,
      messages: [...messages],
      temperature: Number(ui.temperature.value),
      max_tokens: Number(ui.maxTokens.value),
      stream: true,
      stream_options: { include_usage: true },
    };
    running = new AbortController();
    ui.send.disabled = true;
    ui.stop.disabled = false;
    try {
      messages.push({ role: "assistant", content: await streamReply(body, ui.log, ui.stats, running.signal) });
    } catch (e) {
      if (e.name !== "AbortError") ui.log.append(notice(e.message));
      messages.pop();
    } finally {
      running = null;
      ui.send.disabled = false;
      ui.stop.disabled = true;
      ui.input.focus();
    }
  });
  view.append(ui.form);
  ui.input.focus();
}

// The playground's controls: the settings beside the conversation and its input.
function chatControls(models) {
  const ui = {
    model: h("select", { id: "chat-model" }, models.map((m) => h("option", { value: m.id, text: m.id, selected: m.id === "default" }))),
    temperature: h("input", { id: "chat-temperature", type: "number", min: "0", max: "2", step: "0.1", value: "0.7" }),
    maxTokens: h("input", { id: "chat-max-tokens", type: "number", min: "1", step: "1", value: "256" }),
    input: h("textarea", { id: "chat-input", rows: "3", required: true }),
    log: h("div", { id: "chat-log", class: "chat-log", "aria-live": "polite" }),
    stats: h("p", { id: "chat-stats", class: "stats", role: "status" }),
    send: h("button", { type: "submit", id: "chat-send", text: "Send" }),
    stop: h("button", { type: "button", id: "chat-stop", disabled: true, text: "Stop" }),
    reset: h("button", { type: "button", id: "chat-new", class: "link", text: "New chat" }),
  };
  ui.form = h(
    "form",
    { class: "chat" },
    h("div", { class: "settings card" }, field("Model", ui.model), field("Temperature", ui.temperature), field("Max tokens", ui.maxTokens), ui.reset),
    h(
      "div",
      { class: "conversation" },
      ui.log,
      field("Message", ui.input, "Ctrl+Enter sends."),
      h("div", { class: "buttons" }, ui.stop, ui.send),
      ui.stats,
    ),
  );
  return ui;
}

// Stream one answer into `log`, then its time to first token and token counts into
// `stats` (element ids `${prefix}-ttft`, ...). Shared with the compare page.
export async function streamReply(body, log, stats, signal, prefix = "stat") {
  const text = h("p", { class: "reply-text" });
  log.append(h("div", { class: "message assistant" }, h("span", { class: "role", text: body.model }), text));
  const started = performance.now();
  let firstToken = null;
  let usage = null;
  let answer = "";
  clear(stats, "waiting for the first token…");
  for await (const chunk of sse("/v1/chat/completions", body, signal)) {
    const delta = chunk.choices?.[0]?.delta?.content;
    if (delta) {
      firstToken ??= performance.now() - started;
      answer += delta;
      text.textContent = answer;
      log.scrollTop = log.scrollHeight;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  const total = performance.now() - started;
  clear(
    stats,
    h("span", { id: `${prefix}-ttft`, text: `first token ${firstToken === null ? "–" : Math.round(firstToken)} ms` }),
    " · ",
    h("span", { id: `${prefix}-prompt`, text: `${usage?.prompt_tokens ?? "?"} prompt tokens` }),
    " · ",
    h("span", { id: `${prefix}-completion`, text: `${usage?.completion_tokens ?? "?"} completion tokens` }),
    " · ",
    h("span", { text: `${(total / 1000).toFixed(2)} s` }),
  );
  return answer;
}
