"""What a diagnose run looks at: the window and the thresholds (config, then flags)."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any

from ms07.config import Settings
from ms07.errors import UsageError


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

    since_seconds: float = 3600.0
    stuck_after_seconds: float = 1800.0
    stale_health_seconds: float = 600.0
    stale_worker_seconds: float = 300.0
    p95_threshold_ms: float = 500.0
    probe_timeout_seconds: float = 3.0
    rss_growth_warning_percent: float = 20.0
    token_expiry_warning_seconds: float = 86400.0
    lost_grace_seconds: float = 120.0
    queue_depth_warning: int = 10000
    failure_rate_warning_percent: float = 10.0
    rss_trend_min_seconds: float = 600.0
    url: str | None = None  # the engine's base URL (health, /debug/memory)
    probe: bool = False  # diagnose auth: one authenticated request per destination
    kubeconfig: str | None = None

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
            kubeconfig=os.environ.get("KUBECONFIG") or None,
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
