"""``ms07 diagnose``: the troubleshooting guide's checks: a verdict, the evidence, the next command.

Exit codes follow the monitoring-plugins convention, so alerting can run these as
plugins: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (could not check). Bad input is also 3.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from ms07.cli import common

app = typer.Typer(
    help="Scripted checks of the troubleshooting guide: verdict, evidence, next command. "
    "Exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
    no_args_is_help=True,
)

SINCE = typer.Option("1h", "--since", help="Window to look back over: 90s, 30m, 2h, 1d.")
JSON = typer.Option(False, "--json", help='Print {"check", "status", "findings": [...]} as JSON.')
NOTIFY = typer.Option(
    False, "--notify",
    help="Post findings at or above escalation.min_severity to escalation.alertmanager_url "
    "(Alertmanager v2 /api/v2/alerts).",
)
URL = typer.Option(
    None, "--url",
    help="Engine base URL for /health and /debug/memory (default http://127.0.0.1:<http_port>) "
    "\\[env: MS07_HEALTH_URL]",
)
STUCK = typer.Option(None, "--stuck-after", help="Processing longer than this is stuck (config: diagnose.stuck_after_minutes, 30m).")
STALE_HEALTH = typer.Option(None, "--stale-health", help="Health checks older than this are stale (config: 10m).")
PROBE_TIMEOUT = typer.Option(None, "--probe-timeout", help="Seconds per DNS/TCP/HTTP probe stage (config: 3).")
P95 = typer.Option(None, "--p95-threshold-ms", help="Flag destinations whose p95 exceeds this (config: 500).")
PROBE = typer.Option(False, "--probe", help="Make one authenticated GET per destination (health URL, else URL).")
TOKEN_WARN = typer.Option(None, "--token-expiry-warning", help="Flag tokens expiring within this (config: 24h).")
STALE_WORKER = typer.Option(None, "--stale-worker", help="Workers silent longer than this are stale (config: 5m).")
LOST_GRACE = typer.Option(None, "--lost-grace", help="Open jobs younger than this are not yet lost (config: 2m).")
RSS_GROWTH = typer.Option(None, "--rss-growth-percent", help="Flag RSS growth above this over the window (config: 20).")


def _seconds(value: str | None, flag: str) -> float | None:
    from ms07.diagnose import parse_duration

    return None if value is None else parse_duration(value, flag)


def _run(ctx: typer.Context, names: list[str], *, since: str, as_json: bool, notify: bool, **overrides: Any) -> None:
    from ms07.diagnose import DiagnoseOptions, DiagnoseUsageError, run_checks
    from ms07.diagnose.render import render_report
    from ms07.errors import ConfigError

    st = common.state(ctx)
    try:
        settings = st.settings
    except ConfigError as exc:
        raise DiagnoseUsageError(str(exc)) from None  # exit 3: the check could not run
    options = DiagnoseOptions.from_settings(settings, since_seconds=_seconds(since, "--since"), **overrides)
    if notify and not settings.escalation.alertmanager_url:
        raise DiagnoseUsageError("--notify: escalation.alertmanager_url is not set in the config")
    common.say_sources(None if as_json else st.err, settings)
    report = run_checks(settings, names, options)
    if as_json:
        common.print_json(report.results[0].as_json() if len(names) == 1 else report.as_json())
    else:
        render_report(st.console, report)
    if notify:
        from ms07.diagnose.notify import NotifyError
        from ms07.diagnose.notify import notify as post

        try:
            sent = common.run(post(settings, report))
            st.err.print(f"notified: {sent.alerts} alert(s) to {sent.url}")
        except NotifyError as exc:
            # The diagnosis stands; the exit code stays the verdict's.
            sys.stderr.write(f"error: {exc}\n")
    raise typer.Exit(report.exit_code)


@app.command("timeouts")
def timeouts(
    ctx: typer.Context, since: str = SINCE, as_json: bool = JSON, notify: bool = NOTIFY,
    stuck_after: str = STUCK, stale_health: str = STALE_HEALTH, probe_timeout: float = PROBE_TIMEOUT,
) -> None:
    """Distributions stuck in processing (guide, problem 1).

    Stuck processing jobs, unhealthy or stale destinations, a live DNS/TCP/HTTP probe of
    each, timeout attempts, effective timeout/backoff/circuit settings, circuit state,
    queue depth.
    """
    _run(ctx, ["timeouts"], since=since, as_json=as_json, notify=notify,
         stuck_after_seconds=_seconds(stuck_after, "--stuck-after"),
         stale_health_seconds=_seconds(stale_health, "--stale-health"), probe_timeout_seconds=probe_timeout)


@app.command("latency")
def latency(
    ctx: typer.Context, since: str = SINCE, as_json: bool = JSON, notify: bool = NOTIFY, p95_threshold_ms: float = P95,
) -> None:
    """Slow deliveries (guide, problem 2).

    Attempts, avg/p50/p95/p99/max latency and failures per destination; active
    distributions and queue time; pool limits; a p95 bar chart; remedies from the data.
    """
    _run(ctx, ["latency"], since=since, as_json=as_json, notify=notify, p95_threshold_ms=p95_threshold_ms)


@app.command("auth")
def auth(
    ctx: typer.Context, since: str = SINCE, as_json: bool = JSON, notify: bool = NOTIFY, probe: bool = PROBE,
    token_expiry_warning: str = TOKEN_WARN, probe_timeout: float = PROBE_TIMEOUT,
) -> None:
    """Destinations refusing our credentials (guide, problem 3).

    401/403 attempts by destination, status and message; auth config (redacted); JWT and
    OAuth2 token expiry; with --probe, one authenticated request per destination.
    """
    _run(ctx, ["auth"], since=since, as_json=as_json, notify=notify, probe=probe or None,
         token_expiry_warning_seconds=_seconds(token_expiry_warning, "--token-expiry-warning"),
         probe_timeout_seconds=probe_timeout)


@app.command("errors")
def errors(ctx: typer.Context, since: str = SINCE, as_json: bool = JSON, notify: bool = NOTIFY) -> None:
    """Why deliveries fail: failed attempts per destination by error code and HTTP status.

    Count, first and last seen and the latest message of each; per destination and kind
    the next step: 5xx the receiver's side (replay once fixed), 4xx the payload or
    contract, 401/403 `diagnose auth`, timeouts `diagnose timeouts`, refused connections
    `destinations check`. A destination whose attempts all failed is CRITICAL.
    """
    _run(ctx, ["errors"], since=since, as_json=as_json, notify=notify)


@app.command("queue")
def queue(
    ctx: typer.Context, since: str = SINCE, as_json: bool = JSON, notify: bool = NOTIFY,
    stale_worker: str = STALE_WORKER, lost_grace: str = LOST_GRACE,
) -> None:
    """Lost or unprocessed messages (guide, problem 4).

    Stream lengths, DLQ, delayed/overdue retries, pending per consumer, dead consumers,
    stale workers, jobs Redis lost, and Redis settings that lose messages.
    """
    _run(ctx, ["queue"], since=since, as_json=as_json, notify=notify,
         stale_worker_seconds=_seconds(stale_worker, "--stale-worker"),
         lost_grace_seconds=_seconds(lost_grace, "--lost-grace"))


@app.command("memory")
def memory(
    ctx: typer.Context, since: str = SINCE, as_json: bool = JSON, notify: bool = NOTIFY, url: str = URL,
    rss_growth_percent: float = RSS_GROWTH,
) -> None:
    """Leaking workers (guide, problem 5).

    Worker RSS and its trend, local ms07 processes, pod memory and OOMKilled restarts
    (Kubernetes), top allocation sites from /debug/memory.
    """
    _run(ctx, ["memory"], since=since, as_json=as_json, notify=notify, url=url,
         rss_growth_warning_percent=rss_growth_percent)


@app.command("health")
def health(
    ctx: typer.Context, since: str = SINCE, as_json: bool = JSON, notify: bool = NOTIFY, url: str = URL,
) -> None:
    """The engine's /health/ready and /health/detailed, with MS07_API_TOKEN."""
    _run(ctx, ["health"], since=since, as_json=as_json, notify=notify, url=url)


@app.command("all")
def all_(
    ctx: typer.Context, since: str = SINCE, as_json: bool = JSON, notify: bool = NOTIFY, url: str = URL,
    probe: bool = PROBE, stuck_after: str = STUCK, stale_health: str = STALE_HEALTH,
    probe_timeout: float = PROBE_TIMEOUT, p95_threshold_ms: float = P95, stale_worker: str = STALE_WORKER,
    lost_grace: str = LOST_GRACE, rss_growth_percent: float = RSS_GROWTH, token_expiry_warning: str = TOKEN_WARN,
) -> None:
    """Every check at once; the worst status is the exit code.

    A summary table, then each check's findings and evidence.
    """
    from ms07.diagnose import CHECKS

    _run(ctx, list(CHECKS), since=since, as_json=as_json, notify=notify, url=url, probe=probe or None,
         stuck_after_seconds=_seconds(stuck_after, "--stuck-after"),
         stale_health_seconds=_seconds(stale_health, "--stale-health"), probe_timeout_seconds=probe_timeout,
         p95_threshold_ms=p95_threshold_ms, stale_worker_seconds=_seconds(stale_worker, "--stale-worker"),
         lost_grace_seconds=_seconds(lost_grace, "--lost-grace"), rss_growth_warning_percent=rss_growth_percent,
         token_expiry_warning_seconds=_seconds(token_expiry_warning, "--token-expiry-warning"))
