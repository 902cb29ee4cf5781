"""The options of the read-only commands a runbook step may run (``ms07 health``,
``queue stats``, ``dlq list``, ``destinations check``), declared once.

They live here, apart from the code that does the reading, because ``ms07 --help`` builds
the commands from them and must not import psycopg or the Redis client to do so.
"""

from __future__ import annotations

from dataclasses import dataclass

from ms07.options import opt

JSON_HELP = "Print JSON."


@dataclass
class HealthOptions:
    detailed: bool = opt(
        "--detailed", "GET /health/detailed: pools, queues, destinations, workers, RSS.",
        default=False,  # no -d: that is submit's --destination
    )
    url: str | None = opt(
        "--url",
        "Engine base URL (default http://127.0.0.1:<service.http_port>) \\[env: MS07_HEALTH_URL]",
        default=None,
    )
    as_json: bool = opt("--json", JSON_HELP, default=False, param="as_json")
    timeout: float = opt("--timeout", "Seconds to wait for the engine's answer.", default=10.0)


@dataclass
class QueueStatsOptions:
    as_json: bool = opt("--json", JSON_HELP, default=False, param="as_json")


@dataclass
class DlqListOptions:
    limit: int = opt("--limit", "", default=100, min=1, max=10000)
    as_json: bool = opt("--json", "", default=False, param="as_json")


@dataclass
class DestinationsCheckOptions:
    names: list[str] = opt("names", "Destinations to probe (default: all).", factory=list, argument=True)
    timeout: float | None = opt(
        "--timeout", "Seconds per stage (default service.probe_timeout_seconds).", default=None
    )
    as_json: bool = opt("--json", JSON_HELP, default=False, param="as_json")


# command path -> its options (what a runbook step may run besides diagnose and recover)
READS: dict[tuple[str, ...], type] = {
    ("health",): HealthOptions,
    ("queue", "stats"): QueueStatsOptions,
    ("dlq", "list"): DlqListOptions,
    ("destinations", "check"): DestinationsCheckOptions,
}
