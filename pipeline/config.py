"""Options for the bus and the workers. Defaults are named constants; the environment is read only by
`from_env` functions called at entry points (the CLI)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_REDIS_URL = ""  # empty: `babelroom up` starts its own redis-server on a free port
STREAM_PREFIX = "br"
# Streams are capped (approximate MAXLEN) so a stalled consumer cannot fill Redis' memory.
STREAM_MAXLEN = 10_000
# A message pending this long on a consumer that stopped heartbeating is taken over by another.
CLAIM_IDLE_MS = 15_000
# After this many deliveries (crashes while holding it, or failures) a message is dead-lettered.
MAX_DELIVERIES = 3
BLOCK_MS = 1_000
# How long an emitted output's identity is remembered, so a redelivery does not emit it again.
DEDUP_TTL_S = 3_600

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
    maxlen: int = STREAM_MAXLEN
    claim_idle_ms: int = CLAIM_IDLE_MS
    max_deliveries: int = MAX_DELIVERIES
    block_ms: int = BLOCK_MS
    dedup_ttl_s: int = DEDUP_TTL_S

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BusOptions:
        return cls(
            redis_url=env.get("REDIS_URL", DEFAULT_REDIS_URL),
            prefix=env.get("BABELROOM_STREAM_PREFIX", STREAM_PREFIX),
            maxlen=env_int(env, "BABELROOM_STREAM_MAXLEN", STREAM_MAXLEN),
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
