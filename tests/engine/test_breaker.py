"""The circuit breaker and the retry schedule, with a fake clock (pure logic)."""

from __future__ import annotations

import random

from ms07.config import DestinationConfig, DistributionConfig, Settings
from ms07.engine.breaker import CircuitBreaker
from ms07.engine.retry import RetryPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_then_half_opens_one_probe_then_closes() -> None:
    clock = Clock()
    changes: list[str] = []
    b = CircuitBreaker("d", 3, 10.0, lambda _, s: changes.append(s), clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.state == "closed"
    assert b.allow()
    b.failure()
    assert b.state == "open" and not b.allow()
    assert 9.0 <= b.retry_in() <= 10.0
    clock.now += 10
    assert b.current_state() == "half_open"  # reported before any traffic arrives
    assert b.allow()  # the one probe
    assert not b.allow()  # only one at a time
    b.success()
    assert b.state == "closed" and b.allow()
    assert changes == ["open", "half_open", "closed"]


def test_failed_probe_reopens() -> None:
    clock = Clock()
    b = CircuitBreaker("d", 1, 5.0, clock=clock)
    b.failure()
    clock.now += 5
    assert b.allow()
    b.failure()
    assert b.state == "open" and not b.allow()
    clock.now += 4.9
    assert not b.allow()


def test_success_resets_the_failure_count() -> None:
    b = CircuitBreaker("d", 2, 5.0, clock=Clock())
    b.failure()
    b.success()
    b.failure()
    assert b.state == "closed"


def test_backoff_is_exponential_capped_and_jittered() -> None:
    settings = Settings(distribution=DistributionConfig(retry_base_delay_seconds=1, retry_backoff_multiplier=2,
                                                        max_retry_delay=10),
                        destinations=[DestinationConfig("d", "http://127.0.0.1/")])
    p = RetryPolicy.for_destination(settings.resolved("d"))
    rng = random.Random(1)
    for attempt, full in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (9, 10)]:
        delays = [p.delay(attempt, rng) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full / 4  # really jittered


def test_backoff_past_the_float_range_is_the_cap() -> None:
    """10 ** 400 does not fit a float: Python raises OverflowError rather than giving inf,
    which crashed the delivery of a job on its 401st attempt."""
    p = RetryPolicy(base=1.0, multiplier=10.0, max_delay=300.0, max_attempts=1000)  # floats, as loaded
    assert 150 <= p.delay(401, random.Random(1)) <= 300
