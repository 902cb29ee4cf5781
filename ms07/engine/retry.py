"""Retry schedule: exponential backoff with full jitter on the upper half."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ms07.resolved import ResolvedDestination


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base: float
    multiplier: float
    max_delay: float
    max_attempts: int

    @classmethod
    def for_destination(cls, dest: ResolvedDestination) -> RetryPolicy:
        return cls(base=dest.retry_base_delay_seconds, multiplier=dest.retry_backoff_multiplier,
                   max_delay=dest.max_retry_delay, max_attempts=dest.max_attempts)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based):
        ``min(base * multiplier ** (attempt - 1), max_delay)``, jittered into [d/2, d]
        so that a burst of failures does not retry in lockstep."""
        try:
            raw = min(self.base * self.multiplier ** max(0, attempt - 1), self.max_delay)
        except OverflowError:  # a float power past ~1e308 raises instead of giving inf
            raw = self.max_delay
        r = (rng or random).random()
        return raw / 2 + raw / 2 * r
