"""Path traversal and zip-slip in skill packages, as a property: whatever an archive names its entries,
nothing is written outside the staging folder. The fixed cases (``../``, absolute paths, drive letters,
symlinks, zip bombs) are in tests/skills; here the names are generated."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from palyra.skills.package import PackageLimits, UnsafePackage, safe_relpath, stage_package

LIMITS = PackageLimits()
SEGMENT = st.one_of(
    st.sampled_from(["..", ".", "", "~", "a", "b.txt", "C:", "..\\x", "%2e%2e", "\u2025", "..."]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=6),
)
NAMES = st.lists(SEGMENT, min_size=1, max_size=6).map("/".join) | st.text(max_size=40)


@settings(max_examples=500, deadline=None)
@given(name=NAMES)
def test_safe_relpath_never_leaves_the_root(name: str) -> None:
    try:
        rel = safe_relpath(name, LIMITS)
    except UnsafePackage:
        return
    path = PurePosixPath(rel)
    assert not path.is_absolute()
    assert ".." not in path.parts and "" not in rel.split("/")
    assert "\\" not in rel and not any(ord(c) < 32 for c in rel)
    root = Path("/srv/skill-root")
    assert os.path.normpath(root / rel).startswith(str(root) + os.sep)


def _zip(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, name in enumerate(names):
            zf.writestr(zipfile.ZipInfo(name), f"file {i}")
    return buf.getvalue()


def _tar(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for i, name in enumerate(names):
            data = f"file {i}".encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(NAMES.filter(lambda n: n and "\x00" not in n), min_size=1, max_size=4, unique=True),
    kind=st.sampled_from(["zip", "tar.gz"]),
)
def test_staging_any_archive_writes_only_inside(tmp_path: Path, names: list[str], kind: str) -> None:
    case = Path(tempfile.mkdtemp(dir=tmp_path))
    archive = case / f"pkg.{kind}"
    archive.write_bytes(_zip(names) if kind == "zip" else _tar(names))
    out = case / "out"
    before = set(tmp_path.rglob("*"))
    with contextlib.suppress(UnsafePackage):
        stage_package(archive, out, LIMITS)
    written = set(tmp_path.rglob("*")) - before
    for path in written:
        assert path.resolve().is_relative_to(out.resolve()), f"{path} escaped the staging folder"


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "a/../../x", "C:/x", "a\\..\\..\\x"])
def test_known_escapes_are_refused(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "pkg.zip"
    archive.write_bytes(_zip([name]))
    with pytest.raises(UnsafePackage):
        stage_package(archive, tmp_path / "out", LIMITS)
    assert not (tmp_path.parent / "passwd").exists()
