"""The benchmark payload: 1 KiB of JSON whose first field is the enqueue time.

The sink reads ``t`` back (``time.time()`` when the producer enqueued) and records
enqueue -> delivered latency the same way for every system. Standard library only: the
peers import it from their own virtual environments.
"""

from __future__ import annotations

import time

SIZE = 1024
_HEAD = b'{"t":'
_PAD = b"x" * SIZE


def body(t: float | None = None) -> bytes:
    """A JSON body of exactly SIZE bytes, stamped with ``t`` (now by default)."""
    head = b'{"t":%.6f,"report":"' % (time.time() if t is None else t)
    return head + _PAD[: SIZE - len(head) - 2] + b'"}'


def stamp(data: bytes) -> float | None:
    """The enqueue time a body carries, without parsing the whole JSON."""
    if not data.startswith(_HEAD):
        return None
    end = data.find(b",", 5, 40)
    try:
        return float(data[5:end])
    except ValueError:
        return None
