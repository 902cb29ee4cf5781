"""Reading the submit API's request body: bounded by the largest payload the config
allows, and decompressed here rather than by aiohttp's parser.

aiohttp decompresses in its parser, so a body that lies about its Content-Encoding raised
out of the protocol (two ERROR tracebacks, a 500, the connection reset) and a gzip bomb
inflated up to ``client_max_size`` (64 MiB then, whatever ``max_payload_bytes`` said).
The server now runs with ``auto_decompress=False``; this module reads the raw body up to
the limit (refusing a larger Content-Length before reading anything) and inflates gzip or
deflate with the same bound.
"""

from __future__ import annotations

import zlib

from aiohttp import web

from ms07.config import Settings

# Room around the payload in a submission: the field names, destination names,
# correlation_id and idempotency_key (200 characters each), JSON punctuation.
ENVELOPE = 64 * 1024
_GZIP = ("gzip", "x-gzip")  # RFC 9110 8.4.1.3: x-gzip is gzip
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class BodyError(Exception):
    """A body refused before it is parsed: the HTTP status and one line saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def single_limit(settings: Settings) -> int:
    """The largest body of one submission: the largest payload any destination accepts,
    plus the envelope."""
    largest = max([settings.distribution.max_payload_bytes,
                   *(d.max_payload_bytes for d in settings.effective.values())])
    return largest + ENVELOPE


def batch_limit(settings: Settings) -> int:
    """The largest body of a batch submit: ``service.max_batch_bytes``, by default the
    single-submission limit (a batch never makes the server read more than it said)."""
    return settings.service.max_batch_bytes or single_limit(settings)


def body_limit(settings: Settings) -> int:
    """The largest request body worth reading, before it is known to be one or a batch."""
    return max(single_limit(settings), batch_limit(settings))


def too_large(size: str, limit: int, batch: bool | None = None) -> BodyError:
    """413 naming the limit and the setting behind it (``batch`` None: not known yet)."""
    why = {None: "the largest max_payload_bytes plus 64 KiB; a batch: service.max_batch_bytes",
           False: "the largest max_payload_bytes plus 64 KiB", True: "service.max_batch_bytes"}[batch]
    return BodyError(413, f"request body is {size}, over the {limit}-byte limit ({why})")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body of ``request``, decoded; :class:`BodyError` when it cannot be had."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity", *_WBITS):
        raise BodyError(415, f"Content-Encoding {encoding[:40]!r} is not supported (gzip, deflate or none)")
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(f"{length} bytes", limit)
    raw = bytearray()
    while chunk := await request.content.readany():
        raw += chunk
        if len(raw) > limit:
            raise too_large("longer", limit)
    if encoding in ("", "identity"):
        return bytes(raw)
    return _inflate(bytes(raw), encoding, limit)


def _inflate(raw: bytes, encoding: str, limit: int) -> bytes:
    name = "gzip" if encoding in _GZIP else encoding
    inflater = zlib.decompressobj(_WBITS[encoding])
    try:
        out = inflater.decompress(raw, limit + 1)
        if len(out) > limit or inflater.unconsumed_tail:
            raise too_large("decompressed larger", limit)
    except zlib.error:
        raise BodyError(400, f"request body is not valid {name} data (Content-Encoding: {encoding})") from None
    if not inflater.eof:
        raise BodyError(400, f"request body is truncated: the {name} stream does not end")
    if inflater.unused_data:
        raise BodyError(400, f"request body has data after the end of the {name} stream")
    return out
