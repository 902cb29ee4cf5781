"""``diagnose memory`` (guide, problem 5): workers that leak.

RSS of every worker from its heartbeats and its linear trend over the window (sustained
growth above the threshold is flagged); this user's ms07 processes on this machine (psutil);
the pods' memory, limits and ``OOMKilled`` restarts from the Kubernetes API when a
cluster is configured; the top allocation sites from the engine's ``/debug/memory``
(tracemalloc) when the engine has it enabled.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
import psutil

from ms07.diagnose.common import num, rows
from ms07.diagnose.context import Context, part
from ms07.diagnose.model import CheckResult, fmt_bytes, fmt_duration, listing
from ms07.logs import clip
from ms07.store import diagnose_sql as sql

MIN_SAMPLES = 6
MIN_R2 = 0.5
NEAR = 0.9


def trend(row: dict[str, Any]) -> dict[str, float | None]:
    """Growth of a worker's RSS over its samples, from the SQL regression."""
    slope, intercept = row.get("slope"), row.get("intercept")
    if slope is None or intercept is None:
        return {"growth_percent": None, "per_hour": None, "span": 0.0, "r2": None}
    first = intercept + slope * float(row["x_first"])
    last = intercept + slope * float(row["x_last"])
    growth = (last - first) / first * 100 if first > 0 else None
    return {"growth_percent": growth, "per_hour": slope * 3600, "span": float(row["x_last"]) - float(row["x_first"]),
            "r2": row.get("r2")}


def ms07_processes(uid: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """ms07 processes of user ``uid`` (default: ours) on this machine, not this one
    (``ms07 ...`` or ``python -m ms07``), and how many other users' were left out: on a
    shared host another user's ms07 is not this installation's worker."""
    me, uid = os.getpid(), os.getuid() if uid is None else uid
    out, others = [], 0
    for p in psutil.process_iter(["pid", "cmdline", "memory_info", "create_time", "uids"]):
        cmd = p.info.get("cmdline") or []
        if p.pid == me or not cmd:
            continue
        is_ms07 = os.path.basename(cmd[0]) == "ms07" or any(
            a == "ms07" and i > 0 and cmd[i - 1] == "-m" for i, a in enumerate(cmd)
        ) or (len(cmd) > 1 and os.path.basename(cmd[1]) == "ms07")
        if not is_ms07:
            continue
        uids = p.info.get("uids")
        if uids is None or uids.real != uid:
            others += 1
            continue
        mem = p.info.get("memory_info")
        out.append({"pid": p.pid, "command": clip(" ".join(cmd), 80), "rss_bytes": mem.rss if mem else None,
                    "create_time": p.info.get("create_time")})
    return out, others


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


async def check(ctx: Context) -> CheckResult:
    """Run the memory check; see the module docstring."""
    r = CheckResult("memory")
    o = ctx.options
    threshold = ctx.settings.memory.threshold_mb * 1024 * 1024

    async def workers() -> None:
        async with ctx.connection() as conn:
            current = await rows(conn, sql.WORKERS)
            trends = {t["worker_id"]: t for t in await rows(conn, sql.RSS_TREND, {"since": o.since_seconds})}
        table = r.section(f"worker RSS (heartbeats, trend over the last {o.since_text})",
                          ["worker", "host / pid", "status", "RSS", "trend", "growth", "r2", "samples", "last beat"])
        growing: list[tuple[dict[str, Any], dict[str, Any], dict[str, float | None]]] = []
        near: list[dict[str, Any]] = []
        for w in current:
            t = trends.get(w["worker_id"])
            age = float(w["seconds_since_update"])
            if t is None and (w["status"] == "stopped" or age > o.since_seconds):
                continue
            tr = trend(t) if t else {"growth_percent": None, "per_hour": None, "span": 0.0, "r2": None}
            table.rows.append([w["worker_id"], f"{w['host']} / {w['pid']}", w["status"], fmt_bytes(w["rss_bytes"]),
                               f"{fmt_bytes(tr['per_hour'])}/h" if tr["per_hour"] is not None else "-",
                               f"{tr['growth_percent']:+.1f}%" if tr["growth_percent"] is not None else "-",
                               num(tr["r2"], 2), str(t["samples"]) if t else "0", f"{fmt_duration(age)} ago"])
            growth, span, r2 = tr["growth_percent"], tr["span"] or 0.0, tr["r2"] or 0.0
            if (t is not None and t["samples"] >= MIN_SAMPLES and span >= o.rss_trend_min_seconds
                    and growth is not None and growth > o.rss_growth_warning_percent and r2 >= MIN_R2):
                growing.append((w, t, tr))
            if w["status"] != "stopped" and age <= o.stale_worker_seconds and w["rss_bytes"] >= NEAR * threshold:
                near.append(w)
        r.details["workers"] = current
        r.details["trends"] = trends
        for w, t, tr in growing:
            r.add("rss_growth", "warning",
                  f"{w['worker_id']}: RSS grew {tr['growth_percent']:.0f}% in {fmt_duration(tr['span'])} "
                  f"(threshold {o.rss_growth_warning_percent:g}%)",
                  f"{fmt_bytes(t['min_rss'])} -> {fmt_bytes(t['max_rss'])}, {fmt_bytes(tr['per_hour'])}/h, "
                  f"r2 {tr['r2']:.2f} over {t['samples']} samples",
                  "sustained growth is a leak: enable service.debug_memory and compare /debug/memory "
                  "snapshots; restarting the worker reclaims the memory meanwhile (the memory guard "
                  f"drains it at {ctx.settings.memory.threshold_mb:g} MB)",
                  "ms07 recover worker-crash --dry-run", subject=w["worker_id"])
        for w in near:
            r.add("rss_near_threshold", "warning",
                  f"{w['worker_id']}: RSS {fmt_bytes(w['rss_bytes'])} is near memory.threshold_mb "
                  f"({ctx.settings.memory.threshold_mb:g} MB)",
                  "the memory guard will drain and restart it soon", "find what grows (see the trend)",
                  f"ms07 diagnose memory --since {o.since_text}", subject=w["worker_id"])
        live = [w for w in current
                if w["status"] != "stopped" and float(w["seconds_since_update"]) <= o.stale_worker_seconds]
        if not growing and not near:
            r.add("workers", "info", f"{len(live)} live worker(s); no sustained RSS growth",
                  ", ".join(f"{w['worker_id']} {fmt_bytes(w['rss_bytes'])}" for w in live[:5]) or "no live worker",
                  "" if live else "trends need workers beating for at least "
                  f"{fmt_duration(o.rss_trend_min_seconds)}")

    await part(r, "worker RSS", workers)
    procs, others = await asyncio.to_thread(ms07_processes)
    user = _user(os.getuid())
    table = r.section(f"ms07 processes of user {user} on this machine", ["pid", "command", "RSS"])
    for p in procs:
        table.rows.append([str(p["pid"]), p["command"], fmt_bytes(p["rss_bytes"])])
    r.details["processes"] = procs
    r.details["other_users_processes"] = others
    r.add("local_processes", "info", f"{len(procs)} ms07 process(es) of user {user} on this machine",
          ", ".join(f"pid {p['pid']} {fmt_bytes(p['rss_bytes'])}" for p in procs[:5])
          + (f"; {others} of other users not listed" if others else ""))
    await part(r, "pods", lambda: _pods(ctx, r))
    await _allocations(ctx, r)
    return r


async def _pods(ctx: Context, r: CheckResult) -> None:
    from kubernetes.utils import parse_quantity

    from ms07.kube.client import Kube

    s = ctx.settings
    kube = Kube.from_settings(s, kubeconfig=ctx.options.kubeconfig)
    selector = kube.selector
    if not kube.configured():
        # No cluster at all (a laptop, CI): that part is skipped, not a failed check.
        r.add("kubernetes", "info", "Kubernetes not configured: pod memory and OOMKilled restarts not checked",
              "no in-cluster service account and no kubeconfig (KUBECONFIG or ~/.kube/config)")
        return
    try:
        async with asyncio.timeout(15.0):
            pods = await kube.pods()
        async with asyncio.timeout(15.0):
            metrics = await kube.pod_metrics()
    except Exception as exc:
        r.not_checked("kubernetes", "pods",
                      clip(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", 200),
                      "check the kubeconfig / service account and that the API server answers",
                      "ms07 recover worker-crash --dry-run")
        return
    finally:
        kube.close()
    note = (None if metrics is not None
            else "metrics.k8s.io not available: pod usage unknown (is metrics-server installed?)")
    usage = {m["pod"]: float(sum(parse_quantity(c.get("memory", "0")) for c in m["containers"].values()))
             for m in metrics or []}
    table = r.section(f"pods {selector} in {kube.namespace}",
                      ["pod", "phase", "memory", "limit", "restarts", "last termination"])
    guard = s.memory.threshold_mb * 1024 * 1024
    for p in pods:
        used, limit = usage.get(p.name), p.memory_limit_bytes
        table.rows.append([p.name, p.status, fmt_bytes(used), fmt_bytes(limit), str(p.restarts),
                           f"{p.last_reason or '-'} {p.last_finished_at or ''}".strip()])
        if p.last_reason == "OOMKilled":
            r.add("oom_killed", "critical", f"pod {p.name} was OOMKilled ({p.restarts} restart(s))",
                  f"last termination {p.last_reason} at {p.last_finished_at}; limit {fmt_bytes(limit)}",
                  "the kernel killed it before the memory guard could drain it: set memory.threshold_mb "
                  "below the pod limit, find the leak (see the RSS trend), or raise the limit",
                  "ms07 recover worker-crash --dry-run", subject=p.name)
        if limit and guard >= limit:
            r.add("guard_above_limit", "warning",
                  f"pod {p.name}: memory.threshold_mb ({s.memory.threshold_mb:g} MB) is not below its limit "
                  f"({fmt_bytes(limit)})", "the OOM killer acts before the graceful drain",
                  "set memory.threshold_mb to about 80% of the pod's memory limit",
                  f"ms07 diagnose memory --since {ctx.options.since_text}", subject=p.name)
        elif limit and used and used >= NEAR * limit:
            r.add("pod_near_limit", "warning", f"pod {p.name} uses {fmt_bytes(used)} of {fmt_bytes(limit)}",
                  "", "it will be OOMKilled soon unless the memory guard drains it first",
                  "ms07 recover worker-crash --dry-run", subject=p.name)
    r.details["pods"] = [{**p.as_dict(), "memory_usage_bytes": usage.get(p.name)} for p in pods]
    if not any(f.id.startswith("memory.oom") for f in r.findings):
        r.add("pods", "info", f"{len(pods)} pod(s) matching {selector}, none OOMKilled",
              (note + "; " if note else "") + listing([f"{p.name} restarts {p.restarts}" for p in pods], 5))


async def _allocations(ctx: Context, r: CheckResult) -> None:
    """Top allocation sites from the engine's /debug/memory (tracemalloc), when enabled."""
    url = ctx.options.engine_url(ctx.settings) + "/debug/memory"
    token = ctx.settings.api_token()
    expected = ctx.settings.service.debug_memory
    try:
        async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client:
            resp = await client.get(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    except httpx.HTTPError as exc:
        if expected:
            r.not_checked("engine", "top allocations", f"GET {url}: {type(exc).__name__}",
                          "start the engine or pass its address with --url / MS07_HEALTH_URL", "ms07 diagnose health")
        else:
            r.add("allocations", "info", "top allocations not checked: engine not reachable and "
                  "service.debug_memory is off", url)
        return
    if resp.status_code == 404:
        r.add("allocations", "info", "memory debugging is off in the engine (service.debug_memory)", url,
              "to find a leak, set service.debug_memory: true and run this check twice, some minutes apart")
        return
    if resp.status_code != 200:
        r.not_checked("engine", "top allocations", f"GET {url} -> HTTP {resp.status_code}",
                      "set MS07_API_TOKEN to the engine's token" if resp.status_code == 401 else "",
                      "ms07 diagnose health")
        return
    data = resp.json()
    table = r.section("top allocation sites (tracemalloc)", ["site", "size", "blocks", "growth since last"])
    growth = {d["site"]: d for d in data.get("diff", [])}
    for t in data.get("top", [])[:10]:
        g = growth.get(t["site"])
        table.rows.append([t["site"][-90:], fmt_bytes(t["size_bytes"]), str(t["count"]),
                           fmt_bytes(g["size_diff_bytes"]) if g else "-"])
    r.details["allocations"] = data
    top = data.get("top", [])[:3]
    r.add("allocations", "info",
          f"traced memory {fmt_bytes(data.get('traced_current_bytes'))} "
          f"(peak {fmt_bytes(data.get('traced_peak_bytes'))})",
          "; ".join(f"{t['site'][-60:]} {fmt_bytes(t['size_bytes'])}" for t in top),
          "run again in a few minutes: sites whose size keeps growing are the leak")
