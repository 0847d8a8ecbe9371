"""Per-job Prometheus metrics, registered on the registry the app owns (``Metrics.registry``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_DURATION_BUCKETS = (0.05, 0.25, 1, 5, 15, 60, 300, 900, 3600)


class CronMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "palyra_cron_runs_total",
            "Scheduler runs by job and outcome (succeeded, failed, cancelled, skipped), counted by the "
            "replica that recorded the outcome.",
            ["job", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "palyra_cron_run_duration_seconds",
            "Wall time of finished scheduler runs.",
            ["job"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.last_success = Gauge(
            "palyra_cron_last_success_timestamp_seconds",
            "Unix time at which the job last succeeded in this replica.",
            ["job"],
            registry=registry,
        )
        self.running = Gauge(
            "palyra_cron_running_runs",
            "Runs of the job executing in this replica.",
            ["job"],
            registry=registry,
        )
