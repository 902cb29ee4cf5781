"""``recover db-connection``: the guide's "Recovery da Database Connection Loss" (docs/architecture.md).

Check that PostgreSQL answers (``SELECT 1``, timed) and which host of the URL answered,
as primary or standby; the replication of the primary (``pg_stat_replication``); then a
rollout restart so every pod reconnects, and a wait for Ready pods and a healthy
``/health/ready``. A standby answering stops the plan: restarting pods cannot fix a URL
that points at a read-only server.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from ms07.config import Settings, redact_url
from ms07.options import opt
from ms07.recover import procedures
from ms07.recover.plan import Check, Outcome, Plan, PlanContext, Step, StepFailed

PSQL = 'psql "$MS07_DATABASE_URL"'
DEGRADED_GRACE = 20.0
_REPLICATION = """
SELECT application_name, client_addr::text, state, sync_state,
       EXTRACT(EPOCH FROM replay_lag)::float AS replay_lag_seconds,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS replay_lag_bytes
  FROM pg_stat_replication ORDER BY application_name"""
_STANDBY = """SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,
                     EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))::float"""


@dataclass
class Options:
    health_url: str | None = opt(  # default: settings.health_url (MS07_HEALTH_URL)
        "--health-url",
        "The engine's base URL or its /health/ready URL \\[env: MS07_HEALTH_URL]",
        default=None,
    )
    health_timeout: float = opt(
        "--health-timeout", "How long to wait for healthy.", default=120.0, min=1
    )
    timeout: float = procedures.timeout()


def url_hosts(url: str) -> list[str]:
    """The host:port list of a libpq URL or DSN (multi-host URLs name several)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception:
        return []
    hosts = str(info.get("host") or "localhost").split(",")
    ports = str(info.get("port") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    return [f"{h}:{p}" for h, p in zip(hosts, ports, strict=False)]


async def probe(url: str, connect_within: float = 5.0) -> dict[str, Any]:
    """Connect, time ``SELECT 1``, and say who answered and in which role."""
    from ms07.store import db

    t0 = time.perf_counter()
    conn = await db.connect(url, timeout=connect_within, autocommit=True)
    connect_ms = (time.perf_counter() - t0) * 1000
    try:
        t1 = time.perf_counter()
        await (await conn.execute("SELECT 1")).fetchone()
        select_ms = (time.perf_counter() - t1) * 1000
        row = await (await conn.execute("SELECT pg_is_in_recovery()")).fetchone()
        in_recovery = bool(row[0]) if row else False
        info: dict[str, Any] = {
            "connect_ms": round(connect_ms, 2),
            "select_ms": round(select_ms, 2),
            "host": conn.info.host,
            "port": conn.info.port,
            "in_recovery": in_recovery,
            "role": "standby" if in_recovery else "primary",
            "server_version": conn.info.server_version,
            "url_hosts": url_hosts(url),
        }
        if in_recovery:
            row = await (await conn.execute(_STANDBY)).fetchone()
            info["standby"] = (
                {"receive_lsn": row[0], "replay_lsn": row[1], "replay_delay_seconds": row[2]}
                if row
                else {}
            )
        else:
            cur = await conn.execute(_REPLICATION)
            cols = [c.name for c in cur.description or []]
            info["replication"] = [dict(zip(cols, r, strict=True)) for r in await cur.fetchall()]
        return info
    finally:
        await conn.close()


def _version(n: int) -> str:
    return f"{n // 10000}.{n % 10000}" if n >= 100000 else str(n)


def ready_url(url: str | None) -> str | None:
    """The /health/ready URL from either form: MS07_HEALTH_URL is the engine's *base* URL
    (as ``ms07 health`` and ``diagnose`` read it); ``--health-url`` may name the endpoint."""
    if not url:
        return None
    url = url.rstrip("/")
    return url if url.endswith("/health/ready") else f"{url}/health/ready"


OUTSIDE_CLUSTER = [
    "ms07 health   # the engine reconnects to PostgreSQL by itself: is it healthy again?",
    "systemctl restart ms07   # under systemd, only if /health/ready stays unhealthy once "
    "PostgreSQL answers (otherwise restart the `ms07 run` process)",
]


def build(settings: Settings, opts: Options, args: list[str] | None = None) -> Plan:
    from ms07.ops.healthcheck import base_url

    # The same discovery as `ms07 health`: --health-url, else MS07_HEALTH_URL, else the
    # engine's own port on this machine (not "no health URL, skipped").
    health_url = ready_url(base_url(settings, opts.health_url))

    def ns(c: PlanContext) -> str:
        return f"deployment/{c.kube.deployment} -n {c.kube.namespace}"

    # ---------------------------------------------------------------- 1 SELECT 1

    async def has_url(ctx: PlanContext) -> Check:
        return Check.passed(f"URL {redact_url(ctx.runtime.database_url)}")

    async def select_one(ctx: PlanContext) -> Outcome:
        url = ctx.runtime.database_url
        try:
            info = await probe(url)
        except Exception as exc:
            raise StepFailed(
                f"{exc}; a rollout restart cannot help until PostgreSQL answers"
            ) from None
        ctx.facts["db"] = info
        hosts = info["url_hosts"]
        listed = f"; the URL lists {len(hosts)} hosts: {', '.join(hosts)}" if len(hosts) > 1 else ""
        return Outcome(
            f"SELECT 1 in {info['select_ms']:.1f} ms (connect {info['connect_ms']:.1f} ms), "
            f"answered by {info['host']}:{info['port']} as {info['role']}, PostgreSQL "
            f"{_version(info['server_version'])}{listed}",
            detail={"database": info},
        )

    # ---------------------------------------------------------------- 2 role, replication

    async def replication(ctx: PlanContext) -> Outcome:
        info = ctx.facts.get("db") or await probe(ctx.runtime.database_url)
        where = f"{info['host']}:{info['port']}"
        if info["in_recovery"]:
            raise StepFailed(
                f"{where} answered as a standby (pg_is_in_recovery() is true): the engine needs "
                "the primary. "
                "After a failover, point MS07_DATABASE_URL at the new primary, or list every host "
                "with target_session_attrs=read-write"
            )
        rows = info.get("replication") or []
        if not rows:
            return Outcome(
                f"{where} is the primary; no standby is connected (pg_stat_replication is empty)",
                detail={"standbys": []},
            )
        ctx.reporter.table(
            "pg_stat_replication",
            ["standby", "client", "state", "sync", "replay lag (s)", "replay lag (bytes)"],
            [
                [
                    r["application_name"],
                    r["client_addr"],
                    r["state"],
                    r["sync_state"],
                    r["replay_lag_seconds"],
                    r["replay_lag_bytes"],
                ]
                for r in rows
            ],
        )
        worst = max((r["replay_lag_bytes"] or 0) for r in rows)
        return Outcome(
            f"{where} is the primary with {len(rows)} standby(s); largest replay lag {worst} bytes",
            detail={"standbys": rows},
        )

    # ---------------------------------------------------------------- 3 rollout restart

    async def deployment_ok(ctx: PlanContext) -> Check:
        state = await ctx.kube.deployment_state()
        return Check.passed(f"{ctx.kube.target}: {state.describe()}")

    async def restart(ctx: PlanContext) -> Outcome:
        stamp = await ctx.kube.rollout_restart()
        ctx.facts["restarted_at"] = stamp
        state = await ctx.kube.wait_rollout(opts.timeout)
        return Outcome(f"rolled out at {stamp}: {state.describe()}", detail={"restarted_at": stamp})

    async def restarted(ctx: PlanContext) -> Check:
        state = await ctx.kube.deployment_state()
        if not state.rolled_out() or state.restarted_at != ctx.facts.get("restarted_at"):
            return Check.failed(f"rollout not complete: {state.describe()}")
        pods = [p for p in await ctx.kube.pods() if not p.deleting]
        not_ready = [p.name for p in pods if not p.ready]
        if not_ready or len(pods) != state.replicas:
            return Check.failed(f"{len(pods)} pods, not Ready: {', '.join(not_ready) or 'none'}")
        return Check.passed(f"{len(pods)} new pods Ready")

    # ---------------------------------------------------------------- 4 /health/ready

    async def health_known(ctx: PlanContext) -> Check:
        if not health_url:
            return Check.passed(
                "no health URL (MS07_HEALTH_URL / --health-url): this step will be skipped"
            )
        return Check.passed(f"will poll {health_url}")

    async def healthy(ctx: PlanContext) -> Outcome:
        if not health_url:
            return Outcome(
                "no health URL configured (set MS07_HEALTH_URL or --health-url)", "skipped"
            )
        return await wait_healthy(health_url, ctx.settings.api_token(), opts.health_timeout)

    return Plan(
        name="db-connection",
        summary="Check PostgreSQL and its replication, then restart the pods so they reconnect.",
        cli="ms07 recover db-connection",
        args=list(args or []),
        outside_cluster=OUTSIDE_CLUSTER,
        steps=[
            Step(
                "Check that PostgreSQL answers (SELECT 1, timed) and who answered",
                f"{PSQL} -c '\\timing on' -c 'SELECT 1' -c 'SELECT inet_server_addr(), "
                "inet_server_port(), pg_is_in_recovery()'",
                select_one,
                has_url,
                changes=False,
                if_interrupted="nothing was changed",
            ),
            Step(
                "Check the server is the primary and its replication",
                # The reviewer's equivalent psql line, shown, never executed: no SQL is built.
                f"{PSQL} -c 'SELECT pg_is_in_recovery()' -c 'SELECT application_name, "  # nosec B608
                "client_addr, state, sync_state, replay_lag FROM pg_stat_replication'",
                replication,
                changes=False,
                if_interrupted="nothing was changed",
            ),
            Step(
                "Rollout restart the deployment so every pod reconnects",
                lambda c: (
                    f"kubectl rollout restart {ns(c)} && kubectl rollout status {ns(c)} "
                    f"--timeout={opts.timeout:g}s"
                ),
                restart,
                deployment_ok,
                restarted,
                needs_cluster=True,
                if_interrupted=(
                    "the rollout may be under way; the Deployment controller finishes it "
                    "(kubectl rollout status shows it)"
                ),
            ),
            Step(
                "Wait until /health/ready reports healthy",
                'curl -fsS -H "Authorization: Bearer $MS07_API_TOKEN" '
                f"{health_url or '<health-url>'}",
                healthy,
                health_known,
                changes=False,
                if_interrupted="nothing was changed",
            ),
        ],
    )


async def wait_healthy(url: str, token: str | None, within: float) -> Outcome:
    """Poll ``/health/ready`` until healthy. Not reachable at all from here (the Service is
    cluster-internal): skipped with a note, not failed."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + within
    last = ""
    reached = False
    degraded_since: float | None = None
    async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as client:
        while True:
            try:
                resp = await client.get(url, headers=headers)
            except httpx.HTTPError as exc:
                if not reached:
                    return Outcome(
                        f"not waited: {url} is not reachable from here ({type(exc).__name__}); "
                        "check it from inside the cluster",
                        "skipped",
                    )
                last = f"unreachable ({type(exc).__name__})"
            else:
                reached = True
                if resp.status_code == 401:
                    raise StepFailed(
                        f"{url} answered 401: set MS07_API_TOKEN to the engine's token"
                    )
                try:
                    body = resp.json()
                except ValueError:
                    body = {}
                status = body.get("status") if isinstance(body, dict) else None
                if resp.status_code == 200 and status == "healthy":
                    return Outcome(f"{url}: healthy", detail={"health": body})
                checks = body.get("checks", {}) if isinstance(body, dict) else {}
                bad = (
                    ", ".join(f"{k}={v}" for k, v in checks.items() if v != "healthy")
                    if isinstance(checks, dict)
                    else ""
                )
                last = f"HTTP {resp.status_code} {status or ''}".strip() + (
                    f" ({bad})" if bad else ""
                )
                if resp.status_code == 200 and status == "degraded":
                    # Ready, but something a restart does not fix (a destination down, say):
                    # once it lasts, report it instead of waiting out the whole timeout.
                    degraded_since = degraded_since or time.monotonic()
                    if time.monotonic() - degraded_since >= min(DEGRADED_GRACE, within):
                        return Outcome(
                            f"{url}: ready but degraded ({bad})", "warning", {"health": body}
                        )
                else:
                    degraded_since = None
            if time.monotonic() >= deadline:
                raise StepFailed(f"{url} not healthy after {within:g}s: {last}")
            await asyncio.sleep(1.0)
