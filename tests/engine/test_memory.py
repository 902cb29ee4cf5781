"""Memory held on the long-running paths (issue 21, section 1): what each cycle leaves
behind must be freed, whatever the GC tuning of ``ms07 run``.

Asserted on object counts and structure sizes, never on RSS: bench/outage_soak.py
measures RSS over 30 minutes."""

from __future__ import annotations

import gc
import socket
import ssl
import uuid
import weakref
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from ms07 import logs
from ms07.config import AuthConfig, DestinationConfig, DistributionConfig
from ms07.engine.auth import OAuth2ClientCredentials
from ms07.engine.delivery import DestinationClient
from ms07.probe import probe_http
from tests.destinations.test_auth import TokenServer
from tests.support import Sink, submit_n, wait_for


def _count(kind: type) -> int:
    return sum(isinstance(o, kind) for o in gc.get_objects())


@pytest.fixture
def tuned_gc() -> Iterator[None]:
    """The GC as ``ms07 run`` leaves it (engine/daemon.py: everything alive frozen, young
    collections rare), made deterministic: no automatic collection at all."""
    gc.collect()
    gc.disable()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.enable()
        gc.collect()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on return: connections are refused


async def test_health_probes_do_not_build_a_tls_context_each(sink: Sink, tuned_gc: None) -> None:
    """Each probe built an httpx client with its own TLS context (the CA bundle loaded:
    ~0.75 MiB of native memory), kept by httpcore's reference cycle until a collection."""
    await probe_http(sink.url("/health"), timeout=5)
    before = _count(ssl.SSLContext)
    for _ in range(5):
        result = await probe_http(sink.url("/health"), timeout=5)
        assert result.healthy
    assert _count(ssl.SSLContext) - before == 0


async def test_oauth2_refreshes_share_the_tls_context_and_keep_few_secrets(
        sink: Sink, tuned_gc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every refresh also registered its token with the log redactor for good: the set
    grew for the life of the process (and every log line scanned all of it)."""
    monkeypatch.setenv("T_CLIENT_SECRET", "cs-123")
    tokens = TokenServer(sink)
    provider = OAuth2ClientCredentials("ext", AuthConfig(
        type="oauth2_client_credentials", token_url=sink.url("/token"), client_id="ms07",
        client_secret_env="T_CLIENT_SECRET"))
    await provider.headers()
    contexts, secrets, forms = _count(ssl.SSLContext), len(logs._registered), len(logs._secrets)
    for _ in range(10):
        await provider.invalidate()
        await provider.headers()
    assert len(tokens.issued) == 11
    assert _count(ssl.SSLContext) - contexts == 0
    assert len(logs._registered) - secrets <= logs.ROTATING_KEPT
    # And their encoded forms with them: no more than the kept tokens' (same length each).
    assert len(logs._secrets) - forms <= logs.ROTATING_KEPT * len(logs.encoded_forms(tokens.issued[-1]))
    # The token in use is still masked.
    assert tokens.issued[-1] not in logs.redact(f"sent {tokens.issued[-1]} upstream")


async def test_failed_connections_leave_no_reference_cycle(tuned_gc: None) -> None:
    """Every failed connection left a reference cycle (the error, its traceback, the
    frames of the send holding the request and its payload) for the cyclic GC."""
    client = DestinationClient(DestinationConfig(name="down", url=f"http://127.0.0.1:{_closed_port()}/in"),
                               DistributionConfig())
    await client.open()
    try:
        for _ in range(20):
            result = await client.send(str(uuid.uuid4()), 1, b"x" * 1024)
            assert result.error_code == "CONNECTION_ERROR"
    finally:
        await client.close()
    assert _count(aiohttp.ClientConnectorError) == 0
    assert gc.collect() < 20  # nothing of the 20 attempts was left to the cyclic GC


async def test_deferral_cycles_of_a_dead_destination_leave_no_garbage(
        make_settings: Any, start_engine: Any, tuned_gc: None) -> None:
    """A destination down, its circuit open, its jobs cycling through deferral (and a
    half-open probe failing every 0.2 s): nothing piles up for the cyclic GC."""
    engine = await start_engine(make_settings(
        destinations=[{"name": "down", "url": f"http://127.0.0.1:{_closed_port()}/in",
                       "circuit_breaker": {"failure_threshold": 2, "recovery_timeout": 0.2}}],
        distribution={"max_attempts": 1000}))
    await submit_n(engine, "down", 50)
    errors = engine.metrics.errors
    await wait_for(lambda: errors.labels("down", "CIRCUIT_OPEN")._value.get() >= 200, timeout=60,
                   what="200 deferrals")
    await wait_for(lambda: errors.labels("down", "CONNECTION_ERROR")._value.get() >= 5, timeout=30,
                   what="failed probes")
    assert _count(aiohttp.ClientConnectorError) == 0
    assert _count(ConnectionRefusedError) == 0


class _Node:
    def __init__(self) -> None:
        self.me = self


async def test_memory_loop_collects_cycles_under_the_tuned_gc(make_settings: Any, start_engine: Any,
                                                             tuned_gc: None) -> None:
    """Cycles the engine cannot avoid (a library's) must not wait hours for a young
    collection the tuned GC rarely runs: the memory loop collects every pass."""
    engine = await start_engine(make_settings(memory={"check_interval_seconds": 3600}), http_port=None)
    node = _Node()
    ref = weakref.ref(node)
    del node
    await engine.upkeep.memory_guard()
    assert ref() is None
