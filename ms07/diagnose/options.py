"""What a diagnose run looks at: the window and the thresholds (config, then flags)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from ms07.config import Settings
from ms07.errors import UsageError
from ms07.options import Spec, opt, specs


class DiagnoseUsageError(UsageError):
    """Bad input to a diagnose command. Exit 3 (UNKNOWN), as monitoring plugins do, so that
    a typo in an alerting rule never reads as CRITICAL."""

    exit_code = 3


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str, what: str = "--since") -> float:
    """``30m``, ``2h``, ``1d``, ``1h30m``, ``90s`` -> seconds. Anything else is one clear error."""
    raw = (text or "").strip().lower()
    pos, total = 0, 0.0
    for match in _DURATION.finditer(raw):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not raw or pos != len(raw):
        raise DiagnoseUsageError(f"{what}: {text!r} is not a duration (use e.g. 90s, 30m, 2h, 1d)")
    if total <= 0:
        raise DiagnoseUsageError(f"{what}: {text!r} must be longer than zero")
    if total > 366 * 86400:
        raise DiagnoseUsageError(f"{what}: {text!r} is longer than a year")
    return total


@dataclass(frozen=True)
class DiagnoseOptions:
    """The window and every threshold of a run. Build with :meth:`from_settings`."""

    since_seconds: float = opt(
        "--since", "Window to look back over: 90s, 30m, 2h, 1d.", default=3600.0,
        duration=True, cli_default="1h", param="since",
    )
    stuck_after_seconds: float = opt(
        "--stuck-after",
        "Processing longer than this is stuck (config: diagnose.stuck_after_minutes, 30m).",
        default=1800.0, duration=True, cli_default=None,
    )
    stale_health_seconds: float = opt(
        "--stale-health", "Health checks older than this are stale (config: 10m).",
        default=600.0, duration=True, cli_default=None,
    )
    stale_worker_seconds: float = opt(
        "--stale-worker", "Workers silent longer than this are stale (config: 5m).",
        default=300.0, duration=True, cli_default=None,
    )
    p95_threshold_ms: float = opt(
        "--p95-threshold-ms", "Flag destinations whose p95 exceeds this (config: 500).",
        default=500.0, cli_default=None,
    )
    probe_timeout_seconds: float = opt(
        "--probe-timeout", "Seconds per DNS/TCP/HTTP probe stage (config: 3).",
        default=3.0, cli_default=None,
    )
    rss_growth_warning_percent: float = opt(
        "--rss-growth-percent", "Flag RSS growth above this over the window (config: 20).",
        default=20.0, cli_default=None,
    )
    token_expiry_warning_seconds: float = opt(
        "--token-expiry-warning", "Flag tokens expiring within this (config: 24h).",
        default=86400.0, duration=True, cli_default=None,
    )
    lost_grace_seconds: float = opt(
        "--lost-grace", "Open jobs younger than this are not yet lost (config: 2m).",
        default=120.0, duration=True, cli_default=None,
    )
    queue_depth_warning: int = 10000
    failure_rate_warning_percent: float = 10.0
    rss_trend_min_seconds: float = 600.0
    url: str | None = opt(  # the engine's base URL (health, /debug/memory)
        "--url",
        "Engine base URL for /health and /debug/memory (default http://127.0.0.1:<http_port>) "
        "\\[env: MS07_HEALTH_URL]",
        default=None,
    )
    probe: bool = opt(  # diagnose auth: one authenticated request per destination
        "--probe", "Make one authenticated GET per destination (health URL, else URL).",
        default=False,
    )
    kubeconfig: str | None = None  # None: as ms07.kube.source resolves it (KUBECONFIG, in-cluster...)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> DiagnoseOptions:
        """Defaults from the ``diagnose:`` config section (the probe timeout and the
        stale-worker age: ``service:``, the engine uses them too); ``overrides`` (None = keep) win."""
        d = settings.diagnose
        base = cls(
            stuck_after_seconds=d.stuck_after_minutes * 60,
            stale_health_seconds=d.stale_health_minutes * 60,
            stale_worker_seconds=settings.service.stale_worker_minutes * 60,
            p95_threshold_ms=d.p95_threshold_ms,
            probe_timeout_seconds=settings.service.probe_timeout_seconds,
            rss_growth_warning_percent=d.rss_growth_warning_percent,
            token_expiry_warning_seconds=d.token_expiry_warning_hours * 3600,
            lost_grace_seconds=d.lost_grace_seconds,
            queue_depth_warning=d.queue_depth_warning,
            failure_rate_warning_percent=d.failure_rate_warning_percent,
            rss_trend_min_seconds=d.rss_trend_min_minutes * 60,
        )
        changes = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(changes) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown diagnose option(s): {sorted(unknown)}")
        for key, value in changes.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
                raise DiagnoseUsageError(f"{key.replace('_', '-')}: must be positive, got {value}")
        return dataclasses.replace(base, **changes)

    def engine_url(self, settings: Settings) -> str:
        """``--url``, else ``MS07_HEALTH_URL`` (settings.health_url), else the local port."""
        url = self.url or settings.health_url or f"http://127.0.0.1:{settings.service.http_port}"
        return url.rstrip("/")

    @property
    def since_text(self) -> str:
        s = self.since_seconds
        for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
            if s >= n and s % n == 0:
                return f"{int(s // n)}{unit}"
        return f"{int(s)}s"


@dataclass(frozen=True)
class Output:
    """What a diagnose command does with its report (not a threshold)."""

    as_json: bool = opt(
        "--json", 'Print {"check", "status", "findings": [...]} as JSON.', default=False,
        param="as_json",
    )
    notify: bool = opt(
        "--notify",
        "Post findings at or above escalation.min_severity to escalation.alertmanager_url "
        "(Alertmanager v2 /api/v2/alerts).",
        default=False,
    )


@dataclass(frozen=True)
class Command:
    """``ms07 diagnose <name>``: the checks it runs (None: all) and the thresholds it takes
    (``DiagnoseOptions`` parameter names, in the order ``--help`` lists them)."""

    name: str
    checks: tuple[str, ...] | None
    options: tuple[str, ...]
    help: str

    def specs(self) -> list[Spec]:
        """``--since``, the output flags, then this command's own thresholds."""
        by_name = {s.opt.name: s for s in specs(DiagnoseOptions)}
        return [by_name["since"], *specs(Output), *(by_name[n] for n in self.options)]


def overrides(params: dict[str, Any]) -> dict[str, Any]:
    """``DiagnoseOptions`` fields from a command's parameters (durations parsed; None and
    the output flags left out): what :meth:`DiagnoseOptions.from_settings` takes."""
    out: dict[str, Any] = {}
    for spec in specs(DiagnoseOptions):
        value = params.get(spec.opt.name)
        if value is None or value is False:
            continue
        out[spec.field] = parse_duration(value, spec.opt.flag) if spec.opt.duration else value
    return out


PARAMS = {s.opt.name for s in specs(DiagnoseOptions)} | {s.opt.name for s in specs(Output)}

COMMANDS = {
    c.name: c
    for c in [
        Command("timeouts", ("timeouts",), ("stuck_after", "stale_health", "probe_timeout"),
                "Distributions stuck in processing (guide, problem 1).\n\n"
                "Stuck processing jobs, unhealthy or stale destinations, a live DNS/TCP/HTTP probe of\n"
                "each, timeout attempts, effective timeout/backoff/circuit settings, circuit state,\n"
                "queue depth."),
        Command("latency", ("latency",), ("p95_threshold_ms",),
                "Slow deliveries (guide, problem 2).\n\n"
                "Attempts, avg/p50/p95/p99/max latency and failures per destination; active\n"
                "distributions and queue time; pool limits; a p95 bar chart; remedies from the data."),
        Command("auth", ("auth",), ("probe", "token_expiry_warning", "probe_timeout"),
                "Destinations refusing our credentials (guide, problem 3).\n\n"
                "401/403 attempts by destination, status and message; auth config (redacted); JWT and\n"
                "OAuth2 token expiry; with --probe, one authenticated request per destination."),
        Command("errors", ("errors",), (),
                "Why deliveries fail: failed attempts per destination by error code and HTTP status.\n\n"
                "Count, first and last seen and the latest message of each; per destination and kind\n"
                "the next step: 5xx the receiver's side (replay once fixed), 4xx the payload or\n"
                "contract, 401/403 `diagnose auth`, timeouts `diagnose timeouts`, refused connections\n"
                "`destinations check`. A destination whose attempts all failed is CRITICAL."),
        Command("queue", ("queue",), ("stale_worker", "lost_grace"),
                "Lost or unprocessed messages (guide, problem 4).\n\n"
                "Stream lengths, DLQ, delayed/overdue retries, pending per consumer, dead consumers,\n"
                "stale workers, jobs Redis lost, and Redis settings that lose messages."),
        Command("memory", ("memory",), ("url", "rss_growth_percent"),
                "Leaking workers (guide, problem 5).\n\n"
                "Worker RSS and its trend, local ms07 processes, pod memory and OOMKilled restarts\n"
                "(Kubernetes), top allocation sites from /debug/memory."),
        Command("health", ("health",), ("url",),
                "The engine's /health/ready and /health/detailed, with MS07_API_TOKEN."),
        Command("all", None,
                ("url", "probe", "stuck_after", "stale_health", "probe_timeout", "p95_threshold_ms",
                 "stale_worker", "lost_grace", "rss_growth_percent", "token_expiry_warning"),
                "Every check at once; the worst status is the exit code.\n\n"
                "A summary table, then each check's findings and evidence."),
    ]
}
