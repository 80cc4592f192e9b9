"""API key format: ``llmp_<key id>_<secret>``; only the id and SHA-256 of the secret are kept."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX = "llmp"
SECRET_BYTES = 32
_DUMMY_HASH = hashlib.sha256(b"llmplat-no-such-key").hexdigest()


@dataclass(frozen=True)
class NewKey:
    """A freshly minted key. ``plaintext`` is shown once and never stored."""

    key_id: str
    plaintext: str
    secret_sha256: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def mint_key(key_id: str | None = None) -> NewKey:
    """A new key: 12 hex chars of id, 32 random bytes of secret (URL-safe base64)."""
    kid = key_id or secrets.token_hex(6)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return NewKey(kid, f"{KEY_PREFIX}_{kid}_{secret}", hash_secret(secret))


def parse_key(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    prefix, sep, rest = token.partition("_")
    if prefix != KEY_PREFIX or not sep:
        return None
    key_id, sep, secret = rest.partition("_")
    if not sep or not key_id or len(secret) < 16 or not key_id.isalnum():
        return None
    return key_id, secret


def secret_matches(secret: str, stored_sha256: str | None) -> bool:
    """Constant-time check; hashes even for unknown keys so timing reveals nothing."""
    expected = stored_sha256 if stored_sha256 is not None else _DUMMY_HASH
    ok = hmac.compare_digest(hash_secret(secret), expected)
    return ok and stored_sha256 is not None
