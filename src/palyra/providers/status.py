"""Provider status for operators: health, circuit, load and recent metrics; and the connection probe."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from palyra.providers.failures import FailureClass, UpstreamAttemptError
from palyra.providers.registry import ProviderRegistry, ProviderRuntime
from palyra.providers.resilience import CircuitState

PROBE_TIMEOUT_S = 10.0


async def provider_status(runtime: ProviderRuntime, registry: ProviderRegistry) -> dict[str, Any]:
    cfg = runtime.config
    credential = runtime.credential
    has_credential = await credential.configured()
    await runtime.breaker.refresh()
    circuit = runtime.breaker.state
    return {
        "provider_id": cfg.provider_id,
        "kind": cfg.kind,
        "display_name": cfg.display_name,
        "base_url": cfg.base_url,
        "credential_source": credential.describe(),
        "credential_configured": has_credential,
        "health": runtime.health.state(
            circuit_open=circuit is CircuitState.OPEN, has_credential=has_credential
        ),
        "circuit": {
            "state": circuit.value,
            "consecutive_failures": runtime.breaker.consecutive_failures,
            "failure_threshold": runtime.breaker.failure_threshold,
            "cooldown_ms": int(runtime.breaker.cooldown_s * 1000),
            "retry_after_ms": int(runtime.breaker.retry_after_s() * 1000)
            if circuit is CircuitState.OPEN
            else 0,
        },
        "concurrency": {"in_flight": runtime.limit.in_flight, "limit": runtime.limit.limit},
        "metrics": runtime.health.snapshot(),
        "models": [m for m, e in registry.models.items() if e.config.provider_id == cfg.provider_id],
    }


async def probe(runtime: ProviderRuntime, registry: ProviderRegistry, *, discover: bool) -> dict[str, Any]:
    """Ask the upstream for its model list: proves the address, the credential and the API shape."""
    cfg = runtime.config
    configured = sorted(
        e.target.upstream_model for e in registry.models.values() if e.config.provider_id == cfg.provider_id
    )
    started = time.perf_counter()
    out: dict[str, Any] = {
        "provider_id": cfg.provider_id,
        "kind": cfg.kind,
        "mode": "discover" if discover else "test_connection",
        "checked_at": time.time(),
        "configured_model_ids": configured,
    }
    try:
        found = await asyncio.wait_for(runtime.provider.list_models(), PROBE_TIMEOUT_S)
    except TimeoutError:
        out.update(state="degraded", message=f"no answer within {PROBE_TIMEOUT_S:g} s")
    except UpstreamAttemptError as err:
        state = {
            FailureClass.AUTH_INVALID: "auth_failed",
            FailureClass.PERMISSION_DENIED: "auth_failed",
            FailureClass.RATE_LIMITED: "rate_limited",
            FailureClass.TIMEOUT: "degraded",
            FailureClass.MALFORMED: "unexpected_response",
        }.get(err.failure_class, "endpoint_failed")
        out.update(state=state, message=err.message, status=err.status)
    else:
        out.update(state="ok", message=f"provider connection succeeded; {len(found)} model(s) listed")
        if discover:
            out["discovered_model_ids"] = sorted(found)
            out["missing_upstream"] = (
                sorted(set(configured) - set(found)) if cfg.kind != "deterministic" else []
            )
    out["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return out
