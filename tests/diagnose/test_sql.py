"""Every statement the checks run is index-backed, and the window bounds it."""

from __future__ import annotations

import psycopg
import pytest

from ms07.store import diagnose_sql as sql


@pytest.mark.parametrize("name", sorted(sql.BIG_TABLE_QUERIES))
def test_statement_uses_an_index(database_url: str, name: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Statistics as if the tables were big, so the plan is the one production gets.
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN " + sql.BIG_TABLE_QUERIES[name], sql.SAMPLE_PARAMS
            ).fetchall()
        )
    assert "Seq Scan" not in plan, plan
    assert "Index" in plan, plan


@pytest.mark.parametrize("name", sorted(sql.SMALL_TABLE_QUERIES))
def test_small_table_statements_run(database_url: str, name: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SMALL_TABLE_QUERIES[name], sql.SAMPLE_PARAMS).fetchall()
