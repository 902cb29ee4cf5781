"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``; during a
rotation both the new and the previous secret sign, space-separated, so receivers on
either secret verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from ms07 import logs
from ms07.config import DestinationConfig
from ms07.engine.auth import _Secret
from ms07.resolved import ResolvedDestination

PREFIX = "whsec_"


def secret_bytes(secret: str) -> bytes:
    """``whsec_<base64>`` secrets are decoded; anything else is used as UTF-8 bytes."""
    if secret.startswith(PREFIX):
        # The key alone is a secret too: a receiver may echo it without its prefix.
        logs.register_secret(secret[len(PREFIX) :])
        return base64.b64decode(secret[len(PREFIX) :])
    return secret.encode()


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class Signer:
    def __init__(self, current: _Secret, previous: _Secret | None = None) -> None:
        self.current, self.previous = current, previous

    def sign(self, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        ts = int(time.time()) if timestamp is None else timestamp
        sigs = [signature(self.current.get(), msg_id, ts, body)]
        if self.previous is not None:
            try:
                sigs.append(signature(self.previous.get(), msg_id, ts, body))
            except Exception:  # the previous secret is optional once rotated away
                logs.get("signing").debug("previous signing secret unavailable")
        return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": " ".join(sigs)}


def signer_for(dest: DestinationConfig | ResolvedDestination) -> Signer | None:
    s = dest.signing
    if s is None:
        return None
    where = f"destinations.{dest.name}.signing"
    previous = None
    if s.previous_secret_env or s.previous_secret_file:
        previous = _Secret(s.previous_secret_env, s.previous_secret_file, f"{where}.previous_secret")
    return Signer(_Secret(s.secret_env, s.secret_file, f"{where}.secret"), previous)
