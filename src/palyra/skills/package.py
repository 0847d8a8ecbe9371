"""Reading a skill package safely: a folder, a .zip or a .tar(.gz) copied into a staging folder.

Nothing here trusts the package. Names are checked before anything is written (no absolute paths,
no ``..``, no duplicates, nothing that lands outside the staging folder), only regular files are
copied (links, devices and FIFOs are refused), and sizes are counted on the bytes actually read, so a
header that lies about its size or a compression bomb stops at the limit instead of filling the disk.
Files are written by this module with ``open(..., "xb")``; ``extractall`` is never used.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

MiB = 1024 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class PackageLimits:
    max_files: int = 1000
    max_file_bytes: int = 8 * MiB
    max_total_bytes: int = 64 * MiB
    # Expansion allowed for archive content bigger than ``ratio_floor_bytes``; below it ratios are noise.
    max_compression_ratio: float = 100.0
    ratio_floor_bytes: int = 1 * MiB
    max_path_chars: int = 512
    max_depth: int = 16


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class UnsafePackage(Exception):
    """The package breaks a safety rule; ``code`` is one of unsafe_path, too_large, corrupt_archive."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def safe_relpath(name: str, limits: PackageLimits) -> str:
    """The normalised relative path of an entry, or ``UnsafePackage`` when it could escape the root."""
    if not name or len(name) > limits.max_path_chars:
        raise UnsafePackage("unsafe_path", f"entry name {name[:80]!r} is empty or too long")
    if "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UnsafePackage("unsafe_path", f"{name!r} contains a backslash or a control character")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafePackage("unsafe_path", f"{name!r} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePackage("unsafe_path", f"{name!r} has a '..' component")
    if not parts:
        raise UnsafePackage("unsafe_path", f"entry name {name!r} names no file")
    if len(parts) > limits.max_depth:
        raise UnsafePackage("unsafe_path", f"{name!r} is nested deeper than {limits.max_depth} folders")
    return "/".join(parts)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def scan_tree(root: Path, limits: PackageLimits) -> dict[str, Path]:
    """Every regular file under ``root`` by relative path; refuses links, special files and excess."""
    found: dict[str, Path] = {}
    total = 0
    for rel, path, st in _walk(root, "", limits, 0):
        if len(found) >= limits.max_files:
            raise UnsafePackage("too_large", f"more than {limits.max_files} files")
        if st.st_size > limits.max_file_bytes:
            raise UnsafePackage("too_large", f"{rel} is larger than {limits.max_file_bytes} bytes")
        total += st.st_size
        if total > limits.max_total_bytes:
            raise UnsafePackage("too_large", f"files total more than {limits.max_total_bytes} bytes")
        found[rel] = path
    return found


def _walk(
    folder: Path, prefix: str, limits: PackageLimits, depth: int
) -> Iterator[tuple[str, Path, os.stat_result]]:
    if depth > limits.max_depth:
        raise UnsafePackage("unsafe_path", f"{prefix} is nested deeper than {limits.max_depth} folders")
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            rel = safe_relpath(prefix + entry.name, limits)
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                yield from _walk(Path(entry.path), rel + "/", limits, depth + 1)
            elif stat.S_ISREG(st.st_mode):
                yield rel, Path(entry.path), st
            else:
                kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                raise UnsafePackage("unsafe_path", f"{rel} is {kind}")


def stage_package(source: Path, dest: Path, limits: PackageLimits) -> None:
    """Copy a folder or unpack an archive into ``dest`` (created here, must not exist)."""
    dest.mkdir(mode=0o700)
    writer = _StagingWriter(dest, limits)
    if source.is_dir():
        for rel, path, _st in _walk(source, "", limits, 0):
            # O_NOFOLLOW: a file swapped for a symlink after the walk looked at it is not followed.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as src:
                writer.write(rel, src, declared=None)
        return
    try:
        with source.open("rb") as raw:
            magic = raw.read(4)
            raw.seek(0)
            if magic.startswith(b"PK\x03\x04") or magic.startswith(b"PK\x05\x06"):
                _unzip(raw, writer, limits)
            elif magic.startswith(b"\x1f\x8b"):
                _untar(raw, writer, limits, compressed=True)
            elif _looks_like_tar(raw):
                _untar(raw, writer, limits, compressed=False)
            else:
                raise UnsafePackage("corrupt_archive", f"{source.name} is not a folder, .zip or .tar(.gz)")
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, gzip.BadGzipFile, EOFError) as exc:
        raise UnsafePackage("corrupt_archive", f"{source.name}: {type(exc).__name__}: {exc}") from None
    except NotImplementedError as exc:  # zip compression methods Python cannot read
        raise UnsafePackage("corrupt_archive", f"{source.name}: {exc}") from None


def _looks_like_tar(raw: IO[bytes]) -> bool:
    header = raw.read(512)
    raw.seek(0)
    return len(header) == 512 and header[257:262] == b"ustar"


class _StagingWriter:
    """Writes entries under the staging root, enforcing names, counts and sizes on real bytes."""

    def __init__(self, root: Path, limits: PackageLimits) -> None:
        self.root = root
        self._resolved_root = root.resolve()
        self.limits = limits
        self.total = 0
        self._files: set[str] = set()
        self._dirs: set[str] = set()

    def check_name(self, name: str, *, is_dir: bool = False) -> str:
        if is_dir and name.strip("./") == "" and ".." not in name and name[:1] != "/":
            return ""  # "./", the root itself, as `tar -C folder .` writes it
        rel = safe_relpath(name, self.limits)
        key = rel.casefold()  # case-insensitive filesystems would merge these silently
        parts = key.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in self._files:
                raise UnsafePackage("unsafe_path", f"{rel} is inside {'/'.join(parts[:i])}, which is a file")
        if is_dir:
            if key in self._files:
                raise UnsafePackage("unsafe_path", f"duplicate entry {rel}")
            self._dirs.add(key)
            return rel
        if key in self._files or key in self._dirs:
            raise UnsafePackage("unsafe_path", f"duplicate entry {rel}")
        if len(self._files) >= self.limits.max_files:
            raise UnsafePackage("too_large", f"more than {self.limits.max_files} files")
        target = (self.root / rel).resolve()
        if not target.is_relative_to(self._resolved_root):
            raise UnsafePackage("unsafe_path", f"{rel} resolves outside the package")
        return rel

    def check_size(self, rel: str, declared: int) -> None:
        if declared > self.limits.max_file_bytes:
            raise UnsafePackage("too_large", f"{rel} is larger than {self.limits.max_file_bytes} bytes")
        if self.total + declared > self.limits.max_total_bytes:
            raise UnsafePackage("too_large", f"files total more than {self.limits.max_total_bytes} bytes")

    def write(self, name: str, src: IO[bytes], declared: int | None) -> int:
        rel = self.check_name(name)
        if declared is not None:
            self.check_size(rel, declared)
        key = rel.casefold()
        self._files.add(key)
        parts = key.split("/")
        self._dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        written = 0
        try:
            dst = open(target, "xb")  # noqa: SIM115 - closed below; "x" never follows or reuses a path
        except OSError as exc:
            raise UnsafePackage("unsafe_path", f"{rel} cannot be created: {exc.strerror}") from None
        with dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > self.limits.max_file_bytes:
                    raise UnsafePackage(
                        "too_large", f"{rel} is larger than {self.limits.max_file_bytes} bytes"
                    )
                if self.total + written > self.limits.max_total_bytes:
                    raise UnsafePackage(
                        "too_large", f"files total more than {self.limits.max_total_bytes} bytes"
                    )
                dst.write(chunk)
        if declared is not None and written != declared:
            raise UnsafePackage("corrupt_archive", f"{rel}: declared {declared} bytes, found {written}")
        self.total += written
        return written


def _unzip(raw: IO[bytes], writer: _StagingWriter, limits: PackageLimits) -> None:
    with zipfile.ZipFile(raw) as zf:
        infos = zf.infolist()
        if len(infos) > 2 * limits.max_files:
            raise UnsafePackage("too_large", f"more than {limits.max_files} files")
        for info in infos:
            # Unix zips keep st_mode in the high bits; others leave the file type out (then: a file).
            kind_bits = stat.S_IFMT(info.external_attr >> 16)
            if info.is_dir():
                writer.check_name(info.filename, is_dir=True)
                continue
            safe_relpath(info.filename, limits)
            if kind_bits and kind_bits != stat.S_IFREG:
                kind = "a symlink" if kind_bits == stat.S_IFLNK else "not a regular file"
                raise UnsafePackage("unsafe_path", f"{info.filename!r} is {kind}")
            if info.flag_bits & 0x1:
                raise UnsafePackage("corrupt_archive", f"{info.filename!r} is encrypted")
            if (
                info.file_size > limits.ratio_floor_bytes
                and info.file_size > max(info.compress_size, 1) * limits.max_compression_ratio
            ):
                raise UnsafePackage(
                    "too_large", f"{info.filename!r} expands more than {limits.max_compression_ratio:g}x"
                )
            with zf.open(info) as src:
                writer.write(info.filename, src, declared=info.file_size)


def _untar(raw: IO[bytes], writer: _StagingWriter, limits: PackageLimits, *, compressed: bool) -> None:
    # Headers and padding add at most ~1.5 KiB per entry; anything past that bound is not a package.
    budget = limits.max_total_bytes + 2 * limits.max_files * 1536 + MiB
    stream: _Readable = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
    bounded = _BoundedReader(stream, budget)
    entries = 0
    with tarfile.open(fileobj=bounded, mode="r|") as tf:  # type: ignore[call-overload]
        for member in tf:
            entries += 1
            if entries > 2 * limits.max_files:
                raise UnsafePackage("too_large", f"more than {limits.max_files} files")
            if member.isdir():
                writer.check_name(member.name, is_dir=True)
                continue
            if not member.isreg() or member.issparse():
                kind = (
                    "a symlink"
                    if member.issym()
                    else "a hard link"
                    if member.islnk()
                    else "a device or FIFO"
                    if member.isdev()
                    else "not a regular file"
                )
                raise UnsafePackage("unsafe_path", f"{member.name!r} is {kind}")
            src = tf.extractfile(member)
            if src is None:
                raise UnsafePackage("corrupt_archive", f"{member.name!r} has no content")
            with src:
                writer.write(member.name, src, declared=member.size)
            consumed = max(raw.tell(), 1)
            if (
                compressed
                and writer.total > limits.ratio_floor_bytes
                and writer.total > consumed * limits.max_compression_ratio
            ):
                raise UnsafePackage(
                    "too_large", f"archive expands more than {limits.max_compression_ratio:g}x"
                )


class _BoundedReader:
    """A read-only stream that fails once more than ``limit`` bytes were read through it."""

    def __init__(self, inner: _Readable, limit: int) -> None:
        self._inner = inner
        self._left = limit

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = self._left + 1
        data = self._inner.read(min(size, self._left + 1))
        self._left -= len(data)
        if self._left < 0:
            raise UnsafePackage("too_large", "the archive expands beyond the package size limit")
        return data
