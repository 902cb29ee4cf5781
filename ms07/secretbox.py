"""Destination secrets given through the API, stored encrypted (AES-256-GCM).

Keys come from ``MS07_SECRET_KEY`` (comma-separated) or ``MS07_SECRET_KEY_FILE`` (one a
line): each is 32 random bytes in base64 (``python -c "import os, base64;
print(base64.urlsafe_b64encode(os.urandom(32)).decode())"``). The first key encrypts;
every key decrypts, so a new key goes first and the old one stays listed until
``ms07 secrets rekey`` has re-encrypted everything with the new one. A ciphertext names
its key by a short id (a hash of the key, never the key) and is bound to its slot
(destination and field) as associated data: moved to another slot it does not decrypt.

Stored form: ``v1:<key id>:<base64(nonce || ciphertext+tag)>``. The API shows only a
fingerprint (``sha256:`` and 12 hex digits of the secret's hash) and when it changed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ms07.errors import ConfigError

KEY_ENV = "MS07_SECRET_KEY"
KEY_FILE_ENV = "MS07_SECRET_KEY_FILE"
_VERSION = "v1"


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"ms07-secret-key:" + key).hexdigest()[:12]


def fingerprint(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Keyring:
    keys: tuple[bytes, ...]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Keyring | None:
        """The keys configured, or None when neither variable is set. A key that is not
        32 bytes of base64 is a ConfigError naming where it came from (never the key)."""
        environ = os.environ if environ is None else environ
        if environ.get(KEY_ENV, "").strip():
            where, texts = KEY_ENV, environ[KEY_ENV].split(",")
        elif environ.get(KEY_FILE_ENV, "").strip():
            path = environ[KEY_FILE_ENV].strip()
            try:
                texts = Path(path).expanduser().read_text().splitlines()
            except OSError as exc:
                raise ConfigError(f"{KEY_FILE_ENV}: cannot read {path}: {exc.strerror}") from None
            where = f"{KEY_FILE_ENV} ({path})"
        else:
            return None
        keys = []
        for i, text in enumerate(t.strip() for t in texts):
            if not text:
                continue
            try:
                key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            except (binascii.Error, ValueError):
                key = b""
            if len(key) != 32:
                raise ConfigError(f"{where}: key {i + 1} is not 32 bytes in base64")
            keys.append(key)
        if not keys:
            raise ConfigError(f"{where}: no key in it")
        return cls(tuple(keys))

    def encrypt(self, value: str, slot: str) -> str:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = os.urandom(12)
        sealed = AESGCM(self.keys[0]).encrypt(nonce, value.encode(), slot.encode())
        return f"{_VERSION}:{key_id(self.keys[0])}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, slot: str) -> str:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        version, kid, data = (token.split(":", 2) + ["", ""])[:3]
        key = next((k for k in self.keys if key_id(k) == kid), None)
        if version != _VERSION or key is None:
            raise ConfigError(f"the secret {slot} was encrypted with key {kid or '?'}, which {KEY_ENV} "
                              f"does not hold (keys held: {', '.join(key_id(k) for k in self.keys)})")
        raw = base64.b64decode(data)
        try:
            return AESGCM(key).decrypt(raw[:12], raw[12:], slot.encode()).decode()
        except InvalidTag:
            raise ConfigError(f"the secret {slot} does not decrypt with key {kid}: altered or moved") from None

    def current(self, token: str) -> bool:
        return token.split(":", 2)[1:2] == [key_id(self.keys[0])]


def keyring(required_for: str | None = None) -> Keyring | None:
    """The process's keyring; with ``required_for`` a missing one is a ConfigError."""
    ring = Keyring.from_env()
    if ring is None and required_for:
        raise ConfigError(f"{required_for} needs {KEY_ENV} (or {KEY_FILE_ENV}): the key that encrypts "
                          "secrets stored in PostgreSQL")
    return ring
