"""A circuit breaker per destination: closed -> open -> half-open -> closed.

While open, deliveries are deferred (not failed) until ``recovery_timeout`` has passed;
then one probe is let through (half-open): success closes the circuit, failure opens it
again. Transitions are reported to a callback so other processes (diagnose, the health
endpoint) can read the state from Redis and Postgres.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        failure_threshold: int,
        recovery_timeout: float,
        on_change: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = max(1, int(failure_threshold))
        self.recovery_timeout = float(recovery_timeout)
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._probe_in_flight = False
        self._on_change = on_change
        self._clock = clock

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self._on_change:
                self._on_change(self.name, state)

    def allow(self) -> bool:
        """May a request go out now? In half-open, only one probe at a time."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self._clock() - self.opened_at < self.recovery_timeout:
                return False
            self._set(HALF_OPEN)
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def current_state(self) -> str:
        """The state as reported: an open circuit whose recovery time has passed is
        half-open even before traffic arrives to make the transition, so an idle
        destination that recovered does not read as open forever."""
        if self.state == OPEN and self._clock() - self.opened_at >= self.recovery_timeout:
            return HALF_OPEN
        return self.state

    def retry_in(self) -> float:
        """Seconds until the circuit will let a probe through."""
        if self.state != OPEN:
            return 1.0
        return max(0.5, self.recovery_timeout - (self._clock() - self.opened_at))

    def success(self) -> None:
        self.failures = 0
        self._probe_in_flight = False
        self._set(CLOSED)

    def failure(self) -> None:
        self._probe_in_flight = False
        if self.state == HALF_OPEN:
            self.opened_at = self._clock()
            self._set(OPEN)
            return
        self.failures += 1
        if self.state == CLOSED and self.failures >= self.failure_threshold:
            self.opened_at = self._clock()
            self._set(OPEN)

    def release(self) -> None:
        """A half-open probe ended without a verdict (e.g. cancelled)."""
        self._probe_in_flight = False
