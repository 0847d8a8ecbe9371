// Routing decisions: what smart routing recommended, what was served, and the dry-run savings.

import { get, query } from "../api.js";
import { h, select, table } from "../dom.js";
import { time, usd } from "../format.js";

export function render(view) {
  let since = "7d";
  const sinceSelect = select("since", [["24h", "Last 24 hours"], ["7d", "Last 7 days"], ["30d", "Last 30 days"]], since);

  const decisions = view.section("", async () => {
    const { data, totals } = await get(`/routing/decisions${query({ since, limit: 200 })}`);
    const cards = h(
      "div",
      { class: "cards", id: "routing-totals" },
      h("div", { class: "card" }, h("span", { class: "card-label" }, "Decisions"), h("span", { class: "card-value" }, String(totals.decisions || 0))),
      h("div", { class: "card" }, h("span", { class: "card-label" }, "Actual cost"), h("span", { class: "card-value" }, usd(totals.actual_cost_usd))),
      h("div", { class: "card" }, h("span", { class: "card-label" }, "Cost if recommended"), h("span", { class: "card-value" }, usd(totals.recommended_cost_usd))),
      h("div", { class: "card" }, h("span", { class: "card-label" }, "Savings (dry run)"), h("span", { class: "card-value" }, usd(totals.saving_usd))),
    );
    return [
      cards,
      table(
        [
          { label: "When", cell: (d) => time(d.at) },
          { label: "Mode", cell: (d) => d.mode },
          { label: "Requested", cell: (d) => d.requested_model || "—" },
          { label: "Recommended", cell: (d) => d.recommended_model || "—" },
          { label: "Served", cell: (d) => d.served_model || "—" },
          { label: "Tier / score", cell: (d) => `${d.tier || "—"} / ${d.score === null || d.score === undefined ? "—" : Number(d.score).toFixed(2)}` },
          { label: "Reasons", cell: (d) => (d.reason_codes || []).join(", ") || "—" },
          { label: "Saving", cell: (d) => usd(d.saving_usd), class: "num" },
        ],
        data,
        "No routing decisions in this range. Set routing.mode (or a token's routing_mode) to suggest, dry_run or enforced.",
        { id: "decisions-table" },
      ),
    ];
  });
  sinceSelect.addEventListener("change", () => {
    since = sinceSelect.value;
    decisions.reload();
  });
  return [h("h1", {}, "Routing decisions"), h("div", { class: "toolbar" }, sinceSelect), decisions];
}
