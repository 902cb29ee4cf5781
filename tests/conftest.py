"""Real PostgreSQL and Redis for every test.

By default one embedded PostgreSQL and one embedded Redis are started for the session
(under a temporary state directory); ``MS07_TEST_DATABASE_URL`` / ``MS07_TEST_REDIS_URL``
name existing servers instead. Each test gets a fresh database (a copy of a migrated
template) and a flushed Redis.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis

from ms07 import embedded
from ms07.config import Settings, load_settings
from ms07.engine.engine import Engine
from tests.support import Sink

TEMPLATE = "ms07_test_template"


@dataclass
class Servers:
    admin_url: str  # a database on the server we may CREATE DATABASE from
    redis_url: str
    state_dir: Path
    embedded: bool

    def database_url(self, name: str) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path=f"/{name}"))


def _for_db(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    # Not under pytest's basetemp: every pytest session chmods /tmp/pytest-of-<user> back
    # to 0700, which locks the embedded PostgreSQL (running as its own user when we are
    # root) out of its data directory if another session starts meanwhile.
    state = Path(tempfile.mkdtemp(prefix="ms07-test-"))
    db_url = os.environ.get("MS07_TEST_DATABASE_URL")
    redis_url = os.environ.get("MS07_TEST_REDIS_URL")
    started = not (db_url and redis_url)
    if not db_url:
        db_url = embedded.start_postgres(state)
    if not redis_url:
        redis_url = embedded.start_redis(state)
    s = Servers(db_url, redis_url, state, started)
    _make_template(s)
    try:
        yield s
    finally:
        if not os.environ.get("MS07_TEST_DATABASE_URL"):
            embedded.stop_postgres(state)
        if not os.environ.get("MS07_TEST_REDIS_URL"):
            embedded.stop_redis(state)
        shutil.rmtree(state, ignore_errors=True)


def _make_template(s: Servers) -> None:
    import asyncio

    from ms07.store import db

    with psycopg.connect(s.admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{TEMPLATE}"')

    async def migrate() -> None:
        conn = await db.connect(_for_db(s.admin_url, TEMPLATE))
        try:
            await db.migrate(conn)
        finally:
            await conn.close()

    asyncio.run(migrate())


@pytest.fixture
def database_url(servers: Servers) -> Iterator[str]:
    name = f"ms07_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(servers.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
    try:
        yield _for_db(servers.admin_url, name)
    finally:
        with psycopg.connect(servers.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url(servers: Servers) -> Iterator[str]:
    client = redis.Redis.from_url(servers.redis_url)
    client.flushall()
    client.config_set("maxmemory-policy", "noeviction")
    client.close()
    yield servers.redis_url


@pytest.fixture
def make_settings(database_url: str, redis_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for this test's database and Redis: ``make_settings(destinations=[...], distribution={...})``."""

    def make(**sections: Any) -> Settings:
        import yaml

        redis = sections.pop("redis_url", None) or redis_url
        data: dict[str, Any] = {
            "database_url": database_url,
            "redis_url": redis_url,
            "state_dir": str(tmp_path / "state"),
            # Without a token on loopback unless a test sets MS07_API_TOKEN (or turns this off).
            "service": {"http_port": 0, "drain_grace_seconds": 5, "heartbeat_interval_seconds": 1,
                        "allow_unauthenticated": True},
            "distribution": {"retry_base_delay_seconds": 0.05, "max_retry_delay": 0.2, "timeout_seconds": 5,
                             "claim_idle_seconds": 8, "scheduler_interval_seconds": 0.05},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        path = tmp_path / f"config-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump({k: v for k, v in data.items()
                                        if k not in ("database_url", "redis_url", "state_dir")}))
        return load_settings(path, environ={}, database_url=database_url, redis_url=redis,
                             state_dir=str(tmp_path / "state"))

    return make


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    s = await Sink().start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
def env_for(database_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for a CLI call or an engine subprocess on this test's servers."""
    return {
        "MS07_DATABASE_URL": database_url,
        "MS07_REDIS_URL": redis_url,
        "MS07_STATE_DIR": str(tmp_path / "state"),
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }


@pytest.fixture
def captured_logs() -> Iterator[Any]:
    """ms07's logs at DEBUG, as JSON lines in a StringIO (``.getvalue()``)."""
    import io
    import logging

    from ms07 import logs

    buffer = io.StringIO()
    logs.configure("DEBUG", "json", stream=buffer)
    try:
        yield buffer
    finally:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if getattr(handler, "_ms07", False):
                root.removeHandler(handler)
        logging.getLogger("ms07").setLevel(logging.NOTSET)


@pytest.fixture
async def start_engine(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Any]]:
    """Start in-process engines; every one is stopped at teardown, and none of their
    upkeep loops may have failed unless the test is marked ``loop_errors_ok``."""
    engines: list[Engine] = []

    async def start(settings: Settings, **kwargs: Any) -> Engine:
        engine = Engine(settings, **kwargs)
        await engine.start()
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        await engine.stop(grace=1)
    if not request.node.get_closest_marker("loop_errors_ok"):
        for engine in engines:
            assert not engine.loop_errors, f"upkeep loops failed: {dict(engine.loop_errors)}"


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Any]:
    """A real 3-master Redis Cluster on loopback (skipped when redis-server/cli are missing)."""
    from tests.redis_cluster import RedisCluster, redis_cli_binary

    try:
        if redis_cli_binary() is None:
            pytest.skip("redis-cli is not on this machine: Redis Cluster tests skipped")
    except Exception as exc:  # no redis-server either
        pytest.skip(f"no redis-server on this machine: Redis Cluster tests skipped ({exc})")
    cluster = RedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: Any) -> str:
    """The cluster, flushed on every primary."""
    from redis.cluster import RedisCluster as SyncCluster

    client = SyncCluster.from_url(redis_cluster.url.replace("redis+cluster://", "redis://"))
    client.flushall(target_nodes=SyncCluster.PRIMARIES)
    client.close()
    return str(redis_cluster.url)


@pytest.fixture
def fake_kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The fake Kubernetes API (tests/k8s_fake.py), a kubeconfig for the real client at
    ``fake_kube.kubeconfig_path``, named by KUBECONFIG for in-process runs."""
    from tests.k8s_fake import FakeKube

    fake = FakeKube(namespace="ms07", deployment="ms07-distributor", replicas=2, delay=0.1).start()
    path = fake.kubeconfig(tmp_path / "kubeconfig")
    fake.kubeconfig_path = path  # type: ignore[attr-defined]
    monkeypatch.setenv("KUBECONFIG", str(path))
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def rc(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous Redis client on the test's Redis, replies decoded."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()
