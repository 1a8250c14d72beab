"""The lipsync stage: SynthesizedSpeech (of a segment whose frames the gateway stored) -> [VideoClip].

The speaker's frames come from Redis (pipeline/frames.py), stored by the gateway under the segment's
(room, speaker, seq); the clip it emits is in the speech's language, on the speech's timeline, JPEG
within the size bound. The speech itself went to `results` already: audio never waits for video.

Lip-sync is the first thing to give way: speech that waited longer than `max_wait_s` since synthesis
(the stage is behind), frames that expired or were never stored, and speech without samples all
yield no clip, and the listener sees the original frames with the translated speech.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import redis

from pipeline.config import BusOptions
from pipeline.frames import FrameError, decode_frames, load_frames, make_clip
from pipeline.messages import Message, MessageError, SynthesizedSpeech
from pipeline.routes import TTS
from workers.engines.lipsync.base import LipSyncer, LipSyncOptions
from workers.engines.lipsync.registry import load_lipsyncer
from workers.stage import PermanentError

log = logging.getLogger(__name__)


class LipSyncStage:
    kind = "lipsync"

    def __init__(
        self,
        options: LipSyncOptions,
        bus: BusOptions,
        frames: redis.Redis | None = None,
        syncer: LipSyncer | None = None,
    ) -> None:
        self.options = options
        self.bus = bus
        self.frames = frames  # a blocking client: process() runs in a worker thread
        self.syncer = syncer  # injected: tests and benchmarks share one loaded engine
        self.skipped: dict[str, int] = {"late": 0, "no_frames": 0}

    def load(self) -> None:
        if self.frames is None:
            self.frames = redis.Redis.from_url(self.bus.redis_url)
        if self.syncer is None:
            self.syncer = load_lipsyncer(self.options)

    def process(self, message: Message) -> Sequence[Message]:
        if not isinstance(message, SynthesizedSpeech):
            raise PermanentError(f"lipsync takes synthesized speech, got a {message.kind} message")
        if not message.pcm:
            return []
        if self.frames is None or self.syncer is None:
            self.load()
        assert self.frames is not None and self.syncer is not None
        synthesized = message.stamp(TTS)
        if synthesized is not None and time.time() - synthesized > self.options.max_wait_s:
            return self._skip("late", message)
        try:
            source = load_frames(self.frames, self.bus.prefix, message.room, message.speaker, message.seq)
            if source is None or not source.timestamps_s:
                return self._skip("no_frames", message)
            frames = decode_frames(source)
        except (FrameError, MessageError) as exc:
            raise PermanentError(f"unreadable frames: {exc}") from exc
        synced = self.syncer.sync(message, frames, source.timestamps_s)
        clip = make_clip(
            message.room, message.speaker, message.seq, synced.frames, synced.times_s,
            language=message.language, engine=self.syncer.name, stamps=message.stamps,
        )  # fmt: skip
        return [clip.stamped(self.kind)]

    def _skip(self, reason: str, message: SynthesizedSpeech) -> list[Message]:
        self.skipped[reason] += 1
        log.info("no lip-sync (%s) for %s %s; the original frames play", reason, message.log_context, message.language)
        return []


def build_stage(env: Mapping[str, str]) -> LipSyncStage:
    return LipSyncStage(LipSyncOptions.from_env(env), BusOptions.from_env(env))
