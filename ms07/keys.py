"""Every Redis key and name ms07 uses, in one place.

Keys of one queue share the hash tag ``{<queue>}`` so that a script or MULTI touching the
stream and its delayed set stays on one Redis Cluster slot.
"""

from __future__ import annotations

GROUP = "workers"
DLQ = "distribution:dlq"
RECONCILER_LOCK = "distribution:lock:reconciler"
SCHEDULER_PREFIX = "distribution:delayed:"
STREAM_PREFIX = "distribution:queue:"


def stream(queue: str) -> str:
    return f"{STREAM_PREFIX}{{{queue}}}"


def delayed(queue: str) -> str:
    return f"{SCHEDULER_PREFIX}{{{queue}}}"


def queue_of(stream_key: str) -> str:
    """``distribution:queue:{high}`` -> ``high``."""
    return stream_key[len(STREAM_PREFIX) :].strip("{}")


def heartbeat(worker_id: str) -> str:
    return f"worker:heartbeat:{worker_id}"


HEARTBEAT_PATTERN = "worker:heartbeat:*"


def circuit(destination: str) -> str:
    return f"distribution:circuit:{destination}"


def rate_limit(destination: str) -> str:
    return f"distribution:ratelimit:{{{destination}}}"


def token_info(destination: str) -> str:
    """Expiry (never the token) of a destination's OAuth2 token, for diagnose and metrics."""
    return f"distribution:token:{destination}"
