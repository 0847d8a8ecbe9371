"""`palyra skills …`: install, list, audit and release skills; manage trusted publisher keys; and, for
publishers, `keygen` and `sign`. Works on the shared database and the state dir, so it works while the
daemon runs. ``palyra.cli`` is imported inside functions: it registers this app while it loads."""

from __future__ import annotations

import base64
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from palyra.auth.audit import AuditLog
from palyra.governance.alerts import AlertLog
from palyra.skills.errors import SkillRejected
from palyra.skills.manifest import ManifestError
from palyra.skills.package import UnsafePackage
from palyra.skills.repository import PublisherKey, SkillRecord
from palyra.skills.service import AuditResult, SkillService
from palyra.skills.signing import (
    KeyFormatError,
    key_id_of,
    load_private_key,
    private_pem,
    public_pem,
    public_raw_of,
    sign_package,
)
from palyra.storage.db import Database

skills_app = typer.Typer(no_args_is_help=True, help="Signed skill packages: install, list, audit.")
trust_app = typer.Typer(no_args_is_help=True, help="Publisher keys trusted to sign skills.")
skills_app.add_typer(trust_app, name="trust")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config (or PALYRA_CONFIG).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
T = TypeVar("T")


def _fail(message: str, hint: str) -> NoReturn:
    import palyra.cli as base_cli

    base_cli.fail(escape(message), hint)  # reasons quote TOML like "[skill]", which is rich markup


def _emit_json(data: Any) -> None:
    import palyra.cli as base_cli

    base_cli._emit_json(data)


def _print(text: Any) -> None:
    import palyra.cli as base_cli

    base_cli.out.print(text, highlight=False)


def _run(config: Path | None, work: Callable[[SkillService], Awaitable[T]]) -> T:
    import palyra.cli as base_cli

    cfg = base_cli._load(config)
    root = Path(cfg.server.state_dir).expanduser().resolve() / "skills"

    async def go(db: Database) -> T:
        alerts = AlertLog(db)
        service = SkillService(db, root, AuditLog(db), alerts)
        try:
            return await work(service)
        except SkillRejected as exc:
            head = exc.message.split(": ", 1)[0] if len(exc.reasons) > 1 else exc.message
            _fail("\n  - ".join([head, *exc.reasons]) if len(exc.reasons) > 1 else head, _hint(exc))
        finally:
            await alerts.drain()

    return base_cli._run_db(cfg, go)


def _hint(exc: SkillRejected) -> str:
    codes = {r.split(":", 1)[0] for r in exc.reasons}
    if "untrusted" in codes:
        return "trust the publisher's key first: palyra skills trust add PUBLISHER KEYFILE"
    if codes & {"unsigned", "bad_signature", "missing_file", "unexpected_file", "modified"}:
        return "get a package signed by its publisher (palyra skills sign) and do not change it afterwards"
    if "policy" in codes:
        return "the skill asks for more than the capability policy allows; see docs/SKILLS.md"
    return "see docs/SKILLS.md for the package format and limits"


@skills_app.command("install")
def skills_install(
    path: Annotated[Path, typer.Argument(help="A package folder, .zip or .tar.gz.")],
    force: Annotated[bool, typer.Option("--force", help="Replace the same version if installed.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a package (signature, hashes, limits, paths, capability policy) and install it."""
    record = _run(config, lambda s: s.install(path, force=force, actor="cli"))
    if as_json:
        _emit_json(record.public())
        return
    _print(f"installed {record.ref} from {record.publisher} (key {record.key_id}) into {record.path}")


@skills_app.command("list")
def skills_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Installed skills, every version; the current one is marked."""
    records: list[SkillRecord] = _run(config, lambda s: s.list())
    if as_json:
        _emit_json([r.public() for r in records])
        return
    import palyra.cli as base_cli

    table = Table("skill", "version", "current", "publisher", "status", "files", "installed", "last audit")
    for r in records:
        table.add_row(
            r.skill_id,
            r.version,
            "*" if r.current else "",
            r.publisher,
            r.status,
            str(len(r.files)),
            base_cli._ts(r.installed_at),
            base_cli._ts(r.last_audit_at),
        )
    _print(table)


@skills_app.command("audit")
def skills_audit(
    skill_id: Annotated[
        str | None, typer.Argument(help="One skill; all current skills when omitted.")
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-verify installed skills on disk; quarantine any that fail. Exit code 1 if any is quarantined."""
    results: list[AuditResult] = _run(config, lambda s: s.audit(skill_id, actor="cli"))
    if as_json:
        _emit_json([r.public() for r in results])
    else:
        table = Table("skill", "version", "result", "reasons")
        for r in results:
            table.add_row(r.skill_id, r.version, r.action, "\n".join(r.reasons) or "-")
        _print(table if results else "no skills installed")
    if any(not r.ok for r in results):
        raise typer.Exit(1)


@skills_app.command("release")
def skills_release(skill_id: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Lift a quarantine after fixing its cause; refused while the installed copy still fails."""
    record = _run(config, lambda s: s.release(skill_id, actor="cli"))
    if as_json:
        _emit_json(record.public())
        return
    _print(f"{record.ref} is {record.status}")


@trust_app.command("add")
def trust_add(
    publisher: str,
    key: Annotated[str, typer.Argument(help="A public key file (PEM or base64), or the base64 key itself.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Trust a publisher's ed25519 public key."""
    text = _read_key_argument(key)
    added: PublisherKey = _run(config, lambda s: s.trust_add(publisher, text, actor="cli"))
    if as_json:
        _emit_json(added.public())
        return
    _print(f"trusting {added.publisher} key {added.key_id}")


@trust_app.command("list")
def trust_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Trusted publisher keys."""
    keys: list[PublisherKey] = _run(config, lambda s: s.trust_list())
    if as_json:
        _emit_json([k.public() for k in keys])
        return
    import palyra.cli as base_cli

    table = Table("publisher", "key id", "public key", "added")
    for k in keys:
        table.add_row(k.publisher, k.key_id, k.public_key, base_cli._ts(k.added_at))
    _print(table)


@trust_app.command("remove")
def trust_remove(
    publisher: str,
    key_id: Annotated[str | None, typer.Option("--key-id", help="Only this key.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Stop trusting a publisher (or one key). Its skills are quarantined by the next audit."""
    removed = _run(config, lambda s: s.trust_remove(publisher, key_id, actor="cli"))
    _print(f"removed {removed} key(s) of {publisher}; run `palyra skills audit` to re-check its skills now")


@skills_app.command("keygen")
def skills_keygen(
    out: Annotated[
        Path, typer.Argument(help="Private key file to write (PEM); OUT.pub gets the public key.")
    ],
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Create an ed25519 key pair for signing skills (publishers only)."""
    pub = out.with_name(out.name + ".pub")
    if not force and (out.exists() or pub.exists()):
        _fail(f"{out} or {pub} already exists", "pass --force to overwrite, or choose another path")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    raw = public_raw_of(key)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem(key))
    os.chmod(out, 0o600)
    pub.write_bytes(public_pem(raw))
    _print(f"wrote {out} (keep it secret) and {pub}; key id {key_id_of(raw)}")
    _print(f"operators trust it with: palyra skills trust add PUBLISHER {base64.b64encode(raw).decode()}")


@skills_app.command("sign")
def skills_sign(
    folder: Annotated[Path, typer.Argument(help="The package folder (with skill.toml).")],
    key: Annotated[Path, typer.Option("--key", help="Private key file (PEM or base64 seed).")],
    publisher: Annotated[str, typer.Option("--publisher", help="Publisher id, as in skill.toml.")],
) -> None:
    """Write FOLDER/signature.json over skill.toml and every file's SHA-256 (publishers only)."""
    if not folder.is_dir():
        _fail(f"{folder} is not a folder", "sign the unpacked package folder, then zip it if you like")
    try:
        private = load_private_key(key.read_bytes())
        sig = sign_package(folder, private, publisher)
    except OSError as exc:
        _fail(f"cannot read {exc.filename}: {exc.strerror}", "check the path and its permissions")
    except (KeyFormatError, ManifestError, UnsafePackage) as exc:
        _fail(str(exc), "see docs/SKILLS.md for the package format")
    _print(f"signed {len(sig.files)} file(s) of {folder} as {publisher} (key {sig.key_id})")


def _read_key_argument(value: str) -> str:
    path = Path(value).expanduser()
    if len(value) < 4096 and path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            _fail(f"cannot read {path}: {exc}", "pass a PEM or base64 public key file, or the base64 key")
    return value
