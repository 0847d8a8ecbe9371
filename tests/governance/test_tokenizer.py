"""The offline tokenizer: real BPE counts with no network, chat framing, and the chars/4 fallback."""

from __future__ import annotations

import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from palyra.governance.tokenizer import (
    IMAGE_TOKENS_CLAUDE,
    IMAGE_TOKENS_HIGH,
    IMAGE_TOKENS_LOW,
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_ROLE,
    TOKENS_PER_TOOL,
    TOOLS_BLOCK_TOKENS,
    Tokenizer,
    count_chat_tokens,
    count_tokens,
    default_tokenizer,
)
from palyra.providers.types import ImagePart, Message, TextPart, ToolCall, ToolSpec

FRAME = TOKENS_PER_MESSAGE + TOKENS_PER_ROLE


def user(*parts: TextPart | ImagePart) -> Message:
    return Message(role="user", content=list(parts))


def test_the_bundled_encoding_loads_with_no_network_and_an_empty_cache(tmp_path: Path) -> None:
    # A fresh interpreter whose sockets all fail, with tiktoken's download cache pointed at an empty
    # directory: the BPE must come from the installed package alone.
    script = (
        "import socket\n"
        "def deny(*a, **k):\n"
        "    raise OSError('network disabled by the test')\n"
        "socket.socket.connect = deny\n"
        "socket.create_connection = deny\n"
        "socket.getaddrinfo = deny\n"
        "from palyra.governance.tokenizer import Tokenizer\n"
        "t = Tokenizer()\n"
        "assert t.load(), 'the bundled encoding did not load'\n"
        "print(t.count('hello world'))\n"
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"


def test_counts_are_real_bpe_counts() -> None:
    assert default_tokenizer().exact
    assert count_tokens("hello world") == 2
    assert count_tokens("") == 0
    assert count_tokens("Hello, world! How are you today?") == 9
    # Special-token text in user content is plain text, not a control token.
    assert count_tokens("<|endoftext|>") > 1
    text = "The quick brown fox jumps over the lazy dog. " * 20
    assert count_tokens(text) == count_tokens(text)  # stable
    assert 150 <= count_tokens(text) <= 250  # about 10 tokens a sentence
    assert count_tokens(text, model="claude-sonnet-4-5") == count_tokens(text, model="gpt-4o")


def test_chat_overhead_per_message_and_reply_priming() -> None:
    hello = count_tokens("hello world")
    one = count_chat_tokens([user(TextPart("hello world"))], [])
    assert one == REPLY_PRIMING_TOKENS + FRAME + hello == 9
    two = count_chat_tokens(
        [Message(role="system", content=[TextPart("hello world")]), user(TextPart("hello world"))], []
    )
    assert two == one + FRAME + hello
    named = count_chat_tokens([Message(role="user", content=[TextPart("hello world")], name="ann")], [])
    assert named == one + 1 + count_tokens("ann")
    assert count_chat_tokens([], []) == REPLY_PRIMING_TOKENS


def test_tool_calls_and_tool_results_are_counted() -> None:
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    assistant = Message(role="assistant", content=None, tool_calls=[call])
    result = Message(role="tool", content=[TextPart("sunny")], tool_call_id="call_1")
    base = count_chat_tokens([], [])
    call_tokens = 3 + count_tokens("get_weather") + count_tokens(call.arguments)
    assert count_chat_tokens([assistant], []) == base + FRAME + call_tokens
    assert count_chat_tokens([result], []) == base + FRAME + count_tokens("sunny") + count_tokens("call_1")


def test_tools_add_their_definitions_and_a_block_overhead() -> None:
    tool = ToolSpec(
        name="get_weather",
        description="Current weather for a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    messages = [user(TextPart("weather in Paris?"))]
    without = count_chat_tokens(messages, [])
    with_tool = count_chat_tokens(messages, [tool])
    schema = '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}'
    assert with_tool - without == (
        TOOLS_BLOCK_TOKENS
        + TOKENS_PER_TOOL
        + count_tokens("get_weather")
        + count_tokens("Current weather for a city")
        + count_tokens(schema)
    )
    bare = ToolSpec(name="ping")
    assert count_chat_tokens(messages, [bare]) - without == TOOLS_BLOCK_TOKENS + TOKENS_PER_TOOL + 1


def test_images_are_a_fixed_documented_estimate() -> None:
    base = count_chat_tokens([user()], [])
    low = count_chat_tokens([user(ImagePart("https://example.test/a.png", detail="low"))], [])
    high = count_chat_tokens([user(ImagePart("https://example.test/a.png", detail="high"))], [])
    auto = count_chat_tokens([user(ImagePart("data:image/png;base64,AAAA"))], [])
    claude = count_chat_tokens([user(ImagePart("https://example.test/a.png"))], [], model="claude-haiku-4-5")
    assert (low - base, high - base, auto - base) == (IMAGE_TOKENS_LOW, IMAGE_TOKENS_HIGH, IMAGE_TOKENS_HIGH)
    assert claude - base == IMAGE_TOKENS_CLAUDE
    # The data URI is not counted as text.
    assert auto == high


def test_fallback_is_chars_over_four_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    broken = Tokenizer("no_such_encoding_anywhere")
    with caplog.at_level(logging.WARNING, logger="palyra.tokenizer"):
        assert broken.count("abcdefgh") == 2
        assert broken.count("abcdefghi") == 3
        assert broken.count("") == 0
        assert broken.count_chat([user(TextPart("abcd"))], []) == REPLY_PRIMING_TOKENS + FRAME + 1
    assert broken.exact is False
    warnings = [r for r in caplog.records if r.name == "palyra.tokenizer"]
    assert len(warnings) == 1
    assert "no_such_encoding_anywhere" in warnings[0].getMessage()


def test_performance_smoke() -> None:
    """Prints timings; asserts nothing about them (CI machines vary)."""
    tokenizer = default_tokenizer()
    tokenizer.load()
    ticket = (
        "Summarise the following support ticket and propose a reply. Customer #48213 reports that "
        "invoices generated after 2026-03-01 show VAT at 19% instead of 7% for books; their export "
        "(invoice_2026_03.csv, 1,204 rows) fails validation with `ERR_TAX_RATE_MISMATCH`. "
    )
    prompt = (ticket * 8)[:1024]
    assert len(prompt) == 1024
    messages = [
        Message(role="system", content=[TextPart("You are a helpful assistant.")]),
        user(TextPart(prompt)),
    ]
    for _ in range(200):
        tokenizer.count(prompt)
    samples_text, samples_chat = [], []
    for _ in range(5_000):
        start = time.perf_counter_ns()
        tokenizer.count(prompt)
        samples_text.append(time.perf_counter_ns() - start)
        start = time.perf_counter_ns()
        tokenizer.count_chat(messages, [])
        samples_chat.append(time.perf_counter_ns() - start)
    for label, samples in (("count_tokens 1 KB", samples_text), ("count_chat_tokens 1 KB", samples_chat)):
        q = statistics.quantiles(samples, n=100)
        p50, p99, worst = q[49] / 1000, q[98] / 1000, max(samples) / 1000
        print(f"\n{label}: p50 {p50:.1f} us, p99 {p99:.1f} us, max {worst:.1f} us")


def test_estimate_mode_never_loads_the_bpe() -> None:
    from palyra.usage_estimate import estimate_tokens

    tokenizer = Tokenizer(bpe=False)
    text = "Recommend two mystery novels set in Scotland. 日本語も少し。"
    assert tokenizer.count(text) == estimate_tokens(text)
    assert tokenizer.exact is False and tokenizer._encoding is None


@pytest.mark.parametrize(("counting", "loaded"), [("bpe", True), ("estimate", False)])
def test_server_token_counting_decides_whether_the_daemon_loads_the_bpe(
    tmp_path: Path, counting: str, loaded: bool
) -> None:
    """What the daemon maps tells: tiktoken's extension is in memory only if the BPE was loaded."""
    from conftest import start_daemon

    daemon = start_daemon(tmp_path, config=f'[server]\ntoken_counting = "{counting}"\n')
    try:
        token, _ = daemon.create_token(name="t")
        reply = daemon.client(token).chat.completions.create(
            model="deterministic", messages=[{"role": "user", "content": "count my tokens"}]
        )
        assert reply.usage is not None and reply.usage.prompt_tokens > 0
        maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
        assert ("_tiktoken" in maps) is loaded
    finally:
        daemon.stop()
