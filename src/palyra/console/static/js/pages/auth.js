// Auth: connect an OpenAI or Anthropic API key (validated upstream; the key field is cleared on
// submit), OAuth connect, rotate, refresh, revoke, delete, and each profile's health and expiry.

import { del, get, post } from "../api.js";
import { badge, field, formValues, h, select, table } from "../dom.js";
import { duration, time } from "../format.js";

const HEALTH_KIND = { static: "healthy", ok: "healthy", expiring: "warn", expired: "error", missing: "error" };

function scopeOf(values) {
  return values.scope_kind === "agent" ? { kind: "agent", agent_id: values.agent_id } : { kind: "global" };
}

function expiry(p) {
  const at = p.credential.expires_at;
  if (!at) return p.credential.type === "api_key" ? "never (static key)" : "not reported";
  const left = at - Date.now() / 1000;
  return `${time(at)} (${left > 0 ? "in " + duration(left) : "expired"})`;
}

export function render(view) {
  // --- connect an API key ----------------------------------------------------------------------
  const keyInput = h("input", { name: "api_key", type: "password", autocomplete: "off", required: true, id: "api-key-input", spellcheck: "false" });
  const providerSelect = select("provider", [["openai", "OpenAI"], ["anthropic", "Anthropic"]], "openai");
  providerSelect.id = "api-key-provider";
  const profileIdInput = h("input", { name: "profile_id", id: "api-key-profile-id", placeholder: "generated from the name", autocomplete: "off" });
  const profileNameInput = h("input", { name: "profile_name", id: "api-key-profile-name", required: true, autocomplete: "off" });
  const agentInput = h("input", { name: "agent_id", id: "api-key-agent", autocomplete: "off" });
  const submit = h("button", { type: "submit", id: "api-key-submit" }, "Validate and save");
  const formTitle = h("h2", {}, "Connect an API key");
  const cancelRotate = h("button", { type: "button", class: "secondary", hidden: true }, "Cancel rotation");

  const keyForm = h(
    "form",
    { id: "api-key-form", autocomplete: "off", class: "stack" },
    field("Provider", providerSelect),
    field("Profile name", profileNameInput),
    field("Profile id", profileIdInput, "Optional; reuse an existing id to rotate its key."),
    field("Scope", select("scope_kind", [["global", "Global"], ["agent", "One agent"]], "global")),
    field("Agent id", agentInput, "Only for the agent scope."),
    field("Validate against provider", h("input", { name: "provider_id", autocomplete: "off", placeholder: "default upstream for this provider" }), "Optional: a configured provider_id."),
    field("API key", keyInput, "Sent once to the daemon, checked upstream, then stored encrypted; never shown again."),
    h("div", { class: "actions" }, submit, cancelRotate),
  );

  function resetRotation() {
    formTitle.textContent = "Connect an API key";
    providerSelect.disabled = false;
    profileIdInput.readOnly = false;
    cancelRotate.hidden = true;
  }
  cancelRotate.addEventListener("click", () => {
    keyForm.reset();
    resetRotation();
  });

  keyForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const values = formValues(keyForm);
    const provider = providerSelect.value;
    const apiKey = keyInput.value;
    keyInput.value = ""; // the key leaves the page with this request, whatever the answer
    const body = { api_key: apiKey, profile_name: values.profile_name, scope: scopeOf(values) };
    if (values.profile_id) body.profile_id = values.profile_id;
    if (values.provider_id) body.provider_id = values.provider_id;
    const result = await view.act(submit, () => post(`/auth/providers/${provider}/api-key`, body), (r) => r.message);
    if (result) {
      keyForm.reset();
      resetRotation();
      await profiles.reload();
    }
  });

  function rotate(p) {
    keyForm.reset();
    providerSelect.value = p.provider;
    providerSelect.disabled = true;
    profileIdInput.value = p.profile_id;
    profileIdInput.readOnly = true;
    profileNameInput.value = p.profile_name;
    keyForm.elements.scope_kind.value = p.scope.kind;
    agentInput.value = p.scope.agent_id || "";
    formTitle.textContent = `Rotate the key of ${p.profile_id}`;
    cancelRotate.hidden = false;
    keyInput.focus();
  }

  // --- profiles --------------------------------------------------------------------------------
  const profiles = view.section("Auth profiles", async () => {
    const { data } = await get("/auth/profiles?limit=500");
    return table(
      [
        { label: "Profile", cell: (p) => h("span", {}, h("strong", { class: "profile-id" }, p.profile_id), h("br"), h("small", { class: "muted" }, p.profile_name)) },
        { label: "Provider", cell: (p) => p.custom_name || p.provider },
        { label: "Type", cell: (p) => (p.credential.type === "api_key" ? "API key" : "OAuth") },
        { label: "Scope", cell: (p) => (p.scope.kind === "agent" ? `agent ${p.scope.agent_id}` : "global") },
        { label: "Health", cell: (p) => h("span", {}, badge(p.health, HEALTH_KIND[p.health]), h("br"), h("small", { class: "muted" }, p.health_reason)) },
        { label: "Expires", cell: (p) => expiry(p) },
        {
          label: "Refresh",
          cell: (p) =>
            p.credential.type === "oauth"
              ? `${p.refresh.failures} failure(s)${p.refresh.last_error ? ": " + p.refresh.last_error : ""}; last success ${time(p.refresh.last_success)}`
              : "—",
        },
        {
          label: "",
          cell: (p) =>
            h(
              "span",
              { class: "actions", "data-profile": p.profile_id },
              p.credential.type === "api_key"
                ? h("button", { type: "button", class: "small", onclick: () => rotate(p) }, "Rotate")
                : view.button("Refresh", () => post(`/auth/profiles/${encodeURIComponent(p.profile_id)}/refresh`).then(async (r) => (await profiles.reload(), r)), (r) => `${p.profile_id}: ${r.message || r.state}`, { class: "small" }),
              p.credential.type === "oauth"
                ? view.confirmButton("Revoke", () => post(`/auth/profiles/${encodeURIComponent(p.profile_id)}/revoke`).then(async (r) => (await profiles.reload(), r)), (r) => r.message || `${p.profile_id} revoked`, { class: "small danger" })
                : null,
              view.confirmButton("Delete", () => del(`/auth/profiles/${encodeURIComponent(p.profile_id)}`).then(async (r) => (await profiles.reload(), r)), () => `${p.profile_id} deleted`, { class: "small danger" }),
            ),
        },
      ],
      data,
      "No auth profiles yet: connect an API key or an OAuth account below.",
      { id: "profiles-table" },
    );
  });

  // --- OAuth connect ---------------------------------------------------------------------------
  const secretInput = h("input", { name: "client_secret", type: "password", autocomplete: "off" });
  const oauthSubmit = h("button", { type: "submit", id: "oauth-submit" }, "Start OAuth connect");
  const oauthStatus = h("div", { id: "oauth-status" });
  const oauthForm = h(
    "form",
    { id: "oauth-form", autocomplete: "off", class: "stack" },
    field("Provider", select("provider", [["openai", "OpenAI"]], "openai"), "Needs [auth.oauth.<provider>] endpoints in the config."),
    field("Client id", h("input", { name: "client_id", required: true, autocomplete: "off" })),
    field("Client secret", secretInput, "Optional (public clients use PKCE only)."),
    field("Profile name", h("input", { name: "profile_name", value: "OpenAI", autocomplete: "off" })),
    field("Profile id", h("input", { name: "profile_id", autocomplete: "off" }), "Optional; reuse one to reconnect it."),
    field("Scope", select("scope_kind", [["global", "Global"], ["agent", "One agent"]], "global")),
    field("Agent id", h("input", { name: "agent_id", autocomplete: "off" })),
    h("div", { class: "actions" }, oauthSubmit),
    oauthStatus,
  );

  let attempt = null;
  function finishOAuth(message, ok) {
    attempt = null;
    oauthStatus.replaceChildren(h("p", { class: `flash ${ok ? "ok" : "error"}` }, message));
    profiles.reload();
  }
  async function pollAttempt(provider, id, until) {
    if (attempt !== id) return;
    try {
      const s = await get(`/auth/providers/${provider}/oauth/attempts/${encodeURIComponent(id)}`);
      if (attempt !== id) return; // the callback's message got there first
      if (s.state !== "pending") return finishOAuth(s.message || s.state, s.state === "succeeded");
    } catch (err) {
      if (err.status === 404) return finishOAuth(err.message, false);
    }
    if (Date.now() < until) view.later(2000, () => pollAttempt(provider, id, until));
    else finishOAuth("The OAuth attempt expired before it completed.", false);
  }
  const onMessage = (event) => {
    if (event.origin !== window.location.origin || !event.data || event.data.type !== "palyra-oauth-complete") return;
    if (event.data.attempt_id === attempt) finishOAuth(event.data.message, event.data.ok);
  };
  window.addEventListener("message", onMessage);
  view.onDispose = () => window.removeEventListener("message", onMessage);

  oauthForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const values = formValues(oauthForm);
    secretInput.value = "";
    const body = { client_id: values.client_id, profile_name: values.profile_name || "OpenAI", scope: scopeOf(values) };
    if (values.client_secret) body.client_secret = values.client_secret;
    if (values.profile_id) body.profile_id = values.profile_id;
    const started = await view.act(oauthSubmit, () => post(`/auth/providers/${values.provider}/oauth/start`, body));
    if (!started) return;
    attempt = started.attempt_id;
    const link = h("a", { href: started.authorization_url, target: "_blank", rel: "opener" }, "open the authorization page");
    oauthStatus.replaceChildren(h("p", { class: "flash info" }, "Waiting for the provider: finish the sign-in in the new window, or ", link, "."));
    window.open(started.authorization_url, "palyra-oauth", "popup,width=600,height=760");
    pollAttempt(values.provider, attempt, started.expires_at * 1000);
  });

  return [
    h("h1", {}, "Auth"),
    profiles,
    h("div", { class: "columns" }, h("section", {}, formTitle, keyForm), h("section", {}, h("h2", {}, "Connect with OAuth"), oauthForm)),
  ];
}
