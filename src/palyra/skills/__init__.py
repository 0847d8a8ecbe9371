"""Signed skill packages: install after verification, re-audit on disk, quarantine what drifts.

Package format (docs/SKILLS.md has the long version). A package is a folder, a ``.zip`` or a
``.tar``/``.tar.gz`` holding:

``skill.toml``::

    [skill]
    id = "web_search"            # lowercase identifier, [a-z][a-z0-9_-]{0,63}
    version = "1.2.0"            # MAJOR.MINOR.PATCH with an optional -pre/+build suffix
    publisher = "acme"           # lowercase identifier, [a-z][a-z0-9_.-]{0,63}
    description = "Search the web"

    [capabilities]               # unknown keys are rejected
    network = ["api.example.com", "*.example.org"]   # hostnames; "*.domain.tld" at most, never "*"
    filesystem = ["data"]        # relative roots inside the skill's sandbox
    max_memory_mb = 256          # required, 1..4096
    max_runtime_s = 30           # required, 1..3600
    env = ["EXAMPLE_API_KEY"]    # variable names; PALYRA_* is never exposed

the skill's files, and ``signature.json``::

    {"publisher": "acme", "key_id": "<16 hex: sha256(raw public key)[:16]>", "algorithm": "ed25519",
     "files": {"<relative path>": "<sha256 hex>", ...},   # every file but signature.json
     "signature": "<base64 ed25519 signature>"}

The signature covers ``canonical_payload(files)``: the compact, key-sorted ASCII JSON of
``{"manifest_sha256": files["skill.toml"], "files": files}``. ``sign_package`` writes it.

Limits: 1,000 files, 8 MiB per file, 64 MiB in all; archives may not hold absolute paths, ``..``,
links, devices, duplicate names or entries that expand more than 100x.
"""

from palyra.skills.errors import SkillConflict, SkillNotFound, SkillQuarantined, SkillRejected
from palyra.skills.manifest import Capabilities, ManifestError, SkillManifest, SkillPolicy, parse_manifest
from palyra.skills.package import PackageLimits, UnsafePackage
from palyra.skills.repository import PublisherKey, SkillRecord
from palyra.skills.service import AuditResult, SkillArtifact, SkillService, run_reaudit, summarize
from palyra.skills.signing import (
    PackageSignature,
    canonical_payload,
    key_id_of,
    load_private_key,
    load_public_key,
    sign_package,
)
from palyra.skills.verify import Finding

__all__ = [
    "AuditResult",
    "Capabilities",
    "Finding",
    "ManifestError",
    "PackageLimits",
    "PackageSignature",
    "PublisherKey",
    "SkillArtifact",
    "SkillConflict",
    "SkillManifest",
    "SkillNotFound",
    "SkillPolicy",
    "SkillQuarantined",
    "SkillRecord",
    "SkillRejected",
    "SkillService",
    "UnsafePackage",
    "canonical_payload",
    "key_id_of",
    "load_private_key",
    "load_public_key",
    "parse_manifest",
    "run_reaudit",
    "sign_package",
    "summarize",
]
