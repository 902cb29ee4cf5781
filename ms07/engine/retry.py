"""Retry schedule: exponential backoff with full jitter on the upper half."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ms07.config import DestinationConfig, DistributionConfig


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base: float
    multiplier: float
    max_delay: float
    max_attempts: int

    @classmethod
    def for_destination(cls, dist: DistributionConfig, dest: DestinationConfig | None) -> RetryPolicy:
        def pick(own: float | int | None, default: float | int) -> float:
            return default if own is None else own

        return cls(
            base=pick(dest and dest.retry_base_delay_seconds, dist.retry_base_delay_seconds),
            multiplier=pick(dest and dest.retry_backoff_multiplier, dist.retry_backoff_multiplier),
            max_delay=pick(dest and dest.max_retry_delay, dist.max_retry_delay),
            max_attempts=int(pick(dest and dest.max_attempts, dist.max_attempts)),
        )

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based):
        ``min(base * multiplier ** (attempt - 1), max_delay)``, jittered into [d/2, d]
        so that a burst of failures does not retry in lockstep."""
        raw = min(self.base * self.multiplier ** max(0, attempt - 1), self.max_delay)
        r = (rng or random).random()
        return raw / 2 + raw / 2 * r
