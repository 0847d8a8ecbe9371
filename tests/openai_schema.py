"""Validate JSON instances against component schemas of the official OpenAI OpenAPI spec.

Test-support helper: ``validate("CreateChatCompletionResponse", body)`` raises ``AssertionError``
with a readable list of problems when ``body`` does not conform to
``#/components/schemas/CreateChatCompletionResponse``.

The spec lives at ``<repo>/../shared/spec/openai-openapi.yaml`` (override with the environment
variable ``PALYRA_OPENAI_SPEC``). Parsing the ~3 MB YAML is slow, so the parsed document is cached
as JSON in ``<repo>/.pytest_cache/openai-openapi-<sha256 of the yaml bytes>.json``; when that
directory is not writable we simply parse every time.

Dialect handling:

* OpenAPI 3.1.x schemas are JSON Schema 2020-12, validated with ``Draft202012Validator``.
* OpenAPI 3.0.x schemas are (an extended subset of) draft-04/05, validated with ``Draft4Validator``.
* ``nullable: true`` (the OpenAPI 3.0 idiom) is translated to "null is also allowed" in both
  cases: the OpenAI 3.1 document still carries ~100 leftover ``nullable`` keywords (e.g. the
  streaming ``finish_reason`` and ``usage``), which a plain 2020-12 validator would silently ignore
  and thereby reject the ``null`` values the API really sends.
* ``$ref: '#/components/schemas/X'`` is resolved through a ``referencing`` registry holding the
  (converted) ``components`` section as one resource.
* In 3.1 documents, leftover draft-4 style ``exclusiveMinimum: true`` (with ``minimum``) is rewritten
  to the 2020-12 numeric form, since 2020-12 would read ``true`` as the number 1.
* OpenAPI-only keywords (``discriminator``, ``x-*``, ``example``, ``deprecated``, ...) are left in
  place and ignored by jsonschema; ``format`` is not asserted. No strictness is added: in
  particular ``additionalProperties`` is never introduced.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator, Draft202012Validator
from jsonschema.exceptions import ValidationError, relevance
from jsonschema.protocols import Validator
from referencing import Registry
from referencing.jsonschema import DRAFT4, DRAFT202012

__all__ = [
    "component_schema",
    "errors",
    "is_valid",
    "openapi_version",
    "spec_path",
    "validate",
]

_REPO_ROOT = Path(__file__).resolve().parents[1]
_DEFAULT_SPEC = _REPO_ROOT.parent / "shared" / "spec" / "openai-openapi.yaml"
_CACHE_DIR = _REPO_ROOT / ".pytest_cache"
_CACHE_PREFIX = "openai-openapi-"
_BASE_URI = "urn:palyra:openai-openapi"
_SCHEMA_PREFIX = "#/components/schemas/"

_MAX_ERRORS = 50
_MAX_CONTEXT = 4
_MAX_MESSAGE = 400
_MAX_INSTANCE = 1500


# --------------------------------------------------------------------------------------------
# Loading (with JSON cache)
# --------------------------------------------------------------------------------------------

_BaseLoader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _SpecLoader(_BaseLoader):  # type: ignore[misc]
    """Safe loader that keeps YAML timestamps as strings, so every value is JSON-native."""


_SpecLoader.add_constructor("tag:yaml.org,2002:timestamp", _SpecLoader.construct_yaml_str)


def spec_path() -> Path:
    """Location of the OpenAI OpenAPI YAML (``PALYRA_OPENAI_SPEC`` overrides the default)."""
    override = os.environ.get("PALYRA_OPENAI_SPEC")
    return Path(override).expanduser() if override else _DEFAULT_SPEC


def _read_cache(path: Path) -> Any | None:
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _write_cache(cache_dir: Path, name: str, text: str) -> None:
    """Atomically write ``text`` to ``cache_dir/name``; silently give up if that is impossible."""
    try:
        if not cache_dir.is_dir():
            cache_dir.mkdir(parents=True, exist_ok=True)
            # Mirror pytest: keep the cache dir out of git even if we created it first.
            gitignore = cache_dir / ".gitignore"
            if not gitignore.exists():
                gitignore.write_text("# Created by palyra tests/openai_schema.py\n*\n", encoding="utf-8")
        fd, tmp = tempfile.mkstemp(prefix=".tmp-" + _CACHE_PREFIX, suffix=".json", dir=cache_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, cache_dir / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # Drop caches of older spec versions.
        for stale in cache_dir.glob(_CACHE_PREFIX + "*.json"):
            if stale.name != name:
                stale.unlink(missing_ok=True)
    except OSError:
        pass


@functools.cache
def _load_document() -> dict[str, Any]:
    path = spec_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"OpenAI OpenAPI spec not found at {path} (set PALYRA_OPENAI_SPEC to its location)"
        ) from None
    cache_name = f"{_CACHE_PREFIX}{hashlib.sha256(raw).hexdigest()}.json"
    doc = _read_cache(_CACHE_DIR / cache_name)
    if doc is None:
        parsed = yaml.load(raw, Loader=_SpecLoader)  # safe loader subclass
        # Round-trip through JSON so a fresh parse and a cache hit yield identical data
        # (e.g. non-string mapping keys become strings in both cases).
        text = json.dumps(parsed, ensure_ascii=False, separators=(",", ":"), default=str)
        _write_cache(_CACHE_DIR, cache_name, text)
        doc = json.loads(text)
    if not isinstance(doc, dict) or "components" not in doc:
        raise ValueError(f"{path} does not look like an OpenAPI document")
    return doc


def openapi_version() -> str:
    """The ``openapi`` field of the spec, e.g. ``"3.1.0"``."""
    return str(_load_document().get("openapi", ""))


# --------------------------------------------------------------------------------------------
# OpenAPI schema object -> JSON Schema
# --------------------------------------------------------------------------------------------

# Keywords whose value is data (or OpenAPI metadata), not a subschema: copied verbatim.
_DATA_KEYWORDS = frozenset(
    {
        "enum",
        "const",
        "default",
        "example",
        "examples",
        "required",
        "discriminator",
        "externalDocs",
        "xml",
        "description",
        "title",
        "format",
        "pattern",
        "type",
    }
)
# Keywords whose value maps arbitrary names to subschemas (the names are not keywords).
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
# Applicators that may reject null themselves; a nullable schema using them must be wrapped.
_NULL_REJECTING = frozenset({"$ref", "allOf", "anyOf", "oneOf", "not", "enum", "const"})


def _convert(node: Any, draft4: bool) -> Any:
    """Return a copy of an OpenAPI schema tree with ``nullable`` turned into JSON Schema.

    For 2020-12 (``draft4=False``) leftover draft-4 boolean ``exclusiveMinimum``/``exclusiveMaximum``
    (``minimum: 0, exclusiveMinimum: true``) are rewritten to the numeric form as well.
    """
    if isinstance(node, list):
        return [_convert(item, draft4) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "nullable":
            continue
        if key in _DATA_KEYWORDS or key.startswith("x-"):
            out[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _convert(sub, draft4) for name, sub in value.items()}
        else:
            out[key] = _convert(value, draft4)
    if not draft4:
        for keyword, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            flag = out.get(keyword)
            if isinstance(flag, bool):
                del out[keyword]
                if flag and bound in out:
                    out[keyword] = out.pop(bound)
    if node.get("nullable") is True:
        typ = out.get("type")
        if typ is not None and not (_NULL_REJECTING & out.keys()):
            types = list(typ) if isinstance(typ, list) else [typ]
            if "null" not in types:
                types.append("null")
            out["type"] = types
        elif typ != "null":
            out = {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _registry_and_dialect() -> tuple[Registry[Any], type[Validator]]:
    doc = _load_document()
    version = str(doc.get("openapi", ""))
    if version.startswith("3.1"):
        specification, validator_cls = DRAFT202012, Draft202012Validator
    elif version.startswith("3.0"):
        specification, validator_cls = DRAFT4, Draft4Validator
    else:
        raise ValueError(f"unsupported OpenAPI version {version!r} in {spec_path()}")
    schemas = doc["components"].get("schemas", {})
    draft4 = validator_cls is Draft4Validator
    converted = {name: _convert(schema, draft4) for name, schema in schemas.items()}
    components = {"components": {"schemas": converted}}
    resource = specification.create_resource(components)
    registry: Registry[Any] = Registry().with_resource(_BASE_URI, resource)
    return registry, validator_cls


def component_schema(schema_name: str) -> dict[str, Any]:
    """The converted JSON Schema for ``#/components/schemas/<schema_name>`` (refs unresolved)."""
    registry, _ = _registry_and_dialect()
    schemas = registry.contents(_BASE_URI)["components"]["schemas"]
    try:
        schema: dict[str, Any] = schemas[schema_name]
    except KeyError:
        raise KeyError(f"no component schema named {schema_name!r} in {spec_path()}") from None
    return schema


@functools.cache
def _validator(schema_name: str) -> Validator:
    component_schema(schema_name)  # raise a clear KeyError for unknown names
    registry, validator_cls = _registry_and_dialect()
    root = {"$ref": f"{_BASE_URI}{_SCHEMA_PREFIX}{schema_name}"}
    return validator_cls(root, registry=registry)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(error: ValidationError, indent: str) -> Iterator[str]:
    schema_path = "/".join(str(p) for p in error.schema_path)
    yield f"{indent}- at {error.json_path}: {_shorten(error.message, _MAX_MESSAGE)}  [schema: {schema_path}]"
    if error.context:
        # anyOf/oneOf failures: show why the most relevant alternatives did not match.
        for sub in sorted(error.context, key=relevance, reverse=True)[:_MAX_CONTEXT]:
            sub_path = "/".join(str(p) for p in sub.relative_schema_path)
            yield (
                f"{indent}    | at {sub.json_path}: {_shorten(sub.message, _MAX_MESSAGE)}"
                f"  [alternative: {sub_path}]"
            )


def errors(schema_name: str, instance: object) -> list[str]:
    """Human-readable validation errors (empty list when ``instance`` is valid)."""
    found = sorted(
        _validator(schema_name).iter_errors(instance),
        key=lambda e: (list(map(str, e.absolute_path)), list(map(str, e.schema_path))),
    )
    lines: list[str] = []
    for error in found[:_MAX_ERRORS]:
        lines.extend(_describe(error, "  "))
    if len(found) > _MAX_ERRORS:
        lines.append(f"  ... and {len(found) - _MAX_ERRORS} more")
    return lines


def is_valid(schema_name: str, instance: object) -> bool:
    return bool(_validator(schema_name).is_valid(instance))


def validate(schema_name: str, instance: object) -> None:
    """Assert that ``instance`` conforms to ``#/components/schemas/<schema_name>``."""
    problems = errors(schema_name, instance)
    if not problems:
        return
    try:
        shown = json.dumps(instance, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        shown = repr(instance)
    raise AssertionError(
        f"instance does not conform to OpenAI schema {schema_name!r} "
        f"(OpenAPI {openapi_version()}, {spec_path().name}):\n"
        + "\n".join(problems)
        + f"\ninstance: {_shorten(shown, _MAX_INSTANCE)}"
    )
