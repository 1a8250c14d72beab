"""A minimal stage for testing the worker runtime itself (not a stand-in for a real engine).

It turns a SpeechSegment into a Transcript naming the segment's length. BEHAVIOUR selects how:
"ok", "slow" (sleeps SLOW_S first, to be killed mid-message), "fail" (always raises), or "die_on_poison"
(the whole process exits at once on a segment of room "poison", as a crash in native code would).
Run as a process: `python -m tests.runtime_stage` with REDIS_URL, BABELROOM_STREAM_PREFIX,
BABELROOM_CLAIM_IDLE_MS and BEHAVIOUR in the environment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence

from pipeline.bus import Bus
from pipeline.config import BusOptions, WorkerOptions
from pipeline.messages import Message, SpeechSegment, Transcript
from workers.base import serve

SLOW_S = 30.0


class LengthStage:
    kind = "asr"

    def __init__(self, behaviour: str = "ok", slow_s: float = SLOW_S) -> None:
        self.behaviour = behaviour
        self.slow_s = slow_s
        self.calls = 0

    def load(self) -> None:
        pass

    def process(self, message: Message) -> Sequence[Message]:
        self.calls += 1
        assert isinstance(message, SpeechSegment)
        if self.behaviour == "fail":
            raise RuntimeError(f"engine exploded on seq {message.seq}")
        if self.behaviour == "die_on_poison" and message.room == "poison":
            os._exit(3)
        if self.behaviour == "slow":
            time.sleep(self.slow_s)
        text = f"{len(message.pcm) // 2} samples"
        transcript = Transcript(
            room=message.room,
            speaker=message.speaker,
            seq=message.seq,
            stamps=message.stamps,
            language=message.language,
            targets=message.targets,
            text=text,
        )
        return [transcript.stamped("asr")]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stage = LengthStage(os.environ.get("BEHAVIOUR", "ok"))
    bus = Bus.connect(BusOptions.from_env(os.environ))
    options = WorkerOptions(heartbeat_interval_s=0.2, heartbeat_ttl_s=1.0)
    asyncio.run(serve(stage, bus, options))


if __name__ == "__main__":
    main()
