"""A Jepsen-style total-queue ledger over one run: nothing accepted may be lost.

Each bucket has its own witness; none is what is left over from the others:

- **accepted**: the ids ``submit`` returned (the client saw them accepted) and the
  *indeterminate* ones: job rows Postgres holds for submits whose answer the client never
  got (the client gave up, or the engine died before answering). Both must settle;
- **delivered** (witness: the receiver): accepted ids the receiver accepted (answered 2xx)
  at least once: the ``Idempotency-Key`` of a single delivery, the ``distribution_id`` of
  every item of a batch body;
- **duplicated**: accepted deliveries beyond the first, over every id;
- **in DLQ** (witnesses: Postgres and the DLQ stream): accepted ids never delivered that
  Postgres holds parked (``failed`` or ``dead``) *and* the DLQ stream names with a reason;
  a parked job whose entry is missing counts only when an injected Redis fault explains
  the gap (a FLUSHALL empties the stream; a SIGKILL with AOF ``everysec`` loses the last
  writes);
- **lost** = accepted - delivered - in DLQ: never settled (still open), parked without a
  DLQ entry that anything explains, or no trace at all.

A run is *valid* when the witnesses agree: every id the receiver saw was accepted, every
accepted id has its job row, Postgres never says ``delivered`` for an id the receiver never
got, every DLQ entry has a reason and names a job Postgres holds parked, every parked job
has its DLQ entry (or an injected fault explains why not), and the DLQ holds no more than
the run's faults can explain (``allowed_dlq``: how many parked jobs each reason may
account for; the default allows none). It *passes* only when it is valid and ``lost`` is
0. Used by tests/faults and bench/chaos.py.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ms07.store.jobs import dlq_reason

BATCH_HEADER = "X-Distribution-Batch-Size"
PARKED = ("failed", "dead")
OPEN = ("queued", "processing", "retrying")
# Redis with AOF ``everysec`` fsyncs once a second: a SIGKILL may lose what was written in
# the second (and a half, for a slow fsync) before it.
AOF_WINDOW_SECONDS = 2.5


class Job(NamedTuple):
    """A job row as the ledger reads it (``completed_at`` as epoch seconds)."""

    status: str
    code: str | None
    completed_at: float | None = None


class RedisFault(NamedTuple):
    """An injected fault that may have erased DLQ entries: ``flushall`` (every entry written
    before ``until``) or ``redis restart`` (SIGKILL + AOF: those written shortly before)."""

    kind: str
    at: float
    until: float

    def explains(self, completed_at: float | None) -> bool:
        if completed_at is None:
            return False
        if self.kind == "redis flushall":
            return completed_at <= self.until
        return self.at - AOF_WINDOW_SECONDS <= completed_at <= self.until


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
    jobs: dict[str, Job]  # every row
    dlq_stream: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> DLQ fields
    dlq_without_job: int = 0  # DLQ stream entries naming no job (malformed entries)
    redis_faults: list[RedisFault] = field(default_factory=list)
    allowed_dlq: dict[str, int] = field(default_factory=dict)  # reason -> parked jobs the faults explain
    notes: list[str] = field(default_factory=list)

    @property
    def indeterminate(self) -> set[str]:
        """Jobs the system accepted on a submit whose answer the client never got."""
        return set(self.jobs) - self.submitted

    @property
    def accepted(self) -> set[str]:
        return self.submitted | self.indeterminate

    @property
    def delivered(self) -> set[str]:
        return self.accepted & set(self.deliveries)

    @property
    def duplicated(self) -> int:
        return sum(n - 1 for n in self.deliveries.values() if n > 1)

    @property
    def parked(self) -> set[str]:
        """Accepted ids Postgres holds parked (delivered ones included)."""
        return {i for i in self.accepted if i in self.jobs and self.jobs[i].status in PARKED}

    def _explained(self, i: str) -> bool:
        return any(f.explains(self.jobs[i].completed_at) for f in self.redis_faults)

    @property
    def parked_without_dlq(self) -> set[str]:
        """Parked jobs with no DLQ entry that no injected Redis fault explains."""
        return {i for i in self.parked if i not in self.dlq_stream and not self._explained(i)}

    @property
    def in_dlq(self) -> set[str]:
        return self.parked - self.delivered - self.parked_without_dlq

    @property
    def lost(self) -> set[str]:
        return self.accepted - self.delivered - self.in_dlq

    @property
    def open(self) -> set[str]:
        return {i for i in self.accepted if i in self.jobs and self.jobs[i].status in OPEN}

    def dlq_reasons(self) -> Counter[str]:
        """Parked jobs per reason (the DLQ entry's, else the one the engine would write)."""
        out: Counter[str] = Counter()
        for i in self.parked:
            out[self.dlq_stream.get(i, {}).get("reason") or dlq_reason(self.jobs[i].status, self.jobs[i].code)] += 1
        return out

    def dlq_codes(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for i in self.in_dlq:
            status, code, _ = self.jobs[i]
            reason = self.dlq_stream.get(i, {}).get("reason")
            out[f"{code or status}" + (f" ({reason})" if reason else "")] += 1
        return out

    def problems(self) -> list[str]:
        """Where the witnesses disagree (empty: valid). Each check can fail on its own."""
        out = []
        known = self.accepted
        phantom = set(self.deliveries) - known
        if phantom:
            out.append(f"{len(phantom)} ids delivered that nobody accepted, e.g. {sorted(phantom)[:3]}")
        rowless = self.submitted - set(self.jobs)
        if rowless:
            out.append(f"{len(rowless)} accepted ids have no job row, e.g. {sorted(rowless)[:3]}")
        claimed = {i for i, j in self.jobs.items() if j.status == "delivered"} - set(self.deliveries)
        if claimed:
            out.append(f"{len(claimed)} jobs Postgres calls delivered never reached the receiver, "
                       f"e.g. {sorted(claimed)[:3]}")
        stray = set(self.dlq_stream) - known
        if stray:
            out.append(f"{len(stray)} DLQ entries name ids nobody accepted, e.g. {sorted(stray)[:3]}")
        unparked = (set(self.dlq_stream) & known) - self.parked
        if unparked:
            out.append(f"{len(unparked)} DLQ entries name jobs Postgres does not hold parked, "
                       f"e.g. {sorted(unparked)[:3]}")
        reasonless = sorted(i for i, f in self.dlq_stream.items() if not f.get("reason"))
        if reasonless:
            out.append(f"{len(reasonless)} DLQ entries have no reason, e.g. {reasonless[:3]}")
        if self.parked_without_dlq:
            out.append(f"{len(self.parked_without_dlq)} parked jobs have no DLQ entry and no injected fault "
                       f"explains it, e.g. {sorted(self.parked_without_dlq)[:3]}")
        for reason, n in sorted(self.dlq_reasons().items()):
            allowed = self.allowed_dlq.get(reason, 0)
            if n > allowed:
                out.append(f"{n} jobs parked as {reason}: more than the {allowed} the injected faults explain")
        return out

    @property
    def valid(self) -> bool:
        return not self.problems()

    @property
    def passed(self) -> bool:
        return self.valid and not self.lost

    def row(self) -> dict[str, Any]:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.dlq_codes().items()))
        return {
            "scenario": self.name,
            "submitted": len(self.submitted),
            "indeterminate": len(self.indeterminate),
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
            settled = self.indeterminate & (self.delivered | self.in_dlq)
            lines.append(f"accepted without an answer to the client: {len(self.indeterminate)} "
                         f"({len(settled)} settled)")
        delivered_then_parked = self.parked & self.delivered
        if delivered_then_parked:
            lines.append(f"delivered, then parked (the receiver answered after the timeout): "
                         f"{len(delivered_then_parked)}")
        explained = {i for i in self.parked if i not in self.dlq_stream} - self.parked_without_dlq
        if explained:
            lines.append(f"parked, DLQ entry erased by an injected Redis fault: {len(explained)}")
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


async def collect(conn: Any, redis: Any, name: str, submitted: Iterable[str], deliveries: Counter[str], *,
                  redis_faults: Iterable[RedisFault] = (), allowed_dlq: Mapping[str, int] | None = None) -> Ledger:
    """Read Postgres (every job) and the DLQ stream, and build the ledger.

    ``conn`` is a psycopg AsyncConnection, ``redis`` a redis.asyncio client or None (Redis
    gone: the DLQ stream part stays empty)."""
    cur = await conn.execute("SELECT distribution_id::text, status, last_error_code, extract(epoch FROM completed_at)"
                             " FROM distribution_jobs")
    jobs = {r[0]: Job(r[1], r[2], float(r[3]) if r[3] is not None else None) for r in await cur.fetchall()}
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
    return Ledger(name, set(submitted), Counter(deliveries), jobs, dlq, without_job, list(redis_faults),
                  dict(allowed_dlq or {}))


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
