"""OpenAI request bodies: validated with pydantic, then turned into the internal provider types.

Validation errors become 400s whose ``param`` names the offending field (``messages[2].content``) and
whose ``code`` follows OpenAI's (``missing_required_parameter``, ``invalid_type``, ``invalid_value``).
Parameters this gateway does not model are kept and passed to OpenAI-compatible upstreams unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from palyra.errors import InvalidRequest
from palyra.json_limits import INT64_MAX, INT64_MIN, json_problem
from palyra.providers.types import (
    ChatRequest,
    ContentPart,
    EmbeddingRequest,
    ImagePart,
    Message,
    ResponseFormat,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolSpec,
)

MAX_EMBEDDING_INPUTS = 2048
# Token counts and seeds must stay numbers every layer can store and send on (orjson, SQL, upstreams).
MAX_TOKENS_VALUE = 2**31 - 1


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Shape limits on a /v1 JSON body, on top of its size in bytes (``server.max_json_body_bytes``).

    ``max_json_depth`` counts the body's own object as 1. The JSON parser refuses anything deeper than
    about 200 levels on its own; the limit here keeps free-form values (tool parameters, JSON schemas,
    pass-through fields) well below what upstream parsers and the recursive code after us accept.
    """

    max_json_depth: int = 64
    max_messages: int = 2048
    max_tools: int = 256


DEFAULT_LIMITS = RequestLimits()


class _Loose(BaseModel):
    """Message-level objects: extra fields from clients (``annotations``, ``audio``…) are tolerated."""

    model_config = ConfigDict(extra="ignore")


class TextPartIn(_Loose):
    type: Literal["text"]
    text: str


class ImageUrlIn(_Loose):
    url: Annotated[str, Field(min_length=1)]
    detail: Literal["auto", "low", "high"] | None = None


class ImagePartIn(_Loose):
    type: Literal["image_url"]
    image_url: ImageUrlIn


class RefusalPartIn(_Loose):
    type: Literal["refusal"]
    refusal: str


UserPart = Annotated[TextPartIn | ImagePartIn, Field(discriminator="type")]
AssistantPart = Annotated[TextPartIn | RefusalPartIn, Field(discriminator="type")]


class FunctionCallIn(_Loose):
    name: Annotated[str, Field(min_length=1)]
    arguments: str


class ToolCallIn(_Loose):
    id: Annotated[str, Field(min_length=1)]
    type: Literal["function"] = "function"
    function: FunctionCallIn


class SystemMessageIn(_Loose):
    role: Literal["system"]
    content: str | list[TextPartIn]
    name: str | None = None


class DeveloperMessageIn(_Loose):
    role: Literal["developer"]
    content: str | list[TextPartIn]
    name: str | None = None


class UserMessageIn(_Loose):
    role: Literal["user"]
    content: str | list[UserPart]
    name: str | None = None


class AssistantMessageIn(_Loose):
    role: Literal["assistant"]
    content: str | list[AssistantPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallIn] | None = None


class ToolMessageIn(_Loose):
    role: Literal["tool"]
    content: str | list[TextPartIn]
    tool_call_id: Annotated[str, Field(min_length=1)]


MessageIn = Annotated[
    SystemMessageIn | DeveloperMessageIn | UserMessageIn | AssistantMessageIn | ToolMessageIn,
    Field(discriminator="role"),
]


class FunctionDefIn(_Loose):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(_Loose):
    type: Literal["function"]
    function: FunctionDefIn


class NamedFunctionIn(_Loose):
    name: str


class NamedToolChoiceIn(_Loose):
    type: Literal["function"]
    function: NamedFunctionIn


class JsonSchemaIn(_Loose):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatTextIn(_Loose):
    type: Literal["text"]


class ResponseFormatJsonObjectIn(_Loose):
    type: Literal["json_object"]


class ResponseFormatJsonSchemaIn(_Loose):
    type: Literal["json_schema"]
    json_schema: JsonSchemaIn


ResponseFormatIn = Annotated[
    ResponseFormatTextIn | ResponseFormatJsonObjectIn | ResponseFormatJsonSchemaIn,
    Field(discriminator="type"),
]


class StreamOptionsIn(_Loose):
    include_usage: bool | None = None


class ChatCompletionIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[MessageIn], Field(min_length=1)]
    stream: StrictBool | None = None
    stream_options: StreamOptionsIn | None = None
    tools: list[ToolIn] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoiceIn | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: ResponseFormatIn | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_VALUE)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_VALUE)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None


class EmbeddingIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
        | Annotated[list[int], Field(min_length=1)]
        | Annotated[list[list[int]], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None


def _param(loc: tuple[int | str, ...], body: Any) -> str:
    """The client's own path to the field. Pydantic adds union branch and tag names to the location;
    walking it along the JSON the client sent keeps only real keys (and a missing key at the end)."""
    out = ""
    node = body
    for i, part in enumerate(loc):
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            out += f"[{part}]"
            node = node[part]
        elif isinstance(part, str) and isinstance(node, dict) and part in node:
            out += ("." if out else "") + part
            node = node[part]
        elif i == len(loc) - 1 and isinstance(part, str) and isinstance(node, dict):
            out += ("." if out else "") + part
    return out


def invalid_request_from(
    exc: ValidationError, raw: bytes, limits: RequestLimits = DEFAULT_LIMITS
) -> InvalidRequest:
    errors = exc.errors()
    # A union reports one error per branch; the first names the field well enough.
    err = errors[0]
    kind = err["type"]
    if kind == "json_invalid":
        if "recursion limit" in str(err.get("msg", "")):
            return _too_deep(None, limits)
        return InvalidRequest(
            "the request body is not valid JSON; send a JSON object with Content-Type: application/json",
            code="invalid_json",
        )
    body = _loads_leniently(raw)
    param = _param(tuple(err["loc"]), body)
    if kind == "missing":
        return InvalidRequest(
            f"missing required parameter: '{param}'", code="missing_required_parameter", param=param
        )
    if kind in {"union_tag_invalid", "union_tag_not_found", "literal_error"}:
        return InvalidRequest(
            f"invalid value for '{param}': {err['msg']}", code="invalid_value", param=param or None
        )
    if kind.endswith("_type") or kind in {"model_attributes_type", "dict_type", "list_type"}:
        return InvalidRequest(f"invalid type for '{param}': {err['msg']}", code="invalid_type", param=param)
    return InvalidRequest(f"invalid value for '{param}': {err['msg']}", code="invalid_value", param=param)


def _loads_leniently(raw: bytes) -> Any:
    """The body as the validator saw it. Its parser also takes NaN and Infinity, which orjson refuses;
    the standard library takes them too, so the error can still name the field."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _too_deep(param: str | None, limits: RequestLimits) -> InvalidRequest:
    where = f"'{param}'" if param else "the request body"
    return InvalidRequest(
        f"{where} is nested too deeply; JSON nesting is limited to {limits.max_json_depth} levels",
        code="json_too_deep",
        param=param,
    )


def _check_free_form(value: Any, base_depth: int, param: str, limits: RequestLimits) -> None:
    problem = json_problem(value, base_depth=base_depth, max_depth=limits.max_json_depth)
    if problem == "too_deep":
        raise _too_deep(param, limits)
    if problem == "integer_out_of_range":
        raise InvalidRequest(
            f"'{param}' holds an integer outside the 64-bit range", code="invalid_value", param=param
        )


def _check_count(items: list[Any] | None, limit: int, param: str) -> None:
    if items is not None and len(items) > limit:
        raise InvalidRequest(
            f"invalid '{param}': array too long; expected at most {limit} items, got {len(items)}",
            code="array_above_max_length",
            param=param,
        )


def _check_chat_shape(parsed: ChatCompletionIn, limits: RequestLimits) -> None:
    _check_count(parsed.messages, limits.max_messages, "messages")
    _check_count(parsed.tools, limits.max_tools, "tools")
    # Depth of the container each free-form value sits in: the body is 1, tools[i].function is 4.
    for i, tool in enumerate(parsed.tools or ()):
        if tool.function.parameters is not None:
            _check_free_form(tool.function.parameters, 4, f"tools[{i}].function.parameters", limits)
    if isinstance(parsed.response_format, ResponseFormatJsonSchemaIn):
        schema = parsed.response_format.json_schema.schema_
        if schema is not None:
            _check_free_form(schema, 3, "response_format.json_schema.schema", limits)
    for key, value in (parsed.model_extra or {}).items():
        _check_free_form(value, 1, key, limits)


def _text_parts(content: str | list[TextPartIn]) -> list[ContentPart]:
    if isinstance(content, str):
        return [TextPart(content)]
    return [TextPart(p.text) for p in content]


def _message(
    m: SystemMessageIn | DeveloperMessageIn | UserMessageIn | AssistantMessageIn | ToolMessageIn,
) -> Message:
    if isinstance(m, UserMessageIn):
        if isinstance(m.content, str):
            parts: list[ContentPart] = [TextPart(m.content)]
        else:
            parts = [
                TextPart(p.text)
                if isinstance(p, TextPartIn)
                else ImagePart(p.image_url.url, p.image_url.detail)
                for p in m.content
            ]
        return Message("user", parts, name=m.name)
    if isinstance(m, AssistantMessageIn):
        content: list[ContentPart] | None
        if m.content is None:
            content = None
        elif isinstance(m.content, str):
            content = [TextPart(m.content)]
        else:
            content = [TextPart(p.text) for p in m.content if isinstance(p, TextPartIn)]
        calls = [ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ()]
        return Message("assistant", content, name=m.name, tool_calls=calls)
    if isinstance(m, ToolMessageIn):
        return Message("tool", _text_parts(m.content), tool_call_id=m.tool_call_id)
    return Message(m.role, _text_parts(m.content), name=m.name)


def parse_chat_request(body: bytes, limits: RequestLimits = DEFAULT_LIMITS) -> ChatRequest:
    try:
        parsed = ChatCompletionIn.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request_from(exc, body, limits) from None
    _check_chat_shape(parsed, limits)
    if parsed.n is not None and parsed.n > 1:
        raise InvalidRequest(
            "n > 1 is not supported by this gateway; send n separate requests",
            code="unsupported_value",
            param="n",
        )
    tool_names = set()
    tools = []
    for t in parsed.tools or ():
        tool_names.add(t.function.name)
        tools.append(
            ToolSpec(t.function.name, t.function.description, t.function.parameters, t.function.strict)
        )
    choice: ToolChoice | None = None
    if isinstance(parsed.tool_choice, NamedToolChoiceIn):
        name = parsed.tool_choice.function.name
        if name not in tool_names:
            raise InvalidRequest(
                f"tool_choice names function '{name}', which is not in tools",
                code="invalid_value",
                param="tool_choice",
            )
        choice = ToolChoice("function", name)
    elif parsed.tool_choice is not None:
        if parsed.tool_choice == "required" and not tools:
            raise InvalidRequest(
                "tool_choice 'required' needs at least one tool in tools",
                code="invalid_value",
                param="tool_choice",
            )
        choice = ToolChoice(parsed.tool_choice)
    rf: ResponseFormat | None = None
    if isinstance(parsed.response_format, ResponseFormatJsonSchemaIn):
        js = parsed.response_format.json_schema
        rf = ResponseFormat("json_schema", js.schema_, js.name, js.strict)
    elif parsed.response_format is not None:
        rf = ResponseFormat(parsed.response_format.type)
    stop = [parsed.stop] if isinstance(parsed.stop, str) else list(parsed.stop or ())
    stream = bool(parsed.stream)
    return ChatRequest(
        model=parsed.model,
        messages=[_message(m) for m in parsed.messages],
        stream=stream,
        include_usage=bool(stream and parsed.stream_options and parsed.stream_options.include_usage),
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parsed.parallel_tool_calls,
        response_format=rf,
        max_tokens=parsed.max_completion_tokens or parsed.max_tokens,
        max_tokens_field="max_completion_tokens" if parsed.max_completion_tokens else "max_tokens",
        temperature=parsed.temperature,
        top_p=parsed.top_p,
        stop=stop,
        seed=parsed.seed,
        n=parsed.n,
        user=parsed.user,
        metadata=parsed.metadata,
        extra=dict(parsed.model_extra or {}),
    )


def parse_embedding_request(body: bytes, limits: RequestLimits = DEFAULT_LIMITS) -> EmbeddingRequest:
    try:
        parsed = EmbeddingIn.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request_from(exc, body, limits) from None
    for key, value in (parsed.model_extra or {}).items():
        _check_free_form(value, 1, key, limits)
    raw = parsed.input
    inputs: list[str]
    if isinstance(raw, str):
        inputs = [raw]
    elif raw and isinstance(raw[0], int):
        inputs = [" ".join(f"t{t}" for t in raw)]
    elif raw and isinstance(raw[0], list):
        inputs = [" ".join(f"t{t}" for t in ids) for ids in raw]
    else:
        inputs = list(raw)  # type: ignore[arg-type]
    for i, text in enumerate(inputs):
        if not text.strip():
            raise InvalidRequest(
                f"input[{i}] is empty; every input must contain text", code="invalid_value", param="input"
            )
    return EmbeddingRequest(
        model=parsed.model,
        inputs=inputs,
        dimensions=parsed.dimensions,
        encoding_format=parsed.encoding_format,
        user=parsed.user,
        extra=dict(parsed.model_extra or {}),
    )
