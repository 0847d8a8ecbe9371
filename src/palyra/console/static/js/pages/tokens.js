// API tokens: list, create (the token is shown once, here, and nowhere else), revoke.

import { get, post } from "../api.js";
import { badge, field, formValues, h, select, table } from "../dom.js";
import { time } from "../format.js";

const STATUS_KIND = { active: "healthy", revoked: "error", expired: "warn" };

export function render(view) {
  const tokens = view.section("API tokens", async () => {
    const { data } = await get("/tokens");
    return table(
      [
        { label: "Name", cell: (t) => h("strong", {}, t.name) },
        { label: "Id", cell: (t) => h("code", {}, t.token_id) },
        { label: "Starts with", cell: (t) => h("code", {}, `${t.prefix}…`) },
        { label: "Scopes", cell: (t) => t.scopes.join(", ") },
        { label: "Agent", cell: (t) => t.agent_id || "any" },
        { label: "Status", cell: (t) => badge(t.status, STATUS_KIND[t.status]) },
        { label: "Created", cell: (t) => time(t.created_at) },
        { label: "Last used", cell: (t) => time(t.last_used_at) },
        { label: "Expires", cell: (t) => time(t.expires_at) },
        {
          label: "",
          cell: (t) =>
            t.status === "active"
              ? view.confirmButton("Revoke", () => post(`/tokens/${encodeURIComponent(t.token_id)}/revoke`).then(async (r) => (await tokens.reload(), r)), () => `Token ${t.name} revoked`, { class: "small danger" })
              : null,
        },
      ],
      data,
      "No API tokens yet.",
      { id: "tokens-table" },
    );
  });

  const created = h("div", { id: "new-token" });
  const submit = h("button", { type: "submit", id: "token-submit" }, "Create token");
  const form = h(
    "form",
    { class: "stack", id: "token-form", autocomplete: "off" },
    field("Name", h("input", { name: "name", required: true, id: "token-name" })),
    field("Scopes", h("input", { name: "scopes", value: "*" }), "Comma-separated, e.g. chat, embeddings, memory; * for all."),
    field("Agent id", h("input", { name: "agent_id" }), "Optional: bind the token to one agent."),
    field("Expires in", h("input", { name: "expires_in", placeholder: "e.g. 30d" }), "Optional."),
    field("Rate limit per minute", h("input", { name: "rate_limit_per_minute", type: "number", min: "0" }), "Optional."),
    field("Routing mode", select("routing_mode", [["", "(gateway default)"], "off", "suggest", "dry_run", "enforced"], "")),
    h("div", { class: "actions" }, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const v = formValues(form);
    const body = { name: v.name };
    if (v.scopes) body.scopes = v.scopes.split(",").map((s) => s.trim()).filter(Boolean);
    if (v.agent_id) body.agent_id = v.agent_id;
    if (v.expires_in) body.expires_in = v.expires_in;
    if (v.rate_limit_per_minute) body.rate_limit_per_minute = Number(v.rate_limit_per_minute);
    if (v.routing_mode) body.routing_mode = v.routing_mode;
    const token = await view.act(submit, () => post("/tokens", body), (t) => `Token ${t.name} created`);
    if (!token) return;
    form.reset();
    const value = h("input", { type: "text", readonly: true, value: token.token, id: "new-token-value", class: "secret", spellcheck: "false" });
    const copy = h("button", { type: "button", class: "small" }, "Copy");
    copy.addEventListener("click", async () => {
      value.select();
      try {
        await navigator.clipboard.writeText(value.value);
        copy.textContent = "Copied";
      } catch {
        copy.textContent = "Select and copy it by hand";
      }
    });
    const dismiss = h("button", { type: "button", class: "small secondary" }, "I have stored it");
    dismiss.addEventListener("click", () => created.replaceChildren());
    created.replaceChildren(
      h(
        "div",
        { class: "flash warn once" },
        h("p", {}, h("strong", {}, `The token for ${token.name}. `), "It is shown this once: the daemon keeps only its hash."),
        h("div", { class: "actions" }, value, copy, dismiss),
      ),
    );
    await tokens.reload();
  });

  return [h("h1", {}, "API tokens"), created, tokens, h("section", {}, h("h2", {}, "Create a token"), form)];
}
