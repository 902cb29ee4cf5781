"""``ms07 health``: the running engine's own health report, as a table or JSON."""

from __future__ import annotations

import inspect
from typing import Any

import typer

from ms07.cli import common, display
from ms07.levels import level_of
from ms07.options import specs, typer_command
from ms07.read_options import HealthOptions

HELP = """Ask the running engine how it is (GET /health/ready, or /health/detailed).

    Sends MS07_API_TOKEN as the bearer token. Exit code: 0 healthy, 1 degraded,
    2 unhealthy, 3 unreachable or no verdict (token refused, not an engine)."""


def health(ctx: typer.Context, detailed: bool, url: str | None, as_json: bool, timeout: float) -> None:
    from ms07.ops.healthcheck import base_url, exit_code, fetch_health

    st = common.state(ctx)
    settings = st.settings
    result = common.run(fetch_health(base_url(settings, url), settings.api_token(), detailed, timeout=timeout))
    if as_json:
        common.print_json(result)
    else:
        render(st.console, result)
    raise typer.Exit(exit_code(result))


command = typer_command(specs(HealthOptions), health, name="health", help=inspect.cleandoc(HELP))


def _s(state: Any) -> str:
    text = str(state)
    return display.markup(text) if level_of(text) is not None else text


def _ms(v: Any) -> str:
    return "-" if v is None else f"{float(v):.1f}"


def _v(v: Any) -> str:
    return "-" if v is None else str(v)


def render(console: Any, result: dict[str, Any]) -> None:
    """The result of :func:`ms07.ops.healthcheck.fetch_health` as Rich tables."""
    from rich.table import Table

    status = result["status"]
    report = result.get("report")
    if report is None:
        console.print(f"[bold]{result['url']}[/]: [red]{status}[/] - {result.get('error')}")
        return
    extra = "  [red]draining[/]" if report.get("draining") else ""
    console.print(f"[bold]{result['url']}[/]: [bold]{_s(status)}[/]"
                  f"  version {report.get('version')}  at {report.get('timestamp')}{extra}")
    checks = Table(title="checks")
    checks.add_column("check")
    checks.add_column("status")
    for name, state in (report.get("checks") or {}).items():
        checks.add_row(name, _s(state))
    console.print(checks)
    if result.get("endpoint") == "detailed":
        _render_detailed(console, report, Table)


def _render_detailed(console: Any, r: dict[str, Any], Table: Any) -> None:  # noqa: N803
    from ms07.diagnose.model import fmt_bytes  # here: `ms07 --help` imports no diagnose module

    p = r.get("process") or {}
    console.print(f"worker {r.get('worker_id')}  up {r.get('uptime_seconds')} s  RSS {fmt_bytes(p.get('rss_bytes'))}"
                  f" (guard at {fmt_bytes(p.get('memory_threshold_bytes'))})  in flight {p.get('in_flight')}"
                  f"/{p.get('concurrency')}  delivered {p.get('delivered')}  failed {p.get('failed')}")

    pools = Table(title="connection pools")
    for col in ("pool", "in use", "idle", "max", "waiting"):
        pools.add_column(col)
    db = (r.get("database") or {}).get("pool") or {}
    pools.add_row("postgresql", _v(db.get("in_use")), _v(db.get("available")), _v(db.get("max")), _v(db.get("waiting")))
    rp = (r.get("redis") or {}).get("pool") or {}
    pools.add_row("redis", _v(rp.get("in_use")), _v(rp.get("idle")), _v(rp.get("max")), "-")
    for d in r.get("destinations") or []:
        hp = d.get("pool") or {}
        pools.add_row(f"http {d.get('name')}", _v(hp.get("in_use")), _v(hp.get("idle")), _v(hp.get("limit")), "-")
    console.print(pools)

    queues = Table(title=f"queues (DLQ: {_v(r.get('dlq_size'))})")
    for col in ("queue", "depth", "pending", "delayed", "overdue", "oldest pending idle ms", "consumers"):
        queues.add_column(col)
    for name, q in (r.get("queues") or {}).items():
        queues.add_row(name, _v(q.get("length")), _v(q.get("pending")), _v(q.get("delayed")),
                       _v(q.get("delayed_overdue")), _v(q.get("oldest_pending_idle_ms")),
                       str(len(q.get("consumers") or [])))
    console.print(queues)

    dests = Table(title="destinations")
    for col in ("destination", "state", "health", "last check", "circuit", "p50 ms", "p95 ms", "p99 ms", "auth"):
        dests.add_column(col)
    for d in r.get("destinations") or []:
        dests.add_row(str(d.get("name")), _s(d.get("state")), _v(d.get("health")), _v(d.get("last_health_check")),
                      _v(d.get("circuit_state")), _ms(d.get("p50_ms")), _ms(d.get("p95_ms")), _ms(d.get("p99_ms")),
                      _v(d.get("auth")))
    console.print(dests)

    workers = Table(title="workers (heartbeats)")
    for col in ("worker", "host", "status", "live", "stale", "in flight", "RSS", "last beat s ago"):
        workers.add_column(col)
    for w in r.get("workers") or []:
        workers.add_row(str(w.get("worker_id")), _v(w.get("host")), _v(w.get("status")), _v(w.get("live")),
                        _v(w.get("stale")), _v(w.get("in_flight")), fmt_bytes(w.get("rss_bytes")),
                        _v(w.get("seconds_since_update")))
    console.print(workers)
