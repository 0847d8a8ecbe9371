// Budgets and alerts: each budget's spend against its limits, add or remove admin budgets, alerts.

import { del, get, post } from "../api.js";
import { badge, field, formValues, h, select, table } from "../dom.js";
import { int, time, usd } from "../format.js";

const amount = (b, v) => (v === null || v === undefined ? "—" : b.metric === "tokens" ? `${int(v)} tokens` : usd(v));

export function budgetMeter(b) {
  const limit = b.hard_limit ?? b.soft_limit;
  const spent = b.spent ?? 0;
  const meter = h("meter", {
    min: 0,
    max: limit || 1,
    value: Math.min(spent, limit || 1),
    low: b.soft_limit ?? undefined,
    high: b.soft_limit ?? undefined,
    optimum: 0,
    title: `${amount(b, spent)} of ${amount(b, limit)}`,
  });
  return h(
    "div",
    { class: "meter", "data-policy": b.policy_id },
    h("div", { class: "meter-label" }, h("strong", {}, b.policy_id), ` ${b.scope} · ${b.window} (${b.window_key})`),
    meter,
    h(
      "small",
      { class: "muted" },
      `${amount(b, spent)} spent` +
        (b.reserved ? `, ${amount(b, b.reserved)} reserved` : "") +
        (b.soft_limit !== null && b.soft_limit !== undefined ? ` · soft ${amount(b, b.soft_limit)}` : "") +
        (b.hard_limit !== null && b.hard_limit !== undefined ? ` · hard ${amount(b, b.hard_limit)}` : ""),
    ),
  );
}

export function render(view) {
  const budgets = view.section("Budgets", async () => {
    const { data } = await get("/budgets");
    return table(
      [
        { label: "Budget", cell: budgetMeter },
        { label: "Metric", cell: (b) => b.metric },
        { label: "Remaining", cell: (b) => amount(b, b.remaining) },
        { label: "Source", cell: (b) => b.source },
        {
          label: "",
          cell: (b) =>
            b.source === "admin"
              ? view.confirmButton("Delete", () => del(`/budgets/${encodeURIComponent(b.policy_id)}`).then(async (r) => (await budgets.reload(), r)), () => `Budget ${b.policy_id} deleted`, { class: "small danger" })
              : h("small", { class: "muted" }, "set in the config file"),
        },
      ],
      data,
      "No budgets yet.",
      { id: "budgets-table" },
    );
  });

  const submit = h("button", { type: "submit" }, "Save budget");
  const form = h(
    "form",
    { class: "stack", id: "budget-form", autocomplete: "off" },
    field("Budget id", h("input", { name: "policy_id", required: true })),
    field("Scope", h("input", { name: "scope", value: "global" }), "global, agent:<id>, token:<id>, model:<id> or provider:<id>"),
    field("Metric", select("metric", [["usd", "USD"], ["tokens", "Tokens"]], "usd")),
    field("Window", select("window", ["day", "week", "month", "total", "rolling_24h", "rolling_7d", "rolling_30d"], "month")),
    field("Soft limit", h("input", { name: "soft_limit", type: "number", step: "any", min: "0" }), "Alert when crossed."),
    field("Hard limit", h("input", { name: "hard_limit", type: "number", step: "any", min: "0" }), "Refuse requests beyond it."),
    field("Alert webhook", h("input", { name: "webhook_url", type: "url" }), "Optional."),
    h("div", { class: "actions" }, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const v = formValues(form);
    const body = { policy_id: v.policy_id, scope: v.scope || "global", metric: v.metric, window: v.window };
    if (v.soft_limit) body.soft_limit = Number(v.soft_limit);
    if (v.hard_limit) body.hard_limit = Number(v.hard_limit);
    if (v.webhook_url) body.webhook_url = v.webhook_url;
    const saved = await view.act(submit, () => post("/budgets", body), (b) => `Budget ${b.policy_id} saved`);
    if (saved) {
      form.reset();
      await budgets.reload();
    }
  });

  const alerts = view.section("Alerts", async () => {
    const { data } = await get("/alerts?limit=200");
    return table(
      [
        { label: "When", cell: (a) => time(a.at) },
        { label: "Kind", cell: (a) => badge(a.kind, "warn") },
        { label: "Subject", cell: (a) => a.subject },
        { label: "Window", cell: (a) => a.window_key },
        { label: "Message", cell: (a) => a.message },
        { label: "Webhook", cell: (a) => a.webhook_status || "—" },
      ],
      data,
      "No alerts.",
      { id: "alerts-table" },
    );
  });

  return [h("h1", {}, "Budgets and alerts"), budgets, h("section", {}, h("h2", {}, "Add or change a budget"), form), alerts];
}
