"""Fake upstream servers (OpenAI / Anthropic) for tests; see ``fakes.upstream``."""

from .upstream import (
    FakeAnthropic,
    FakeOpenAI,
    FakeUpstream,
    Recorded,
    Reply,
    UploadedFile,
    encode_sse_item,
    parse_sse,
)

__all__ = [
    "FakeAnthropic",
    "FakeOpenAI",
    "FakeUpstream",
    "Recorded",
    "Reply",
    "UploadedFile",
    "encode_sse_item",
    "parse_sse",
]
