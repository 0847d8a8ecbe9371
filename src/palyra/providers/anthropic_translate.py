"""OpenAI-shaped internal types ↔ Anthropic Messages API, as pure functions.

No I/O lives here: the Anthropic adapter sends ``translate_request(...).body``, hands the reply to
``translate_response`` or each parsed SSE event to a ``StreamTranslator``. Every rule below answers a
failure seen in other gateways (``reference/gateway-anchors.md`` §3); the golden files under
``tests/providers/golden/anthropic/`` pin each one.

Decisions this module makes on the client's behalf:

- System and developer messages are hoisted into the top-level ``system`` wherever they occur, in
  order; a late system message therefore applies to the whole conversation, which is the only thing
  Anthropic can express.
- Anthropic needs alternating turns that start with ``user``. Consecutive same-role turns are merged
  (never padded with blanks). When the first remaining turn is the assistant's, or nothing but system
  text remains, a user turn holding ``PLACEHOLDER_USER_TEXT`` is put first: the smallest valid
  opening, and one the model reads as "go on".
- Within a merged user turn ``tool_result`` blocks come first (Anthropic requires it); within a
  merged assistant turn text comes before ``tool_use``. A ``tool_result`` repeated for one id in a
  turn is kept once.
- A final assistant turn is a prefill to Anthropic, which rejects trailing whitespace there; the last
  text block of that turn is right-stripped.
- Whitespace-only stop sequences are rejected by Anthropic; they are dropped rather than failing a
  request that OpenAI would have served (``["\\n"]`` is common).
- Tool-call ids are sanitised to Anthropic's ``[A-Za-z0-9_-]`` alphabet, the same way on ``tool_use``
  and ``tool_result``, so ids minted by other providers still pair up; a sanitised id carries a short
  digest of the original so two ids that differ only in such characters stay distinct.
- ``pause_turn`` only happens with server tools, which this gateway never sends; it is passed through
  like any other unmapped stop reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from palyra.errors import InvalidRequest, UpstreamFailed
from palyra.json_limits import json_problem
from palyra.providers.base import ModelTarget
from palyra.providers.types import (
    ChatRequest,
    ChatResult,
    Finish,
    ImagePart,
    Message,
    ResponseFormat,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
    UsageReport,
)

JSON_TOOL_NAME = "json_response"
JSON_TOOL_DESCRIPTION = "Return the response as JSON matching this schema."
JSON_OBJECT_INSTRUCTION = "Respond with a single valid JSON object and nothing else."
PLACEHOLDER_USER_TEXT = "(continued)"
SUPPORTED_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",
}
_ERROR_CODES = {
    "overloaded_error": "overloaded",
    "rate_limit_error": "rate_limited",
    "api_error": "transient",
    "authentication_error": "auth_invalid",
    "permission_error": "permission_denied",
    "invalid_request_error": "invalid_request",
}
# Same as the default server.max_json_depth: arguments sit a few levels into the body we send.
MAX_ARGUMENTS_DEPTH = 64
_TOOL_ID_FORBIDDEN = re.compile(r"[^A-Za-z0-9_-]")
# Enough base64 to decode the 12 bytes the magic numbers below need.
_SNIFF_B64_CHARS = 16


@dataclass(frozen=True, slots=True)
class AnthropicRequest:
    body: dict[str, Any]  # JSON body for POST /v1/messages
    json_tool: str | None  # the forced tool that emulates response_format json_schema, else None


def map_stop_reason(reason: str | None) -> str:
    if reason is None:
        return "stop"
    return _STOP_REASONS.get(reason, reason)


# --- request ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Turn:
    """One Anthropic message being built. ``first`` goes before ``then`` once merged: tool results
    before the user's own content, the assistant's text before its tool uses."""

    role: Literal["user", "assistant"]
    first: list[dict[str, Any]] = field(default_factory=list)
    then: list[dict[str, Any]] = field(default_factory=list)

    def blocks(self) -> list[dict[str, Any]]:
        return self.first + self.then


def translate_request(request: ChatRequest, target: ModelTarget, *, stream: bool) -> AnthropicRequest:
    if request.n is not None and request.n > 1:
        raise InvalidRequest(
            "n > 1 is not supported by Anthropic models; send n separate requests",
            code="unsupported_value",
            param="n",
        )
    system = _system_blocks(request.messages)
    body: dict[str, Any] = {
        "model": target.upstream_model,
        "max_tokens": request.max_tokens or target.max_output_tokens,
        "messages": _messages(request.messages),
        "stream": stream,
    }

    json_tool: str | None = None
    tools = [_tool(t) for t in request.tools]
    tool_choice = _tool_choice(request) if tools else None
    rf = request.response_format
    if rf is not None and rf.type == "json_object":
        system.append(_text(JSON_OBJECT_INSTRUCTION))
    elif rf is not None and rf.type == "json_schema":
        schema = rf.schema if rf.schema is not None else {"type": "object"}
        if not tools and _is_object_schema(schema):
            json_tool = JSON_TOOL_NAME
            tools = [{"name": JSON_TOOL_NAME, "description": JSON_TOOL_DESCRIPTION, "input_schema": schema}]
            tool_choice = {"type": "tool", "name": JSON_TOOL_NAME}
        else:
            # The user's own tools must stay callable, and Anthropic tool inputs must be objects:
            # in both cases a forced tool cannot carry the answer, so the schema goes into the prompt.
            system.append(_text(_schema_instruction(rf)))

    if system:
        body["system"] = system
    if tools:
        body["tools"] = tools
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    stop = [s for s in request.stop if s.strip()]
    if stop:
        body["stop_sequences"] = stop
    if request.temperature is not None:
        body["temperature"] = min(max(request.temperature, 0.0), 1.0)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.user:
        body["metadata"] = {"user_id": request.user}
    return AnthropicRequest(body=body, json_tool=json_tool)


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _system_blocks(messages: list[Message]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if m.role in ("system", "developer"):
            blocks.extend(_text(t) for t in _texts(m, i) if t.strip())
    return blocks


def _texts(m: Message, i: int) -> list[str]:
    out: list[str] = []
    for j, part in enumerate(m.content or ()):
        if isinstance(part, ImagePart):
            raise InvalidRequest(
                f"{m.role} messages cannot carry images",
                code="invalid_value",
                param=f"messages[{i}].content[{j}]",
            )
        out.append(part.text)
    return out


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    turns: list[_Turn] = []
    for i, m in enumerate(messages):
        if m.role in ("system", "developer"):
            continue
        if m.role == "tool":
            turn = _Turn("user", first=[_tool_result(m, i)])
        elif m.role == "user":
            turn = _Turn("user", then=_user_blocks(m, i))
        else:
            turn = _Turn(
                "assistant",
                first=[_text(t) for t in _texts(m, i) if t.strip()],
                then=[_tool_use(m, i, j) for j in range(len(m.tool_calls))],
            )
        if not turn.first and not turn.then:
            continue  # Anthropic rejects empty content; the turn carried nothing else
        if turns and turns[-1].role == turn.role:
            _merge(turns[-1], turn)
        else:
            turns.append(turn)

    if not turns or turns[0].role == "assistant":
        turns.insert(0, _Turn("user", then=[_text(PLACEHOLDER_USER_TEXT)]))
    last = turns[-1]
    if last.role == "assistant" and not last.then:
        # Never blank: whitespace-only blocks were not emitted in the first place.
        last.first[-1] = _text(last.first[-1]["text"].rstrip())
    return [{"role": t.role, "content": t.blocks()} for t in turns]


def _merge(into: _Turn, turn: _Turn) -> None:
    if into.role == "user":
        seen = {b["tool_use_id"] for b in into.first}
        into.first.extend(b for b in turn.first if b["tool_use_id"] not in seen)
    else:
        into.first.extend(turn.first)
    into.then.extend(turn.then)


def tool_use_id(raw: str) -> str:
    """The Anthropic id for an OpenAI tool-call id. Ids outside ``[A-Za-z0-9_-]`` are sanitised and
    tagged with a digest of the original, so ``call.1`` and ``call:1`` stay two ids (Anthropic refuses
    a request whose tool_use ids repeat) and tool_use and tool_result still pair up."""
    safe = _TOOL_ID_FORBIDDEN.sub("_", raw)
    if safe == raw:
        return raw
    return f"{safe}_{hashlib.sha256(raw.encode()).hexdigest()[:8]}"


def _tool_result(m: Message, i: int) -> dict[str, Any]:
    if not m.tool_call_id:
        raise InvalidRequest(
            "tool messages need a tool_call_id",
            code="missing_required_parameter",
            param=f"messages[{i}].tool_call_id",
        )
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id(m.tool_call_id)}
    text = "\n".join(_texts(m, i))
    if text.strip():
        block["content"] = text  # a blank result is sent without content: empty text is rejected
    return block


def _tool_use(m: Message, i: int, j: int) -> dict[str, Any]:
    call = m.tool_calls[j]
    param = f"messages[{i}].tool_calls[{j}].function.arguments"
    try:
        args = json.loads(call.arguments) if call.arguments.strip() else {}
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"tool call arguments are not valid JSON: {exc.msg}", code="invalid_tool_arguments", param=param
        ) from None
    except RecursionError:
        args = None
        problem: str | None = "too_deep"
    else:
        problem = json_problem(args, base_depth=0, max_depth=MAX_ARGUMENTS_DEPTH)
    if problem is not None:
        # The body is encoded with orjson, which refuses deeper nesting and wider integers: say so here.
        detail = (
            f"nested deeper than {MAX_ARGUMENTS_DEPTH} levels"
            if problem == "too_deep"
            else "holding an integer outside the 64-bit range"
        )
        raise InvalidRequest(
            f"tool call arguments cannot be sent to Anthropic: {detail}",
            code="invalid_tool_arguments",
            param=param,
        )
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise InvalidRequest(
            "tool call arguments must be a JSON object", code="invalid_tool_arguments", param=param
        )
    return {"type": "tool_use", "id": tool_use_id(call.id), "name": call.name, "input": args}


def _user_blocks(m: Message, i: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(m.content or ()):
        if isinstance(part, TextPart):
            if part.text.strip():
                blocks.append(_text(part.text))
        else:
            blocks.append(_image(part.url, f"messages[{i}].content[{j}].image_url.url"))
    return blocks


def _image(url: str, param: str) -> dict[str, Any]:
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    if url.startswith("data:"):
        header, comma, data = url.partition(",")
        params = header[len("data:") :].split(";")
        if comma and params[-1].lower() == "base64" and data:
            declared = params[0].strip().lower()
            if declared == "image/jpg":
                declared = "image/jpeg"
            # The bytes decide: Anthropic rejects a media_type that does not match them.
            media_type = _sniff_image_type(data) or declared
            if media_type not in SUPPORTED_IMAGE_TYPES:
                raise InvalidRequest(
                    f"image type '{declared}' is not supported; send image/jpeg, image/png, "
                    "image/gif or image/webp",
                    code="unsupported_image_type",
                    param=param,
                )
            return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    raise InvalidRequest(
        "image_url must be an http(s) URL or a data:<image type>;base64,<data> URI",
        code="invalid_value",
        param=param,
    )


def _sniff_image_type(data: str) -> str | None:
    try:
        head = base64.b64decode(data[:_SNIFF_B64_CHARS], validate=False)
    except (binascii.Error, ValueError):
        return None
    if head.startswith(b"\x89PNG"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"GIF8"):
        return "image/gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _tool(t: ToolSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"name": t.name}
    if t.description:
        out["description"] = t.description
    out["input_schema"] = t.parameters if t.parameters is not None else {"type": "object", "properties": {}}
    return out


def _tool_choice(request: ChatRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif choice.mode == "function":
        out = {"type": "tool", "name": choice.name}
    elif choice.mode == "required":
        out = {"type": "any"}
    else:
        out = {"type": choice.mode}
    if request.parallel_tool_calls is False:
        out = out or {"type": "auto"}
        # Anthropic's "none" choice has no such field; with no tool calls there is nothing to limit.
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out


def _is_object_schema(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "object"


def _schema_instruction(rf: ResponseFormat) -> str:
    if rf.schema is None:
        return JSON_OBJECT_INSTRUCTION
    return f"{JSON_OBJECT_INSTRUCTION} It must match this JSON schema:\n{_dumps(rf.schema)}"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --- response --------------------------------------------------------------------------------------


_USAGE_FIELDS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens")


def _usage(raw: dict[str, Any] | None) -> dict[str, int]:
    raw = raw or {}
    return {k: int(raw.get(k) or 0) for k in _USAGE_FIELDS}


def _to_usage(u: dict[str, int]) -> Usage:
    # Anthropic's input_tokens exclude cache reads and writes; OpenAI's prompt_tokens include both.
    return Usage(
        prompt_tokens=u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"],
        completion_tokens=u["output_tokens"],
        cached_tokens=u["cache_read_input_tokens"],
        cache_write_tokens=u["cache_creation_input_tokens"],
        source="provider",
    )


def _finish(reason: str | None, json_tool: str | None) -> str:
    if json_tool is not None and reason == "tool_use":
        return "stop"  # the forced tool is our JSON answer, not a call for the client to run
    return map_stop_reason(reason)


def translate_response(body: dict[str, Any], *, json_tool: str | None = None) -> ChatResult:
    texts: list[str] = []
    calls: list[ToolCall] = []
    json_seen = False
    for block in body.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            args = block.get("input") or {}
            if json_tool is not None and block.get("name") == json_tool:
                # Only the first forced call is the answer; a second would make the text invalid JSON.
                if not json_seen:
                    texts.append(_dumps(args))
                    json_seen = True
            else:
                calls.append(ToolCall(str(block.get("id", "")), str(block.get("name", "")), _dumps(args)))
        # thinking and redacted_thinking blocks are dropped for now: OpenAI's chat shape has no place
        # for them, and this gateway does not enable extended thinking, so none must be sent back.
    text: str | None = "".join(texts)
    if not text and calls:
        text = None
    return ChatResult(
        text=text,
        tool_calls=calls,
        finish_reason=_finish(body.get("stop_reason"), json_tool),
        usage=_to_usage(_usage(body.get("usage"))),
        upstream_id=body.get("id"),
    )


# --- streaming -------------------------------------------------------------------------------------


class StreamTranslator:
    """Anthropic SSE events in, internal stream events out, one event at a time.

    Content blocks are addressed by Anthropic's block index; tool calls by their ordinal among tool
    blocks, which is the index OpenAI clients expect. Usage is the per-field maximum of what
    ``message_start`` and ``message_delta`` report, because both are cumulative.
    """

    def __init__(self, *, json_tool: str | None = None) -> None:
        self._json_tool = json_tool
        self._json_block: int | None = None
        self._tool_ordinal: dict[int, int] = {}
        self._usage = dict.fromkeys(_USAGE_FIELDS, 0)

    @property
    def usage(self) -> Usage:
        return _to_usage(self._usage)

    def _merge_usage(self, raw: dict[str, Any] | None) -> None:
        for k, v in _usage(raw).items():
            self._usage[k] = max(self._usage[k], v)

    def feed(self, event: str, data: dict[str, Any]) -> list[StreamEvent]:
        kind = event or str(data.get("type", ""))
        if kind == "content_block_delta":
            return self._delta(int(data.get("index", 0)), data.get("delta") or {})
        if kind == "content_block_start":
            return self._start(int(data.get("index", 0)), data.get("content_block") or {})
        if kind == "message_start":
            self._merge_usage((data.get("message") or {}).get("usage"))
            return []
        if kind == "message_delta":
            self._merge_usage(data.get("usage"))
            reason = (data.get("delta") or {}).get("stop_reason")
            return [Finish(_finish(reason, self._json_tool))]
        if kind == "message_stop":
            return [UsageReport(self.usage)]
        if kind == "error":
            err = data.get("error") or {}
            etype = str(err.get("type") or "error")
            raise UpstreamFailed(
                f"Anthropic stream error ({etype}): {err.get('message') or 'no message'}",
                code=_ERROR_CODES.get(etype, "transient"),
            )
        # ping, content_block_stop and event types added after this was written carry nothing for us.
        return []

    def _start(self, index: int, block: dict[str, Any]) -> list[StreamEvent]:
        kind = block.get("type")
        if kind == "text":
            text = block.get("text") or ""
            return [TextDelta(text)] if text else []
        if kind != "tool_use":
            return []  # thinking, redacted_thinking: not surfaced (see translate_response)
        args = block.get("input") or {}
        initial = _dumps(args) if args else ""
        if self._json_tool is not None and block.get("name") == self._json_tool:
            if self._json_block is not None:
                return []  # a second forced call is ignored, as in translate_response
            self._json_block = index
            return [TextDelta(initial)] if initial else []
        ordinal = len(self._tool_ordinal)
        self._tool_ordinal[index] = ordinal
        return [ToolCallDelta(ordinal, id=block.get("id"), name=block.get("name"), arguments=initial)]

    def _delta(self, index: int, delta: dict[str, Any]) -> list[StreamEvent]:
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text") or ""
            return [TextDelta(text)] if text else []
        if kind == "input_json_delta":
            partial = delta.get("partial_json") or ""
            if index == self._json_block:
                return [TextDelta(partial)] if partial else []
            ordinal = self._tool_ordinal.get(index)
            if ordinal is None:
                return []  # a delta for a block we ignored (a second forced JSON call)
            # An empty first partial_json is still a piece of the call; never drop it on falsiness.
            return [ToolCallDelta(ordinal, arguments=partial)]
        return []  # thinking_delta, signature_delta, citations_delta
