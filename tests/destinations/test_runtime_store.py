"""Destinations in PostgreSQL (issue 20, step 1): apply's exact diff, --prune, a bad file
changing nothing, bad input at the CLI, and which list wins when the engine starts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ms07 import destspec
from ms07.config import Settings
from ms07.errors import ConfigError, Conflict
from ms07.ops import dest_admin
from tests.support import cli, destination, submit_n, write_config


async def _specs(url: str) -> dict[str, dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT name, spec, version FROM destinations WHERE spec IS NOT NULL")
        return {r[0]: {"spec": r[1], "version": r[2]} for r in await cur.fetchall()}


async def _apply(url: str, settings: Settings, path: Path, *, prune: bool = False, dry_run: bool = False) -> Any:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await dest_admin.apply(conn, settings, destspec.parse_file(settings, str(path)), prune=prune,
                                      dry_run=dry_run, operator="tester")


async def test_apply_diff_is_exact_and_prune_removes_only_what_the_file_dropped(
    make_settings: Callable[..., Settings], database_url: str, tmp_path: Path
) -> None:
    settings = make_settings()
    first = write_config(tmp_path / "a.yaml", {"destinations": [
        destination("a", "http://127.0.0.1:9/a"),
        destination("b", "http://127.0.0.1:9/b", auth={"type": "bearer", "token_env": "B_TOKEN"}),
        destination("c", "http://127.0.0.1:9/c", timeout_seconds=3),
    ]})
    plan = await _apply(database_url, settings, first)
    assert plan.as_dict() == {"added": ["a", "b", "c"], "changed": {}, "removed": [], "unchanged": 0}
    before = await _specs(database_url)
    assert set(before) == {"a", "b", "c"} and before["c"]["spec"]["timeout_seconds"] == 3

    second = write_config(tmp_path / "b.yaml", {"destinations": [
        destination("b", "http://127.0.0.1:9/b", auth={"type": "bearer", "token_env": "B_TOKEN_2"}, max_attempts=9),
        destination("c", "http://127.0.0.1:9/c", timeout_seconds=3),
        destination("d", "http://127.0.0.1:9/d"),
    ]})
    dry = await _apply(database_url, settings, second, dry_run=True)
    assert dry.as_dict() == {"added": ["d"], "changed": {"b": ["auth.token_env", "max_attempts"]},
                             "removed": [], "unchanged": 1}
    assert dry.lines() == ["+ d", "~ b: auth.token_env (secret reference changed), max_attempts"]
    pruned = await _apply(database_url, settings, second, prune=True, dry_run=True)
    assert pruned.removed == ["a"]
    assert await _specs(database_url) == before  # dry runs wrote nothing

    await _apply(database_url, settings, second, prune=True)
    after = await _specs(database_url)
    assert set(after) == {"b", "c", "d"}
    assert after["b"]["version"] == before["b"]["version"] + 1 and after["b"]["spec"]["max_attempts"] == 9
    assert after["c"] == before["c"]  # untouched: same version
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT operator, step, detail FROM recovery_audit WHERE plan = 'destinations'"
                                 " ORDER BY id")
        audit = await cur.fetchall()
    assert [(a[0], a[1]) for a in audit] == [("tester", "apply"), ("tester", "apply")]
    assert audit[1][2]["removed"] == ["a"] and "B_TOKEN_2" not in str(audit[1][2])


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "x", "url": "http://127.0.0.1:9/", "auth": {"type": "magic"}},
     "destinations.x.auth.type: must be one of"),
    ({"name": "x", "url": "http://127.0.0.1:9/", "timeout_seconds": -1},
     "destinations.x.timeout_seconds: must be positive"),
    ({"name": "a/b", "url": "http://127.0.0.1:9/"}, "destinations[1].name: 'a/b' is not a valid destination name"),
    ({"name": "x", "url": "ftp://127.0.0.1/"}, "destinations.x.url"),
    ({"name": "x", "url": "http://127.0.0.1:9/", "colour": 1}, "destinations[1].colour: unknown key"),
])
async def test_a_bad_file_changes_nothing(make_settings: Callable[..., Settings], database_url: str, tmp_path: Path,
                                          entry: dict[str, Any], message: str) -> None:
    settings = make_settings()
    good = write_config(tmp_path / "good.yaml", {"destinations": [destination("ok", "http://127.0.0.1:9/")]})
    await _apply(database_url, settings, good)
    before = await _specs(database_url)
    bad = write_config(tmp_path / "bad.yaml", {"destinations": [destination("ok", "http://127.0.0.1:9/new"), entry]})
    with pytest.raises(ConfigError) as err:
        await _apply(database_url, settings, bad)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert await _specs(database_url) == before


def test_cli_bad_input_is_one_line_and_writes_nothing(make_settings: Callable[..., Settings], env_for: dict[str, str],
                                                     tmp_path: Path, database_url: str) -> None:
    config = write_config(tmp_path / "config.yaml", {"network": {"deny_private": True}})
    env = {**env_for, "MS07_CONFIG": str(config)}
    private = write_config(tmp_path / "p.yaml", {"destinations": [destination("p", "http://10.1.2.3/hook")]})
    result = cli(["destinations", "apply", "-f", str(private), "--yes"], env)
    assert result.exit_code == 2, result.output
    assert "destinations.p.url: 10.1.2.3 is a private address, refused by network.deny_private" in result.output
    assert "Traceback" not in result.output
    neither = cli(["destinations", "apply", "-f", str(private)], env)
    assert neither.exit_code == 2 and "--dry-run" in neither.output
    import asyncio

    assert asyncio.run(_specs(database_url)) == {}


def test_cli_apply_shows_the_diff_then_applies(make_settings: Callable[..., Settings], env_for: dict[str, str],
                                               tmp_path: Path, database_url: str) -> None:
    make_settings()  # the schema
    config = write_config(tmp_path / "config.yaml", {})
    env = {**env_for, "MS07_CONFIG": str(config)}
    file = write_config(tmp_path / "d.yaml", {"destinations": [
        destination("x", "http://127.0.0.1:9/x", auth={"type": "bearer", "token_env": "SECRET_NAME"})]})
    dry = cli(["destinations", "apply", "-f", str(file), "--dry-run"], env)
    assert dry.exit_code == 0, dry.output
    assert "+ x" in dry.output and "nothing changed (dry run)" in dry.output
    done = cli(["destinations", "apply", "-f", str(file), "--yes"], env)
    assert done.exit_code == 0 and "applied: 1 added, 0 changed, 0 removed" in done.output
    again = cli(["destinations", "apply", "-f", str(file), "--yes"], env)
    assert "no change (1 destination(s) as the file says)" in again.output


async def test_prune_of_a_destination_with_open_jobs_is_refused(
    make_settings: Callable[..., Settings], start_engine: Callable[..., Any], database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(destinations=[destination("keep", "http://127.0.0.1:9/"),
                                           destination("gone", "http://127.0.0.1:9/")])
    engine = await start_engine(settings)
    await engine.stop(grace=0)  # jobs stay open: nobody delivers them
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute("INSERT INTO distribution_jobs (distribution_id, destination_name, payload)"
                           " VALUES (gen_random_uuid(), 'gone', '\\x7b7d')")
        await conn.commit()
    file = write_config(tmp_path / "d.yaml", {"destinations": [destination("keep", "http://127.0.0.1:9/")]})
    with pytest.raises(Conflict, match="'gone' has 1 unfinished job"):
        await _apply(database_url, settings, file, prune=True)
    assert set(await _specs(database_url)) == {"keep", "gone"}


async def test_the_database_wins_at_start_unless_apply_config(
    make_settings: Callable[..., Settings], start_engine: Callable[..., Any], database_url: str
) -> None:
    # A fresh installation: the empty table is seeded from the config.
    seeded = await start_engine(make_settings(destinations=[destination("a", "http://127.0.0.1:9/a")]))
    assert set(seeded.clients) == {"a"} and set(await _specs(database_url)) == {"a"}
    async with seeded.pool.connection() as conn:  # a change through the API's door
        await dest_admin.add(conn, seeded.settings, {"name": "b", "url": "http://127.0.0.1:9/b"}, operator="api")
    await seeded.stop(grace=0)

    # A restart with the old config does not undo it...
    restarted = await start_engine(make_settings(destinations=[destination("a", "http://127.0.0.1:9/changed")]))
    assert set(restarted.clients) == {"a", "b"} and restarted.clients["a"].url == "http://127.0.0.1:9/a"
    await restarted.stop(grace=0)

    # ...unless the config is applied at start (GitOps): added and changed, none removed.
    applied = await start_engine(make_settings(destinations=[destination("a", "http://127.0.0.1:9/changed")],
                                               service={"apply_config": True}))
    assert applied.clients["a"].url == "http://127.0.0.1:9/changed" and "b" in applied.clients
    ids = await submit_n(applied, "b", 1)
    assert len(ids) == 1  # the API-added destination takes submissions
