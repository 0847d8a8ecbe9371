// Providers and models: health, circuit state, latency, error rate; test connection and discover.

import { get, post } from "../api.js";
import { badge, h, table } from "../dom.js";
import { int, ms, percent, time } from "../format.js";

function probeResult(r) {
  const lines = [h("p", {}, badge(r.state, r.state === "ok" ? "healthy" : "error"), ` ${r.message} (${ms(r.latency_ms)})`)];
  if (r.discovered_model_ids) {
    lines.push(h("p", {}, `Upstream lists ${r.discovered_model_ids.length} model(s): ${r.discovered_model_ids.slice(0, 30).join(", ")}`));
    if (r.missing_upstream && r.missing_upstream.length) {
      lines.push(h("p", { class: "flash warn" }, `Configured but not listed upstream: ${r.missing_upstream.join(", ")}`));
    }
  }
  return h("div", { class: "probe-result", id: `probe-${r.provider_id}` }, lines);
}

export function render(view) {
  const results = h("div", { id: "probe-results" });

  function probe(providerId, mode) {
    return view.button(
      mode === "test" ? "Test connection" : "Discover",
      async () => {
        const r = await post(`/providers/${encodeURIComponent(providerId)}/${mode}`);
        results.replaceChildren(h("h3", {}, `${providerId}: ${r.mode.replace("_", " ")}`), probeResult(r));
        await providers.reload();
        return r;
      },
      undefined,
      { class: "small", "data-provider": providerId, "data-action": mode },
    );
  }

  const providers = view.section("Providers", async () => {
    const { data } = await get("/providers");
    return table(
      [
        { label: "Provider", cell: (p) => h("span", {}, h("strong", {}, p.provider_id), h("br"), h("small", { class: "muted" }, `${p.kind} · ${p.base_url || ""}`)) },
        { label: "Health", cell: (p) => badge(p.health) },
        {
          label: "Circuit",
          cell: (p) => h("span", {}, badge(p.circuit.state), h("br"), h("small", { class: "muted" }, `${p.circuit.consecutive_failures}/${p.circuit.failure_threshold} failures`)),
        },
        { label: "Latency p50 / p95", cell: (p) => `${ms(p.metrics.latency_ms_p50)} / ${ms(p.metrics.latency_ms_p95)}` },
        { label: "Error rate", cell: (p) => percent(p.metrics.error_rate) },
        { label: "Requests", cell: (p) => `${int(p.metrics.requests)} (${int(p.metrics.errors)} errors)` },
        { label: "In flight", cell: (p) => `${p.concurrency.in_flight}${p.concurrency.limit ? " / " + p.concurrency.limit : ""}` },
        { label: "Credential", cell: (p) => (p.credential_configured ? p.credential_source : badge("missing", "error")) },
        {
          label: "Last error",
          cell: (p) => (p.metrics.last_error ? `${time(p.metrics.last_error.at)}: ${p.metrics.last_error.message}` : "—"),
        },
        { label: "", cell: (p) => h("span", { class: "actions" }, probe(p.provider_id, "test"), probe(p.provider_id, "discover")) },
      ],
      data,
      "No providers are configured.",
      { id: "providers-table" },
    );
  });

  const models = view.section("Models", async () => {
    const { data } = await get("/models");
    return table(
      [
        { label: "Model", cell: (m) => h("span", {}, m.model_id, m.default ? badge("default", "ok") : null) },
        { label: "Provider", cell: (m) => m.provider_id },
        { label: "Upstream model", cell: (m) => m.upstream_model },
        { label: "Role", cell: (m) => m.role },
        {
          label: "Capabilities",
          cell: (m) => Object.entries(m.capabilities).filter(([, v]) => v === true).map(([k]) => k).join(", ") || "—",
        },
        { label: "Context", cell: (m) => int(m.capabilities.max_context_tokens) },
        { label: "Tiers (cost / latency)", cell: (m) => `${m.cost_tier ?? "—"} / ${m.latency_tier ?? "—"}` },
      ],
      data,
      "No models are configured.",
    );
  });

  return [h("h1", {}, "Providers and models"), providers, results, models];
}
