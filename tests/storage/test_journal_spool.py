"""The journal spool: records of completed requests survive a killed process and are inserted once."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_storage import db  # noqa: F401  (the SQLite + PostgreSQL fixture)

from palyra.journal import JournalWriter, RunRecord
from palyra.journal_spool import Spool
from palyra.storage.db import Database
from palyra.storage.runs import RunRepository


def run(i: int, **extra: object) -> RunRecord:
    return RunRecord(
        request_id=f"req_{i}", created_at=1000.0 + i, finished_at=1000.5 + i, endpoint="x", **extra
    )  # type: ignore[arg-type]


def lines(segment: Path) -> list[bytes]:
    """A segment's records: JSON lines, then zero bytes up to its allocated size."""
    return segment.read_bytes().rstrip(b"\0").splitlines()


def write_then_die(spool_dir: Path, count: int) -> None:
    """A real process appends ``count`` records to its spool, then is killed with SIGKILL."""
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        from palyra.journal import RunRecord
        from palyra.journal_spool import Spool
        spool = Spool(Path({str(spool_dir)!r}))
        for i in range({count}):
            decision = {{"request_id": "req_0", "at": 1.0, "mode": "suggest"}} if i == 0 else None
            spool.append(RunRecord(request_id=f"req_{{i}}", created_at=1000.0 + i, endpoint="x",
                                   prompt_tokens=i, decision=decision))
            if i == 4:
                spool.seal()  # a batch was taken but never committed
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    # While it lives, its segments are locked: a second process on the same directory leaves them.
    assert Spool(spool_dir).leftovers() == []
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


async def test_records_of_a_killed_process_are_recovered_once(db: Database, tmp_path: Path) -> None:  # noqa: F811
    repo = RunRepository(db)
    spool_dir = tmp_path / "journal"
    write_then_die(spool_dir, 12)
    assert len(list(spool_dir.glob("run-*.jsonl"))) == 2  # the sealed segment and the active one
    # Three of them did reach the database before the kill: recovery must not count them twice.
    await repo.insert_many([run(i).row() for i in range(3)])

    writer = JournalWriter(repo, spool=Spool(spool_dir))
    assert await writer.recover() == 12
    rows = await repo.recent(limit=100)
    assert sorted(r["request_id"] for r in rows) == sorted(f"req_{i}" for i in range(12))
    assert {r["request_id"]: r["prompt_tokens"] for r in rows}["req_7"] == 7
    assert len(await repo.decisions()) == 1
    assert list(spool_dir.glob("run-*.jsonl")) == []  # recovered segments are gone
    assert await JournalWriter(repo, spool=Spool(spool_dir)).recover() == 0


async def test_flushed_segments_are_deleted_and_a_clean_close_leaves_nothing(
    db: Database,  # noqa: F811
    tmp_path: Path,
) -> None:
    spool_dir = tmp_path / "journal"
    writer = JournalWriter(RunRepository(db), flush_interval_s=60, spool=Spool(spool_dir))
    for i in range(5):
        writer.record(run(i))
    segments = list(spool_dir.glob("run-*.jsonl"))
    assert len(segments) == 1 and len(lines(segments[0])) == 5
    assert oct(segments[0].stat().st_mode & 0o777) == "0o600"
    await writer.flush()
    assert not segments[0].exists()
    assert [lines(p) for p in spool_dir.glob("run-*.jsonl")] == [[]]  # the next one, opened ahead
    writer.record(run(5))
    await writer.close()
    assert list(spool_dir.glob("run-*.jsonl")) == []
    assert len(await RunRepository(db).recent(limit=100)) == 6


async def test_a_failed_flush_keeps_the_segment_until_a_later_one_commits(
    db: Database,  # noqa: F811
    tmp_path: Path,
) -> None:
    spool_dir = tmp_path / "journal"
    repo = RunRepository(db)
    writer = JournalWriter(repo, spool=Spool(spool_dir))
    real_insert = repo.insert_many
    failing = True

    async def flaky(rows, **kwargs):  # type: ignore[no-untyped-def]
        if failing:
            raise OSError("database went away")
        await real_insert(rows, **kwargs)

    repo.insert_many = flaky  # type: ignore[method-assign]
    writer.record(run(0))
    with contextlib.suppress(OSError):
        await writer.flush()
    writer.record(run(1))
    assert sum(len(lines(p)) for p in spool_dir.glob("run-*.jsonl")) == 2
    failing = False
    await writer.flush()
    assert all(lines(p) == [] for p in spool_dir.glob("run-*.jsonl"))
    assert {r["request_id"] for r in await repo.recent(limit=10)} == {"req_0", "req_1"}


def test_a_full_disk_does_not_fail_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    spool = Spool(tmp_path / "journal")
    writer = JournalWriter(RunRepository.__new__(RunRepository), spool=spool)
    writer.record(run(0))  # logged once, kept in memory
    writer.record(run(1))
    assert writer.pending == 2
    assert list((tmp_path / "journal").iterdir()) == []  # no half-made segment left behind


def test_segments_roll_over_when_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("palyra.journal_spool.SEGMENT_BYTES", 4096)
    spool = Spool(tmp_path / "journal")
    for i in range(40):
        spool.append(run(i, error_message="x" * 200))
    assert len(list((tmp_path / "journal").glob("run-*.jsonl"))) > 2
    for segment in [*spool._sealed, spool._active]:  # what a crash would leave
        assert segment is not None
        if segment.map is not None:
            segment.map.close()  # the mapping holds its own descriptor, and with it the lock
        os.close(segment.fd)
    spool._sealed.clear()
    spool._active = None
    recovered = [r for _, records in Spool(tmp_path / "journal").leftovers() for r in records]
    assert sorted(r.request_id for r in recovered) == sorted(f"req_{i}" for i in range(40))
