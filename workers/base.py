"""The worker runtime: one process serves one stage from its stream.

Lifecycle (after arq's Worker): load the engine at start (off the event loop), then read from the
stage's consumer group with bounded concurrency, run each message in a thread with a timeout, then
emit its outputs (once per identity) and acknowledge it in one atomic step. A heartbeat key with a
TTL says the worker is alive.
Messages left pending by a dead worker are claimed after `claim_idle_ms`, and dead workers' consumers
are then removed from the group. A failing message is
retried by redelivery until `max_deliveries`, then dead-lettered with its error. A message this stage
would finish only after its service deadline is dropped with an explicit `Dropped` result instead. SIGTERM stops
reading and drains what is in flight. A lost Redis connection is retried with backoff.

A kind with an interim stream (pipeline.routes.INTERIM_STREAMS) serves it in a second loop, one job at a
time and never while a final is in flight, so interim work takes at most one slot and only idle ones. A kind with
a hints stream (BROADCAST_STREAMS: the mt stage's WarmUp) follows it whole in a third loop: every worker acts on
every hint. A Redis that refuses the worker (protected mode, a wrong or missing password) is named in the log
and tried again, like one that is down.
Interim jobs are disposable: of several queued for one segment only the newest runs, one older than
`max_interim_age_s` is dropped, and one that fails is dropped (the segment's final carries the same audio).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline import memory
from pipeline.bus import Bus, Delivery, cancel_and_wait, refusal
from pipeline.config import WorkerOptions
from pipeline.messages import FULL_SERVICE, INTERIM_TYPES, Dropped, Message
from pipeline.routes import BROADCAST_STREAMS, INTERIM_STREAMS
from pipeline.stamps import format_spans, start_stamp
from workers.stage import BatchStage, Outcome, PermanentError, Stage

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
INTERIM_BATCH = 16  # interim jobs read at once: enough to see every segment's newest among those queued
# Weight of the newest message in the moving average of processing time that predicts a stage's pace.
SERVICE_EWMA_WEIGHT = 0.2
# A message is dropped when now + this x the average processing time passes its deadline: one slower
# than the average should still not arrive late.
DEADLINE_MARGIN = 1.5
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError)


def carry_service(output: Message, source: Message) -> Message:
    """What the gateway asked for travels with the segment, from each input to its outputs: the media node whose
    room it is (its results go to that node's stream), and the service (speech, lip-sync, deadline)."""
    if output.node != source.node:
        output = dataclasses.replace(output, node=source.node)
    service = getattr(source, "service", None)
    if service is None or not hasattr(output, "service"):
        return output
    carried: Message = dataclasses.replace(output, service=service)  # type: ignore[call-arg]
    return carried


class Worker:
    def __init__(self, stage: Stage, bus: Bus, options: WorkerOptions, consumer: str | None = None) -> None:
        self.stage = stage
        self.bus = bus
        self.options = options
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.group = stage.kind
        self.processed = 0
        self.dropped = 0
        self.service_s = 0.0  # recent processing time per message (moving average), posted with the heartbeat
        self._stopping = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._last_claim = 0.0
        # The batch path: only for stages that batch, and only when asked to (BABELROOM_BATCH_SIZE > 1).
        self._batching = options.batch_size > 1 and isinstance(stage, BatchStage)
        self._last_sweep = 0.0

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Load, serve until stopped, then drain in-flight messages."""
        started = time.monotonic()
        await asyncio.to_thread(self.stage.load)
        log.info("%s worker %s loaded in %.1f s", self.stage.kind, self.consumer, time.monotonic() - started)
        interim = INTERIM_STREAMS.get(self.stage.kind)
        streams = [self.stage.kind, *([interim] if interim else [])]
        # What this stage has acknowledged leaves its streams (pipeline/bus.py `trim`), pending work never.
        background = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self.bus.trim_forever(streams))]
        loops = [self._serve(self.stage.kind, self._poll_once)]
        if interim:
            loops.append(self._serve(interim, lambda: self._poll_interim(interim)))
        broadcast = BROADCAST_STREAMS.get(self.stage.kind)
        if broadcast:
            loops.append(self._serve(broadcast, self._hints_poller(broadcast), grouped=False))
        try:
            await asyncio.gather(*loops)
        finally:
            await self._drain()
            await cancel_and_wait(background)
            await self._forget_heartbeat()

    async def _serve(self, stream: str, poll: Callable[[], Awaitable[None]], grouped: bool = True) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if grouped:
                    await self.bus.ensure_group(stream, self.group)
                while not self._stopping.is_set():
                    await poll()
                    failures = 0
            except (*REDIS_DOWN, ResponseError) as exc:
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):  # a restarted Redis lost the group
                    log.warning("consumer group vanished (Redis restarted?); recreating it")
                    continue
                why = refusal(exc)
                if isinstance(exc, ResponseError) and why is None:
                    raise
                delay = RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S) - 1)]
                failures += 1
                if why is not None:  # Redis answers, but will not serve us: say why, and try again
                    log.error("%s; retrying in %.1f s", why, delay)
                else:
                    log.warning("redis unavailable (%s); retrying in %.1f s", exc, delay)
                await self._sleep_unless_stopping(delay)

    async def _poll_once(self) -> None:
        if len(self._in_flight) >= self.options.concurrency:  # bounded concurrency: wait for a free slot
            await asyncio.wait(set(self._in_flight), return_when=asyncio.FIRST_COMPLETED)
        free = self.options.concurrency - len(self._in_flight)
        await self._sweep_if_due()
        # Messages taken over from a dead worker always run alone: one of them may be what killed it.
        deliveries = await self._claim_if_due(free)
        if not deliveries:
            count = self.options.batch_size if self._batching else free  # a batch takes one slot
            fresh = await self.bus.read_group(
                self.stage.kind, self.group, self.consumer, count=count, block_ms=self.bus.options.block_ms
            )
            if self._batching and len(fresh) > 1:
                self._spawn(self._logged(self.handle_batch(fresh), fresh))
                return
            deliveries = fresh
        for delivery in deliveries:
            self._spawn(self._logged(self.handle(delivery), [delivery]))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _claim_if_due(self, count: int) -> list[Delivery]:
        # Checking for stale entries a few times per claim window keeps takeover time bounded by
        # about 1.5 x claim_idle_ms without scanning the pending list on every poll.
        interval = self.bus.options.claim_idle_ms / 2000
        if time.monotonic() - self._last_claim < interval:
            return []
        self._last_claim = time.monotonic()
        claimed = await self.bus.claim_stale(self.stage.kind, self.group, self.consumer, count)
        for delivery in claimed:
            log.info("claimed entry %s (delivery %d) from a stalled consumer", delivery.entry_id, delivery.deliveries)
        return claimed

    async def _sweep_if_due(self) -> None:
        if time.monotonic() - self._last_sweep < self.options.consumer_sweep_s:
            return
        self._last_sweep = time.monotonic()
        for consumer in await self.dead_consumers():
            await self.bus.client.xgroup_delconsumer(self.bus.stream(self.stage.kind), self.group, consumer)
            log.info("removed dead consumer %s from the %s group", consumer, self.group)

    async def dead_consumers(self) -> list[str]:
        """Consumers of this group that are gone: no heartbeat, idle past its TTL, and holding nothing
        (what a dead worker held is claimed first, so only then is it removed: deleting a consumer
        forgets its pending entries)."""
        infos = await self.bus.client.xinfo_consumers(self.bus.stream(self.stage.kind), self.group)
        idle_ms = self.options.heartbeat_ttl_s * 1000
        dead = []
        for info in infos:
            name = info["name"].decode() if isinstance(info["name"], bytes) else str(info["name"])
            if name == self.consumer or info["pending"] or info["idle"] < idle_ms:
                continue
            if not await self.bus.client.exists(self.bus.heartbeat_key(self.stage.kind, name)):
                dead.append(name)
        return dead

    async def _logged(self, work: Coroutine[Any, Any, None], deliveries: list[Delivery]) -> None:
        try:
            await work
        except Exception:  # a Redis error mid-message: left pending, so it is claimed again later
            ids = ", ".join(d.entry_id.decode() for d in deliveries)
            log.exception("error handling entry %s; it stays pending", ids)

    async def handle(self, delivery: Delivery) -> None:
        # Deliveries are counted by Redis as entries are handed out, so checking the count first means an
        # entry that kills its worker (or cannot be decoded) is given up after max_deliveries attempts.
        if delivery.deliveries > self.bus.options.max_deliveries:
            last = await self.bus.last_error(self.stage.kind, self.group, delivery.entry_id)
            reason = last or "its worker died or timed out while processing it"
            await self._give_up(
                delivery,
                f"delivered {delivery.deliveries} times without success: {reason}",
                attempts=delivery.deliveries,
            )
            return
        message = delivery.message
        if message is None:
            await self._give_up(delivery, f"undecodable message: {delivery.error}", attempts=delivery.deliveries)
        elif self.finishes_too_late(message):
            await self._drop(delivery, message, "late")
        else:
            await self._run(delivery, message)

    def finishes_too_late(self, message: Message) -> bool:
        """Would this stage, at the pace it has been working, finish only after the segment's deadline?"""
        deadline = getattr(message, "service", FULL_SERVICE).deadline
        return bool(deadline) and time.time() + DEADLINE_MARGIN * self.service_s > deadline

    async def _drop(self, delivery: Delivery, message: Message, reason: str) -> None:
        targets: tuple[str, ...] = getattr(message, "targets", ())
        languages = targets or (getattr(message, "language", ""),)
        dropped = Dropped(
            room=message.room,
            speaker=message.speaker,
            seq=message.seq,
            stamps=message.stamps,
            node=message.node,
            stage=self.stage.kind,
            reason=reason,
            languages=languages,
        )
        await self.bus.commit(delivery, self.group, [dropped.stamped(self.stage.kind)], self.stage.kind)
        self.dropped += 1
        log.info("%s %s dropped: %s", self.stage.kind, message.log_context, reason)

    async def _run(self, delivery: Delivery, message: Message) -> None:
        started = time.monotonic()
        keep_claimed = asyncio.create_task(self._keep_claimed(delivery))
        try:
            outcome: Outcome = await self._process(message)
        except Exception as exc:
            outcome = exc
        finally:
            await cancel_and_wait([keep_claimed])
        await self._settle(delivery, outcome, started)

    async def handle_batch(self, deliveries: list[Delivery]) -> None:
        """Fresh messages, from any rooms, run as one batch (one GPU call instead of B); each is then settled
        alone, exactly as `handle` settles it. An undecodable one goes through `handle`, which dead-letters it."""
        assert isinstance(self.stage, BatchStage)
        batch = [d for d in deliveries if d.message is not None and not self.finishes_too_late(d.message)]
        for delivery in deliveries:
            if delivery not in batch:
                await self.handle(delivery)  # dead-lettered, or dropped as too late
        started = time.monotonic()
        keep_claimed = [asyncio.create_task(self._keep_claimed(d)) for d in batch]
        messages = [d.message.stamped(start_stamp(self.stage.kind)) for d in batch if d.message]
        try:
            outcomes = await asyncio.wait_for(
                asyncio.to_thread(self.stage.process_batch, messages), timeout=self.options.message_timeout_s
            )
        except Exception as exc:  # the batch as a whole failed (timeout, out of memory): no message is to blame,
            # so each counts an ordinary failed attempt, and is retried alone once claimed again
            outcomes = [RuntimeError(f"its batch failed: {type(exc).__name__}: {exc}")] * len(batch)
        finally:
            await cancel_and_wait(keep_claimed)
        for delivery, outcome in zip(batch, outcomes, strict=True):
            await self._settle(delivery, outcome, started)

    async def _process(self, message: Message) -> Sequence[Message]:
        """The stage's work, in a thread, within the message timeout."""
        message = message.stamped(start_stamp(self.stage.kind))  # outputs inherit it: queue time vs work
        return await asyncio.wait_for(
            asyncio.to_thread(self.stage.process, message), timeout=self.options.message_timeout_s
        )

    async def _settle(self, delivery: Delivery, outcome: Outcome, started: float) -> None:
        """Emit a processed message's outputs exactly once and acknowledge it, or count its failure."""
        if isinstance(outcome, PermanentError):
            await self._give_up(delivery, str(outcome), attempts=1)
        elif isinstance(outcome, Exception):
            await self._record_failure(delivery, outcome)
        else:
            await self._complete(delivery, outcome, started)

    async def _complete(self, delivery: Delivery, outputs: Sequence[Message], started: float) -> None:
        """Emit the outputs (once each), acknowledge, and log where the time went."""
        message = delivery.message
        if message is not None:
            outputs = [carry_service(output, message) for output in outputs]
        await self.bus.commit(delivery, self.group, outputs, self.stage.kind)
        await self.bus.forget(delivery.stream, self.group, delivery.entry_id)
        elapsed = time.monotonic() - started
        self.service_s = (
            elapsed if not self.processed else self.service_s + SERVICE_EWMA_WEIGHT * (elapsed - self.service_s)
        )
        self.processed += 1
        context = message.log_context if message else delivery.entry_id.decode()
        spans = format_spans(outputs[0].stamps if outputs else message.stamps if message else ())
        log.info(
            "%s %s -> %d output(s) in %.2f s; %s",
            self.stage.kind,
            context,
            len(outputs),
            elapsed,
            spans,
        )

    async def _poll_interim(self, stream: str) -> None:
        deliveries = await self.bus.read_group(
            stream, self.group, self.consumer, count=INTERIM_BATCH, block_ms=self.bus.options.block_ms
        )
        newest = newest_per_segment(deliveries)
        for delivery in deliveries:
            if delivery not in newest:
                await self._discard_interim(delivery, "superseded by a newer request for its segment")
        for delivery in newest:
            while self._in_flight:  # finals first: an interim job starts only when no final is running
                await asyncio.wait(set(self._in_flight))
            if entry_age_s(delivery.entry_id) > self.options.max_interim_age_s:
                await self._discard_interim(delivery, f"older than {self.options.max_interim_age_s:.1f} s")
            else:
                await self._handle_interim(delivery)

    async def _handle_interim(self, delivery: Delivery) -> None:
        message = delivery.message
        if message is None:
            await self._give_up(delivery, f"undecodable message: {delivery.error}", attempts=delivery.deliveries)
            return
        started = time.monotonic()
        try:
            outputs = await self._process(message)
        except Exception as exc:
            log.warning("%s %s: interim job failed and is dropped: %r", self.stage.kind, message.log_context, exc)
            outputs = []
        await self._complete(delivery, outputs, started)

    async def _discard_interim(self, delivery: Delivery, reason: str) -> None:
        await self.bus.commit(delivery, self.group, [], self.stage.kind)  # acknowledged, nothing emitted
        context = delivery.message.log_context if delivery.message else ""
        log.debug("%s %s: interim job dropped, %s", self.stage.kind, context, reason)

    def _hints_poller(self, stream: str) -> Callable[[], Awaitable[None]]:
        """Follow a stream every worker of this kind reads whole (no group): hints such as WarmUp, which each worker
        acts on for itself. It starts after the newest entry: a hint is about the rooms of now."""
        position: list[bytes | str] = ["$"]

        async def poll() -> None:
            if position[0] == "$":
                newest = await self.bus.client.xrevrange(self.bus.stream(stream), count=1)
                position[0] = newest[0][0] if newest else "0-0"
            for delivery in await self.bus.tail(stream, position[0], INTERIM_BATCH, self.bus.options.block_ms):
                position[0] = delivery.entry_id
                await self._take_hint(delivery)

        return poll

    async def _take_hint(self, delivery: Delivery) -> None:
        """A hint emits nothing and is never retried: one that fails is logged and forgotten."""
        if delivery.message is None:
            log.warning("%s: skipped an undecodable hint: %s", self.stage.kind, delivery.error)
            return
        try:
            await asyncio.to_thread(self.stage.process, delivery.message)
        except Exception as exc:
            log.warning("%s %s: hint not taken: %r", self.stage.kind, delivery.message.log_context, exc)

    async def _keep_claimed(self, delivery: Delivery) -> None:
        """While a message is processed, reset its idle time so no other worker claims it: only a
        worker that stopped (crashed, hung without its event loop) lets its messages go idle."""
        interval = self.bus.options.claim_idle_ms / 3000
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(*REDIS_DOWN):
                await self.bus.touch(self.stage.kind, self.group, self.consumer, delivery.entry_id)

    async def _record_failure(self, delivery: Delivery, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        attempts = await self.bus.record_failure(self.stage.kind, self.group, delivery.entry_id, error)
        context = delivery.message.log_context if delivery.message else ""
        if attempts >= self.bus.options.max_deliveries:
            await self._give_up(delivery, error, attempts)
        else:
            # Left unacknowledged: it is redelivered (here or elsewhere) once idle past claim_idle_ms.
            log.warning("%s %s failed (attempt %d): %s", self.stage.kind, context, attempts, error)

    async def _give_up(self, delivery: Delivery, error: str, attempts: int) -> None:
        await self.bus.dead_letter(delivery, self.stage.kind, error, attempts, group=self.group)
        await self.bus.forget(delivery.stream, self.group, delivery.entry_id)

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        log.info("draining %d in-flight message(s)", len(self._in_flight))
        _, pending = await asyncio.wait(set(self._in_flight), timeout=self.options.drain_timeout_s)
        for task in pending:  # left unacknowledged: another worker claims them
            task.cancel()

    async def _heartbeat(self) -> None:
        """Tell the gateway this worker lives; and, when it worked since the last beat, give what that work
        freed back to the system (pipeline/memory.py)."""
        key = self.bus.heartbeat_key(self.stage.kind, self.consumer)
        ttl_ms = int(self.options.heartbeat_ttl_s * 1000)
        processed = self.processed
        while True:
            with contextlib.suppress(RedisError):  # the serve loop reports why, and retries the connection
                await self.bus.client.set(key, json.dumps(self._status()), px=ttl_ms)
            if self.processed != processed:
                processed = self.processed
                await asyncio.to_thread(memory.give_back)
            await asyncio.sleep(self.options.heartbeat_interval_s)

    def _status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "processed": self.processed,
            "dropped": self.dropped,
            "in_flight": len(self._in_flight),
            "service_s": round(self.service_s, 4),
        }

    async def _forget_heartbeat(self) -> None:
        with contextlib.suppress(RedisError):
            await self.bus.client.delete(self.bus.heartbeat_key(self.stage.kind, self.consumer))

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)


def newest_per_segment(deliveries: Sequence[Delivery]) -> list[Delivery]:
    """Of interim jobs for the same (room, speaker, seq), the one with the highest revision; in order."""
    newest: dict[tuple[str, str, int], Delivery] = {}
    for delivery in deliveries:
        message = delivery.message
        key = (message.room, message.speaker, message.seq) if message else ("", "", -1)
        held = newest.get(key)
        if message is None or held is None or _revision(message) >= _revision(held.message):
            newest[key] = delivery
    kept = {id(d) for d in newest.values()} | {id(d) for d in deliveries if d.message is None}
    return [d for d in deliveries if id(d) in kept]


def _revision(message: Message | None) -> int:
    return message.revision if isinstance(message, INTERIM_TYPES) else 0


def entry_age_s(entry_id: bytes, now: float | None = None) -> float:
    """Seconds since Redis added a stream entry (its id starts with Redis' clock in milliseconds)."""
    added_ms = int(entry_id.split(b"-")[0])
    return (time.time() if now is None else now) - added_ms / 1000


async def serve(stage: Stage, bus: Bus, options: WorkerOptions) -> None:
    """Run a worker until SIGTERM or SIGINT, then drain and close the bus."""
    memory.limit_arenas()
    worker = Worker(stage, bus, options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        await bus.close()
