"""Redis Streams carry messages between the gateway and the workers, at least once.

One stream per stage (`{prefix}:asr`, `{prefix}:mt`, ...), one consumer group per stage. A worker reads
with XREADGROUP, acknowledges with XACK only after its outputs are written, and takes over messages
that another (dead) worker left pending past `claim_idle_ms` with XAUTOCLAIM. Outputs are emitted
and the input acknowledged by one Lua script that also sets a dedup key per output, so a redelivered
input never yields a second copy downstream, and a Redis crash never keeps an acknowledgement while
losing the outputs. Messages that fail too often go to the `dead` stream with their error.

Streams hold only the work in flight (README "Data retention"): `trim` removes what every group of a stream
has acknowledged once it is older than the retention, and never an entry still pending or unread, so a dead
worker's messages are still there to be claimed. A stream no group reads keeps its entries for the retention.
A stream over its byte cap (a stalled stage) loses its oldest entries, pending or not, with a warning.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.config import BusOptions
from pipeline.messages import Message, MessageError, StageFailure, decode, dedup_key, encode
from pipeline.routes import DEAD, STAGE_STREAMS, destinations

log = logging.getLogger(__name__)

FIELD = b"m"  # each stream entry holds one encoded message under this field
CAP_HEADROOM = 0.9  # a stream over its byte cap is cut to this fraction of it, so it is not cut again at once

# Outputs and the acknowledgement of their input in one atomic step. Redis writes a script's effects
# to the AOF together, so a crash that loses the last writes leaves a consistent prefix: the input is
# still pending and its outputs absent (redone later), never acknowledged with its outputs lost.
# KEYS: input stream, then per output: its dedup key and its destination streams.
# ARGV: group ('' to acknowledge nothing), entry id, dedup ttl s, then per output: number of destinations,
# payload. Returns how many outputs were new (the others were emitted before).
_COMMIT = """
local k, a, new = 2, 4, 0
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  if redis.call('SET', KEYS[k], '1', 'NX', 'EX', ARGV[3]) then
    new = new + 1
    for i = 1, n do
      redis.call('XADD', KEYS[k + i], '*', 'm', ARGV[a + 1])
    end
  end
  k, a = k + n + 1, a + 2
end
if ARGV[1] ~= '' then redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) end
return new
"""

# Trim one stream up to the oldest entry that any of its groups still needs: its oldest pending entry, or
# the first it has not read (after last-delivered-id); and at most up to ARGV[1], the retention's bound.
# One script, so no entry can be delivered between reading the groups and trimming.
# A stage's stream whose group does not exist yet (its workers are still loading) is left whole.
# KEYS: the stream. ARGV: the retention's bound as an id, '1' if a stage's group reads the stream, '1' to delete the
# stream once nothing is left in it (a dead node's results). Returns how many entries were removed.
_TRIM = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return {tonumber(ms), tonumber(seq)}
end
local function less(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local keep, groups = parse(ARGV[1]), redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 and ARGV[2] == '1' then return 0 end
for _, group in ipairs(groups) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local unread = parse(info['last-delivered-id'])
  unread[2] = unread[2] + 1
  if less(unread, keep) then keep = unread end
  if info['pending'] > 0 then
    local oldest = parse(redis.call('XPENDING', KEYS[1], info['name'])[2])
    if less(oldest, keep) then keep = oldest end
  end
end
local removed = redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-%d', keep[1], keep[2]))
if ARGV[3] == '1' and redis.call('XLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return removed
"""

# How long a cancelled task gets to end before it is cancelled again (see cancel_and_wait).
RECANCEL_S = 0.5

# Redis's refusals, by a phrase of its reply, and what to do about each: a process that meets one says why and
# retries (the operator may be fixing it), never crashes with a traceback.
REFUSALS = (
    ("DENIED", "Redis runs in protected mode (no password set) and refuses connections from other hosts: set a "
     "password (requirepass) and put it in REDIS_URL (redis://:PASSWORD@HOST:6379/0)"),
    ("invalid username-password", "Redis refused the password (or user) in REDIS_URL"),
    ("WRONGPASS", "Redis refused the password (or user) in REDIS_URL"),
    ("NOAUTH", "Redis requires a password: put it in REDIS_URL (redis://:PASSWORD@HOST:6379/0)"),
    ("HELLO must be called with the client already authenticated",
     "Redis requires a password: put it in REDIS_URL (redis://:PASSWORD@HOST:6379/0)"),
    ("NOPERM", "the Redis user in REDIS_URL lacks a permission BabelRoom needs (streams, keys, scripts)"),
)  # fmt: skip


def refusal(exc: BaseException) -> str | None:
    """Why Redis refused us, in words an operator can act on; None for any other error."""
    text = str(exc)
    return next((why for phrase, why in REFUSALS if phrase in text), None)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait until each has ended. redis-py (8.1) sometimes swallows a cancellation that lands
    in a command and carries on with the next one (about 1 in 4 cancels of a blocking XREAD, measured), so a task
    still running after RECANCEL_S is cancelled again."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: whoever cancels a task has no use for its outcome


@dataclass(frozen=True)
class Delivery:
    """One stream entry handed to a consumer. `message` is None when the bytes could not be decoded."""

    stream: str
    entry_id: bytes
    raw: bytes
    message: Message | None
    error: str = ""  # why decoding failed
    deliveries: int = 1


class Bus:
    def __init__(self, client: aioredis.Redis, options: BusOptions) -> None:
        self.client = client
        self.options = options
        self._commit = client.register_script(_COMMIT)
        self._trim = client.register_script(_TRIM)

    @classmethod
    def connect(cls, options: BusOptions) -> Bus:
        if not options.redis_url:
            raise ValueError("no Redis URL: set REDIS_URL, or run `babelroom up`, which starts its own redis-server")
        # Retrying on a dropped connection makes a Redis restart cost a reconnect, not an error.
        client = aioredis.Redis.from_url(
            options.redis_url,
            # A refusal (protected mode, a wrong password) is not retried inside a command: it would only hide it
            # for 20 s. The caller says why and tries again.
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5, is_retryable=lambda e: not refusal(e)),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            health_check_interval=30,
        )
        return cls(client, options)

    async def close(self) -> None:
        await self.client.aclose()

    def stream(self, name: str) -> str:
        return f"{self.options.prefix}:{name}"

    def key(self, *parts: str) -> str:
        return ":".join((self.options.prefix, *parts))

    # --- producing -------------------------------------------------------------------------------

    async def publish(self, message: Message, stream: str | None = None) -> None:
        """XADD to the message's routed streams (or one named stream)."""
        payload = encode(message)
        for name in (stream,) if stream else destinations(message):
            await self.client.xadd(self.stream(name), {FIELD: payload})

    async def commit(self, delivery: Delivery, group: str, outputs: Sequence[Message], stage: str) -> int:
        """Emit a stage's outputs, each once per identity (a redelivered or twice-claimed input adds no
        copy), and acknowledge the input, atomically. Returns how many outputs were new."""
        emits = [(self.key("emitted", dedup_key(out, stage)), destinations(out), encode(out)) for out in outputs]
        return await self._commit_atomically(delivery, group, emits)

    async def dead_letter(self, delivery: Delivery, stage: str, error: str, attempts: int, group: str = "") -> None:
        """Move an entry to the `dead` stream with its error and its bytes untouched (acknowledging it in
        `group`, when given). Once per entry: a retried dead-letter adds no second copy."""
        original = delivery.message
        failure = StageFailure(
            room=original.room if original else "",
            speaker=original.speaker if original else "",
            seq=original.seq if original else -1,
            stamps=original.stamps if original else (),
            node=original.node if original else "",
            stage=stage,
            error=error,
            attempts=attempts,
            original=delivery.raw,
        )
        once = self.key("deadlettered", delivery.stream, delivery.entry_id.decode())
        await self._commit_atomically(delivery, group, [(once, (DEAD,), encode(failure))])
        log.warning("dead-lettered %s entry %s after %d attempt(s): %s", stage, delivery.entry_id, attempts, error)

    async def _commit_atomically(
        self, delivery: Delivery, group: str, emits: list[tuple[str, tuple[str, ...], bytes]]
    ) -> int:
        keys: list[str] = [self.stream(delivery.stream)]
        args: list[str | int | bytes] = [group, delivery.entry_id, self.options.dedup_ttl_s]
        for once_key, streams, payload in emits:
            keys += [once_key, *(self.stream(name) for name in streams)]
            args += [len(streams), payload]
        return int(await self._commit(keys=keys, args=args))

    # --- consuming -------------------------------------------------------------------------------

    async def ensure_group(self, name: str, group: str) -> None:
        try:
            await self.client.xgroup_create(self.stream(name), group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_group(self, name: str, group: str, consumer: str, count: int, block_ms: int) -> list[Delivery]:
        reply = await self.client.xreadgroup(group, consumer, {self.stream(name): ">"}, count=count, block=block_ms)
        return [self._delivery(name, entry_id, fields) for entry_id, fields in _entries(reply)]

    async def claim_stale(self, name: str, group: str, consumer: str, count: int) -> list[Delivery]:
        """Take over entries pending on any consumer for longer than claim_idle_ms (a dead worker's)."""
        _, claimed, _ = await self.client.xautoclaim(
            self.stream(name), group, consumer, min_idle_time=self.options.claim_idle_ms, start_id="0-0", count=count
        )
        if not claimed:
            return []
        counts = await self._delivery_counts(name, group, [entry_id for entry_id, _ in claimed])
        return [
            self._delivery(name, entry_id, fields, counts.get(entry_id, 1))
            for entry_id, fields in claimed
            if fields  # an entry trimmed away by MAXLEN comes back empty: nothing left to do
        ]

    async def touch(self, name: str, group: str, consumer: str, entry_id: bytes) -> None:
        """Reset a pending entry's idle time without counting a delivery (XCLAIM ... JUSTID)."""
        await self.client.xclaim(
            self.stream(name), group, consumer, min_idle_time=0, message_ids=[entry_id], justid=True
        )

    async def backlog(self, name: str, group: str) -> dict[str, int]:
        """Entries of a stage not yet read by its group (`waiting`) and read but not acknowledged (`in_progress`)."""
        try:
            groups = await self.client.xinfo_groups(self.stream(name))
        except ResponseError:  # no such stream yet: nothing was ever sent to this stage
            return {"waiting": 0, "in_progress": 0}
        info = next((g for g in groups if g["name"] in (group, group.encode())), None)
        if info is None:
            return {"waiting": int(await self.client.xlen(self.stream(name))), "in_progress": 0}
        return {"waiting": int(info.get("lag") or 0), "in_progress": int(info["pending"])}

    async def record_failure(self, name: str, group: str, entry_id: bytes, error: str) -> int:
        """Count a failed attempt at an entry; returns the attempts so far."""
        key = self.key("failures", name, group)
        attempts = await self.client.hincrby(key, entry_id, 1)
        await self.client.hset(self.key("errors", name, group), entry_id, error)
        return int(attempts)

    async def last_error(self, name: str, group: str, entry_id: bytes) -> str:
        raw = await self.client.hget(self.key("errors", name, group), entry_id)
        return raw.decode(errors="replace") if isinstance(raw, bytes) else ""

    async def forget(self, name: str, group: str, entry_id: bytes) -> None:
        await self.client.hdel(self.key("failures", name, group), entry_id)
        await self.client.hdel(self.key("errors", name, group), entry_id)

    async def tail(
        self, name: str, last_id: bytes | str = "$", count: int = 100, block_ms: int | None = None
    ) -> list[Delivery]:
        """Plain XREAD (no group): every reader sees every entry, as each gateway must for its rooms."""
        reply = await self.client.xread({self.stream(name): last_id}, count=count, block=block_ms)
        return [self._delivery(name, entry_id, fields) for entry_id, fields in _entries(reply)]

    # --- retention ---------------------------------------------------------------------------------

    async def trim(self, name: str, now: float | None = None, drop_empty: bool = False) -> int:
        """Remove a stream's entries that every group has acknowledged (or, on `results` and `dead`, which no
        group reads, any entry) once older than the retention, then hold it to its byte cap. `drop_empty`: delete
        the stream once it is empty (a node's results stream: a dead node's goes entirely). Returns how many
        entries left it."""
        retention_s = self.options.dead_retention_s if name == DEAD else self.options.retention_s
        bound_ms = max(0, int(((time.time() if now is None else now) - retention_s) * 1000))
        staged = "1" if name in STAGE_STREAMS else "0"
        args = [f"{bound_ms}-0", staged, "1" if drop_empty else "0"]
        removed = int(await self._trim(keys=[self.stream(name)], args=args))
        return removed + await self._hold_to_cap(name)

    async def _hold_to_cap(self, name: str) -> int:
        """The backstop: a stream past `max_bytes` keeps only its newest entries, in proportion (a stalled stage
        would otherwise fill Redis's memory). These entries are lost to their stage, so it is a warning."""
        key = self.stream(name)
        used = await self.client.memory_usage(key) or 0
        if used <= self.options.max_bytes:
            return 0
        length = int(await self.client.xlen(key))
        keep = int(length * self.options.max_bytes / used * CAP_HEADROOM)
        removed = int(await self.client.xtrim(key, maxlen=keep, approximate=False))
        log.warning("%s holds %d bytes, over its cap of %d: dropped its %d oldest entries (is its stage stalled?)",
                    key, used, self.options.max_bytes, removed)  # fmt: skip
        return removed

    async def trim_forever(self, names: Sequence[str]) -> None:
        """Trim `names` every trim_interval_s (a task of the workers and the gateway); Redis errors are retried."""
        while True:
            for name in names:
                try:
                    await self.trim(name)
                except (RedisError, OSError) as exc:
                    log.warning("could not trim %s: %s", self.stream(name), refusal(exc) or exc)
            await asyncio.sleep(self.options.trim_interval_s)

    # --- workers' heartbeats -----------------------------------------------------------------------

    def heartbeat_key(self, kind: str, consumer: str) -> str:
        """A live worker keeps this key (with a TTL) holding its status as JSON."""
        return self.key("hb", kind, consumer)

    async def worker_statuses(self) -> dict[str, list[dict[str, Any]]]:
        """The status each live worker last posted with its heartbeat, by kind."""
        keys = [key async for key in self.client.scan_iter(match=self.key("hb", "*"), count=500)]
        values = await self.client.mget(keys) if keys else []
        statuses: dict[str, list[dict[str, Any]]] = {}
        for key, value in zip(keys, values, strict=True):
            if value is None:  # expired between SCAN and MGET
                continue
            try:
                status = json.loads(value)
            except ValueError:
                status = {}
            statuses.setdefault(key.decode().split(":")[-2], []).append(status if isinstance(status, dict) else {})
        return statuses

    async def alive_workers(self) -> dict[str, int]:
        """How many workers of each kind have a live heartbeat."""
        return {kind: len(statuses) for kind, statuses in (await self.worker_statuses()).items()}

    async def _delivery_counts(self, name: str, group: str, ids: list[bytes]) -> dict[bytes, int]:
        counts: dict[bytes, int] = {}
        for entry_id in ids:
            pending = await self.client.xpending_range(self.stream(name), group, min=entry_id, max=entry_id, count=1)
            if pending:
                counts[entry_id] = int(pending[0]["times_delivered"])
        return counts

    @staticmethod
    def _delivery(name: str, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int = 1) -> Delivery:
        raw = fields.get(FIELD, b"")
        try:
            return Delivery(name, entry_id, raw, decode(raw), deliveries=deliveries)
        except MessageError as exc:
            return Delivery(name, entry_id, raw, None, error=str(exc), deliveries=deliveries)


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The (id, fields) pairs of an XREAD/XREADGROUP reply, across its streams."""
    return [(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries]
