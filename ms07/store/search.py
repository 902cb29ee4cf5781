"""The search statement: a filter's jobs, newest first (created, or finished with
``on=finished``), one keyset page at a time.

The WHERE clause is put together from fixed fragments (the values travel as parameters),
each served by an index (migrations 0006 and 0007; tests/store/test_search_sql.py explains each).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row

from ms07.store.jobs import JOB_COLUMNS

if TYPE_CHECKING:
    from ms07.ops.search import JobFilter

_TIME_COLUMN = {"created": "created_at", "finished": "completed_at"}


def where(flt: JobFilter, after: tuple[dt.datetime, str] | None = None) -> tuple[str, list[Any]]:
    """The WHERE clause (with its parameters) that picks ``flt``'s jobs past ``after``."""
    conds: list[str] = []
    params: list[Any] = []
    if flt.destination is not None:
        conds.append("destination_name = %s")
        params.append(flt.destination)
    if len(flt.statuses) == 1:  # an equality: the index's order survives it (= ANY's does not)
        conds.append("status = %s")
        params.append(flt.statuses[0])
    elif flt.statuses:
        conds.append("status = ANY(%s::text[])")
        params.append(list(flt.statuses))
    column = _TIME_COLUMN[flt.on]
    if flt.on == "finished":
        conds.append("completed_at IS NOT NULL")
    if flt.since is not None:
        conds.append(f"{column} >= %s")
        params.append(flt.since)
    if flt.until is not None:
        conds.append(f"{column} < %s")
        params.append(flt.until)
    for name, col in (("correlation_id", "correlation_id"), ("idempotency_key", "idempotency_key"),
                      ("error_code", "last_error_code")):
        value = getattr(flt, name)
        if value is not None:
            conds.append(f"{col} = %s")
            params.append(value)
    if after is not None:
        conds.append(f"({column}, distribution_id) < (%s, %s::uuid)")
        params.extend(after)
    return (" AND ".join(conds) or "true"), params


def _output_names(columns: str) -> str:
    """The names of ``columns``' outputs (``x::text`` -> x, ``... AS y`` -> y)."""
    names = []
    for item in columns.split(","):
        item = " ".join(item.split())
        alias = re.search(r"\bAS (\w+)$", item, re.I)
        names.append(alias.group(1) if alias else item.split("::")[0])
    return ", ".join(names)


_JOB_NAMES = _output_names(JOB_COLUMNS)


def page_sql(flt: JobFilter, after: tuple[dt.datetime, str] | None, limit: int) -> tuple[str, list[Any]]:
    column = _TIME_COLUMN[flt.on]
    if len(flt.statuses) <= 1:
        return _page(flt, after, limit)
    # Several statuses: one branch each, every one read in order off an index whose
    # leading columns its equalities fix ((destination, status, time) or (status, time)),
    # at most ``limit`` rows each, merged. As one ``status = ANY(...)`` the index's order
    # was lost: a big destination's dead and failed jobs (tens of thousands) were all
    # fetched and sorted for each page.
    branches, params = [], []
    for one in flt.statuses:
        branch, values = _page(dataclasses.replace(flt, statuses=(one,)), after, limit,
                               ", distribution_jobs.distribution_id AS sort_id")
        branches.append(f"({branch})")
        params += values
    return (f"SELECT {_JOB_NAMES} FROM ({' UNION ALL '.join(branches)}) AS page"
            f" ORDER BY page.{column} DESC, page.sort_id DESC LIMIT %s", [*params, limit])


def _page(flt: JobFilter, after: tuple[dt.datetime, str] | None, limit: int, extra: str = "") -> tuple[str, list[Any]]:
    clause, params = where(flt, after)
    column = _TIME_COLUMN[flt.on]
    # Newest first by the time the filter bounds (so a window of finished times is read off
    # its own index); qualified: the output column distribution_id is text, and text order
    # is no index's.
    return (f"SELECT {JOB_COLUMNS}{extra} FROM distribution_jobs WHERE {clause}"
            f" ORDER BY distribution_jobs.{column} DESC, distribution_jobs.distribution_id DESC LIMIT %s",
            [*params, limit])


def sort_key(flt: JobFilter, row: dict[str, Any]) -> tuple[dt.datetime, str]:
    """Where the next page starts after ``row`` (a row of :func:`find_jobs`)."""
    return row[_TIME_COLUMN[flt.on]], row["distribution_id"]


async def find_jobs(
    conn: psycopg.AsyncConnection[Any], flt: JobFilter, limit: int, after: tuple[dt.datetime, str] | None = None
) -> list[dict[str, Any]]:
    sql, params = page_sql(flt, after, limit)
    async with conn.cursor(row_factory=dict_row) as cur:
        # Planned with this call's values: a generic plan made while the table was small
        # would keep scanning it whole (see ms07/store/jobs.py on prepare=False).
        await cur.execute(sql.encode(), params, prepare=False)
        return list(await cur.fetchall())
