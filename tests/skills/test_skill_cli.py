"""`palyra skills …` end to end on SQLite: keygen, sign, trust, install, list, audit, release."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from skillkit import skill_db, write_skill
from typer.testing import CliRunner

from palyra.skills.cli import skills_app


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for var in ("PALYRA_CONFIG", "PALYRA_STATE_DIR", "PALYRA_DATABASE_URL", "PALYRA_DATABASE_SCHEMA"):
        monkeypatch.delenv(var, raising=False)
    state = tmp_path / "state"
    state.mkdir()

    async def create_tables() -> None:
        async with skill_db("sqlite", state):
            pass

    asyncio.run(create_tables())
    path = tmp_path / "palyra.toml"
    path.write_text(f'[server]\nstate_dir = "{state}"\n')
    yield path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(skills_app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def test_publisher_and_operator_flow(config: Path, tmp_path: Path) -> None:
    key = tmp_path / "keys" / "acme"
    code, out, _ = run("keygen", str(key))
    assert code == 0, out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.read_text().startswith("-----BEGIN PRIVATE KEY")
    assert key.with_name("acme.pub").read_text().startswith("-----BEGIN PUBLIC KEY")
    assert run("keygen", str(key))[0] == 1  # never overwrites a key by accident

    pkg = write_skill(tmp_path / "pkg")
    code, out, _ = run("sign", str(pkg), "--key", str(key), "--publisher", "acme")
    assert code == 0 and "signed 3 file(s)" in " ".join(out.split())

    cfg = ("--config", str(config))
    code, _, err = run("install", str(pkg), *cfg)
    assert code == 1 and "untrusted" in err and "palyra skills trust add" in err

    code, out, _ = run("trust", "add", "acme", str(key.with_name("acme.pub")), *cfg, "--json")
    assert code == 0 and json.loads(out)["publisher"] == "acme"
    code, out, _ = run("trust", "list", *cfg, "--json")
    assert [k["publisher"] for k in json.loads(out)] == ["acme"]

    code, out, _ = run("install", str(pkg), *cfg, "--json")
    assert code == 0, out
    assert json.loads(out)["status"] == "active"
    code, _, err = run("install", str(pkg), *cfg)
    assert code == 1 and "already installed" in err
    assert run("install", str(pkg), "--force", *cfg)[0] == 0

    code, out, _ = run("list", *cfg, "--json")
    assert [(s["skill_id"], s["version"], s["current"]) for s in json.loads(out)] == [
        ("lookup", "1.0.0", True)
    ]
    code, out, _ = run("list", *cfg)
    assert code == 0 and "lookup" in out

    code, out, _ = run("audit", *cfg, "--json")
    assert code == 0 and json.loads(out)[0]["action"] == "passed"

    installed = config.parent / "state" / "skills" / "lookup" / "1.0.0" / "main.py"
    os.chmod(installed, 0o644)
    installed.write_text("tampered\n")
    code, out, _ = run("audit", "lookup", *cfg, "--json")
    assert code == 1
    (result,) = json.loads(out)
    assert result["action"] == "quarantined" and result["reasons"][0].startswith("modified: main.py")

    code, _, err = run("release", "lookup", *cfg)
    assert code == 1 and "still fails verification" in err
    installed.write_text("print('hello')\n")
    code, out, _ = run("release", "lookup", *cfg)
    assert code == 0 and "lookup@1.0.0 is active" in out

    code, out, _ = run("trust", "remove", "acme", *cfg)
    assert code == 0 and "removed 1 key(s)" in out
    code, out, _ = run("audit", *cfg)
    assert code == 1 and "quarantined" in out and "untrusted" in " ".join(out.split())


def test_reasons_are_listed_and_markup_is_not_interpreted(config: Path, tmp_path: Path) -> None:
    pkg = write_skill(tmp_path / "pkg", network=["*"])
    code, _, err = run("install", str(pkg), "--config", str(config))
    assert code == 1
    assert "unsigned: no signature.json" in err and "'*': wildcard network access is not allowed" in err

    (pkg / "skill.toml").write_text("[skill]\nid = 'x'\n[hooks]\n")
    code, _, err = run("sign", str(pkg), "--key", str(tmp_path / "missing"), "--publisher", "acme")
    assert code == 1 and "cannot read" in err
    key = tmp_path / "k"
    run("keygen", str(key))
    code, _, err = run("sign", str(pkg), "--key", str(key), "--publisher", "acme")
    assert code == 1 and "[skill], [capabilities]" in err
