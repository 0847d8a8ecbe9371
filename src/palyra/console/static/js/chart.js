// Cost and tokens over time, drawn with the vendored uPlot (static/vendor/uplot, MIT).

import uPlot from "../vendor/uplot/uPlot.esm.js";
import { usd, usdTick } from "./format.js";

export function usageChart(container, rows, bucketSeconds) {
  const xs = rows.map((r) => r.start);
  const cost = rows.map((r) => (r.cost_usd === null || r.cost_usd === undefined ? null : r.cost_usd));
  const tokens = rows.map((r) => r.total_tokens || 0);
  const requests = rows.map((r) => r.requests || 0);
  const width = Math.max(320, container.clientWidth || 800);
  const bars = uPlot.paths.bars({ size: [0.6, 60] });
  const opts = {
    width,
    height: 280,
    scales: { x: { time: true }, usd: { auto: true }, tokens: { auto: true } },
    series: [
      {},
      { label: "Cost (USD)", scale: "usd", stroke: "#2b5fd9", fill: "rgba(43,95,217,0.15)", width: 2, value: (_u, v) => usd(v), points: { show: true } },
      { label: "Tokens", scale: "tokens", stroke: "#d98a2b", width: 2, paths: bars, fill: "rgba(217,138,43,0.35)" },
      { label: "Requests", scale: "tokens", stroke: "#3a9d5d", width: 1, dash: [4, 4], points: { show: true } },
    ],
    axes: [
      {},
      { scale: "usd", label: "USD", values: (_u, ticks) => ticks.map(usdTick), size: 80 },
      { scale: "tokens", side: 1, label: "tokens / requests", grid: { show: false }, size: 70 },
    ],
    legend: { live: true },
  };
  if (xs.length === 1) {
    // A single bucket would collapse the time axis; widen it to one bucket either side.
    opts.scales.x.range = () => [xs[0] - bucketSeconds, xs[0] + bucketSeconds];
  }
  container.replaceChildren();
  const plot = new uPlot(opts, [xs, cost, tokens, requests], container);
  container.dataset.points = String(xs.length);
  container.dataset.tokens = String(tokens.reduce((a, b) => a + b, 0));
  return plot;
}
