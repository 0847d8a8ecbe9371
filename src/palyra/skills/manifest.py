"""``skill.toml``: parsing (shape and types) and the capability policy (what a skill may ask for)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import Any

MANIFEST_FILE = "skill.toml"
MAX_MANIFEST_BYTES = 64 * 1024

SKILL_ID = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
PUBLISHER_ID = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
VERSION = re.compile(r"^\d{1,9}\.\d{1,9}\.\d{1,9}(?:[-+][0-9A-Za-z.+-]{1,40})?$")
# Names the admin API routes under /skills/ itself; a skill called "trust" would be unreachable.
RESERVED_IDS = frozenset({"trust", "audit"})

_SKILL_KEYS = frozenset({"id", "version", "publisher", "description"})
_CAPABILITY_KEYS = frozenset({"network", "filesystem", "max_memory_mb", "max_runtime_s", "env"})
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")


class ManifestError(ValueError):
    """The manifest is not a valid ``skill.toml``; the message names the key."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    network: tuple[str, ...] = ()
    filesystem: tuple[str, ...] = ()
    max_memory_mb: int | None = None
    max_runtime_s: int | None = None
    env: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "network": list(self.network),
            "filesystem": list(self.filesystem),
            "max_memory_mb": self.max_memory_mb,
            "max_runtime_s": self.max_runtime_s,
            "env": list(self.env),
        }


@dataclass(frozen=True, slots=True)
class SkillManifest:
    skill_id: str
    version: str
    publisher: str
    description: str
    capabilities: Capabilities


@dataclass(frozen=True, slots=True)
class SkillPolicy:
    """What an installed skill may request. Limits must be declared and stay under these caps."""

    max_memory_mb: int = 4096
    max_runtime_s: int = 3600
    max_network_hosts: int = 32
    max_filesystem_roots: int = 16
    max_env_vars: int = 32
    # The daemon's own secrets (admin token, vault key) live in PALYRA_* variables.
    forbidden_env_prefixes: tuple[str, ...] = ("PALYRA_",)


def parse_manifest(data: bytes) -> SkillManifest:
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{MANIFEST_FILE} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ManifestError(f"{MANIFEST_FILE} is not valid UTF-8 TOML: {exc}") from None
    unknown = set(raw) - {"skill", "capabilities"}
    if unknown:
        raise ManifestError(f"unknown table or key {sorted(unknown)[0]!r}; allowed: [skill], [capabilities]")
    skill = _table(raw, "skill", _SKILL_KEYS)
    caps = _table(raw, "capabilities", _CAPABILITY_KEYS)
    skill_id = _text(skill, "skill.id", SKILL_ID, "a lowercase identifier like 'web_search'")
    if skill_id in RESERVED_IDS:
        raise ManifestError(f"skill.id {skill_id!r} is reserved; choose another id")
    return SkillManifest(
        skill_id=skill_id,
        version=_text(skill, "skill.version", VERSION, "a version like '1.2.0'"),
        publisher=_text(skill, "skill.publisher", PUBLISHER_ID, "a lowercase identifier like 'acme'"),
        description=_description(skill),
        capabilities=Capabilities(
            network=_strings(caps, "network"),
            filesystem=_strings(caps, "filesystem"),
            max_memory_mb=_int(caps, "max_memory_mb"),
            max_runtime_s=_int(caps, "max_runtime_s"),
            env=_strings(caps, "env"),
        ),
    )


def policy_findings(manifest: SkillManifest, policy: SkillPolicy) -> list[str]:
    """Every way the requested capabilities break the policy; empty when the skill may be installed."""
    caps = manifest.capabilities
    found: list[str] = []
    if len(caps.network) > policy.max_network_hosts:
        found.append(f"capabilities.network lists more than {policy.max_network_hosts} hosts")
    found += [problem for host in caps.network if (problem := _host_problem(host))]
    if len(caps.filesystem) > policy.max_filesystem_roots:
        found.append(f"capabilities.filesystem lists more than {policy.max_filesystem_roots} roots")
    found += [problem for root in caps.filesystem if (problem := _root_problem(root))]
    for name, value, cap in (
        ("max_memory_mb", caps.max_memory_mb, policy.max_memory_mb),
        ("max_runtime_s", caps.max_runtime_s, policy.max_runtime_s),
    ):
        if value is None:
            found.append(f"capabilities.{name} must be declared")
        elif not 1 <= value <= cap:
            found.append(f"capabilities.{name} = {value} is outside 1..{cap}")
    if len(caps.env) > policy.max_env_vars:
        found.append(f"capabilities.env lists more than {policy.max_env_vars} variables")
    for name in caps.env:
        if not _ENV_NAME.match(name):
            found.append(f"capabilities.env {name!r} is not an environment variable name")
        elif name.startswith(policy.forbidden_env_prefixes):
            found.append(f"capabilities.env {name!r}: the daemon's own variables are never exposed")
    return found


def _host_problem(pattern: str) -> str | None:
    if "*" in pattern:
        rest = pattern[2:] if pattern.startswith("*.") else ""
        # "*.example.com" narrows to one registrable domain; "*", "*.*" and "*.com" do not.
        if "*" in rest or not _HOST.match(rest) or rest.count(".") < 1:
            return f"capabilities.network {pattern!r}: wildcard network access is not allowed"
        return None
    if not _HOST.match(pattern):
        return f"capabilities.network {pattern!r} is not a lowercase hostname (no scheme, port or path)"
    return None


def _root_problem(root: str) -> str | None:
    parts = root.replace("\\", "/").split("/")
    if not root or root.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", root):
        return f"capabilities.filesystem {root!r} must be a relative path"
    if ".." in parts or "\x00" in root or len(root) > 256:
        return f"capabilities.filesystem {root!r} must stay inside the skill's sandbox (no '..')"
    return None


def _table(raw: dict[str, Any], name: str, allowed: frozenset[str]) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ManifestError(f"{name} must be a table ([{name}])")
    unknown = set(value) - allowed
    if unknown:
        raise ManifestError(f"unknown key {name}.{sorted(unknown)[0]}; allowed: {', '.join(sorted(allowed))}")
    return value


def _text(table: dict[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str:
    value = table.get(key.split(".")[1])
    if not isinstance(value, str) or not pattern.match(value):
        raise ManifestError(f"{key} must be {what}")
    return value


def _description(table: dict[str, Any]) -> str:
    value = table.get("description", "")
    if not isinstance(value, str) or len(value) > 2000:
        raise ManifestError("skill.description must be a string of at most 2000 characters")
    return value


def _strings(table: dict[str, Any], key: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError(f"capabilities.{key} must be a list of strings")
    return tuple(value)


def _int(table: dict[str, Any], key: str) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise ManifestError(f"capabilities.{key} must be an integer")
    return value
