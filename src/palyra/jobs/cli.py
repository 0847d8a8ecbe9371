"""`palyra cron …`: scheduled jobs. Registered by palyra.cli (``app.add_typer(cron_app, name="cron")``).

Talks to the running daemon's admin API when one answers; otherwise reads (and for enable/disable,
writes) the shared database directly. Running a job needs the daemon: it holds the handlers.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from palyra.jobs.store import CronStore

if TYPE_CHECKING:
    from palyra.config.models import PalyraConfig

cron_app = typer.Typer(no_args_is_help=True, help="Scheduled jobs: list, run history, run now.")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config (or PALYRA_CONFIG).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]

# palyra.cli imports this module while it loads, so it is imported inside each command instead.


def _q(job: str) -> str:
    return urllib.parse.quote(job, safe="")


def _daemon(cfg: PalyraConfig, method: str, path: str) -> tuple[int, Any] | None:
    import palyra.cli as base_cli

    return base_cli._daemon_call(cfg, method, path)


def _message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", ""))
    return str(body)


def _offline_note(answer: tuple[int, Any] | None) -> None:
    import palyra.cli as base_cli

    why = "the daemon is not reachable" if answer is None else f"the daemon answered HTTP {answer[0]}"
    base_cli.err.print(f"[dim]{why}; using the shared database[/]")


def _schedule(job: dict[str, Any]) -> str:
    if job["kind"] == "interval":
        return f"every {job['interval_s']:g} s"
    return f"{job['cron']} (UTC)"


@cron_app.command("list")
def cron_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Jobs with schedule, policies, next run and last run."""
    import palyra.cli as base_cli

    cfg = base_cli._load(config)
    answer = _daemon(cfg, "GET", "/api/v1/cron/jobs")
    if answer is not None and answer[0] == 200:
        rows: list[dict[str, Any]] = answer[1]["data"]
    else:
        _offline_note(answer)
        rows = base_cli._run_db(cfg, lambda db: CronStore(db).list_jobs())
    if as_json:
        base_cli._emit_json(rows)
        return
    table = Table("job", "schedule", "enabled", "overlap", "misfire", "next run", "last run")
    for j in rows:
        last = j["last_run"]
        last_text = "-" if last is None else f"{last['status']} {base_cli._ts(last['started_at'])}"
        table.add_row(
            j["job_id"],
            _schedule(j),
            "yes" if j["enabled"] else "[yellow]no[/]",
            j["overlap_policy"],
            j["misfire_policy"],
            base_cli._ts(j["next_run_at"]),
            last_text,
        )
    base_cli.out.print(table)


@cron_app.command("runs")
def cron_runs(
    job: Annotated[str | None, typer.Argument(help="Only this job.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="How many, newest first.")] = 20,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run history: status, trigger, slot, start, duration, summary or error."""
    import palyra.cli as base_cli

    cfg = base_cli._load(config)
    path = f"/api/v1/cron/jobs/{_q(job)}/runs" if job else "/api/v1/cron/runs"
    answer = _daemon(cfg, "GET", f"{path}?limit={limit}")
    if answer is not None and answer[0] == 404 and job:
        base_cli.fail(f"no job {job!r}", "see `palyra cron list`")
    if answer is not None and answer[0] == 200:
        rows: list[dict[str, Any]] = answer[1]["data"]
    else:
        _offline_note(answer)

        async def work(db: Any) -> list[dict[str, Any]] | None:
            store = CronStore(db)
            if job and await store.get_job(job) is None:
                return None
            return await store.runs(job, limit=limit)

        found = base_cli._run_db(cfg, work)
        if found is None:
            base_cli.fail(f"no job {job!r}", "see `palyra cron list`")
        rows = found
    if as_json:
        base_cli._emit_json(rows)
        return
    table = Table("run", "job", "status", "trigger", "slot", "started", "ms", "summary / error")
    for r in rows:
        detail = r["error"] or ("" if r["summary"] is None else str(r["summary"]))
        table.add_row(
            r["run_id"],
            r["job_id"],
            _status(r["status"]),
            r["trigger"],
            base_cli._ts(r["slot_at"]),
            base_cli._ts(r["started_at"]),
            "-" if r["duration_ms"] is None else f"{r['duration_ms']:.0f}",
            detail[:120],
        )
    base_cli.out.print(table)


def _status(status: str) -> str:
    colour = {"succeeded": "green", "failed": "red", "running": "cyan", "cancelled": "yellow"}.get(status)
    return f"[{colour}]{status}[/]" if colour else status


@cron_app.command("run")
def cron_run(
    job: Annotated[str, typer.Argument(help="The job to run now.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a job now, on the daemon (its overlap policy applies)."""
    import palyra.cli as base_cli

    cfg = base_cli._load(config)
    answer = _daemon(cfg, "POST", f"/api/v1/cron/jobs/{_q(job)}/run")
    if answer is None:
        base_cli.fail(
            "the daemon is not reachable, and jobs run inside it (it holds their handlers)",
            f"start it with `palyra serve`, then run `palyra cron run {job}` again",
        )
    status, body = answer
    if status == 404:
        base_cli.fail(_message(body) or f"no job {job!r}", "see `palyra cron list`")
    if status == 409:
        base_cli.fail(_message(body), f"see the active run with `palyra cron runs {job}`")
    if status != 202:
        base_cli.fail(f"the daemon answered HTTP {status}: {_message(body)}", "see the daemon log")
    if as_json:
        base_cli._emit_json(body)
        return
    verb = "queued" if body["status"] == "queued" else "started"
    base_cli.out.print(f"{verb} run {body['run_id']} of {job}; follow it with `palyra cron runs {job}`")


def _set_enabled(config: Path | None, job: str, enabled: bool, as_json: bool) -> None:
    import palyra.cli as base_cli
    from palyra.jobs.scheduler import Scheduler

    cfg = base_cli._load(config)
    verb = "enable" if enabled else "disable"
    answer = _daemon(cfg, "POST", f"/api/v1/cron/jobs/{_q(job)}/{verb}")
    if answer is not None and answer[0] == 404:
        base_cli.fail(_message(answer[1]) or f"no job {job!r}", "see `palyra cron list`")
    if answer is not None and answer[0] == 200:
        row: dict[str, Any] = answer[1]
    else:
        _offline_note(answer)
        # The flag and timer live in the shared database; a Scheduler with no jobs just edits them.
        row = base_cli._run_db(cfg, lambda db: Scheduler(db).set_enabled(job, enabled))
    if as_json:
        base_cli._emit_json(row)
        return
    state = "enabled" if row["enabled"] else "disabled"
    base_cli.out.print(f"{job} {state}; next run {base_cli._ts(row['next_run_at'])}")


@cron_app.command("enable")
def cron_enable(job: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Enable a job (its timer restarts from now)."""
    _set_enabled(config, job, True, as_json)


@cron_app.command("disable")
def cron_disable(job: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Disable a job (a run in progress finishes)."""
    _set_enabled(config, job, False, as_json)
