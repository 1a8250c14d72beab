"""Short-lived TURN credentials (the TURN REST API convention, coturn's `use-auth-secret`).

The gateway and coturn share one secret. For each join the gateway hands the browser
username `"<expiry unix time>:<user>"` and password `base64(HMAC-SHA1(secret, username))`; coturn
recomputes the password from the username and refuses it once the expiry has passed. So no static
password ever reaches a browser, and a credential dies with the join token it was given for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TurnCredential:
    username: str
    password: str
    expires_at: int


def turn_credential(secret: str, user: str, expires_at: float) -> TurnCredential:
    """The credential `user` may use until `expires_at` (unix seconds, rounded down)."""
    if not secret:
        raise ValueError("a TURN secret is required (BABELROOM_TURN_SECRET, coturn's static-auth-secret)")
    if not math.isfinite(expires_at):
        raise ValueError(f"a TURN credential needs a finite expiry, not {expires_at}")
    if ":" in user:
        raise ValueError(f"a TURN user name cannot contain ':' (it separates the expiry): {user!r}")
    expiry = int(expires_at)
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredential(username, base64.b64encode(digest).decode("ascii"), expiry)
