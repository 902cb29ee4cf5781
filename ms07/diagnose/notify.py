"""Escalation: findings as Alertmanager v2 alerts (``POST /api/v2/alerts``).

The guide's "automatic ticket creation for critical problems" and its P1-P4 matrix (docs/architecture.md):
every finding at or above ``escalation.min_severity`` becomes one alert whose labels
carry the check, the finding id, the severity, the priority and the team (both mapped
in ``escalation:``), so an existing Alertmanager routes it to a ticket or a page.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import httpx

from ms07 import SERVICE_NAME
from ms07.config import Settings, redact_url
from ms07.diagnose.model import Report, severity_at_least
from ms07.errors import Ms07Error
from ms07.logs import clip

API_PATH = "/api/v2/alerts"


class NotifyError(Ms07Error):
    """The escalation endpoint could not be reached or refused the alerts."""

    exit_code = 3


@dataclass
class Notified:
    url: str
    alerts: int


def endpoint(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith(API_PATH) else url + API_PATH


def build_alerts(settings: Settings, report: Report, min_severity: str | None = None) -> list[dict[str, Any]]:
    """One Alertmanager alert per finding at or above ``min_severity``."""
    esc = settings.escalation
    minimum = min_severity or esc.min_severity
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    alerts = []
    for check, f in report.findings():
        if not severity_at_least(f.severity, minimum):
            continue
        labels = {
            "alertname": f"MS07Diagnose{check.capitalize()}",
            "service": SERVICE_NAME,
            "check": check,
            "finding": f.id,
            "severity": f.severity,
            "priority": esc.priorities.get(f.severity, "P4"),
            "team": esc.teams.get(check, "sre"),
        }
        if f.subject:
            labels["subject"] = f.subject
        annotations = {"summary": f.summary, "description": f.evidence, "remedy": f.remedy, "command": f.command}
        if check in esc.runbooks:
            annotations["runbook"] = esc.runbooks[check]
        alerts.append({"labels": labels, "annotations": {k: v for k, v in annotations.items() if v},
                       "startsAt": now})
    return alerts


async def notify(settings: Settings, report: Report, min_severity: str | None = None,
                 *, http_timeout: float = 10.0) -> Notified:
    """Post the alerts to ``escalation.alertmanager_url``. Nothing to send: no request."""
    if not settings.escalation.alertmanager_url:
        raise NotifyError("--notify: escalation.alertmanager_url is not set in the config")
    url = endpoint(settings.escalation.alertmanager_url)
    alerts = build_alerts(settings, report, min_severity)
    if not alerts:
        return Notified(url, 0)
    try:
        async with httpx.AsyncClient(timeout=http_timeout, follow_redirects=False) as client:
            resp = await client.post(url, json=alerts)
    except httpx.HTTPError as exc:
        reason = clip(str(exc), 200)
        raise NotifyError(f"cannot post alerts to {redact_url(url)}: {type(exc).__name__}: {reason}") from None
    if not 200 <= resp.status_code < 300:
        raise NotifyError(f"{redact_url(url)} answered HTTP {resp.status_code}: {clip(resp.text, 200)}")
    return Notified(url, len(alerts))
