// Memory: search an agent's memory (nearest first) and list its latest items.

import { get, post, query } from "../api.js";
import { field, formValues, h, table } from "../dom.js";
import { time } from "../format.js";

export function render(view) {
  const results = h("div", { id: "memory-results" });
  const submit = h("button", { type: "submit" }, "Search");
  const form = h(
    "form",
    { class: "inline", id: "memory-form", autocomplete: "off" },
    field("Agent id", h("input", { name: "agent_id", required: true })),
    field("Query", h("input", { name: "query", required: true, size: 40 })),
    field("Results", h("input", { name: "k", type: "number", min: "1", max: "100", value: "10" })),
    submit,
  );

  const columns = (withScore) => [
    ...(withScore ? [{ label: "Score", cell: (i) => Number(i.score).toFixed(3), class: "num" }] : []),
    { label: "Text", cell: (i) => i.text },
    { label: "Tags", cell: (i) => (i.tags || []).join(", ") || "—" },
    { label: "Created", cell: (i) => time(i.created_at) },
    { label: "Expires", cell: (i) => time(i.expires_at) },
    { label: "Id", cell: (i) => h("code", {}, i.item_id) },
  ];

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const v = formValues(form);
    const found = await view.act(submit, () => post("/memory/search", { agent_id: v.agent_id, query: v.query, k: Number(v.k || 10) }));
    if (!found) return;
    const { data } = await view.act(null, () => get(`/memory/items${query({ agent_id: v.agent_id, limit: 20 })}`)) || { data: [] };
    results.replaceChildren(
      h("h2", {}, `Search results for agent ${found.agent_id}`),
      table(columns(true), found.data, "Nothing matched."),
      h("h2", {}, `Latest items of agent ${found.agent_id}`),
      table(columns(false), data, "This agent has no memory items."),
    );
  });

  return [h("h1", {}, "Memory"), h("section", {}, form), results];
}
