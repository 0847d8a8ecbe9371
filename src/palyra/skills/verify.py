"""Verifying a skill folder: files against the signed hashes, the signature against a trusted key,
the manifest against the capability policy. Used at install (on the staged copy) and by the re-audit
(on the installed copy, also against the hashes recorded at install)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from palyra.skills.manifest import (
    MANIFEST_FILE,
    ManifestError,
    SkillManifest,
    SkillPolicy,
    parse_manifest,
    policy_findings,
)
from palyra.skills.package import PackageLimits, UnsafePackage, scan_tree, sha256_file
from palyra.skills.signing import (
    SIGNATURE_FILE,
    PackageSignature,
    SignatureFormatError,
    parse_signature,
    signature_valid,
)

# (publisher, key_id) -> raw ed25519 public key
TrustedKeys = Mapping[tuple[str, str], bytes]


@dataclass(frozen=True, slots=True)
class Finding:
    """One reason a package is refused or quarantined. ``code`` is stable; ``detail`` is for people."""

    code: str
    detail: str

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


@dataclass(frozen=True, slots=True)
class VerifiedPackage:
    manifest: SkillManifest
    signature: PackageSignature
    files: dict[str, str]
    total_bytes: int


def verify_tree(
    root: Path,
    trusted: TrustedKeys,
    policy: SkillPolicy,
    limits: PackageLimits,
    *,
    expected_files: Mapping[str, str] | None = None,
) -> tuple[VerifiedPackage | None, list[Finding]]:
    """Every finding about ``root``; the package is returned only when there are none."""
    try:
        paths = scan_tree(root, limits)
    except UnsafePackage as exc:
        return None, [Finding(exc.code, exc.detail)]
    except OSError as exc:
        return None, [Finding("unreadable", f"{root}: {exc.strerror}")]
    sig_path = paths.pop(SIGNATURE_FILE, None)
    hashes = {rel: sha256_file(path) for rel, path in paths.items()}
    total = sum(path.stat().st_size for path in paths.values())
    findings: list[Finding] = []
    if expected_files is not None:
        findings += _compare(expected_files, hashes, "installed")

    signature: PackageSignature | None = None
    if sig_path is None:
        findings.append(Finding("unsigned", f"no {SIGNATURE_FILE}"))
    else:
        try:
            signature = parse_signature(sig_path.read_bytes())
        except SignatureFormatError as exc:
            findings.append(Finding("bad_signature", str(exc)))
    if signature is not None:
        if expected_files is None:
            findings += _compare(signature.files, hashes, "signed")
        elif dict(signature.files) != dict(expected_files):
            # The recorded hashes were signed at install; a different list means a swapped signature.
            findings.append(
                Finding("bad_signature", f"{SIGNATURE_FILE} lists other files than were installed")
            )

    manifest: SkillManifest | None = None
    if MANIFEST_FILE not in paths:
        findings.append(Finding("invalid_manifest", f"no {MANIFEST_FILE}"))
    else:
        try:
            manifest = parse_manifest(paths[MANIFEST_FILE].read_bytes())
        except ManifestError as exc:
            findings.append(Finding("invalid_manifest", str(exc)))

    if signature is not None and manifest is not None:
        findings += _trust_findings(signature, manifest, trusted)
    if manifest is not None:
        findings += [Finding("policy", problem) for problem in policy_findings(manifest, policy)]

    unique = list(dict.fromkeys(findings))
    if unique or manifest is None or signature is None:
        return None, unique
    return VerifiedPackage(manifest, signature, hashes, total), []


def _compare(listed: Mapping[str, str], actual: Mapping[str, str], what: str) -> list[Finding]:
    found: list[Finding] = []
    for rel in sorted(set(listed) | set(actual)):
        if rel not in actual:
            found.append(Finding("missing_file", f"{rel} is {what} but not present"))
        elif rel not in listed:
            found.append(Finding("unexpected_file", f"{rel} is present but not {what}"))
        elif listed[rel] != actual[rel]:
            found.append(Finding("modified", f"{rel} does not match its {what} sha256"))
    return found


def _trust_findings(sig: PackageSignature, manifest: SkillManifest, trusted: TrustedKeys) -> list[Finding]:
    if sig.publisher != manifest.publisher:
        return [
            Finding(
                "bad_signature",
                f"signed by {sig.publisher!r} but {MANIFEST_FILE} names publisher {manifest.publisher!r}",
            )
        ]
    key = trusted.get((sig.publisher, sig.key_id))
    if key is None:
        return [
            Finding(
                "untrusted",
                f"publisher {sig.publisher!r} key {sig.key_id} is not in the trust store "
                f"(palyra skills trust add {sig.publisher} KEY)",
            )
        ]
    if not signature_valid(sig, key):
        return [Finding("bad_signature", f"the signature does not verify with key {sig.key_id}")]
    return []
