"""What the harness checks on a Palyra daemon after the load: memory, the journal's backlog and how long
it takes to drain, its rows after the stop against the requests sent, and the shutdown."""

from __future__ import annotations

import contextlib
import time
import urllib.request
from collections.abc import Callable

from daemon_proc import Daemon, proc_status_kib
from report import DaemonRun

JOURNAL_DRAIN_TIMEOUT_S = 60.0


def journal_metrics(daemon: Daemon) -> dict[str, float]:
    """The journal gauges from /metrics (pending, written, dropped)."""
    values: dict[str, float] = {}
    with (
        contextlib.suppress(OSError),
        urllib.request.urlopen(daemon.base_url + "/metrics", timeout=5) as resp,
    ):
        for line in resp.read().decode().splitlines():
            if line.startswith("palyra_journal_"):
                name, _, value = line.partition(" ")
                values[name] = float(value)
    return values


def wait_journal_drained(daemon: Daemon) -> float | None:
    """Seconds until the journal has written every record buffered during the load; None on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < JOURNAL_DRAIN_TIMEOUT_S:
        if journal_metrics(daemon).get("palyra_journal_pending_records", 0.0) == 0.0:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def record_load_end(run: DaemonRun, daemon: Daemon) -> None:
    """Memory and journal state right after the load, then how long the journal takes to catch up."""
    run.died = not daemon.alive()
    if run.died:
        return
    run.rss_after_kib = proc_status_kib(daemon.pid, "VmRSS")
    run.rss_peak_kib = proc_status_kib(daemon.pid, "VmHWM")
    run.journal_pending_after_load = journal_metrics(daemon).get("palyra_journal_pending_records")
    run.journal_drain_s = wait_journal_drained(daemon)
    run.journal_dropped = journal_metrics(daemon).get("palyra_journal_dropped_records")


def record_stop(run: DaemonRun, daemon: Daemon, journal_count: Callable[[], int | None]) -> None:
    stopped = daemon.stop()
    run.stop_exit_code = stopped.exit_code
    run.stop_seconds = stopped.seconds
    run.stop_killed = stopped.killed
    run.journal_rows_after_stop = journal_count()
    run.stderr_problems = daemon.stderr_problems()
    if run.failed:
        run.stderr_tail = daemon.stderr_tail()
