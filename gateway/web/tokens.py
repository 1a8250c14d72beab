"""Signed join tokens: who may join which room, as whom, until when.

A token is `base64url(claims JSON) "." base64url(HMAC-SHA256(secret, claims JSON))`, both in canonical
unpadded base64url (any other spelling is refused), with a finite expiry. It is
self-contained (no server state), so any gateway holding the secret can verify it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
from dataclasses import dataclass

DEFAULT_TTL_S = 4 * 3600  # a meeting's length, with room to spare
ROLES = ("participant", "host")
MAX_TOKEN_CHARS = 2048
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class TokenError(ValueError):
    """A token that does not admit its bearer; the message says why, for the 401 body."""


@dataclass(frozen=True)
class TokenClaims:
    room: str
    name: str
    role: str
    expires_at: float


def issue_token(secret: str, room: str, name: str, role: str = "participant", ttl_s: float = DEFAULT_TTL_S) -> str:
    if not secret:
        raise ValueError("a token secret is required (BABELROOM_TOKEN_SECRET)")
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
    if not math.isfinite(ttl_s) or ttl_s <= 0:
        raise ValueError(f"a token's lifetime must be a positive number of seconds, not {ttl_s}")
    claims = {"room": room, "name": name, "role": role, "exp": round(time.time() + ttl_s, 3)}
    body = json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode()
    return f"{_b64(body)}.{_b64(_sign(secret, body))}"


def verify_token(secret: str, token: str, room: str, now: float | None = None) -> TokenClaims:
    """The token's claims if it is authentic, unexpired and for `room`; raises TokenError otherwise."""
    if not token:
        raise TokenError("a join token is required for this room")
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise TokenError("malformed join token")
    body_part, signature_part = token.split(".")
    try:
        body, signature = _unb64(body_part), _unb64(signature_part)
    except ValueError as exc:
        raise TokenError("malformed join token") from exc
    if not secret or not hmac.compare_digest(signature, _sign(secret, body)):
        raise TokenError("join token signature is invalid")
    claims = _parse_claims(body)
    if claims.expires_at <= (time.time() if now is None else now):
        raise TokenError("join token has expired; ask the host for a new link")
    if claims.room != room:
        raise TokenError(f"join token is for room {claims.room!r}, not {room!r}")
    return claims


def _parse_claims(body: bytes) -> TokenClaims:
    try:
        raw = json.loads(body)
        claims = TokenClaims(str(raw["room"]), str(raw["name"]), str(raw["role"]), float(raw["exp"]))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise TokenError("malformed join token claims") from exc
    if not math.isfinite(claims.expires_at):  # NaN compares false with everything: it would never expire
        raise TokenError("join token has no finite expiry")
    if claims.role not in ROLES:
        raise TokenError(f"join token has an unknown role {claims.role!r}")
    return claims


def token_digest(token: str) -> str:
    """What names a token where it is kept (a host's removal bars it): its SHA-256, never the token itself."""
    return hashlib.sha256(token.encode(errors="surrogatepass")).hexdigest()


def _sign(secret: str, body: bytes) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Canonical unpadded base64url only: one spelling per token, so what was signed is what is read."""
    if not _BASE64URL.fullmatch(text):
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:  # e.g. non-zero bits after the last byte
        raise ValueError("not canonical base64url")
    return data
