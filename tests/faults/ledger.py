"""A Jepsen-style total-queue ledger over one run: nothing accepted may be lost.

- **submitted**: the distribution ids ``submit`` returned (the client saw them accepted);
- **delivered**: the ids the receiver accepted (answered 2xx) at least once: the
  ``Idempotency-Key`` of a single delivery, the ``distribution_id`` of every item of a
  batch body;
- **duplicated**: accepted deliveries beyond the first, over every id;
- **in DLQ**: submitted ids never delivered that Postgres holds parked (``failed`` or
  ``dead``), with their error code (the DLQ stream's reason where it still has one: a
  Redis FLUSHALL empties it, Postgres keeps the truth);
- **lost** = submitted - delivered - in DLQ.

A run is *valid* when the ledger adds up: every id the receiver saw was accepted (by the
client, or by the system on a submit whose answer the client never got), every accepted
id has its job row, Postgres never says ``delivered`` for an id the receiver never got,
and the buckets partition what was submitted. It *passes* only when it is valid and
``lost`` is 0. Used by tests/faults and bench/chaos.py.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

BATCH_HEADER = "X-Distribution-Batch-Size"
PARKED = ("failed", "dead")
OPEN = ("queued", "processing", "retrying")


def ids_in_request(headers: Mapping[str, str], body: bytes) -> list[str]:
    """The distribution ids one request carried (every item of a batch)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if BATCH_HEADER.lower() in lowered:
        try:
            items = json.loads(body)
        except ValueError:
            return []
        return [str(i.get("distribution_id")) for i in items if isinstance(i, dict)] if isinstance(items, list) else []
    key = lowered.get("idempotency-key")
    return [key] if key else []


def deliveries_from(requests: Iterable[tuple[Mapping[str, str], bytes, int | None]]) -> Counter[str]:
    """Accepted deliveries per id from (headers, body, answered status) of each request."""
    counts: Counter[str] = Counter()
    for headers, body, status in requests:
        if status is not None and 200 <= status < 300:
            counts.update(ids_in_request(headers, body))
    return counts


@dataclass
class Ledger:
    """One run's accounting. Build with :func:`collect`."""

    name: str
    submitted: set[str]
    deliveries: Counter[str]
    jobs: dict[str, tuple[str, str | None]]  # id -> (status, last_error_code), every row
    dlq_stream: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> DLQ fields
    dlq_without_job: int = 0  # DLQ stream entries naming no job (malformed entries)
    notes: list[str] = field(default_factory=list)

    @property
    def delivered(self) -> set[str]:
        return self.submitted & set(self.deliveries)

    @property
    def duplicated(self) -> int:
        return sum(n - 1 for n in self.deliveries.values() if n > 1)

    @property
    def parked(self) -> set[str]:
        return {i for i, (status, _) in self.jobs.items() if status in PARKED}

    @property
    def in_dlq(self) -> set[str]:
        return (self.submitted & self.parked) - self.delivered

    @property
    def lost(self) -> set[str]:
        return self.submitted - self.delivered - self.parked

    @property
    def open(self) -> set[str]:
        return {i for i in self.submitted if self.jobs.get(i, ("", None))[0] in OPEN}

    @property
    def indeterminate(self) -> set[str]:
        """Jobs the system accepted on a submit whose answer the client never got."""
        return set(self.jobs) - self.submitted

    def dlq_reasons(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for i in self.in_dlq:
            status, code = self.jobs[i]
            reason = self.dlq_stream.get(i, {}).get("reason")
            out[f"{code or status}" + (f" ({reason})" if reason else "")] += 1
        return out

    def problems(self) -> list[str]:
        """Why the ledger does not add up (empty: valid)."""
        out = []
        known = self.submitted | set(self.jobs)
        phantom = set(self.deliveries) - known
        if phantom:
            out.append(f"{len(phantom)} ids delivered that nobody accepted, e.g. {sorted(phantom)[:3]}")
        rowless = self.submitted - set(self.jobs)
        if rowless:
            out.append(f"{len(rowless)} accepted ids have no job row, e.g. {sorted(rowless)[:3]}")
        claimed = {i for i, (status, _) in self.jobs.items() if status == "delivered"} - set(self.deliveries)
        if claimed:
            out.append(f"{len(claimed)} jobs Postgres calls delivered never reached the receiver, "
                       f"e.g. {sorted(claimed)[:3]}")
        stray = set(self.dlq_stream) - known
        if stray:
            out.append(f"{len(stray)} DLQ entries name ids nobody accepted, e.g. {sorted(stray)[:3]}")
        if len(self.delivered) + len(self.in_dlq) + len(self.lost) != len(self.submitted):
            out.append("delivered + in DLQ + lost != submitted")
        return out

    @property
    def valid(self) -> bool:
        return not self.problems()

    @property
    def passed(self) -> bool:
        return self.valid and not self.lost

    def row(self) -> dict[str, Any]:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.dlq_reasons().items()))
        return {
            "scenario": self.name,
            "submitted": len(self.submitted),
            "delivered": len(self.delivered),
            "duplicated": self.duplicated,
            "in DLQ": f"{len(self.in_dlq)}" + (f" ({reasons})" if reasons else ""),
            "lost": len(self.lost),
            "valid": "yes" if self.valid else "NO",
        }

    def summary(self) -> str:
        lines = [" | ".join(f"{k}={v}" for k, v in self.row().items())]
        if self.open:
            lines.append(f"still open: {len(self.open)}")
        if self.indeterminate:
            lines.append(f"accepted without an answer to the client: {len(self.indeterminate)}")
        delivered_then_parked = self.submitted & self.parked & self.delivered
        if delivered_then_parked:
            lines.append(f"delivered, then parked (the receiver answered after the timeout): "
                         f"{len(delivered_then_parked)}")
        if self.dlq_without_job:
            lines.append(f"DLQ entries without a job (malformed entries): {self.dlq_without_job}")
        lines += [f"PROBLEM: {p}" for p in self.problems()]
        lines += self.notes
        return "\n".join(lines)

    def check(self) -> None:
        """Fail (AssertionError) unless the ledger adds up and nothing was lost."""
        assert self.valid, self.summary()
        assert not self.lost, f"lost {sorted(self.lost)[:10]}\n{self.summary()}"


@dataclass
class Row:
    """A ledger row read back from a report (bench/chaos.py --json)."""

    data: dict[str, Any]

    def row(self) -> dict[str, Any]:
        return self.data


def table(ledgers: Iterable[Ledger | Row]) -> str:
    """The ledgers as one Markdown table."""
    rows = [lg.row() for lg in ledgers]
    if not rows:
        return ""
    head = list(rows[0])
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(out)


async def collect(conn: Any, redis: Any, name: str, submitted: Iterable[str],
                  deliveries: Counter[str]) -> Ledger:
    """Read Postgres (every job) and the DLQ stream, and build the ledger.

    ``conn`` is a psycopg AsyncConnection, ``redis`` a redis.asyncio client or None (Redis
    gone: the DLQ stream part stays empty)."""
    cur = await conn.execute("SELECT distribution_id::text, status, last_error_code FROM distribution_jobs")
    jobs = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
    dlq: dict[str, dict[str, str]] = {}
    without_job = 0
    if redis is not None:
        for _, fields in await redis.xrange("distribution:dlq"):
            fields = {_text(k): _text(v) for k, v in fields.items()}
            did = fields.get("distribution_id", "")
            if did:
                dlq[did] = fields
            else:
                without_job += 1
    return Ledger(name, set(submitted), Counter(deliveries), jobs, dlq, without_job)


async def open_count(conn: Any, ids: Iterable[str] | None = None) -> int:
    """How many jobs (of ``ids``, or all) are still queued, processing or retrying."""
    if ids is None:
        cur = await conn.execute(
            "SELECT count(*) FROM distribution_jobs WHERE status IN ('queued', 'processing', 'retrying')")
    else:
        cur = await conn.execute(
            "SELECT count(*) FROM distribution_jobs WHERE status IN ('queued', 'processing', 'retrying') "
            "AND distribution_id = ANY(%s::uuid[])", (list(ids),))
    row = await cur.fetchone()
    return int(row[0])


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
