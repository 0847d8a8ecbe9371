"""Prometheus metrics, held in a registry owned by the app (no module-level globals)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "palyra_requests_total",
            "Requests on the /v1 surface by endpoint, model, provider and HTTP status.",
            ["endpoint", "model", "provider", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "palyra_request_duration_seconds",
            "Wall time of /v1 requests.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.overhead = Histogram(
            "palyra_overhead_seconds",
            "Time spent in Palyra itself (request time minus upstream time).",
            ["endpoint"],
            buckets=_OVERHEAD_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "palyra_tokens_total",
            "Tokens by model and kind (prompt, completion, cached).",
            ["model", "kind"],
            registry=self.registry,
        )
        self.cost = Counter(
            "palyra_cost_usd_total", "Cost in USD by model.", ["model"], registry=self.registry
        )
        self.budget_blocks = Counter(
            "palyra_budget_blocks_total", "Requests refused by a budget hard limit.", registry=self.registry
        )
        self.pricing_missing = Counter(
            "palyra_pricing_missing_total",
            "Runs on a model with no price (cost recorded as null).",
            ["model"],
            registry=self.registry,
        )
        self.upstream_attempts = Counter(
            "palyra_upstream_attempts_total",
            "Upstream attempts by provider and outcome.",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.journal_pending = Gauge(
            "palyra_journal_pending_records", "Run records waiting to be written.", registry=self.registry
        )
        self.journal_written = Gauge(
            "palyra_journal_written_records", "Run records written since start.", registry=self.registry
        )
        self.journal_dropped = Gauge(
            "palyra_journal_dropped_records",
            "Run records dropped because the buffer was full.",
            registry=self.registry,
        )

        self.provider_health = Gauge(
            "palyra_provider_health",
            "1 for the provider's current health state (healthy, degraded, cooling_down, unavailable).",
            ["provider", "state"],
            registry=self.registry,
        )
        self.circuit_state = Gauge(
            "palyra_provider_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["provider"],
            registry=self.registry,
        )
        self.provider_in_flight = Gauge(
            "palyra_provider_in_flight",
            "Requests in flight to the provider.",
            ["provider"],
            registry=self.registry,
        )

        # Label children looked up once per label set: ``labels()`` takes a lock and builds a key on
        # every call, a few microseconds each, five times per request otherwise.
        self._request_children: dict[tuple[str, str, str, str], tuple[Any, Any, Any]] = {}
        self._token_children: dict[str, tuple[Any, ...]] = {}
        self._attempt_children: dict[tuple[str, str], Any] = {}

    def request_finished(
        self,
        endpoint: str,
        model: str,
        provider: str,
        status: str,
        elapsed_s: float,
        overhead_s: float,
        usage: tuple[int, int, int] | None,
    ) -> None:
        """Every per-request metric at once; ``usage`` is (prompt, completion, cached) tokens."""
        key = (endpoint, model, provider, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(*key),
                self.latency.labels(endpoint),
                self.overhead.labels(endpoint),
            )
            self._request_children[key] = children
        count, latency, overhead = children
        count.inc()
        latency.observe(elapsed_s)
        overhead.observe(overhead_s)
        if usage is not None and model:
            tokens = self._token_children.get(model)
            if tokens is None:
                tokens = tuple(self.tokens.labels(model, kind) for kind in ("prompt", "completion", "cached"))
                self._token_children[model] = tokens
            for child, amount in zip(tokens, usage, strict=True):
                if amount:
                    child.inc(amount)

    def attempt(self, provider: str, outcome: str) -> None:
        child = self._attempt_children.get((provider, outcome))
        if child is None:
            child = self._attempt_children[(provider, outcome)] = self.upstream_attempts.labels(
                provider, outcome
            )
        child.inc()

    def observe_provider(self, status: dict[str, Any]) -> None:
        pid = status["provider_id"]
        for state in ("healthy", "degraded", "cooling_down", "unavailable"):
            self.provider_health.labels(pid, state).set(1 if status["health"] == state else 0)
        self.circuit_state.labels(pid).set(
            {"closed": 0, "half_open": 1, "open": 2}[status["circuit"]["state"]]
        )
        self.provider_in_flight.labels(pid).set(status["concurrency"]["in_flight"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
