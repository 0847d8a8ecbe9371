// Overview: requests and cost today and this month, budget bars, provider health, recent alerts.

import { get, query } from "../api.js";
import { badge, h, table } from "../dom.js";
import { int, sinceMidnight, sinceMonthStart, time, usd } from "../format.js";
import { budgetMeter } from "./budgets.js";

function totals(rows) {
  const row = (rows && rows[0]) || {};
  return { requests: row.requests || 0, cost: row.cost_usd, tokens: row.total_tokens || 0, errors: row.errors || 0 };
}

function card(label, value, id) {
  return h("div", { class: "card", id }, h("span", { class: "card-label" }, label), h("span", { class: "card-value" }, value));
}

export function render(view) {
  const spend = view.section("Requests and cost", async () => {
    const [today, month] = await Promise.all([
      get(`/usage/summary${query({ since: sinceMidnight() })}`),
      get(`/usage/summary${query({ since: sinceMonthStart() })}`),
    ]);
    const t = totals(today.data);
    const m = totals(month.data);
    return h(
      "div",
      { class: "cards" },
      card("Requests today", int(t.requests), "requests-today"),
      card("Cost today", usd(t.cost), "cost-today"),
      card("Tokens today", int(t.tokens)),
      card("Requests this month", int(m.requests), "requests-month"),
      card("Cost this month", usd(m.cost), "cost-month"),
      card("Errors this month", int(m.errors)),
    );
  });

  const budgets = view.section("Budgets", async () => {
    const { data } = await get("/budgets");
    if (!data.length) return h("p", { class: "muted" }, "No budgets. Add one under Budgets & alerts.");
    return h("div", { class: "meters" }, data.map(budgetMeter));
  });

  const health = view.section("Provider health", async () => {
    const { data } = await get("/providers");
    return table(
      [
        { label: "Provider", cell: (p) => h("a", { href: "#/providers" }, p.provider_id) },
        { label: "Health", cell: (p) => badge(p.health) },
        { label: "Circuit", cell: (p) => badge(p.circuit.state) },
        { label: "Error rate", cell: (p) => `${((p.metrics.error_rate || 0) * 100).toFixed(1)} %` },
      ],
      data,
      "No providers are configured.",
    );
  });

  const alerts = view.section("Recent alerts", async () => {
    const { data } = await get("/alerts?limit=10");
    return table(
      [
        { label: "When", cell: (a) => time(a.at) },
        { label: "Kind", cell: (a) => badge(a.kind, "warn") },
        { label: "Subject", cell: (a) => a.subject },
        { label: "Message", cell: (a) => a.message },
      ],
      data,
      "No alerts.",
    );
  });

  return [h("h1", {}, "Overview"), spend, h("div", { class: "columns" }, budgets, health), alerts];
}
