// The usage page of a tenant key: requests and tokens per model alias, per hour (the last
// 48 hours) or per day (the last 14), as SVG bar charts built with the DOM (no markup
// strings: the CSP forbids inline script, and nothing here is parsed), the quota's
// headroom now, and the same numbers as a table.

import { api } from "./api.js";
import { bar, clear, field, h, table } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const SPANS = { hour: { count: 48, ms: 3600e3, cut: 13 }, day: { count: 14, ms: 86400e3, cut: 10 } };
const LIMITS = [
  ["requests_per_minute", "requests this minute"],
  ["tokens_per_minute", "tokens this minute (charged and reserved)"],
  ["max_concurrent", "requests in flight"],
];

function svg(tag, attrs = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, String(value));
  element.append(...children);
  return element;
}

export async function usage(view) {
  const since = new Date(Date.now() - SPANS.day.count * 86400e3).toISOString();
  const [{ data }, quota] = await Promise.all([api("GET", `/v1/usage?since=${encodeURIComponent(since)}`), api("GET", "/v1/quota")]);
  const span = h("select", { id: "usage-span" }, h("option", { value: "hour", text: "per hour, the last 48 hours" }), h("option", { value: "day", text: "per day, the last 14 days" }));
  const metric = h("select", { id: "usage-metric" }, h("option", { value: "requests", text: "requests" }), h("option", { value: "tokens", text: "tokens (prompt + completion)" }));
  const charts = h("div", { id: "usage-charts" });
  const draw = () => clear(charts, usageCharts(data, span.value, metric.value));
  span.addEventListener("change", draw);
  metric.addEventListener("change", draw);
  draw();
  view.append(
    headroom(quota),
    h("section", { class: "card" }, h("h2", { text: "Requests and tokens per model alias (UTC)" }), h("div", { class: "inline" }, field("Buckets", span), field("Show", metric)), charts),
    h("section", { class: "card" }, h("h2", { text: "Per day and alias" }), usageTable(data)),
  );
}

// What each quota leaves now: used of the limit as a bar, and the headroom.
function headroom(quota) {
  const rows = LIMITS.map(([name, what]) => {
    const { limit, used, left } = quota.limits[name];
    const text = limit === null ? `${used} ${what}: no limit` : `${used} of ${limit} ${what}: ${left} left`;
    return h("li", { id: `quota-${name}`, "data-used": String(used), "data-left": left === null ? "" : String(left) },
      h("span", { class: "bar-label", text }), limit === null ? h("span") : bar(used / limit, text));
  });
  return h("section", { class: "card", id: "usage-quota" }, h("h2", { text: "Quota headroom now" }), h("ul", { class: "bars quota" }, rows));
}

// Bucket keys from oldest to now ("2026-12-07T04" for hours, "2026-12-07" for days).
function buckets(kind) {
  const { count, ms, cut } = SPANS[kind];
  const now = Date.now();
  return Array.from({ length: count }, (_, i) => new Date(now - (count - 1 - i) * ms).toISOString().slice(0, cut));
}

// One chart per alias: a bar per bucket, all charts on one scale.
export function usageCharts(rows, kind, metric) {
  const keys = buckets(kind);
  const index = new Map(keys.map((k, i) => [k, i]));
  const series = new Map();
  for (const row of rows) {
    const at = index.get(row.hour.slice(0, SPANS[kind].cut));
    if (at === undefined) continue;
    const values = series.get(row.model) ?? new Array(keys.length).fill(0);
    values[at] += metric === "requests" ? row.requests : row.prompt_tokens + row.completion_tokens;
    series.set(row.model, values);
  }
  if (!series.size) return h("p", { id: "usage-chart-empty", text: "No usage in this span." });
  const most = Math.max(1, ...[...series.values()].flat());
  return [...series.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([model, values]) => chart(model, keys, values, most, metric));
}

function chart(model, keys, values, most, metric) {
  const width = 720;
  const height = 140;
  const top = 16;
  const bottom = 22;
  const step = width / keys.length;
  const total = values.reduce((a, b) => a + b, 0);
  const bars = values.map((value, i) => {
    const tall = ((height - top - bottom) * value) / most;
    return svg("rect", { class: "usage-bar", x: (i * step + 1).toFixed(1), y: (height - bottom - tall).toFixed(1), width: Math.max(1, step - 2).toFixed(1), height: tall.toFixed(1), "data-bucket": keys[i], "data-value": value },
      svg("title", {}, `${keys[i]}: ${value} ${metric}`));
  });
  const label = (x, anchor, text) => svg("text", { x, y: height - 6, "text-anchor": anchor, class: "axis" }, text);
  return h("figure", { class: "usage-chart", "data-model": model },
    h("figcaption", {}, h("code", { text: model }), ` ${total} ${metric}`),
    svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${model}: ${metric} per bucket, ${total} in all` },
      svg("line", { x1: 0, x2: width, y1: height - bottom, y2: height - bottom, class: "axis-line" }),
      svg("text", { x: 2, y: 11, class: "axis" }, `${most} ${metric}`),
      ...bars,
      label(2, "start", keys[0]),
      label(width - 2, "end", keys.at(-1))));
}

// Hourly rows → one per day and alias, with bars for the tokens (shared by the admin page).
export function usageTable(rows) {
  const days = new Map();
  for (const row of rows) {
    const key = `${row.hour.slice(0, 10)} ${row.tenant ?? ""} ${row.model}`;
    const day = days.get(key) ?? { day: row.hour.slice(0, 10), tenant: row.tenant, model: row.model, requests: 0, prompt: 0, completion: 0 };
    day.requests += row.requests;
    day.prompt += row.prompt_tokens;
    day.completion += row.completion_tokens;
    days.set(key, day);
  }
  const sorted = [...days.values()].sort((a, b) => b.day.localeCompare(a.day) || a.model.localeCompare(b.model));
  if (!sorted.length) return h("p", { id: "usage-empty", text: "No usage recorded yet." });
  const most = Math.max(...sorted.map((d) => d.prompt + d.completion), 1);
  return h(
    "div",
    { id: "usage-table" },
    table(sorted, [
      ["day", (d) => d.day],
      ["model", (d) => h("code", { class: "usage-model", text: d.model })],
      ["requests", (d) => String(d.requests)],
      ["prompt tokens", (d) => String(d.prompt)],
      ["completion tokens", (d) => String(d.completion)],
      ["tokens", (d) => bar((d.prompt + d.completion) / most, `${d.prompt + d.completion} tokens`)],
    ]),
  );
}
