"""Run records on local disk until the database has them, so a crash loses none.

The request path copies each finished run into the active segment, a file mapped into memory
(``MAP_SHARED``): once copied, the record is in the kernel's page cache and survives the process being
killed (SIGKILL, OOM, a crash); only a machine crash before the kernel writes it back can lose it.
A memory copy, not a ``write(2)``: no system call on the request path, so the event loop never gives
up the GIL to the database thread there (~1 µs). Segments are allocated on disk up front
(``posix_fallocate``), so a full disk is an error at allocation, never a SIGBUS mid-copy. The journal writer
*seals* the active segment when it takes a batch (a fresh one takes new records), and deletes sealed
segments once their records are committed. At start, segments left by a dead process are read back
and inserted, skipping records the database already has, so a record is never lost and never counted
twice.

A segment is ``run-<pid>-<n>.jsonl`` in ``<state_dir>/journal``, one JSON object per line, followed
by zero bytes up to its allocated size. Each open segment holds an exclusive ``flock`` for as long
as its process may still write or delete it, so a second process started on the same state
directory never replays a live process's records.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from palyra.journal import RunRecord

log = logging.getLogger("palyra.journal")

SEGMENT_BYTES = 4 * 1024 * 1024


@dataclass
class _Segment:
    path: Path
    fd: int
    map: mmap.mmap | None = None
    size: int = 0
    used: int = 0
    records: int = 0


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._seq = 0
        self._active: _Segment | None = None
        self._sealed: list[_Segment] = []

    def append(self, run: RunRecord) -> None:
        """Keep one record durably against a process crash. Raises ``OSError`` (disk full…)."""
        line = orjson.dumps(run, option=orjson.OPT_APPEND_NEWLINE)  # dataclasses natively: ~3 µs
        segment = self._active
        if segment is None or segment.used + len(line) > segment.size:
            if segment is not None:
                if segment.records:
                    self._sealed.append(segment)  # full: deleted with the next commit
                else:
                    _remove(segment)  # too small for this one record
            segment = self._open(len(line))
        assert segment.map is not None
        segment.map[segment.used : segment.used + len(line)] = line
        segment.used += len(line)
        segment.records += 1

    def seal(self) -> None:
        """Close the active segment to new records: everything in it is about to be written."""
        if self._active is not None and self._active.records:
            self._sealed.append(self._active)
            self._active = None
            # Traffic is flowing: open the next segment here (the journal writer's flush), not in the
            # request that would otherwise pay for its file creation and allocation.
            with contextlib.suppress(OSError):
                self._open(0)

    def committed(self) -> None:
        """Every record of the sealed segments is in the database: delete them."""
        for segment in self._sealed:
            _remove(segment)
        self._sealed.clear()

    def close(self) -> None:
        """At a clean shutdown, after the last commit: nothing is left to keep."""
        self.seal()
        self.committed()
        if self._active is not None:
            _remove(self._active)
            self._active = None

    def leftovers(self) -> list[tuple[Path, list[RunRecord]]]:
        """Segments a dead process left behind, with their records (unreadable lines skipped).

        Each returned segment stays locked by this process until ``committed`` removes it.
        """
        from palyra.journal import RunRecord

        found: list[tuple[Path, list[RunRecord]]] = []
        for path in sorted(self.directory.glob("run-*.jsonl")):
            if self._active is not None and path == self._active.path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a live process still owns it
                continue
            records: list[RunRecord] = []
            with open(fd, "rb", closefd=False) as handle:
                content = handle.read()
            end = content.find(b"\0")
            for number, line in enumerate(content[: None if end < 0 else end].splitlines(), 1):
                try:
                    records.append(RunRecord(**orjson.loads(line)))
                except (orjson.JSONDecodeError, TypeError):
                    log.warning("journal spool %s line %d is unreadable; skipped", path.name, number)
            self._sealed.append(_Segment(path, fd, records=len(records)))
            found.append((path, records))
        return found

    def _open(self, at_least: int) -> _Segment:
        self._seq += 1
        path = self.directory / f"run-{os.getpid()}-{self._seq}.jsonl"
        size = max(SEGMENT_BYTES, at_least)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.posix_fallocate(fd, 0, size)
            segment = _Segment(path, fd, mmap.mmap(fd, size), size)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise
        self._active = segment
        return segment


def _remove(segment: _Segment) -> None:
    with contextlib.suppress(FileNotFoundError):
        segment.path.unlink()
    if segment.map is not None:
        segment.map.close()
    os.close(segment.fd)
