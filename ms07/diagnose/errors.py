"""``diagnose errors``: why deliveries fail, per destination, error code and HTTP status.

Over the window: each kind of failure with its count, first and last time seen and the
latest message; then one finding per destination and class of failure with the next
command that can show more (5xx: the receiver's side, replay once fixed; 4xx: the
payload or the contract; 401/403: ``diagnose auth``; timeouts: ``diagnose timeouts``;
refused or reset connections: ``destinations check``). A destination whose attempts all
failed is down (CRITICAL); one failing more than ``failure_rate_warning_percent`` is a
WARNING; a few failures among successes are INFO.
"""

from __future__ import annotations

from typing import Any

from ms07.diagnose.common import rows
from ms07.diagnose.context import Context, part
from ms07.diagnose.model import DESTINATION_DOWN, CheckResult, plural
from ms07.store import diagnose_sql as sql

# error_code -> class. A code missing here is "other".
CLASSES = {
    "HTTP_5XX": "5xx",
    "HTTP_4XX": "4xx",
    "HTTP_3XX": "4xx",
    "PAYLOAD_TOO_LARGE": "4xx",
    "INVALID_MESSAGE": "4xx",
    "AUTHENTICATION_FAILED": "auth",
    "AUTH_CONFIG_ERROR": "auth",
    "CONNECTION_TIMEOUT": "timeout",
    "READ_TIMEOUT": "timeout",
    "REQUEST_TIMEOUT": "timeout",
    "CONNECTION_ERROR": "connection",
    "DESTINATION_FORBIDDEN": "forbidden",
    "RATE_LIMITED": "rate",
    "CIRCUIT_OPEN": "circuit",
}
# The class a row belongs to when its HTTP status says more than its code.
_BY_STATUS = {401: "auth", 403: "auth", 408: "timeout", 429: "rate"}
# Shown first: the classes that say most about why (a circuit opens because of the others).
_CLASS_ORDER = ["connection", "5xx", "timeout", "auth", "4xx", "forbidden", "rate", "other", "circuit"]


def classify(row: dict[str, Any]) -> str:
    status = row.get("response_status_code")
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if isinstance(status, int) and 500 <= status <= 599:
        return "5xx"
    return CLASSES.get(str(row.get("error_code")), "other")


def advice(kind: str, name: str, since: str, last_id: str) -> tuple[str, str]:
    """(remedy, command) for a class of failure at destination ``name``: a command that
    can show more about exactly that class."""
    if kind == "5xx":
        return (f"{name} answers with server errors: the fault is on the receiver's side (its logs "
                "around the times shown); retries go on with backoff and what exhausts them is "
                "parked: once the receiver is fixed, replay with `ms07 dlq replay --all`",
                "ms07 dlq list")
    if kind == "4xx":
        return (f"{name} rejects the request itself (payload, schema or contract): compare the "
                f"payload of {last_id} with what {name} expects; these are not retried",
                f"ms07 status {last_id}")
    if kind == "auth":
        return (f"{name} refuses our credentials", f"ms07 diagnose auth --since {since}")
    if kind == "timeout":
        return (f"{name} does not answer within the timeout", f"ms07 diagnose timeouts --since {since}")
    if kind == "connection":
        return (f"{name} cannot be reached (connection refused or reset): is it running and "
                "listening on the configured URL?", f"ms07 destinations check {name}")
    if kind == "forbidden":
        return (f"the SSRF guard refused {name}'s address: allow it in network.allow_cidrs if it "
                "is meant to be reached", f"ms07 destinations check {name}")
    if kind == "rate":
        return (f"{name} asks us to slow down (429): set destinations.{name}.rate_limit below its "
                "limit", f"ms07 diagnose latency --since {since}")
    if kind == "circuit":
        return (f"the circuit to {name} opened after repeated failures: the other failures of "
                f"{name} say why", f"ms07 diagnose timeouts --since {since}")
    return ("read the latest message and the distribution's attempts", f"ms07 status {last_id}")


def _when(value: Any) -> str:
    return str(value)[:19] if value is not None else "-"


async def check(ctx: Context) -> CheckResult:
    """Run the errors check; see the module docstring."""
    r = CheckResult("errors")
    o = ctx.options
    since = o.since_text

    async def load() -> None:
        async with ctx.connection() as conn:
            found = await rows(conn, sql.ERRORS, {"since": o.since_seconds})
            outcomes = {x["destination_name"]: x for x in await rows(conn, sql.OUTCOMES, {"since": o.since_seconds})}
        r.details.update({"errors": found, "outcomes": outcomes})
        if not found:
            total = sum(int(x["attempts"]) for x in outcomes.values())
            r.add("none", "info", f"no failed attempt in the last {since}",
                  f"{plural(total, 'attempt', 'attempts')} in the window")
            return
        table = r.section(f"failed attempts, last {since}",
                          ["destination", "error", "HTTP", "count", "first", "last", "latest message"])
        for f in found:
            table.rows.append([f["destination_name"], f["error_code"], str(f["response_status_code"] or "-"),
                               str(f["n"]), _when(f["first_at"]), _when(f["last_at"]), f["last_message"][:120]])
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for f in found:
            groups.setdefault((f["destination_name"], classify(f)), []).append(f)
        ordered = sorted(groups.items(), key=lambda kv: (kv[0][0], _CLASS_ORDER.index(kv[0][1])
                                                         if kv[0][1] in _CLASS_ORDER else 99))
        for (name, kind), mine in ordered:
            out = outcomes.get(name) or {"attempts": 0, "successes": 0, "last_success_at": None}
            attempts, successes = int(out["attempts"]), int(out["successes"])
            failures = sum(int(f["n"]) for f in mine)
            latest = max(mine, key=lambda f: f["last_at"])
            first = min(f["first_at"] for f in mine)
            rate = 100.0 * failures / attempts if attempts else 100.0
            down = successes == 0 and attempts >= 3
            if down:
                severity, impact = "critical", DESTINATION_DOWN
            elif rate > o.failure_rate_warning_percent and failures >= 3:
                severity, impact = "warning", None
            else:
                severity, impact = "info", None
            codes = ", ".join(sorted({f"{f['error_code']}" + (f" {f['response_status_code']}"
                                                              if f["response_status_code"] else "") for f in mine}))
            remedy, command = advice(kind, name, since, latest["last_distribution_id"])
            summary = (f"{name}: {failures} of {attempts} attempts failed with {codes} in the last {since}"
                       + (" and none succeeded" if down else ""))
            evidence = (f"first {_when(first)}, last {_when(latest['last_at'])}; latest: "
                        f"{latest['last_message'][:200] or '(no message)'}"
                        + (f"; last success {_when(out['last_success_at'])}" if out.get("last_success_at") else ""))
            # Literal ids: runbooks name them (finding('errors.destination_down')).
            if down:
                r.add("destination_down", severity, summary, evidence, remedy, command, subject=name, impact=impact)
            else:
                r.add("failures", severity, summary, evidence, remedy, command, subject=name, impact=impact)

    await part(r, "failed attempts", load)
    return r
