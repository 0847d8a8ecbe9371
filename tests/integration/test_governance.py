"""Governance through /v1: cost per run from the price table, race-safe budgets, smart routing in each
mode, and the usage reports. Fake upstreams answer; the official SDK or raw HTTP drives the daemon."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import openai
import pytest

from palyra.governance.pricing import PriceTable
from palyra.governance.tokenizer import count_chat_tokens
from palyra.surface.openai_requests import parse_chat_request

from conftest import Daemon, start_daemon
from fakes import FakeAnthropic, FakeOpenAI, Reply
from test_lifecycle import cli

MINI_IN, MINI_OUT, MINI_CACHED = 0.15, 0.60, 0.075  # gpt-4o-mini, USD per million tokens


class Ups:
    def __init__(self) -> None:
        self.oa = FakeOpenAI().start()
        self.an = FakeAnthropic().start()
        self.hook = FakeOpenAI().start()  # receives budget webhooks

    def stop(self) -> None:
        for f in (self.oa, self.an, self.hook):
            f.stop()


@pytest.fixture(scope="module")
def ups() -> Iterator[Ups]:
    u = Ups()
    yield u
    u.stop()


def provider(pid: str, kind: str, url: str) -> str:
    return (
        f'[[model_provider.providers]]\nprovider_id = "{pid}"\nkind = "{kind}"\nbase_url = "{url}"\n'
        "allow_private_base_url = true\nmax_retries = 0\nmax_concurrency = 256\n"
    )


def model(mid: str, pid: str, extra: str = "") -> str:
    return f'[[model_provider.models]]\nmodel_id = "{mid}"\nprovider_id = "{pid}"\n{extra}\n'


def budget(
    pid: str, scope: str, metric: str, hard: float | None, soft: float | None = None, extra: str = ""
) -> str:
    out = f'[[budgets]]\npolicy_id = "{pid}"\nscope = "{scope}"\nmetric = "{metric}"\nwindow = "day"\n'
    if hard is not None:
        out += f"hard_limit = {hard}\n"
    if soft is not None:
        out += f"soft_limit = {soft}\n"
    return out + extra + "\n"


BODY = {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "hi there"}]}


def estimate_usd(body: dict[str, Any]) -> float:
    req = parse_chat_request(json.dumps(body).encode())
    prompt = count_chat_tokens(req.messages, req.tools, model=req.model)
    return (prompt * MINI_IN + body["max_tokens"] * MINI_OUT) / 1e6


def estimate_tokens(body: dict[str, Any]) -> int:
    req = parse_chat_request(json.dumps(body).encode())
    return count_chat_tokens(req.messages, req.tools, model=req.model) + int(body["max_tokens"])


@pytest.fixture(scope="module")
def gw(ups: Ups, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    room = 10
    config = (
        "[model_provider]\nfailover_enabled = false\n"
        + provider("openai", "openai_compatible", ups.oa.base_url)
        + provider("anthropic", "anthropic", ups.an.base_url)
        + model("gpt-4o-mini", "openai", 'cost_tier = "low"')
        + model("gpt-4o", "openai", 'cost_tier = "standard"')
        + model("o3", "openai", 'cost_tier = "premium"\ncapabilities = { max_context_tokens = 200000 }')
        + model("mystery", "openai", 'upstream_model = "mystery-1"')
        + model("claude", "anthropic", 'upstream_model = "claude-sonnet-4-5"\ncost_tier = "premium"')
        + budget("usd-room-10", "agent:bud-usd", "usd", estimate_usd(BODY) * room * 1.0001)
        + budget("usd-stream", "agent:bud-stream", "usd", estimate_usd(BODY) * room * 1.0001)
        + budget("tok-room-10", "agent:bud-tok", "tokens", estimate_tokens(BODY) * room)
        + budget(
            "soft",
            "agent:soft",
            "usd",
            None,
            soft=estimate_usd(BODY) * 1.5,
            extra=f'webhook_url = "{ups.hook.url}/hooks/budget"\n',
        )
        + '[routing]\nmode = "suggest"\n'
        + '[[pricing]]\nmodel_id = "gpt-4o"\ninput_per_million_usd = 2.5\noutput_per_million_usd = 10.0\n'
    )
    d = start_daemon(tmp_path_factory.mktemp("gov"), config=config)
    yield d
    d.stop()


@pytest.fixture(autouse=True)
def _fresh(ups: Ups) -> None:
    for f in (ups.oa, ups.an, ups.hook):
        f.reset_state()


@pytest.fixture(scope="module")
def token(gw: Daemon) -> str:
    value, _ = gw.create_token(name="gov", scopes=["*"])
    return value


def post(gw: Daemon, token: str, body: dict[str, Any], agent: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if agent:
        headers["X-Palyra-Agent"] = agent
    return httpx.post(gw.v1 + "/chat/completions", json=body, headers=headers, timeout=30, **kw)


# --- cost ----------------------------------------------------------------------------------------


def test_cost_with_cached_tokens_openai(gw: Daemon, token: str, ups: Ups) -> None:
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 200,
        "total_tokens": 1200,
        "prompt_tokens_details": {"cached_tokens": 400},
    }
    reply = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": usage,
    }
    ups.oa.script("/v1/chat/completions", Reply(json=reply))
    r = post(gw, token, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    expected = (600 * MINI_IN + 400 * MINI_CACHED + 200 * MINI_OUT) / 1e6
    assert float(r.headers["x-palyra-cost-usd"]) == pytest.approx(expected, rel=1e-6)
    run = gw.run(r.headers["x-request-id"])
    assert run["cost_usd"] == pytest.approx(expected, rel=1e-6) and run["cached_tokens"] == 400
    assert run["pricing_missing"] is False


def test_cost_with_cache_tokens_anthropic(gw: Daemon, token: str, ups: Ups) -> None:
    body = {
        "id": "m1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 100,
            "output_tokens": 50,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 200,
        },
    }
    ups.an.script("/v1/messages", Reply(json=body))
    r = post(gw, token, {"model": "claude", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 1300
    from datetime import UTC, datetime

    from palyra.governance.pricing import cost
    from palyra.providers.types import Usage

    price = PriceTable.from_config().price_for("claude-sonnet-4-5", datetime.now(UTC))
    assert price is not None
    expected = cost(price, Usage(1300, 50, 1000, 200))
    assert float(r.headers["x-palyra-cost-usd"]) == pytest.approx(expected, rel=1e-6)
    # cache reads are far cheaper than fresh input: the same tokens uncached would cost more
    assert expected < (1300 * price.input_per_million_usd + 50 * price.output_per_million_usd) / 1e6


def test_unpriced_model_is_null_never_zero(gw: Daemon, token: str) -> None:
    r = post(gw, token, {"model": "mystery", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    assert r.headers["x-palyra-cost-usd"] == "n/a"
    run = gw.run(r.headers["x-request-id"])
    assert run["cost_usd"] is None and run["pricing_missing"] is True
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with gw.admin() as c:
            found = [a for a in c.get("/alerts").json()["data"] if a["kind"] == "pricing_missing"]
        if found:
            break
        time.sleep(0.05)
    assert found and found[0]["subject"] == "mystery"
    assert 'palyra_pricing_missing_total{model="mystery"}' in httpx.get(gw.base_url + "/metrics").text


def test_stream_cost_in_final_chunk(gw: Daemon, token: str) -> None:
    sdk = gw.client(token)
    chunks = list(
        sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "a b c"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    final = chunks[-1]
    assert final.usage is not None and final.model_extra
    u = final.usage
    assert final.model_extra["palyra"]["cost_usd"] == pytest.approx(
        (u.prompt_tokens * MINI_IN + u.completion_tokens * MINI_OUT) / 1e6, rel=1e-6
    )
    plain = list(
        sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a"}], stream=True
        )
    )
    assert plain[-1].model_extra and plain[-1].model_extra["palyra"]["cost_usd"] > 0


# --- budgets -------------------------------------------------------------------------------------


async def hammer(gw: Daemon, token: str, agent: str, n: int = 100, stream: bool = False) -> list[int]:
    body = {**BODY, "stream": stream}
    limits = httpx.Limits(max_connections=n + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one() -> int:
            headers = {"Authorization": f"Bearer {token}", "X-Palyra-Agent": agent}
            r = await client.post(gw.v1 + "/chat/completions", json=body, headers=headers)
            await r.aread()
            if r.status_code == 429:
                err = r.json()["error"]
                assert err["type"] == "insufficient_quota" and err["code"] == "budget_exceeded"
            return r.status_code

        return list(await asyncio.gather(*(one() for _ in range(n))))


@pytest.mark.parametrize(
    ("agent", "policy", "stream"),
    [
        ("bud-usd", "usd-room-10", False),
        ("bud-tok", "tok-room-10", False),
        ("bud-stream", "usd-stream", True),
    ],
)
async def test_hard_limit_holds_under_concurrency(
    gw: Daemon, token: str, ups: Ups, agent: str, policy: str, stream: bool
) -> None:
    ups.oa.reset_state()
    # Slow replies keep every admitted request in flight, so all 100 compete for the same room.
    ups.oa.script("/v1/chat/completions", *[Reply(delay_s=0.8) for _ in range(100)])
    statuses = await hammer(gw, token, agent, stream=stream)
    assert statuses.count(200) == 10 and statuses.count(429) == 90
    assert len(ups.oa.requests_for("/v1/chat/completions")) == 10
    with gw.admin() as c:
        status = next(b for b in c.get("/budgets").json()["data"] if b["policy_id"] == policy)
    assert status["spent"] <= status["hard_limit"] and status["reserved"] == 0


def test_soft_limit_header_alert_and_webhook(gw: Daemon, token: str, ups: Ups) -> None:
    big = {"prompt_tokens": 1000, "completion_tokens": 10, "total_tokens": 1010}
    ups.oa.script(
        "/v1/chat/completions",
        Reply(
            json={
                "id": "c",
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-4o-mini",
                "usage": big,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
                ],
            }
        ),
    )
    first = post(gw, token, BODY, agent="soft")  # below the soft limit, but spends more than its estimate
    assert first.headers["x-palyra-budget-status"] == "ok"
    second = post(gw, token, BODY, agent="soft")
    assert second.status_code == 200 and second.headers["x-palyra-budget-status"] == "soft_limit"
    post(gw, token, BODY, agent="soft")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not ups.hook.requests_for("/hooks/budget"):
        time.sleep(0.05)
    hooks = ups.hook.requests_for("/hooks/budget")
    assert (
        len(hooks) == 1
        and hooks[0].json["kind"] == "budget_soft_limit"
        and hooks[0].json["subject"] == "soft"
    )
    with gw.admin() as c:
        alerts = [a for a in c.get("/alerts").json()["data"] if a["kind"] == "budget_soft_limit"]
    assert len(alerts) == 1  # deduplicated per policy and window


def test_admin_budgets_and_cli(gw: Daemon, token: str) -> None:
    with gw.admin() as c:
        made = c.post(
            "/budgets",
            json={
                "policy_id": "tiny",
                "scope": "agent:tiny",
                "metric": "tokens",
                "window": "rolling_24h",
                "hard_limit": 5,
            },
        )
        assert made.status_code == 201, made.text
        assert c.post("/budgets", json={"policy_id": "usd-room-10", "hard_limit": 1}).status_code == 400
    r = post(gw, token, BODY, agent="tiny")
    assert r.status_code == 429 and "tiny" in r.json()["error"]["message"]
    env = {
        "PALYRA_STATE_DIR": str(gw.state_dir),
        "PALYRA_PORT": gw.base_url.rsplit(":", 1)[1],
        "PALYRA_ADMIN_TOKEN": gw.admin_token,
    }
    out = cli("budgets", "list", "--json", "--config", str(gw.config_path), env=env)
    assert out.returncode == 0, out.stderr
    assert {b["policy_id"] for b in json.loads(out.stdout)} >= {"tiny", "usd-room-10", "soft"}
    alerts = cli("budgets", "alerts", "--json", "--config", str(gw.config_path), env=env)
    assert alerts.returncode == 0 and json.loads(alerts.stdout)
    with gw.admin() as c:
        assert c.delete("/budgets/tiny").status_code == 200
    assert post(gw, token, BODY, agent="tiny").status_code == 200


# --- routing -------------------------------------------------------------------------------------

SIMPLE = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
COMPLEX = {
    "model": "gpt-4o",
    "messages": [
        {
            "role": "user",
            "content": "Background notes. "
            * 1000
            + "First, analyze the trade-offs step by step. Then prove why the design is optimal, derive the "
            "complexity, compare three alternatives and finally optimize the implementation:\n```python\n"
            "def f(x):\n    return x\n```\n",
        }
    ],
}


def test_suggest_serves_requested_and_recommends(gw: Daemon, token: str, ups: Ups) -> None:
    r = post(gw, token, SIMPLE)
    assert r.headers["x-palyra-routing-mode"] == "suggest"
    assert r.headers["x-palyra-model"] == "gpt-4o"
    assert r.headers["x-palyra-routing-recommended-model"] == "gpt-4o-mini"
    assert ups.oa.last.json["model"] == "gpt-4o"


def test_dry_run_records_the_counterfactual(gw: Daemon) -> None:
    dry, _ = gw.create_token(name="dry", scopes=["*"], routing_mode="dry_run")
    r = post(gw, dry, SIMPLE)
    assert r.headers["x-palyra-routing-mode"] == "dry_run" and r.headers["x-palyra-model"] == "gpt-4o"
    rid = r.headers["x-request-id"]
    gw.run(rid)
    with gw.admin() as c:
        body = c.get("/routing/decisions", params={"limit": 100}).json()
    row = next(d for d in body["data"] if d["request_id"] == rid)
    assert row["mode"] == "dry_run" and row["recommended_model"] == "gpt-4o-mini"
    assert row["actual_cost_usd"] > row["recommended_cost_usd"] > 0
    assert row["saving_usd"] == pytest.approx(row["actual_cost_usd"] - row["recommended_cost_usd"])
    assert row["features"]["values"]["messages"] == 1 and "score_simple" in row["reason_codes"]
    assert any(c["model_id"] == "gpt-4o-mini" for c in row["candidates"])
    assert body["totals"]["saving_usd"] > 0
    env = {"PALYRA_STATE_DIR": str(gw.state_dir)}
    out = cli("routing", "decisions", "--json", "--config", str(gw.config_path), env=env)
    assert out.returncode == 0 and json.loads(out.stdout)["totals"]["decisions"] >= 1
    table = cli("routing", "decisions", "--config", str(gw.config_path), env=env)
    assert "total saving" in table.stdout


def test_enforced_serves_the_recommendation(gw: Daemon, ups: Ups) -> None:
    enforced, _ = gw.create_token(name="enforced", scopes=["*"], routing_mode="enforced")
    r = post(gw, enforced, SIMPLE)
    assert r.headers["x-palyra-model"] == "gpt-4o-mini" and ups.oa.last.json["model"] == "gpt-4o-mini"
    run = gw.run(r.headers["x-request-id"])
    assert run["requested_model"] == "gpt-4o" and run["model_id"] == "gpt-4o-mini"
    r = post(gw, enforced, COMPLEX)
    assert r.headers["x-palyra-model"] in ("o3", "claude")


def test_auto_model_is_always_routed(gw: Daemon) -> None:
    off, _ = gw.create_token(name="off", scopes=["*"], routing_mode="off")
    r = post(gw, off, {**SIMPLE, "model": "palyra/auto"})
    assert r.status_code == 200 and r.headers["x-palyra-model"] == "gpt-4o-mini"
    r = post(gw, off, SIMPLE)
    assert r.headers["x-palyra-routing-mode"] == "n/a" and r.headers["x-palyra-model"] == "gpt-4o"
    image = {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}
    r = post(
        gw,
        off,
        {
            "model": "palyra/auto",
            "messages": [{"role": "user", "content": [image]}],
            "tools": [{"type": "function", "function": {"name": "t"}}],
        },
    )
    assert r.status_code == 200


# --- usage reports -------------------------------------------------------------------------------


def test_usage_timeline_and_export(gw: Daemon, token: str) -> None:
    post(
        gw,
        token,
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "=HYPERLINK(evil)"}],
            "metadata": {"palyra_session": "@SUM"},
        },
    )
    time.sleep(0.4)
    with gw.admin() as c:
        tl = c.get("/usage/timeline", params={"since": "1d", "bucket": "hour", "by": "model"}).json()
        assert tl["data"] and {"start", "requests", "cost_usd", "key"} <= set(tl["data"][0])
        exported = c.get("/usage/export", params={"format": "csv", "since": "1d"})
        assert exported.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert rows and all(not (r["session_id"] or "").startswith("@") for r in rows)
        assert any(r["session_id"] == "'@SUM" for r in rows)
        as_json = c.get("/usage/export", params={"format": "json", "since": "1d"}).json()
        assert len(as_json) == len(rows)
        summary = c.get("/usage/summary", params={"since": "1d", "by": "provider"}).json()["data"]
        assert {s["key"] for s in summary} >= {"openai"}
    sdk = gw.client(token)
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="palyra/auto", messages=[{"role": "user", "content": "x"}], n=2)
