"""The gateway's reader of its results stream: every result the workers emit for its rooms, handed to them.

A media node reads its own stream, `results:NODE` (pipeline.routes.results_stream): the workers write there the
results of the segments this node sent, so no node reads another's (a gateway outside a cluster reads `results`).
An entry that is not a result for this node (undecodable, a kind that has no business on a results stream, or
another node's) or that the handler cannot use is dead-lettered with its reason, and the reader carries on. The
position survives a restart of the reader, so a supervised restart skips nothing but the entry that broke it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from redis.exceptions import RedisError

from pipeline.bus import Bus, Delivery
from pipeline.messages import Message
from pipeline.routes import destinations, results_stream

log = logging.getLogger(__name__)

TAIL_BLOCK_MS = 1_000
TAIL_COUNT = 100
REDIS_RETRY_S = 1.0
STAGE = "gateway"  # the stage named in the dead letters this reader writes


class ResultsReader:
    def __init__(self, bus: Bus, handle: Callable[[Message], None], node: str = "") -> None:
        self.bus = bus
        self.handle = handle
        self.stream = results_stream(node)
        self.last_id: bytes | str | None = None  # None: start after the newest entry
        self.dead_lettered = 0
        self.read = 0  # entries read: with nodes, only this node's results

    async def run(self) -> None:
        if self.last_id is None:
            self.last_id = await self._newest_id()
        while True:
            try:
                deliveries = await self.bus.tail(self.stream, self.last_id, TAIL_COUNT, TAIL_BLOCK_MS)
            except (RedisError, OSError) as exc:
                log.warning("results tail failed (%s); retrying", exc)
                await asyncio.sleep(REDIS_RETRY_S)
                continue
            for delivery in deliveries:
                self.last_id = delivery.entry_id
                self.read += 1
                await self.take(delivery)

    async def take(self, delivery: Delivery) -> None:
        message = delivery.message
        if message is None:
            await self._dead_letter(delivery, f"undecodable message: {delivery.error}")
        elif self.stream not in destinations(message):
            whose = f" of node {message.node!r}" if message.node else ""
            await self._dead_letter(delivery, f"a {message.kind} message{whose} does not belong on {self.stream}")
        else:
            try:
                self.handle(message)
            except Exception as exc:  # one result the rooms cannot use must not stop the others
                log.exception("could not handle %s", message.log_context)
                await self._dead_letter(delivery, f"{type(exc).__name__}: {exc}")

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        self.dead_lettered += 1
        try:
            await self.bus.dead_letter(delivery, STAGE, reason, attempts=1)
        except RedisError as exc:  # still logged: the entry stays in `results` for an operator
            log.error("could not dead-letter result %s (%s): %s", delivery.entry_id, exc, reason)

    async def _newest_id(self) -> bytes | str:
        """Start after the newest entry now in the stream: results from before this gateway are not ours."""
        while True:
            try:
                newest = await self.bus.client.xrevrange(self.bus.stream(self.stream), count=1)
                return cast(bytes, newest[0][0]) if newest else "0-0"
            except (RedisError, OSError) as exc:
                log.warning("redis unavailable (%s); retrying", exc)
                await asyncio.sleep(REDIS_RETRY_S)
