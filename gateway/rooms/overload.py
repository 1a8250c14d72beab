"""Overload policy: when the backlog would push results past the late bound, degrade in order (lip-sync
off, then translated speech off; captions always), and recover when the backlog clears.

Each stage's delay is predicted from its backlog and the processing time its workers report with their
heartbeats: (waiting + in progress + 1) x time per message / workers alive (conservative: a worker's
concurrent messages share its CPU). A result's delay is the sum over the stages on its path. The
decision is stamped on each segment as it is published (`Service`: speech, lipsync, deadline): the
tts stage answers speech-off translations with empty speech at once, and any stage drops work it would
finish past the deadline with an explicit `Dropped` result.

`OverloadPolicy` is pure (it takes the loads and the time); `OverloadMonitor` polls Redis for them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from redis.exceptions import RedisError

from gateway.options import LATE_BOUND_S
from pipeline.bus import Bus
from pipeline.messages import Service
from pipeline.metrics import Metrics
from pipeline.routes import ASR, DEAD, LIPSYNC, MT, TTS, WORKER_KINDS

log = logging.getLogger(__name__)

# Step down when a result's predicted delay passes this fraction of the late bound: lip-sync first
# (it comes last and costs most), then translated speech.
LIPSYNC_OFF_AT = 0.5
SPEECH_OFF_AT = 0.75
# Step back up only once the prediction is below this fraction of the threshold that engaged the
# level, and the level has held for HOLD_S: no flapping at the edge.
RECOVER_AT = 0.5
HOLD_S = 5.0
POLL_S = 1.0
PATHS: Mapping[str, tuple[str, ...]] = {
    "caption": (ASR, MT),
    "speech": (ASR, MT, TTS),
    "lipsync": (ASR, MT, TTS, LIPSYNC),
}


class Level(IntEnum):
    FULL = 0
    NO_LIPSYNC = 1
    CAPTIONS_ONLY = 2  # captions, and the original voice for those who hear the speaker's language

    @property
    def label(self) -> str:
        return self.name.lower()


NOTICES = {
    Level.FULL: "Full service is back.",
    Level.NO_LIPSYNC: "Lip-sync is paused while the service catches up.",
    Level.CAPTIONS_ONLY: "Translated speech is paused while the service catches up; captions continue.",
}


@dataclass(frozen=True)
class OverloadOptions:
    late_bound_s: float = LATE_BOUND_S
    lipsync_off_at: float = LIPSYNC_OFF_AT
    speech_off_at: float = SPEECH_OFF_AT
    recover_at: float = RECOVER_AT
    hold_s: float = HOLD_S
    poll_s: float = POLL_S


@dataclass(frozen=True)
class StageLoad:
    waiting: int = 0
    in_progress: int = 0
    workers: int = 0
    service_s: float = 0.0  # processing time per message, as its workers report it (0: not measured yet)

    @property
    def delay_s(self) -> float:
        """Predicted time for a new message to get through: what is ahead of it, then itself."""
        return (self.waiting + self.in_progress + 1) * self.service_s / max(1, self.workers)


@dataclass(frozen=True)
class Decision:
    level: Level
    predicted_s: Mapping[str, float] = field(default_factory=dict)
    changed: bool = False

    def public(self) -> dict[str, Any]:
        return {"level": self.level.label, "predicted_s": _rounded(self.predicted_s)}

    def notice(self) -> dict[str, Any]:
        """What the room page shows: the level, and a sentence saying so."""
        return {"type": "service", "level": self.level.label, "message": NOTICES[self.level]}


def predicted_delays(loads: Mapping[str, StageLoad]) -> dict[str, float]:
    return {result: sum(loads.get(stage, StageLoad()).delay_s for stage in path) for result, path in PATHS.items()}


class OverloadPolicy:
    def __init__(self, options: OverloadOptions | None = None) -> None:
        self.options = options or OverloadOptions()
        self.level = Level.FULL
        self._since = -math.inf  # when the current level was entered (monotonic)

    def decide(self, loads: Mapping[str, StageLoad], now: float) -> Decision:
        delays = predicted_delays(loads)
        wanted = self._level_for(delays, 1.0)
        if wanted > self.level:  # degrade at once
            return self._enter(wanted, delays, now)
        if now - self._since >= self.options.hold_s and self._level_for(delays, self.options.recover_at) < self.level:
            return self._enter(Level(self.level - 1), delays, now)  # recover one step at a time
        return Decision(self.level, delays)

    def service(self, captured_at: float) -> Service:
        """What a segment spoken (ended) at `captured_at` asks of the pipeline now."""
        return Service(
            speech=self.level < Level.CAPTIONS_ONLY,
            lipsync=self.level < Level.NO_LIPSYNC,
            deadline=captured_at + self.options.late_bound_s,
        )

    def _level_for(self, delays: Mapping[str, float], factor: float) -> Level:
        bound = self.options.late_bound_s * factor
        if delays["speech"] > self.options.speech_off_at * bound:
            return Level.CAPTIONS_ONLY
        if delays["lipsync"] > self.options.lipsync_off_at * bound:
            return Level.NO_LIPSYNC
        return Level.FULL

    def _enter(self, level: Level, delays: Mapping[str, float], now: float) -> Decision:
        log.warning("service level %s -> %s (predicted %s)", self.level.label, level.label, _rounded(delays))
        self.level, self._since = level, now
        return Decision(level, delays, changed=True)


class OverloadMonitor:
    """Polls the stages' backlogs and workers, feeds the policy and the metrics, and announces changes."""

    def __init__(
        self,
        bus: Bus,
        options: OverloadOptions,
        metrics: Metrics,
        on_change: Callable[[Decision], None] | None = None,
    ) -> None:
        self.bus = bus
        self.options = options
        self.metrics = metrics
        self.on_change = on_change
        self.policy = OverloadPolicy(options)
        self.last = Decision(Level.FULL)

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except RedisError as exc:  # /healthz reports Redis itself; keep the last decision meanwhile
                log.warning("cannot read the stages' load (%s)", exc)
            await asyncio.sleep(self.options.poll_s)

    async def poll_once(self) -> Decision:
        loads = await self.loads()
        self.metrics.set_dead_letters(int(await self.bus.client.xlen(self.bus.stream(DEAD))))
        decision = self.policy.decide(loads, time.monotonic())
        self.metrics.set_predicted(decision.predicted_s)
        self.metrics.set_level(decision.level, decision.level.label, stepped_down=decision.changed)
        self.last = decision
        if decision.changed and self.on_change is not None:
            self.on_change(decision)
        return decision

    async def loads(self) -> dict[str, StageLoad]:
        statuses = await self.bus.worker_statuses()
        loads = {}
        for stage in dict.fromkeys((*WORKER_KINDS, LIPSYNC)):
            backlog = await self.bus.backlog(stage, stage)
            workers = statuses.get(stage, [])
            paces = [float(w["service_s"]) for w in workers if isinstance(w.get("service_s"), int | float)]
            measured = [pace for pace in paces if pace > 0]
            service_s = sum(measured) / len(measured) if measured else 0.0
            loads[stage] = StageLoad(backlog["waiting"], backlog["in_progress"], len(workers), service_s)
            self.metrics.set_backlog(stage, backlog["waiting"], backlog["in_progress"], len(workers))
        return loads

    def service(self, captured_at: float) -> Service:
        return self.policy.service(captured_at)


def _rounded(delays: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in delays.items()}
