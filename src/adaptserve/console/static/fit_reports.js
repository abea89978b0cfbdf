// The fit reports page of an admin key: what `adaptserve fit` runs that served their
// choice here found, as they pushed it: the decision, what was served, each candidate's
// held-out accuracy with its 95% interval, and the report's plot. The plot (a PNG) is
// decoded with createImageBitmap and drawn on a canvas: the page's CSP loads images from
// this origin only (no data: or blob: URLs), and an image request could not carry the key.

import { api } from "./api.js";
import { bar, clear, h, notice, table } from "./dom.js";

const owned = (name, owner) => `/admin/fit-reports/${encodeURIComponent(name)}${owner ? `?tenant=${encodeURIComponent(owner)}` : ""}`;
const share = (x) => (x === null || x === undefined ? "–" : x.toFixed(3));

export async function fitReports(view) {
  const { data } = await api("GET", "/admin/fit-reports");
  const detail = h("div", { id: "fit-detail" });
  view.append(h("p", { text: "What each adaptserve fit run that served its choice on this server found." }));
  if (!data.length) view.append(h("p", { id: "fit-empty", text: "No fit report yet: adaptserve fit stores one when it serves its choice." }));
  else {
    view.append(table(data, [
      ["report", (r) => h("button", { type: "button", class: "link", "data-fit": r.name, "data-owner": r.owner ?? "", text: r.name, onclick: () => openReport(r, detail) })],
      ["owner", (r) => (r.owner ? `tenant ${r.owner}` : "global")],
      ["data", (r) => `${r.source} (${r.examples} examples)`],
      ["choice", (r) => r.decision.choice ?? "none"],
      ["pushed", (r) => r.created_at.slice(0, 19).replace("T", " ")],
    ]));
  }
  view.append(detail);
}

async function openReport(summary, detail) {
  clear(detail, h("p", { text: "loading…" }));
  let report;
  try {
    report = await api("GET", owned(summary.name, summary.owner));
  } catch (e) {
    clear(detail, notice(e.message));
    return;
  }
  const { decision } = report;
  const picks = [decision.llm && `LLM pick ${decision.llm}`, decision.baseline && `baseline pick ${decision.baseline}`].filter(Boolean);
  const canvas = report.plot_png ? h("canvas", { id: "fit-plot", role: "img", "aria-label": "held-out accuracy per candidate with 95% intervals" }) : null;
  clear(detail, h("section", { class: "card", id: "fit-report" },
    h("h2", { text: `${report.name}: ${report.source}, ${report.examples} examples` }),
    h("p", { id: "fit-verdict" }, h("strong", { text: "Decision: " }), decision.verdict),
    picks.length ? h("p", { class: "muted", text: `${picks.join(", ")}; the choice: ${decision.choice ?? "none"}.` }) : null,
    report.served ? h("p", { id: "fit-served", text: report.served }) : null,
    h("div", { id: "fit-table" }, table(report.candidates, [
      ["candidate", (r) => h("code", { text: r.candidate })],
      ["kind", (r) => r.kind],
      ["n", (r) => String(r.n)],
      ["accuracy", (r) => share(r.accuracy)],
      ["95% interval", (r) => `${share(r.accuracy_low)} – ${share(r.accuracy_high)}`],
      ["", (r) => bar(r.accuracy, `accuracy ${share(r.accuracy)}`)],
      ["macro-F1", (r) => share(r.macro_f1)],
      ["inputs/s", (r) => (r.inputs_per_s == null ? "–" : r.inputs_per_s.toFixed(1))],
    ], "Each candidate's own held-out estimate (the decision pairs fit's nested picks, not the best row)")),
    canvas ? h("figure", {}, canvas, h("figcaption", { class: "muted", text: "The report's plot, as fit drew it." })) : h("p", { class: "muted", text: "No plot was pushed." })));
  if (canvas) await draw(canvas, report.plot_png, detail);
}

async function draw(canvas, base64, detail) {
  try {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const image = await createImageBitmap(new Blob([bytes], { type: "image/png" }));
    canvas.width = image.width;
    canvas.height = image.height;
    canvas.getContext("2d").drawImage(image, 0, 0);
    canvas.dataset.drawn = "true";
  } catch (e) {
    detail.append(notice(`the plot could not be shown: ${e.message}`));
  }
}
