// Usage: cost and tokens over time (a chart), totals by model, agent, session and token, the latest
// runs, and a CSV export.

import { apiBase, get, query } from "../api.js";
import { h, select, table } from "../dom.js";
import { int, ms, time, usd } from "../format.js";
import { usageChart } from "../chart.js";

const RANGES = {
  "24h": { since: "24h", bucket: "hour", seconds: 3600, label: "Last 24 hours, hourly" },
  "7d": { since: "7d", bucket: "day", seconds: 86400, label: "Last 7 days, daily" },
  "30d": { since: "30d", bucket: "day", seconds: 86400, label: "Last 30 days, daily" },
};
const GROUPS = [["model", "Model"], ["agent", "Agent"], ["session", "Session"], ["token", "API token"], ["provider", "Provider"]];

export function render(view) {
  let range = "24h";
  let by = "model";
  let plot = null;

  const rangeSelect = select("range", Object.entries(RANGES).map(([k, v]) => [k, v.label]), range);
  rangeSelect.id = "usage-range";
  const bySelect = select("by", GROUPS, by);
  bySelect.id = "usage-by";
  const exportLink = h("a", { class: "button", id: "usage-export", download: "palyra-usage.csv" }, "Export CSV");
  const setExport = () => exportLink.setAttribute("href", `${apiBase}/usage/export${query({ format: "csv", since: RANGES[range].since })}`);
  setExport();

  const chartBox = h("div", { id: "usage-chart", class: "chart" });
  const chart = view.section("Cost and tokens over time", async () => {
    const r = RANGES[range];
    const { data } = await get(`/usage/timeline${query({ since: r.since, bucket: r.bucket })}`);
    if (plot) plot.destroy();
    plot = null;
    if (!data.length) {
      chartBox.dataset.points = "0";
      return [h("p", { class: "muted" }, "No requests in this range yet."), chartBox];
    }
    // Draw after the box is in the page so the chart takes its width.
    view.later(0, () => {
      plot = usageChart(chartBox, data, r.seconds);
    });
    return chartBox;
  });

  const breakdown = view.section("Totals", async () => {
    const { data } = await get(`/usage/summary${query({ since: RANGES[range].since, by })}`);
    return table(
      [
        { label: GROUPS.find(([k]) => k === by)[1], cell: (r) => r.key ?? "(none)" },
        { label: "Requests", cell: (r) => int(r.requests), class: "num" },
        { label: "Errors", cell: (r) => int(r.errors), class: "num" },
        { label: "Prompt tokens", cell: (r) => int(r.prompt_tokens), class: "num" },
        { label: "Completion tokens", cell: (r) => int(r.completion_tokens), class: "num" },
        { label: "Cached tokens", cell: (r) => int(r.cached_tokens), class: "num" },
        { label: "Cost", cell: (r) => usd(r.cost_usd) + (r.unpriced_runs ? ` (+${r.unpriced_runs} unpriced)` : ""), class: "num" },
      ],
      data,
      "No requests in this range yet.",
      { id: "usage-breakdown" },
    );
  });

  const runs = view.section("Latest requests", async () => {
    const { data } = await get(`/usage/runs${query({ limit: 25, since: RANGES[range].since })}`);
    return table(
      [
        { label: "When", cell: (r) => time(r.created_at) },
        { label: "Request", cell: (r) => h("code", {}, r.request_id) },
        { label: "Endpoint", cell: (r) => r.endpoint },
        { label: "Model", cell: (r) => r.model_id || r.requested_model || "—" },
        { label: "Agent", cell: (r) => r.agent_id || "—" },
        { label: "Status", cell: (r) => (r.status === "ok" ? "ok" : `${r.status} ${r.http_status}${r.error_class ? " " + r.error_class : ""}`) },
        { label: "Tokens", cell: (r) => int(r.total_tokens), class: "num" },
        { label: "Cost", cell: (r) => usd(r.cost_usd), class: "num" },
        { label: "Latency", cell: (r) => ms(r.latency_ms), class: "num" },
      ],
      data,
      "No requests in this range yet.",
      { id: "usage-runs" },
    );
  });

  rangeSelect.addEventListener("change", () => {
    range = rangeSelect.value;
    setExport();
    chart.reload();
    breakdown.reload();
    runs.reload();
  });
  bySelect.addEventListener("change", () => {
    by = bySelect.value;
    breakdown.reload();
  });
  view.onDispose = () => plot && plot.destroy();

  return [
    h("h1", {}, "Usage"),
    h("div", { class: "toolbar" }, rangeSelect, h("label", {}, "Totals by ", bySelect), exportLink),
    chart,
    breakdown,
    runs,
  ];
}
