"""Options for the bus and the workers. Defaults are named constants; the environment is read only by
`from_env` functions called at entry points (the CLI)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_REDIS_URL = ""  # empty: `babelroom up` starts its own redis-server on a free port
STREAM_PREFIX = "br"
# Retention (README "Data retention"). An entry every consumer group has acknowledged leaves its stream once
# it is this old (0: at the next sweep); kept a little while only to debug with. Streams no group reads
# (`results`, which every gateway tails) keep each entry this long.
RETENTION_S = 60.0
# Dead letters (the failed message with its audio, and the error) stay longer, for an operator to look at.
DEAD_RETENTION_S = 3_600.0
# How often the workers and the gateway trim the streams.
TRIM_INTERVAL_S = 5.0
# The backstop against a stalled consumer: a stream larger than this loses its oldest entries, pending or not.
STREAM_MAX_BYTES = 64 * 1024 * 1024
# A message pending this long on a consumer that stopped heartbeating is taken over by another.
CLAIM_IDLE_MS = 15_000
# After this many deliveries (crashes while holding it, or failures) a message is dead-lettered.
MAX_DELIVERIES = 3
BLOCK_MS = 1_000
# How long an emitted output's identity is remembered, so a redelivery does not emit it again: longer than a
# message can keep being redelivered (MAX_DELIVERIES x (claim idle + message timeout) = 3 x 75 s).
DEDUP_TTL_S = 300

WORKER_CONCURRENCY = 2
# Ready messages a worker runs as one batch when its stage can (the torch engines on a GPU). 1 on CPU: there a
# batch of B costs about B times one, and the first message of a batch would wait for the last.
BATCH_SIZE = 1
MESSAGE_TIMEOUT_S = 60.0
HEARTBEAT_INTERVAL_S = 2.0
HEARTBEAT_TTL_S = 6.0
DRAIN_TIMEOUT_S = 30.0
# A queued interim job older than this is dropped unprocessed: newer audio of its segment has come since.
MAX_INTERIM_AGE_S = 2.0
# How often a worker looks for consumers of dead workers in its group (and removes those holding nothing).
CONSUMER_SWEEP_S = 30.0

DEFAULT_PORT = 8080

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def env_flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    """A yes/no setting: 1/true/yes/on or 0/false/no/off (any case); anything else is an error."""
    value = env.get(name)
    if value is None:
        return default
    word = value.strip().lower()
    if word not in _TRUE | _FALSE:
        raise ValueError(f"{name}={value!r}: expected one of 1/true/yes/on or 0/false/no/off")
    return word in _TRUE


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    """A whole-number setting; a bad value is an error that names the setting."""
    value = env.get(name)
    if value is None:
        return default
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected a whole number") from None


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    """A finite number setting (nan and inf are refused: no limit or delay means that)."""
    value = env.get(name)
    if value is None:
        return default
    try:
        number = float(value.strip())
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{name}={value!r}: expected a finite number")
    return number


@dataclass(frozen=True)
class BusOptions:
    redis_url: str = DEFAULT_REDIS_URL
    prefix: str = STREAM_PREFIX
    retention_s: float = RETENTION_S
    dead_retention_s: float = DEAD_RETENTION_S
    trim_interval_s: float = TRIM_INTERVAL_S
    max_bytes: int = STREAM_MAX_BYTES
    claim_idle_ms: int = CLAIM_IDLE_MS
    max_deliveries: int = MAX_DELIVERIES
    block_ms: int = BLOCK_MS
    dedup_ttl_s: int = DEDUP_TTL_S

    def __post_init__(self) -> None:
        if min(self.retention_s, self.dead_retention_s) < 0:
            raise ValueError("a retention cannot be negative (0 trims acknowledged entries at once)")
        if self.trim_interval_s <= 0 or self.max_bytes <= 0:
            raise ValueError("the trim interval and a stream's byte cap must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BusOptions:
        return cls(
            redis_url=env.get("REDIS_URL", DEFAULT_REDIS_URL),
            prefix=env.get("BABELROOM_STREAM_PREFIX", STREAM_PREFIX),
            retention_s=env_float(env, "BABELROOM_RETENTION_S", RETENTION_S),
            dead_retention_s=env_float(env, "BABELROOM_DEAD_RETENTION_S", DEAD_RETENTION_S),
            trim_interval_s=env_float(env, "BABELROOM_TRIM_INTERVAL_S", TRIM_INTERVAL_S),
            max_bytes=env_int(env, "BABELROOM_STREAM_MAX_BYTES", STREAM_MAX_BYTES),
            dedup_ttl_s=env_int(env, "BABELROOM_DEDUP_TTL_S", DEDUP_TTL_S),
            claim_idle_ms=env_int(env, "BABELROOM_CLAIM_IDLE_MS", CLAIM_IDLE_MS),
            max_deliveries=env_int(env, "BABELROOM_MAX_DELIVERIES", MAX_DELIVERIES),
        )


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = WORKER_CONCURRENCY
    message_timeout_s: float = MESSAGE_TIMEOUT_S
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    heartbeat_ttl_s: float = HEARTBEAT_TTL_S
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    batch_size: int = BATCH_SIZE
    max_interim_age_s: float = MAX_INTERIM_AGE_S
    consumer_sweep_s: float = CONSUMER_SWEEP_S

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerOptions:
        batch_size = int(env.get("BABELROOM_BATCH_SIZE", BATCH_SIZE))
        if batch_size < 1:
            raise ValueError(f"BABELROOM_BATCH_SIZE={batch_size}: expected 1 or more")
        return cls(
            batch_size=batch_size,
            concurrency=env_int(env, "BABELROOM_WORKER_CONCURRENCY", WORKER_CONCURRENCY),
            message_timeout_s=env_float(env, "BABELROOM_MESSAGE_TIMEOUT_S", MESSAGE_TIMEOUT_S),
        )
