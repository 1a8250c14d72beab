"""Join tokens a host removed from a room: the removed person cannot come back with the same link.

A token is self-contained (any gateway holding the secret admits it), so barring one takes shared state: a
Redis key per barred token, named by the token's digest (the token itself is never stored) and expiring with
the token, so every gateway node refuses it and nothing is kept once it could not admit anyone anyway. A new
token for the same person (reissued by the host's tooling) is another digest, and admits them again.
"""

from __future__ import annotations

import math
import time

from gateway.rooms.room import Admission
from pipeline.bus import Bus


class Removals:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def _key(self, room: str, admission: Admission) -> str:
        return self.bus.key("removed", room, admission.token_digest)

    async def bar(self, room: str, admission: Admission) -> bool:
        """Refuse this admission's token in `room` until it expires; False when there is no token to bar."""
        if not admission.token_digest:
            return False
        left_s = admission.expires_at - time.time()
        if left_s > 0:
            await self.bus.client.set(self._key(room, admission), "1", ex=max(1, math.ceil(left_s)))
        return True

    async def barred(self, room: str, admission: Admission) -> bool:
        return bool(admission.token_digest) and bool(await self.bus.client.exists(self._key(room, admission)))
